"""``schoolgate status [--json] [--config PATH]``: what the state directory says.

Read-only, from files a running appliance and the updater keep current: ``run.json`` (the
running appliance's pid and the bundle it serves, see appliance/dns/service.py),
``update-state.json`` (last check, result, error, next check; appliance/updater.py), and the
manifest of the bundle the state selects (``bundles/current``, else the demo). So it works
whether or not the appliance runs, and needs no socket. (The web page, a later issue, shows
the same record.)
"""

from __future__ import annotations

import argparse
import json
from typing import TextIO

from appliance.config import Config
from appliance.embedded import demo_state_dir, resolve_bundle
from appliance.state import pid_alive, read_run_state, read_update_state
from filters.errors import SchoolgateError
from signatures.bundle import open_bundle

__all__ = ["collect_status", "format_status", "cmd_status"]

_UPDATE_KEYS = ("active_version", "last_check", "last_result", "last_error", "last_success",
                "last_update", "next_check", "offered_version", "bytes_downloaded")


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
        "bundle": bundle,
        "demo": bool(shown.get("demo")),
        "updates": updates,
        "demo_install": {k: demo_rec.get(k) for k in ("active_version", "last_check", "last_result",
                                                      "last_error")} if demo_rec else None,
    }


def _bundle_line(b: dict) -> str:
    if "error" in b:
        return f"{b['path']}: cannot be opened: {b['error']}"
    what = {"configured": "the config's bundle", "active": "the active signed bundle"}.get(b.get("how"), b.get("how"))
    line = f"version {b.get('version')} ({what})"
    if b.get("demo"):
        line = (f"version {b.get('version')}, the DEMO bundle (excerpts of public lists signed with "
                "public demo keys; not for real filtering)")
    extra = [f"{b['domains']:,} domains" if b.get("domains") is not None else None,
             f"created {b['created']}" if b.get("created") else None,
             f"expires {b['expires']}" if b.get("expires") else None,
             f"since {b['since']}" if b.get("since") else None]
    return line + "".join(f", {e}" for e in extra if e)


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
    width = max(len(k) for k, _ in rows) + 1
    return "\n".join(f"{k + ':':<{width}} {v}" for k, v in rows)


def cmd_status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from appliance.dns.service import load_run_config

    st = collect_status(load_run_config(args.config))
    print(json.dumps(st) if args.json else format_status(st), file=out)
    return 0
