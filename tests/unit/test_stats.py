"""appliance/observe/stats.py: shared counters across forked writers, history, events, top blocked."""

from __future__ import annotations

import os

import numpy as np
import pytest

from appliance.dns.pipeline import Counters
from appliance.observe.stats import (
    EVENTS_PER_SLOT,
    HISTORY_MINUTES,
    SLOT_CAPTURE,
    SLOT_OWNER,
    TOP_PER_SLOT,
    SharedStats,
    StatsSlot,
    slots_for,
)
from filters import _dns_kernels as K


def names(mask: int) -> list[str]:
    return [f"c{b}" for b in range(64) if mask >> b & 1]


def test_slots_sum_across_forked_writers() -> None:
    stats = SharedStats.create(slots_for(2))
    stats.slot(0).add("queries", 5)
    pid = os.fork()
    if pid == 0:  # a worker: writes its own slot, the parent must see it
        try:
            s = stats.slot(1)
            s.add("queries", 7)
            s.count_blocked(0b101)
            c = Counters(s)
            c.fast[K.C_QUERIES] += 11  # what the jitted kernel does to its counters array
            c.fast[K.C_CATEGORY + 2] += 1
            c.fast[K.C_BLOCKED] += 1
            stats.slot(SLOT_CAPTURE).add_flow("tls", "reset")
        finally:
            os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    t = stats.totals(names)
    assert t["queries"] == 5 + 7 + 11
    assert t["blocked"] == 2
    assert t["blocked_by_category"] == {"c0": 1, "c2": 2}
    assert t["flows"]["seen"] == 1 and t["flows"]["reset"] == 1 and t["flows"]["blocked"] == 1
    assert t["flows"]["by_proto"]["tls"] == 1


def test_counters_fast_view_is_the_shared_row() -> None:
    stats = SharedStats.create(3)
    c = Counters(stats.slot(0))
    assert c.fast.dtype == np.int64 and c.fast.flags.c_contiguous and c.fast.flags.writeable
    assert c.fast.shape == (K.N_COUNTERS,)
    c.fast[K.C_CACHE_HITS] += 3
    c.queries += 2
    assert stats.totals(names)["cache_hits"] == 3 and stats.totals(names)["queries"] == 2
    assert c.snapshot(names)["cache_hits"] == 3 and c.queries == 2


def test_upstream_latency_histogram() -> None:
    stats = SharedStats.create(3)
    s = stats.slot(0)
    s.upstream_result(0, 0.0015)
    s.upstream_result(0, 0.030)
    s.upstream_result(0, None)
    s.upstream_result(1, 3.0)
    lat = stats.totals(names)["upstream_latency_ms"]
    assert lat["0"]["queries"] == 3 and lat["0"]["errors"] == 1
    assert lat["0"]["histogram_ms"]["2"] == 1 and lat["0"]["histogram_ms"]["50"] == 1
    assert lat["0"]["avg_ms"] == pytest.approx(15.75, abs=0.01)
    assert lat["1"]["histogram_ms"]["inf"] == 1


def test_upstream_health_over_slots_says_which_upstreams_are_down() -> None:
    """What a supervisor reports of upstreams its workers hold: the latest try decides."""
    import errno

    from appliance.config.values import UpstreamAddress
    from appliance.dns.upstream import WHY_TIMEOUT, health_rows

    stats = SharedStats.create(3)
    a, b = stats.slot(0), stats.slot(1)
    a.upstream_result(0, 0.002, now=100.0)
    b.upstream_result(0, None, WHY_TIMEOUT, now=90.0)  # an older failure: up
    b.upstream_result(1, 0.002, now=100.0)
    a.upstream_result(1, None, errno.ECONNREFUSED, now=110.0)  # the latest try failed: down
    b.upstream_result(2, None, WHY_TIMEOUT, now=120.0)
    health = stats.upstream_health()
    assert health[1] == (100_000, 110_000, errno.ECONNREFUSED)
    addrs = [UpstreamAddress("127.0.0.1", p) for p in (53, 54, 55, 56)]
    rows = health_rows(addrs, health, 1.5)
    assert [(r["address"], r["up"], r["last_error"]) for r in rows] == [
        ("127.0.0.1:53", True, None), ("127.0.0.1:54", False, "connection refused"),
        ("127.0.0.1:55", False, "no answer within 1.5 s"), ("127.0.0.1:56", True, None)]


def test_history_minutes_and_recycled_buckets() -> None:
    stats = SharedStats.create(3)
    a, b = stats.slot(0), stats.slot(1)
    t0 = 1_800_000_000.0 - 1_800_000_000.0 % 60
    a.roll(10, 2, t0)
    a.roll(15, 2, t0 + 30)  # same minute: adds
    b.roll(4, 4, t0 + 10)
    a.roll(20, 3, t0 + 61)
    h = stats.history(t0 + 61)
    assert h == [{"t": t0, "queries": 19, "blocked": 6}, {"t": t0 + 60, "queries": 5, "blocked": 1}]
    # A day later the same bucket is reused: the old minute must not leak into the new one.
    a.roll(21, 3, t0 + HISTORY_MINUTES * 60)
    h = stats.history(t0 + HISTORY_MINUTES * 60)
    assert {"t": t0 + HISTORY_MINUTES * 60, "queries": 1, "blocked": 0} in h
    assert all(r["t"] > t0 for r in h)  # older than 24 h: gone (b's old bucket included)


def test_events_ring_newest_first_privacy_and_torn_records() -> None:
    stats = SharedStats.create(3, clock=lambda: 1_800_000_000.0)
    stats.privacy = lambda ip: None if ip is None else "h-" + ip.replace(".", "")[-3:]
    s = stats.slot(0)
    now = [1_800_000_000.0]
    s.clock = lambda: now[0]
    for i in range(EVENTS_PER_SLOT + 10):
        now[0] += 1
        s.record_event("dns", f"n{i}.casino.test", 0b10, "students", "10.0.0.7", "block")
    ev = stats.events(limit=5)
    assert [e["name"] for e in ev] == [f"n{i}.casino.test" for i in range(EVENTS_PER_SLOT + 9, EVENTS_PER_SLOT + 4, -1)]
    assert ev[0]["client"] == "h-007" and ev[0]["policy"] == "students" and ev[0]["action"] == "block"
    assert ev[0]["ts"].endswith("Z") and ev[0]["kind"] == "dns"
    assert len(stats.events(limit=1000)) == EVENTS_PER_SLOT  # bounded
    named = stats.events_named(names, limit=1)
    assert named[0]["categories"] == ["c1"]
    assert ev[0]["categories"] == []  # no catalog set yet
    stats.category_names = names
    assert stats.events(limit=1)[0]["categories"] == ["c1"]
    # A record being rewritten (sequence 0) is skipped, not shown half-written.
    newest = (EVENTS_PER_SLOT + 9) % EVENTS_PER_SLOT
    s.events["seq"][newest] = 0
    assert stats.events(limit=1)[0]["name"] == f"n{EVENTS_PER_SLOT + 8}.casino.test"
    assert "10.0.0.7" not in repr(stats.events(limit=1000))


def test_top_blocked_exact_then_bounded() -> None:
    stats = SharedStats.create(3)
    a, b = stats.slot(0), stats.slot(1)
    for _ in range(5):
        a.count_name(b"casino.test")
    for _ in range(3):
        b.count_name(b"casino.test")
        b.count_name(b"poker.test")
    assert stats.top_blocked(2) == [("casino.test", 8), ("poker.test", 3)]
    # Many more distinct names than the table holds: memory stays bounded, a heavy hitter
    # stays in it with a count never below its true one (space-saving over-estimates).
    for i in range(TOP_PER_SLOT * 8):
        a.count_name(f"noise{i}.test".encode())
        if i % 4 == 0:
            a.count_name(b"casino.test")
    top = dict(stats.top_blocked(TOP_PER_SLOT * 3))
    assert len(top) <= 2 * TOP_PER_SLOT + 1
    assert top["casino.test"] >= 8 + TOP_PER_SLOT * 2
    assert stats.top_blocked(1)[0][0] == "casino.test"
    # A torn entry (hash not matching its name) is dropped by the reader.
    j = int(np.flatnonzero(a.top[:, 1] > 0)[0])
    a.top_names[j] = b"other.test"
    assert "other.test" not in dict(stats.top_blocked(10_000))


def test_seed_carries_totals_over_a_restart() -> None:
    old = SharedStats.create(3)
    old.slot(0).add("queries", 40)
    old.slot(0).count_blocked(0b1)
    old.slot(0).add("log_written", 3)
    old.slot(SLOT_CAPTURE).add_flow("quic", "block")
    t = old.totals(names)
    new = SharedStats.create(4)
    new.seed(t, old.category_bits())
    t2 = new.totals(names)
    assert t2["queries"] == 40 and t2["blocked"] == 1 and t2["blocked_by_category"] == {"c0": 1}
    assert t2["log"]["written"] == 3 and t2["flows"]["by_proto"]["quic"] == 1
    assert new.slot(SLOT_OWNER).get("queries") == 40


def test_private_slot_and_fast_width_guard() -> None:
    c = Counters()
    c.blocked += 1
    assert c.blocked == 1
    assert isinstance(c.slot, StatsSlot)
    with pytest.raises(ValueError):
        SharedStats.create(0)
