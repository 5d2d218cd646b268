"""``GET /metrics``: the status record in the Prometheus text exposition format (0.0.4).

Design: the values already exist, summed over every process's slot of the shared counters
(appliance/observe/stats.py) and gathered with the rest of the status into one record per
request (web/data.py ``collect``). So nothing here counts anything: :class:`StatusCollector`
is a prometheus_client *custom collector* whose ``collect()`` turns one record into metric
families (``CounterMetricFamily``, ``GaugeMetricFamily``, ``HistogramMetricFamily``), and
:func:`render_metrics` registers it in a private ``CollectorRegistry`` (never the process-wide
default one, whose process and platform collectors would describe the web process rather
than the appliance) and writes it with ``generate_latest``. prometheus_client thus owns the
format: the ``_total`` suffix and ``# TYPE`` lines of counters, the ``_bucket``/``_sum``/
``_count`` series of histograms, number formatting, and the escaping of label values
(backslash, double quote, newline; category names come from bundles and upstream names from
configs). The tests check the output with ``promtool check metrics``, which also lints it.

Conventions: totals that only grow are counters (``…_total``); levels that go up and down
are gauges (flags are 0/1 gauges, times are ``…_timestamp_seconds``). Durations are in
seconds: the per-upstream latency histogram the DNS workers keep (milliseconds bounds,
``LATENCY_BOUNDS_MS``) is exported as ``schoolgate_dns_upstream_latency_seconds`` with its
bounds converted and its buckets made cumulative; its ``_sum`` is the exact total the workers
add up (``sum_us`` in the record), so a mean latency is ``rate(_sum) / rate(_count)`` rather
than a rounded average gauge. Upstreams are labelled with their configured text
(``9.9.9.9:53``, ``tls://1.1.1.1:853#name``) by position in ``dns.upstreams`` (the counters
are kept by that position: after a reload that reorders the list, the older counts carry
the new names). A family whose value is unknown (no bundle, no sensor, counters unavailable)
is left out rather than written as 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from appliance.web.data import parse_time

__all__ = ["CONTENT_TYPE", "StatusCollector", "metrics_registry", "render_metrics"]

# generate_latest writes the 0.0.4 text format (newer prometheus_client's CONTENT_TYPE_LATEST
# names a later version, so the type is spelled out here).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_DNS_COUNTERS = (("queries", "DNS queries received."),
                 ("blocked", "DNS queries blocked."),
                 ("cache_hits", "DNS queries answered from the cache."),
                 ("forwarded", "DNS queries forwarded to an upstream."),
                 ("rate_limited", "DNS queries refused by the per-client rate limit."),
                 ("servfail", "DNS queries answered SERVFAIL."),
                 ("upstream_errors", "Forwarded DNS queries that got no usable upstream answer."))
_FLOW_COUNTERS = (("seen", "Flows seen by the capture process."),
                  ("blocked", "Flows blocked (dropped or reset) by the capture process."),
                  ("reset", "Flows reset by the capture process."),
                  ("monitor", "Flows that matched a block rule in monitor mode (let through)."))


def _num(v: object) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    return None


def _ts(text: object) -> float | None:
    t = parse_time(text)
    return t.timestamp() if t else None


def _gauge(name: str, help_text: str, value: object) -> Iterator[Metric]:
    v = _num(value)
    if v is not None:
        yield GaugeMetricFamily(name, help_text, value=v)


def _counter(name: str, help_text: str, value: object) -> Iterator[Metric]:
    v = _num(value)
    if v is not None:
        yield CounterMetricFamily(name, help_text, value=v)


def _labelled(kind: type, name: str, help_text: str, label: str, values: object) -> Iterator[Metric]:
    good = [(str(k), _num(v)) for k, v in sorted((values or {}).items())] if isinstance(values, dict) else []
    good = [(k, v) for k, v in good if v is not None]
    if good:
        fam = kind(name, help_text, labels=[label])
        for k, v in good:
            fam.add_metric([k], v)
        yield fam


def _upstream_names(d: dict) -> dict[str, str]:
    """Counter index (as the record keys it) -> the upstream's configured text, else the index;
    kept unique so that two series never share labels."""
    ups = d.get("upstreams") or []
    out: dict[str, str] = {}
    for k in (d.get("upstream_latency_ms") or {}):
        name = str(ups[int(k)]) if str(k).isdigit() and int(k) < len(ups) else str(k)
        out[str(k)] = name if name not in out.values() else f"{name} #{k}"
    return out


def _buckets(hist: object) -> list[tuple[str, float]] | None:
    """The record's per-bucket counts ({upper bound in ms: count}, "inf" last) as cumulative
    (le in seconds, count) pairs ending with +Inf; None when the shape is not that."""
    if not isinstance(hist, dict) or not hist:
        return None
    try:
        rows = sorted((float(k), float(v)) for k, v in hist.items())
    except (TypeError, ValueError):
        return None
    if rows[-1][0] != float("inf"):
        rows.append((float("inf"), 0.0))
    out, acc = [], 0.0
    for bound_ms, n in rows:
        acc += n
        out.append((floatToGoString(bound_ms / 1000.0), acc))
    return out


def _upstreams(d: dict) -> Iterator[Metric]:
    lat = d.get("upstream_latency_ms") or {}
    if not isinstance(lat, dict):
        return
    names = _upstream_names(d)
    tries = CounterMetricFamily("schoolgate_dns_upstream_requests", "Queries sent to each upstream (every try).",
                                labels=["upstream"])
    fails = CounterMetricFamily("schoolgate_dns_upstream_request_failures",
                                "Tries at each upstream that got no valid answer (timeout, error).",
                                labels=["upstream"])
    hist = HistogramMetricFamily("schoolgate_dns_upstream_latency_seconds",
                                 "Time each upstream took to answer (answered tries only).", labels=["upstream"])
    for k, row in sorted(lat.items()):
        if not isinstance(row, dict):
            continue
        label = [names[str(k)]]
        if (n := _num(row.get("queries"))) is not None:
            tries.add_metric(label, n)
        if (n := _num(row.get("errors"))) is not None:
            fails.add_metric(label, n)
        buckets = _buckets(row.get("histogram_ms"))
        if buckets is None:
            continue
        if (sum_us := _num(row.get("sum_us"))) is not None:
            total = sum_us / 1e6
        elif (avg_ms := _num(row.get("avg_ms"))) is not None:  # a record without the raw sum
            total = avg_ms * buckets[-1][1] / 1000.0
        else:
            total = 0.0
        hist.add_metric(label, buckets, total)
    yield from (f for f in (tries, fails, hist) if f.samples)


class StatusCollector(Collector):
    """A custom collector over the status record that ``record()`` returns on each collect."""

    def __init__(self, record: Callable[[], dict]) -> None:
        self._record = record

    def collect(self) -> Iterator[Metric]:
        rec = self._record() or {}
        info = GaugeMetricFamily("schoolgate_info", "Software version (value always 1).", labels=["version"])
        info.add_metric([str(rec.get("version"))], 1)
        yield info
        a = rec.get("appliance") or {}
        yield from _gauge("schoolgate_running", "1 when the appliance's owner process is running.",
                          bool(a.get("running")))
        yield from _gauge("schoolgate_uptime_seconds", "Seconds since the appliance started.", a.get("uptime_s"))
        d = rec.get("dns") or {}
        if d.get("counters_available"):
            for key, help_text in _DNS_COUNTERS:
                yield from _counter(f"schoolgate_dns_{key}", help_text, d.get(key))
            yield from _labelled(CounterMetricFamily, "schoolgate_dns_blocked_by_category",
                                 "DNS queries blocked, per category.", "category", d.get("blocked_by_category"))
            yield from _upstreams(d)
            yield from _gauge("schoolgate_dns_cache_hit_ratio", "Cache hits / queries since start.",
                              d.get("cache_hit_ratio"))
        b = rec.get("bundle") or {}
        yield from _gauge("schoolgate_bundle_version", "Version of the bundle served.", b.get("version"))
        yield from _gauge("schoolgate_bundle_age_seconds", "Seconds since the served bundle was built.",
                          b.get("age_s"))
        yield from _gauge("schoolgate_bundle_expiry_seconds",
                          "Seconds until the served bundle expires (negative: expired).", b.get("expires_in_s"))
        yield from _gauge("schoolgate_bundle_demo", "1 when the demo bundle is served.", bool(b.get("demo")))
        yield from _gauge("schoolgate_bundle_domains", "Domain entries in the served bundle.", b.get("domains"))
        yield from _labelled(GaugeMetricFamily, "schoolgate_bundle_category_entries",
                             "Entries per category in the served bundle.", "category", b.get("categories"))
        u = rec.get("updates") or {}
        if u.get("configured"):
            yield from _gauge("schoolgate_update_last_check_timestamp_seconds",
                              "Time of the last update check (Unix seconds).", _ts(u.get("last_check")))
            yield from _gauge("schoolgate_update_last_success_timestamp_seconds",
                              "Time of the last successful update check (Unix seconds).", _ts(u.get("last_success")))
            yield from _gauge("schoolgate_update_last_check_failed", "1 when the last update check failed.",
                              bool(u.get("last_error")))
        f = rec.get("flows") or {}
        fc = f.get("counters") or {}
        if d.get("counters_available"):
            for key, help_text in _FLOW_COUNTERS:
                yield from _counter(f"schoolgate_flows_{key}", help_text, fc.get(key))
            yield from _labelled(CounterMetricFamily, "schoolgate_flows_by_proto",
                                 "Flows with a name seen, per protocol.", "proto", fc.get("by_proto"))
        st = f.get("state")
        yield from _gauge("schoolgate_capture_running", "1 when flow capture/enforcement runs.",
                          bool(st and st.get("running")))
        s = rec.get("system") or {}
        yield from _gauge("schoolgate_cpu_temperature_celsius", "CPU temperature.", s.get("cpu_temp_c"))
        disk = s.get("disk") or {}
        yield from _gauge("schoolgate_state_disk_free_bytes", "Free bytes on the state directory's file system.",
                          disk.get("free"))
        mem = s.get("memory") or {}
        yield from _gauge("schoolgate_memory_available_bytes", "MemAvailable of /proc/meminfo.",
                          mem.get("available"))


def metrics_registry(record: Callable[[], dict]) -> CollectorRegistry:
    """A private registry holding only a StatusCollector over ``record``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(record))
    return registry


def render_metrics(rec: dict) -> bytes:
    """The body of ``GET /metrics`` for one status record."""
    return generate_latest(metrics_registry(lambda: rec))
