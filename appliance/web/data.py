"""What the status page, /api/status and /metrics show: one record, gathered here.

Sources: ``appliance.observe.status.collect_status`` (run.json, update state, the bundle's
manifest), the shared counters (``appliance.observe.stats.SharedStats``, inherited from the owner
process; absent -> counters read as unavailable, the rest still shows), ``flows-state.json``
(the capture process), the config (policies, networks), temporary allows, and the board
(disk, memory, CPU temperature, load, uptime from /proc and /sys under an injectable root).
The record's shape is documented in docs/observability.md ("/api/status").
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from appliance.config.load import Config
from appliance.dns.upstream import upstream_text
from appliance.observe.stats import UP_SUM_US
from appliance.observe.status import collect_status

__all__ = ["FLOWS_FILE", "read_flows_state", "system_health", "bundle_details", "collect",
           "software_version", "parse_time", "upstream_rows", "EMPTY_TOTALS"]

FLOWS_FILE = "flows-state.json"
EMPTY_TOTALS = {"queries": 0, "blocked": 0, "cache_hits": 0, "forwarded": 0, "rate_limited": 0,
                "servfail": 0, "upstream_errors": 0, "blocked_by_category": {},
                "flows": {"seen": 0, "blocked": 0, "reset": 0, "by_proto": {}}, "upstream_latency_ms": {}}


def software_version() -> str:
    try:
        return metadata.version("schoolgate")
    except metadata.PackageNotFoundError:
        return "unknown"


def parse_time(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def read_flows_state(state_dir: Path) -> dict | None:
    try:
        data = json.loads((Path(state_dir) / FLOWS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None


def system_health(state_dir: Path, root: Path = Path("/")) -> dict:
    """Disk (of the state dir), memory, CPU temperature (None without a sensor), load, uptime."""
    out: dict = {"disk": None, "memory": None, "cpu_temp_c": None, "load": None, "uptime_s": None}
    try:
        du = shutil.disk_usage(state_dir if Path(state_dir).exists() else "/")
        out["disk"] = {"total": du.total, "free": du.free, "used_pct": round(100 * du.used / du.total, 1)
                       if du.total else None}
    except OSError:
        pass
    mem = _read(root / "proc/meminfo")
    if mem:
        vals = {}
        for line in mem.splitlines():
            k, _, rest = line.partition(":")
            if k in ("MemTotal", "MemAvailable") and rest.split():
                vals[k] = int(rest.split()[0]) * 1024
        if "MemTotal" in vals:
            out["memory"] = {"total": vals["MemTotal"], "available": vals.get("MemAvailable")}
    zones = sorted((root / "sys/class/thermal").glob("thermal_zone*")) if (root / "sys/class/thermal").is_dir() else []
    for z in zones:  # the first zone that reads: on a Pi, cpu-thermal is thermal_zone0
        t = _read(z / "temp")
        if t and t.strip().lstrip("-").isdigit():
            out["cpu_temp_c"] = round(int(t.strip()) / 1000, 1)
            break
    up = _read(root / "proc/uptime")
    if up and up.split():
        try:
            out["uptime_s"] = int(float(up.split()[0]))
        except ValueError:
            pass
    try:
        out["load"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return out


def bundle_details(bundle, how: str, now: datetime) -> dict:
    """Version, dates, age and per-category entry counts from a bundle's manifest."""
    m = bundle.manifest
    created, expires = parse_time(m.get("created")), parse_time(m.get("expires"))
    per: dict[str, int] = {}
    for s in m.get("sources") or []:
        if isinstance(s, dict) and not s.get("allow") and isinstance(s.get("category"), str):
            per[s["category"]] = per.get(s["category"], 0) + int(s.get("entries") or 0)
    return {"version": bundle.version, "demo": bool(bundle.demo), "how": how, "path": str(bundle.path),
            "created": m.get("created"), "expires": m.get("expires"),
            "age_s": int((now - created).total_seconds()) if created else None,
            "expires_in_s": int((expires - now).total_seconds()) if expires else None,
            "domains": (m.get("counts") or {}).get("domains"),
            "categories": per}


def _policies(cfg: Config, built) -> list[dict]:
    nets: dict[str, list[str]] = {}
    for n in cfg.networks:
        nets.setdefault(n.policy, []).append(f"{n.name} ({', '.join(n.cidrs)})")
    rules = built.policies.rules if built is not None else {}
    # categories a policy names and the bundle lacks (appliance/policy/categories.py)
    missing = {d["policy"]: list(d["missing"]) for d in (getattr(built, "degraded", None) or ())}
    names = list(dict.fromkeys(list(cfg.policies) + list(rules)))
    out = []
    for name in names:
        p = cfg.policies.get(name)
        r = rules.get(name)
        block = list(p.block) if p else list(r.categories) if r else []
        mode = (p.block_mode if p and p.block_mode else cfg.dns.block_mode)
        out.append({"name": name, "block": [c for c in block if c not in missing.get(name, ())], "block_mode": mode,
                    "missing": missing.get(name, []),
                    "networks": nets.get(name, ["every other client"] if name == "default" else [])})
    return out


def _latency_sums_us(stats) -> list[int]:
    """Each upstream's latency sum in µs (by index), over every slot: totals() gives only a
    rounded average, and /metrics' histogram needs the exact, monotonic sum."""
    rows = [stats.slot(i).upstreams[:, UP_SUM_US].copy() for i in range(stats.n)]
    return [int(v) for v in sum(rows[1:], rows[0])] if rows else []


def _qps(history: list[dict], now: datetime) -> float:
    """Queries per second over the last complete minute (the one before now's): the history
    leaves quiet minutes out, so that minute is looked up by its time (absent: 0 queries),
    never taken as "the second-to-last row" (which may be hours old)."""
    minute = (int(now.timestamp()) // 60 - 1) * 60
    n = sum(int(h.get("queries") or 0) for h in history if isinstance(h, dict) and h.get("t") == minute)
    return round(n / 60.0, 2)


# What a live health entry (counters.json's "upstreams", written by the serving process:
# appliance/dns/upstream.py Upstream.status) may add to an upstream's row.
_HEALTH_KEYS = ("up", "rtt_ms", "last_error", "last_error_at", "last_ok", "checked")


def upstream_rows(addresses: list[str], latency: dict, health: list | None) -> list[dict]:
    """One row per configured upstream (configured order): its address, the shared counters'
    tries and failures (every worker's, ``upstream_latency_ms`` keyed by index) and, when the
    running appliance reports it, its live health (``up`` etc.; None where unknown)."""
    by_index: dict[int, dict] = {}
    by_address: dict[str, dict] = {}
    for h in health or []:
        if isinstance(h, dict):  # matched by address (a reload may reorder); by index without one
            if isinstance(h.get("address"), str):
                by_address[h["address"]] = h
            elif isinstance(h.get("index"), int):
                by_index[h["index"]] = h
    out = []
    for i, address in enumerate(addresses):
        lat = latency.get(str(i)) if isinstance(latency, dict) else None
        lat = lat if isinstance(lat, dict) else {}
        h = by_address.get(address) or by_index.get(i) or {}
        row = {"address": address, "index": i, "queries": lat.get("queries", h.get("queries")),
               "errors": lat.get("errors", h.get("errors")), "avg_ms": lat.get("avg_ms")}
        row.update({k: h.get(k) for k in _HEALTH_KEYS})
        out.append(row)
    return out


def collect(cfg: Config, built, stats, now: datetime, temporary: list | None = None,
            root: Path = Path("/")) -> dict:
    """The /api/status record (docs/observability.md, "/api/status", shows the shape)."""
    st = collect_status(cfg)
    totals = None
    history: list[dict] = []
    top: list = []
    if stats is not None:
        names = built.bundle.catalog.names if built is not None else (lambda m: [])
        try:
            totals = stats.totals(names)
            sums = _latency_sums_us(stats)
            for k, row in (totals.get("upstream_latency_ms") or {}).items():
                row["sum_us"] = sums[int(k)] if int(k) < len(sums) else None
            history = stats.history()
            top = stats.top_blocked(20)
        except Exception:  # the counters are a report: a bad read must not take the page down
            totals = None
    t = dict(EMPTY_TOTALS, **(totals or {}))
    q = int(t.get("queries") or 0)
    dns = {k: t.get(k) for k in ("queries", "blocked", "cache_hits", "forwarded", "rate_limited",
                                 "servfail", "upstream_errors", "blocked_by_category", "upstream_latency_ms")}
    live = st.get("dns") or {}
    addresses = [upstream_text(u) for u in cfg.dns.upstreams]
    dns.update(cache_hit_ratio=round(int(t.get("cache_hits") or 0) / q, 4) if q else None,
               qps=_qps(history, now) if totals is not None else None,
               counters_available=totals is not None, workers=st.get("workers"),
               listen=[f"{h}:{p}" for h, p in cfg.dns.listen],
               upstreams=addresses, block_mode=cfg.dns.block_mode,
               # the running appliance's health of each upstream only when counters.json is its own
               upstream_status=upstream_rows(addresses, t.get("upstream_latency_ms") or {},
                                             live.get("upstreams") if live.get("live") else None),
               counting_since=live.get("since"))
    started = parse_time(st.get("started"))
    flows = read_flows_state(cfg.state_dir)
    return {
        "version": software_version(),
        "time": now.replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "appliance": {"running": st["running"], "pid": st["pid"], "started": st["started"],
                      "uptime_s": int((now - started).total_seconds()) if started and st["running"] else None,
                      "config": st["config"], "state_dir": st["state_dir"]},
        "bundle": bundle_details(built.bundle, built.how, now) if built is not None else st.get("bundle"),
        "updates": st["updates"],
        "dns": dns,
        "flows": {"state": flows, "counters": t.get("flows")},
        "system": system_health(cfg.state_dir, root),
        "history": history,
        "top_blocked": [[str(n), int(c)] for n, c in top],
        "policies": _policies(cfg, built),
        "temporary_allows": temporary or [],
        # The image's boot-time check of schoolgate.yaml from the boot partition (None elsewhere).
        "config_check": st.get("config_check"),
    }
