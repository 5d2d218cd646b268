"""``schoolgate status [--json] [--config PATH]``: what the state directory says.

Read-only, from files a running appliance and the updater keep current: ``run.json`` (the
running appliance's pid and the bundle it serves, see appliance/dns/service.py),
``update-state.json`` (last check, result, error, next check; appliance/updates/updater.py), and the
manifest of the bundle the state selects (``bundles/current``, else the demo). So it works
whether or not the appliance runs, and needs no socket. (The web page shows
the same record: appliance/web/data.py.)
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from appliance.bundles.select import demo_state_dir, resolve_bundle
from appliance.clock import utc_text
from appliance.config.load import Config
from appliance.observe.stats import SLOT_OWNER, SharedStats
from appliance.updates.state import pid_alive, read_run_state, read_update_state
from filters.errors import SchoolgateError
from signatures._atomic import write_atomic
from signatures.bundle import open_bundle

log = logging.getLogger("schoolgate")

__all__ = ["collect_status", "format_status", "COUNTERS_FILE", "COUNTERS_PERIOD",
           "write_counters", "read_counters", "seed_counters"]

COUNTERS_FILE = "counters.json"
# The owner rewrites counters.json this often: `status` and a restart see counts at most this
# old; one small atomic write (a few kB) every 5 s costs nothing measurable.
COUNTERS_PERIOD = 5.0

_UPDATE_KEYS = ("active_version", "last_check", "last_result", "last_error", "last_success",
                "last_update", "next_check", "offered_version", "bytes_downloaded")


def write_counters(state_dir: str | Path, stats: SharedStats, category_names: Callable[[int], list[str]],
                   since: str, extra: dict | None = None) -> None:
    """The shared counters' totals, minute history and top blocked names, to counters.json
    (atomically; no client appears in it). Errors are logged: a report must not stop DNS."""
    rec = {"pid": os.getpid(), "updated": utc_text(), "since": since,
           "totals": stats.totals(category_names), "category_bits": stats.category_bits(),
           "history": stats.history(), "top_blocked": stats.top_blocked(20)}
    if extra:
        rec.update(extra)
    path = Path(state_dir) / COUNTERS_FILE
    try:
        write_atomic(path, (json.dumps(rec, sort_keys=True) + "\n").encode())
    except OSError as exc:
        log.warning("cannot write %s: %s", path, exc.strerror or exc)


def read_counters(state_dir: str | Path) -> dict:
    """The last counters.json ({} when none or unreadable: it is only a report)."""
    try:
        data = json.loads((Path(state_dir) / COUNTERS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def seed_counters(state_dir: str | Path, stats: SharedStats) -> str | None:
    """Carry the previous run's counts into ``stats`` (so totals survive a restart); returns
    since when they count (None: from now)."""
    rec = read_counters(state_dir)
    if not isinstance(rec.get("totals"), dict):
        return None
    stats.seed(rec["totals"], rec.get("category_bits") if isinstance(rec.get("category_bits"), dict) else None)
    if isinstance(rec.get("history"), list):
        stats.slot(SLOT_OWNER).seed_history(rec["history"])
    return rec.get("since") if isinstance(rec.get("since"), str) else None


def _dns_info(cfg: Config, running: bool) -> dict | None:
    """The "dns" section: counters.json as the owner last wrote it (every COUNTERS_PERIOD)."""
    rec = read_counters(cfg.state_dir)
    t = rec.get("totals")
    if not isinstance(t, dict):
        return None
    lg = t.get("log") or {}
    out = {k: t.get(k) for k in ("queries", "blocked", "cache_hits", "forwarded", "rate_limited", "servfail",
                                 "upstream_errors", "stale_answers", "formerr", "dropped")}
    out.update(blocked_by_category=t.get("blocked_by_category"), upstream_latency_ms=t.get("upstream_latency_ms"),
               flows=t.get("flows"), top_blocked=rec.get("top_blocked"), updated=rec.get("updated"),
               since=rec.get("since"), live=running and rec.get("pid") == read_run_state(cfg.state_dir).get("pid"),
               upstreams=rec.get("upstreams"),
               query_log={"mode": cfg.log.queries, "clients": cfg.log.clients,
                          "retention_days": cfg.log.retention_days, "written": lg.get("written"),
                          "dropped": lg.get("dropped"), "errors": lg.get("errors"),
                          "degraded": _log_degraded(lg, rec)})
    return out


def _log_degraded(lg: dict, rec: dict) -> str | None:
    """A text when the query log failed recently (within a minute of the last report)."""
    ts, err = lg.get("last_error_ts"), lg.get("last_errno")
    if not isinstance(ts, int) or not ts or not isinstance(err, int):
        return None
    updated = rec.get("updated")
    try:
        at = datetime.fromisoformat(str(updated).replace("Z", "+00:00")).timestamp()
    except ValueError:
        at = time.time()
    if at - ts > 60:
        return None
    when = datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
    return f"{errno.errorcode.get(err, str(err))} ({os.strerror(err)}) at {when}; filtering continues"


def _bundle_info(cfg: Config) -> dict | None:
    found = resolve_bundle(cfg)
    if found is None:
        return None
    path, how = found
    info: dict = {"path": str(path), "how": how}
    try:
        b = open_bundle(path)
    except SchoolgateError as exc:
        return dict(info, error=str(exc))
    m = b.manifest
    return dict(info, version=b.version, demo=b.demo, created=m.get("created"), expires=m.get("expires"),
                domains=(m.get("counts") or {}).get("domains"))


def collect_status(cfg: Config) -> dict:
    """The status record (the shape of ``status --json``)."""
    run = read_run_state(cfg.state_dir)
    running = pid_alive(run.get("pid"))
    bundle = _bundle_info(cfg)
    updates: dict = {"configured": cfg.updates is not None}
    if cfg.updates is not None:
        rec = read_update_state(cfg.state_dir)
        updates.update(repository=cfg.updates.repository, interval_s=cfg.updates.interval,
                       **{k: rec.get(k) for k in _UPDATE_KEYS})
    demo_rec = read_update_state(demo_state_dir(cfg.state_dir))
    serving = run.get("bundle") if running else None
    shown = serving or bundle or {}
    return {
        "state_dir": str(cfg.state_dir),
        "config": cfg.file,
        "running": running,
        "pid": run.get("pid") if running else None,
        "started": run.get("started") if running else None,
        "workers": run.get("workers") if running else None,
        "listen": run.get("listen") if running else None,
        "serving": serving,
        # policies served without categories the bundle lacks (appliance/policy/categories.py)
        "degraded": run.get("degraded") if running else None,
        "bundle": bundle,
        "demo": bool(shown.get("demo")),
        "updates": updates,
        "demo_install": {k: demo_rec.get(k) for k in ("active_version", "last_check", "last_result",
                                                      "last_error")} if demo_rec else None,
        "dns": _dns_info(cfg, running),
        "config_check": _config_check(cfg),
    }


# Written at every boot of the appliance image by schoolgate-config (image/files/usr/lib/
# schoolgate/firstboot): whether the admin's schoolgate.yaml from the boot partition was
# taken, and its errors (file:line:col) when it was not.
CONFIG_CHECK_FILE = "config-status.json"


def _config_check(cfg: Config) -> dict | None:
    try:
        rec = json.loads((Path(cfg.state_dir) / CONFIG_CHECK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict):
        return None
    errors = rec.get("errors")
    if not isinstance(errors, list):
        errors = []
    return {"ok": rec.get("ok") is True and not errors, "time": rec.get("time"), "source": rec.get("source"),
            "summary": rec.get("summary"), "errors": [str(e) for e in errors]}


# How the running bundle was chosen (run.json's bundle.how), as `schoolgate status` says it.
_HOW_TEXT = {"configured": "the config's bundle", "active": "the active signed bundle",
             "unfiltered": "NO BUNDLE OPENS: FORWARDING UNFILTERED (no_bundle: forward)",
             "refusing": "NO BUNDLE OPENS: REFUSING EVERY QUERY (no_bundle: refuse)"}


def _bundle_line(b: dict) -> str:
    if "error" in b:
        return f"{b['path']}: cannot be opened: {b['error']}"
    how = b.get("how")
    what = _HOW_TEXT.get(how, how) if isinstance(how, str) else how
    line = f"version {b.get('version')} ({what})"
    if b.get("demo"):
        line = (f"version {b.get('version')}, the DEMO bundle (excerpts of public lists signed with "
                "public demo keys; not for real filtering)")
    extra = [f"{b['domains']:,} domains" if b.get("domains") is not None else None,
             f"created {b['created']}" if b.get("created") else None,
             f"expires {b['expires']}" if b.get("expires") else None,
             f"since {b['since']}" if b.get("since") else None]
    return line + "".join(f", {e}" for e in extra if e)


def _upstream_line(u: dict) -> str:
    """``127.0.0.1:53 answering, 1.2 ms, 1,234 queries, 0 errors`` (or NOT ANSWERING and why)."""
    n, errs = u.get("queries") or 0, u.get("errors") or 0
    counts = f"{n:,} quer{'y' if n == 1 else 'ies'}, {errs:,} error{'' if errs == 1 else 's'}"
    if u.get("up"):
        rtt = u.get("rtt_ms")
        return f"{u.get('address')} answering" + (f", {rtt:g} ms" if rtt else "") + f", {counts}"
    why = f" ({u['last_error']})" if u.get("last_error") else ""
    return f"{u.get('address')} NOT ANSWERING{why}, {counts}"


def format_status(st: dict) -> str:
    rows = [("state", st["state_dir"]), ("config", st["config"])]
    if st["running"]:
        rows.append(("running", f"yes, pid {st['pid']} since {st['started']}, {st['workers']} worker(s), "
                                f"DNS on {', '.join(st['listen'] or [])}"))
        rows.append(("serving", _bundle_line(st["serving"])))
        if st["bundle"] and st["bundle"].get("path") != st["serving"].get("path"):
            rows.append(("activated", _bundle_line(st["bundle"]) + " (the appliance swaps to it shortly)"))
    else:
        rows.append(("running", "no"))
        rows.append(("bundle", _bundle_line(st["bundle"]) if st["bundle"]
                     else "none yet (`schoolgate run` installs the demo bundle at first start)"))
    for d in st.get("degraded") or ():
        rows.append(("policy", f"policy {d.get('policy')} DEGRADED: {', '.join(d.get('missing') or ())} not in "
                               "the bundle served; its other categories are blocked"))
    u = st["updates"]
    if not u["configured"]:
        rows.append(("updates", "not configured (add updates: with your repository and trusted root)"))
    else:
        rows.append(("updates", f"{u['repository']} every {u['interval_s']} s (± 10 %)"))
        if u.get("last_check"):
            result = u.get("last_result") or "?"
            if u.get("offered_version") is not None:
                result += f" (repository offers version {u['offered_version']})"
            rows.append(("last check", f"{u['last_check']}: {result}"))
            if u.get("last_error"):
                rows.append(("last error", u["last_error"]))
            rows.append(("last success", u.get("last_success") or "never"))
            rows.append(("next check", u.get("next_check") or "?"))
        else:
            rows.append(("last check", "never"))
    dns = st.get("dns")
    if dns:
        cats = ", ".join(f"{k} {v:,}" for k, v in sorted((dns.get("blocked_by_category") or {}).items(),
                                                          key=lambda kv: -kv[1])[:5])
        rows.append(("dns", f"{dns.get('queries') or 0:,} queries, {dns.get('blocked') or 0:,} blocked"
                            + (f" ({cats})" if cats else "")
                            + f", {dns.get('cache_hits') or 0:,} from cache, {dns.get('servfail') or 0:,} SERVFAIL"
                            + f" (since {dns.get('since') or '?'}; as of {dns.get('updated') or '?'})"))
        q = dns.get("query_log") or {}
        line = (f"{q.get('mode')} queries, clients {q.get('clients')}, kept {q.get('retention_days')} days; "
                f"{q.get('written') or 0:,} lines written, {q.get('dropped') or 0:,} dropped, "
                f"{q.get('errors') or 0:,} lost to errors")
        if q.get("degraded"):
            line += f"; DEGRADED: {q['degraded']}"
        rows.append(("query log", line))
        ups = dns.get("upstreams") or []
        if not ups and dns.get("live"):
            rows.append(("upstreams", "none configured: allowed names get SERVFAIL (set dns.upstreams)"))
        for u in ups:
            rows.append(("upstream", _upstream_line(u)))
    cc = st.get("config_check")
    if cc:
        rows.append(("boot config", f"{cc.get('summary') or '?'} ({cc.get('time') or '?'})"))
        rows.extend(("  error", e) for e in cc["errors"][:20])
    width = max(len(k) for k, _ in rows) + 1
    return "\n".join(f"{k + ':':<{width}} {v}" for k, v in rows)

