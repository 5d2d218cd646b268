"""``GET /metrics``: the status record in the Prometheus text exposition format (0.0.4).

Hand-written rather than through prometheus_client's registry: the values already exist
as one dict (web/data.py) read from shared counters on each scrape, so a registry of
collectors would only copy them again, and the device needs no extra dependency. The tests
parse this output with prometheus_client's own parser (tests only), so a format slip fails.
Label values are escaped (backslash, double quote, newline) — category and upstream names
come from bundles and configs.
"""

from __future__ import annotations

from appliance.web.data import parse_time

__all__ = ["render_metrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(v: object) -> str:
    return str(v).replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _num(v: object) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    return None


class _Out:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: list[tuple[dict[str, object], object]]) -> None:
        good = [(labels, _num(v)) for labels, v in samples if _num(v) is not None]
        if not good:
            return
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, v in good:
            lab = ",".join(f'{k}="{_label(x)}"' for k, x in labels.items())
            val = repr(v) if v != int(v) else str(int(v))
            self.lines.append(f"{name}{{{lab}}} {val}" if lab else f"{name} {val}")

    def one(self, name: str, kind: str, help_text: str, value: object) -> None:
        self.family(name, kind, help_text, [({}, value)])


def _ts(text: object) -> float | None:
    t = parse_time(text)
    return t.timestamp() if t else None


def render_metrics(rec: dict) -> bytes:
    o = _Out()
    o.family("schoolgate_info", "gauge", "Software version (value always 1).", [({"version": rec.get("version")}, 1)])
    a = rec.get("appliance") or {}
    o.one("schoolgate_running", "gauge", "1 when the appliance's owner process is running.", bool(a.get("running")))
    o.one("schoolgate_uptime_seconds", "gauge", "Seconds since the appliance started.", a.get("uptime_s"))
    d = rec.get("dns") or {}
    if d.get("counters_available"):
        for key, help_text in [("queries", "DNS queries received."), ("blocked", "DNS queries blocked."),
                               ("cache_hits", "DNS queries answered from the cache."),
                               ("forwarded", "DNS queries forwarded to an upstream."),
                               ("rate_limited", "DNS queries refused by the per-client rate limit."),
                               ("servfail", "DNS queries answered SERVFAIL."),
                               ("upstream_errors", "Upstream failures (timeouts, errors).")]:
            o.one(f"schoolgate_dns_{key}_total", "counter", help_text, d.get(key))
        o.family("schoolgate_dns_blocked_by_category_total", "counter", "DNS queries blocked, per category.",
                 [({"category": k}, v) for k, v in sorted((d.get("blocked_by_category") or {}).items())])
        lat = d.get("upstream_latency_ms") or {}
        samples: list[tuple[dict, object]] = []
        for k, v in sorted(lat.items()):
            if isinstance(v, dict):
                samples += [({"upstream": k, "stat": s}, x) for s, x in sorted(v.items())]
            else:
                samples.append(({"stat": k}, v))
        o.family("schoolgate_dns_upstream_latency_ms", "gauge", "Upstream answer latency in milliseconds.", samples)
        o.one("schoolgate_dns_cache_hit_ratio", "gauge", "Cache hits / queries since start.", d.get("cache_hit_ratio"))
    b = rec.get("bundle") or {}
    o.one("schoolgate_bundle_version", "gauge", "Version of the bundle served.", b.get("version"))
    o.one("schoolgate_bundle_age_seconds", "gauge", "Seconds since the served bundle was built.", b.get("age_s"))
    o.one("schoolgate_bundle_expiry_seconds", "gauge", "Seconds until the served bundle expires (negative: expired).",
          b.get("expires_in_s"))
    o.one("schoolgate_bundle_demo", "gauge", "1 when the demo bundle is served.", bool(b.get("demo")))
    o.one("schoolgate_bundle_domains", "gauge", "Domain entries in the served bundle.", b.get("domains"))
    o.family("schoolgate_bundle_category_entries", "gauge", "Entries per category in the served bundle.",
             [({"category": k}, v) for k, v in sorted((b.get("categories") or {}).items())])
    u = rec.get("updates") or {}
    if u.get("configured"):
        o.one("schoolgate_update_last_check_timestamp_seconds", "gauge", "Time of the last update check.",
              _ts(u.get("last_check")))
        o.one("schoolgate_update_last_success_timestamp_seconds", "gauge", "Time of the last successful update check.",
              _ts(u.get("last_success")))
        o.one("schoolgate_update_last_check_failed", "gauge", "1 when the last update check failed.",
              bool(u.get("last_error")))
    f = rec.get("flows") or {}
    fc = f.get("counters") or {}
    if d.get("counters_available"):
        for key in ("seen", "blocked", "reset"):
            o.one(f"schoolgate_flows_{key}_total", "counter", f"Flows {key} by the capture process.", fc.get(key))
        o.family("schoolgate_flows_by_proto_total", "counter", "Flows with a name seen, per protocol.",
                 [({"proto": k}, v) for k, v in sorted((fc.get("by_proto") or {}).items())])
    st = f.get("state")
    o.one("schoolgate_capture_running", "gauge", "1 when flow capture/enforcement runs.",
          bool(st and st.get("running")))
    s = rec.get("system") or {}
    o.one("schoolgate_cpu_temperature_celsius", "gauge", "CPU temperature.", s.get("cpu_temp_c"))
    disk = s.get("disk") or {}
    o.one("schoolgate_state_disk_free_bytes", "gauge", "Free bytes on the state directory's file system.",
          disk.get("free"))
    mem = s.get("memory") or {}
    o.one("schoolgate_memory_available_bytes", "gauge", "MemAvailable.", mem.get("available"))
    return ("\n".join(o.lines) + "\n").encode("utf-8")
