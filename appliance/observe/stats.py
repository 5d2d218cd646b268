"""Counters shared by every process of the appliance, without locks.

One anonymous ``MAP_SHARED`` mapping is created by the owner process *before* it forks
anything (DNS workers, the capture process, the web process), so every child sees the same
pages. It is cut into one **slot** per writer process; a slot is written by exactly one
process (DNS worker i → slot i, the capture process → :data:`SLOT_CAPTURE`, the owner itself
→ :data:`SLOT_OWNER`), so plain ``+=`` on int64 cells needs no lock, and readers sum the
slots. A worker that is restarted is forked again into the same slot and keeps adding.

Readers may see a write half done; each part is built so that this is harmless:

- counters only grow: a reader sees the old or the new value of each cell (aligned 8-byte
  stores are single instructions on x86-64 and aarch64);
- history buckets carry their epoch minute; a bucket being recycled is keyed -1 while its
  counts are zeroed, so a reader never adds a stale minute to the current one;
- an event record carries a sequence number, set to 0 before the record is written and to
  its number last; a reader copies the ring, reads the sequence numbers again and keeps only
  records whose number was non-zero and unchanged (on weakly ordered CPUs — the Pi's
  aarch64 — the stores from Python are separated by many instructions and a function return,
  not by a barrier: a torn record there is possible in theory and shows as a wrong name in one
  event line, never as a crash);
- top-blocked entries store the name's hash next to the name; a reader drops entries whose
  name does not hash to it.

Everything is bounded: per slot ~200 KiB (counters, 24 h of minute buckets, the last
EVENTS_PER_SLOT block events, TOP_PER_SLOT top-blocked names), pages touched only when
written. Layout (int64 cells of a slot, then bytes):

    named counters (N_NAMED) | per-category blocked (64) | fast-path counters (FAST_WIDTH)
    | upstreams (MAX_UPSTREAMS × UP_WIDTH) | history (HISTORY_MINUTES × 3)
    | top hashes/counts (TOP_PER_SLOT × 2) || top names (S253) || events (EVENT_DTYPE)
"""

from __future__ import annotations

import hashlib
import mmap
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np

__all__ = ["SharedStats", "StatsSlot", "SLOT_CAPTURE", "SLOT_OWNER", "EXTRA_SLOTS", "slots_for",
           "NAMED", "KINDS", "ACTIONS", "HISTORY_MINUTES", "EVENTS_PER_SLOT", "TOP_PER_SLOT",
           "MAX_UPSTREAMS", "LATENCY_BOUNDS_MS", "FAST_WIDTH", "MAX_NAME"]

# Slots after the DNS workers' (negative: counted from the end, so worker i is slot i
# whatever the worker count).
SLOT_CAPTURE = -1  # the capture/enforcement process
SLOT_OWNER = -2  # the owner process: the web page's writes, and counts carried over a restart
EXTRA_SLOTS = 2

# Counters every writer may add to by name (the DNS pipeline's, the query log's, the flows').
NAMED = ("queries", "blocked", "bypass", "cache_hits", "stale_answers", "forwarded", "upstream_errors",
         "cname_blocked", "formerr", "dropped", "rate_limited", "servfail", "internal_errors", "slow_path",
         "send_errors", "tcp_refused",
         "log_written", "log_dropped", "log_errors", "log_last_errno", "log_last_error_ts", "events",
         "flows_seen", "flows_blocked", "flows_reset", "flows_monitor",
         "flows_dns", "flows_tls", "flows_quic", "flows_http",
         # writer bookkeeping (not counters): where the next event goes, what was folded into
         # the minute history so far
         "_event_cursor", "_folded_queries", "_folded_blocked")
_NAMED_WIDTH = 64
# Fields that are not sums (the reader takes the maximum) or not reported at all.
_MAX_FIELDS = ("log_last_errno", "log_last_error_ts")
_PRIVATE = ("_event_cursor", "_folded_queries", "_folded_blocked")
N_CATEGORIES = 64
# Room for the fast path's counters array (filters/_dns_kernels.N_COUNTERS, 80 today): the
# kernel writes into this part of the slot directly.
FAST_WIDTH = 128
# Upstream latency: per upstream index (configured order) queries, errors, the sum of
# latencies in µs, and a histogram with these upper bounds (ms; the last is +inf).
MAX_UPSTREAMS = 8
LATENCY_BOUNDS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, float("inf"))
UP_QUERIES, UP_ERRORS, UP_SUM_US, UP_HIST = 0, 1, 2, 3
# After the histogram: when it last answered / last failed (ms since the epoch) and why it
# last failed (appliance/dns/upstream.py failure_code), so that a supervisor can say which
# upstreams its workers find down (upstream_health).
UP_LAST_OK_MS, UP_LAST_FAIL_MS, UP_LAST_WHY = 15, 16, 17
UP_WIDTH = 18
# A day of minutes; a bucket is (epoch minute, queries, blocked).
HISTORY_MINUTES = 1440
# The last block events of each writer: 256 × 384 B ≈ 96 KiB a slot; the web page shows 50.
EVENTS_PER_SLOT = 256
# Space-saving table of blocked names per writer (Metwally et al. 2005): exact while fewer
# than TOP_PER_SLOT names were blocked, otherwise every count is an over-estimate by at most
# the smallest count in the table; names blocked often stay in it. 8 probes per name.
TOP_PER_SLOT = 256
_TOP_PROBES = 8
MAX_NAME = 253  # RFC 1035 §2.3.4 (255 octets of wire form: 253 characters of text)

KINDS = ("dns", "tls", "quic", "http")
ACTIONS = ("block", "reset", "monitor")
EVENT_DTYPE = np.dtype([("seq", "<i8"), ("ts_ms", "<i8"), ("mask", "<u8"), ("kind", "u1"), ("action", "u1"),
                        ("name", f"S{MAX_NAME}"), ("policy", "S32"), ("client", "S64"), ("_pad", "S9")])
assert EVENT_DTYPE.itemsize == 384

_O_NAMED = 0
_O_CAT = _O_NAMED + _NAMED_WIDTH
_O_FAST = _O_CAT + N_CATEGORIES
_O_UP = _O_FAST + FAST_WIDTH
_O_HIST = _O_UP + MAX_UPSTREAMS * UP_WIDTH
_O_TOP = _O_HIST + HISTORY_MINUTES * 3
N_INTS = _O_TOP + TOP_PER_SLOT * 2
_TOP_NAME_BYTES = TOP_PER_SLOT * MAX_NAME
_EVENT_BYTES = EVENTS_PER_SLOT * EVENT_DTYPE.itemsize
_PAGE = mmap.PAGESIZE
SLOT_BYTES = -(-(N_INTS * 8 + _TOP_NAME_BYTES + _EVENT_BYTES) // _PAGE) * _PAGE
_IDX = {n: _O_NAMED + i for i, n in enumerate(NAMED)}
assert len(NAMED) <= _NAMED_WIDTH


def slots_for(workers: int) -> int:
    """Slots for an appliance with ``workers`` DNS workers (plus capture and owner)."""
    return workers + EXTRA_SLOTS


def _name_hash(name: bytes) -> int:
    """A stable 63-bit hash (the same in every process, unlike hash())."""
    return int.from_bytes(hashlib.blake2b(name, digest_size=8).digest(), "little") >> 1 or 1


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def _rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _no_client(_address: str | None) -> str | None:
    return None


class StatsSlot:
    """One writer's part of the shared stats. Only the process the slot belongs to writes."""

    def __init__(self, buf, offset: int, privacy: Callable[[str | None], str | None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.ints = np.ndarray((N_INTS,), dtype=np.int64, buffer=buf, offset=offset)
        self.named = self.ints[_O_NAMED:_O_NAMED + _NAMED_WIDTH]
        self.categories = self.ints[_O_CAT:_O_CAT + N_CATEGORIES]
        # The fast path's counters array: the jitted kernel adds into shared memory directly.
        self.fast = self.ints[_O_FAST:_O_FAST + FAST_WIDTH]
        self.upstreams = self.ints[_O_UP:_O_HIST].reshape(MAX_UPSTREAMS, UP_WIDTH)
        self.history = self.ints[_O_HIST:_O_TOP].reshape(HISTORY_MINUTES, 3)
        self.top = self.ints[_O_TOP:N_INTS].reshape(TOP_PER_SLOT, 2)  # (hash, count)
        o = offset + N_INTS * 8
        self.top_names = np.ndarray((TOP_PER_SLOT,), dtype=f"S{MAX_NAME}", buffer=buf, offset=o)
        self.events = np.ndarray((EVENTS_PER_SLOT,), dtype=EVENT_DTYPE, buffer=buf, offset=o + _TOP_NAME_BYTES)
        # How a client address is written into an event (the query log's rule: hash, none, ip).
        self.privacy = privacy or _no_client
        self.clock = clock

    @classmethod
    def private(cls) -> StatsSlot:
        """A slot nobody else sees (a pipeline built without shared stats: tests, tools)."""
        return cls(np.zeros(SLOT_BYTES, dtype=np.uint8), 0)

    # -- counters ----------------------------------------------------------------------------
    def add(self, name: str, n: int = 1) -> None:
        self.ints[_IDX[name]] += n

    def get(self, name: str) -> int:
        return int(self.ints[_IDX[name]])

    def set(self, name: str, value: int) -> None:
        self.ints[_IDX[name]] = value

    def count_blocked(self, mask: int) -> None:
        """One blocked query whose matching categories are ``mask`` (one count per bit, as
        the fast path counts)."""
        self.ints[_IDX["blocked"]] += 1
        mask &= 0xFFFFFFFFFFFFFFFF
        while mask:
            low = mask & -mask
            self.categories[low.bit_length() - 1] += 1
            mask ^= low

    def upstream_result(self, index: int, seconds: float | None, why: int = 0,
                        now: float | None = None) -> None:
        """One query to upstream ``index`` (configured order): its latency, or None on
        failure (``why``: a failure code, appliance/dns/upstream.py)."""
        row = self.upstreams[min(max(index, 0), MAX_UPSTREAMS - 1)]
        row[UP_QUERIES] += 1
        stamp = int((time.time() if now is None else now) * 1000)
        if seconds is None:
            row[UP_ERRORS] += 1
            row[UP_LAST_FAIL_MS] = stamp
            row[UP_LAST_WHY] = why
            return
        row[UP_LAST_OK_MS] = stamp
        ms = seconds * 1000.0
        row[UP_SUM_US] += int(seconds * 1e6)
        for b, bound in enumerate(LATENCY_BOUNDS_MS):
            if ms <= bound:
                row[UP_HIST + b] += 1
                break

    def add_flow(self, proto: str, action: str | None) -> None:
        """One flow seen by the capture process (``proto`` one of KINDS; ``action`` None when
        it was let through)."""
        self.ints[_IDX["flows_seen"]] += 1
        if proto in KINDS:
            self.ints[_IDX["flows_" + proto]] += 1
        if action == "block":
            self.ints[_IDX["flows_blocked"]] += 1
        elif action == "reset":
            self.ints[_IDX["flows_blocked"]] += 1
            self.ints[_IDX["flows_reset"]] += 1
        elif action == "monitor":
            self.ints[_IDX["flows_monitor"]] += 1

    # -- minute history ------------------------------------------------------------------------
    def roll(self, queries_total: int, blocked_total: int, now: float | None = None) -> None:
        """Add what this slot counted since the last call to the current minute's bucket
        (called every second or so by the slot's writer: the fast path counts in the kernel,
        so the history is folded from the totals rather than per query)."""
        minute = int((self.clock() if now is None else now) // 60)
        dq = queries_total - self.get("_folded_queries")
        db = blocked_total - self.get("_folded_blocked")
        if dq <= 0 and db <= 0:
            return
        b = self.history[minute % HISTORY_MINUTES]
        if b[0] != minute:
            b[0] = -1  # readers skip the bucket while it is recycled
            b[1] = 0
            b[2] = 0
            b[0] = minute
        b[1] += max(dq, 0)
        b[2] += max(db, 0)
        self.set("_folded_queries", queries_total)
        self.set("_folded_blocked", blocked_total)

    def seed_history(self, rows: list[dict]) -> None:
        """Minute buckets carried over from the previous run (counters.json)."""
        for r in rows:
            try:
                minute, q, bl = int(r["t"]) // 60, int(r["queries"]), int(r["blocked"])
            except (KeyError, TypeError, ValueError):
                continue
            b = self.history[minute % HISTORY_MINUTES]
            if b[0] != minute:
                b[0], b[1], b[2] = -1, 0, 0
                b[0] = minute
            b[1] += q
            b[2] += bl

    # -- events and top blocked ------------------------------------------------------------
    def record_event(self, kind: str, name: str, category_mask: int, policy: str, client: str | None,
                     action: str) -> None:
        """Append a block event to this slot's ring. ``client`` is the raw address: it is
        written as the privacy rule says (``self.privacy``), never as given."""
        raw = name.encode("utf-8", "replace")[:MAX_NAME]
        token = self.privacy(client)
        cursor = self.get("_event_cursor")
        ev = self.events
        i = cursor % EVENTS_PER_SLOT
        ev["seq"][i] = 0
        ev[i] = (0, int(self.clock() * 1000), category_mask & 0xFFFFFFFFFFFFFFFF,
                 KINDS.index(kind) if kind in KINDS else 0, ACTIONS.index(action) if action in ACTIONS else 0,
                 raw, policy.encode("utf-8", "replace")[:32], (token or "").encode()[:64], b"")
        ev["seq"][i] = cursor + 1
        self.set("_event_cursor", cursor + 1)
        self.add("events")
        if action in ("block", "reset"):
            self.count_name(raw)

    def count_name(self, name: bytes) -> None:
        """Space-saving update of the top-blocked table."""
        h = _name_hash(name)
        top = self.top
        start = h % TOP_PER_SLOT
        victim, least = -1, -1
        for k in range(_TOP_PROBES):
            j = (start + k) % TOP_PER_SLOT
            if top[j, 0] == h:
                top[j, 1] += 1
                return
            c = top[j, 1]
            if c == 0:
                victim, least = j, 0
                break
            if least < 0 or c < least:
                victim, least = j, c
        top[victim, 0] = 0  # readers skip it while it is rewritten
        self.top_names[victim] = name
        top[victim, 1] = least + 1
        top[victim, 0] = h


class SharedStats:
    """The mapping and its slots; see the module doc."""

    def __init__(self, buf, slots: int, privacy: Callable[[str | None], str | None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._buf = buf
        self.n = slots
        self._privacy = privacy or _no_client
        self.clock = clock
        self._slots = [StatsSlot(buf, i * SLOT_BYTES, self._privacy, clock) for i in range(slots)]
        # Category mask -> names for events() (the serving bundle's catalog; set by its owner).
        self.category_names: Callable[[int], list[str]] | None = None

    @classmethod
    def create(cls, slots: int, privacy: Callable[[str | None], str | None] | None = None,
               clock: Callable[[], float] = time.time) -> SharedStats:
        """Map the shared pages (call before fork). ``slots``: writers, see slots_for()."""
        if slots < 1:
            raise ValueError("shared stats need at least one slot")
        buf = mmap.mmap(-1, slots * SLOT_BYTES, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        return cls(buf, slots, privacy, clock)

    @property
    def privacy(self) -> Callable[[str | None], str | None]:
        return self._privacy

    @privacy.setter
    def privacy(self, rule: Callable[[str | None], str | None]) -> None:
        """The client rule for events (set again after a config reload, in each process)."""
        self._privacy = rule
        for s in self._slots:
            s.privacy = rule

    def slot(self, i: int) -> StatsSlot:
        return self._slots[i]

    # -- readers -------------------------------------------------------------------------------
    def _sum(self) -> np.ndarray:
        rows = np.stack([s.ints[:_O_HIST] for s in self._slots])
        total = rows.sum(axis=0)
        for f in _MAX_FIELDS:
            total[_IDX[f]] = rows[:, _IDX[f]].max()
        return total

    def upstream_health(self) -> dict[int, tuple[int, int, int]]:
        """Per upstream index ever tried: (last answered, last failed (ms since the epoch,
        0: never), the failure code of the latest failure) over every slot."""
        out: dict[int, tuple[int, int, int]] = {}
        for i in range(self.n):
            up = self.slot(i).upstreams
            for k in range(MAX_UPSTREAMS):
                r = up[k]
                if not r[UP_QUERIES]:
                    continue
                ok, fail, why = out.get(k, (0, 0, 0))
                if r[UP_LAST_FAIL_MS] > fail:
                    fail, why = int(r[UP_LAST_FAIL_MS]), int(r[UP_LAST_WHY])
                out[k] = (max(ok, int(r[UP_LAST_OK_MS])), fail, why)
        return out

    def totals(self, category_names: Callable[[int], list[str]]) -> dict:
        """Sums over every slot."""
        # numba's import (~0.5 s) only where counters are summed: `schoolgate status` and the
        # web page read this module without ever needing the kernels otherwise.
        from filters.dns_fast import counter_values

        t = self._sum()
        out: dict[str, Any] = {n: int(t[_IDX[n]]) for n in NAMED if n not in _PRIVATE and not n.startswith("flows_")}
        named, bits = counter_values(t[_O_FAST:_O_FAST + FAST_WIDTH])
        for k, v in named.items():
            out[k] = out.get(k, 0) + v
        per: dict[str, int] = {}
        cats = t[_O_CAT:_O_CAT + N_CATEGORIES]
        for b in range(N_CATEGORIES):
            n = int(cats[b]) + bits.get(b, 0)
            if n:
                for name in category_names(1 << b):
                    per[name] = per.get(name, 0) + n
        out["blocked_by_category"] = per
        out["flows"] = {"seen": int(t[_IDX["flows_seen"]]), "blocked": int(t[_IDX["flows_blocked"]]),
                        "reset": int(t[_IDX["flows_reset"]]), "monitor": int(t[_IDX["flows_monitor"]]),
                        "by_proto": {k: int(t[_IDX["flows_" + k]]) for k in KINDS}}
        up = t[_O_UP:_O_HIST].reshape(MAX_UPSTREAMS, UP_WIDTH)
        lat = {}
        for i in range(MAX_UPSTREAMS):
            r = up[i]
            if not r[UP_QUERIES]:
                continue
            ok = int(r[UP_QUERIES] - r[UP_ERRORS])
            lat[str(i)] = {"queries": int(r[UP_QUERIES]), "errors": int(r[UP_ERRORS]),
                           "avg_ms": round(r[UP_SUM_US] / ok / 1000, 3) if ok else None,
                           "histogram_ms": {("inf" if b == float("inf") else str(b)): int(r[UP_HIST + k])
                                            for k, b in enumerate(LATENCY_BOUNDS_MS)}}
        out["upstream_latency_ms"] = lat
        out["log"] = {"written": out.pop("log_written"), "dropped": out.pop("log_dropped"),
                      "errors": out.pop("log_errors"), "last_errno": out.pop("log_last_errno"),
                      "last_error_ts": out.pop("log_last_error_ts")}
        return out

    def history(self, now: float | None = None) -> list[dict]:
        """Per minute for the last 24 h, oldest first; minutes with no query left out."""
        now_min = int((self.clock() if now is None else now) // 60)
        acc: dict[int, list[int]] = {}
        for s in self._slots:
            h = s.history.copy()
            for minute, q, b in h[(h[:, 0] > now_min - HISTORY_MINUTES) & (h[:, 0] <= now_min)]:
                a = acc.setdefault(int(minute), [0, 0])
                a[0] += int(q)
                a[1] += int(b)
        return [{"t": m * 60, "queries": v[0], "blocked": v[1]} for m, v in sorted(acc.items())]

    def events(self, limit: int = 50) -> list[dict]:
        """The newest block events of every writer, newest first (``categories`` named by
        ``self.category_names``, and the raw ``mask``)."""
        found = []
        for s in self._slots:
            ev = s.events.copy()
            again = s.events["seq"].copy()
            ok = (ev["seq"] > 0) & (ev["seq"] == again)
            found.extend(ev[ok].tolist())
        found.sort(key=lambda r: (r[1], r[0]), reverse=True)
        out = []
        for _seq, ts, mask, kind, action, name, policy, client, _ in found[:max(limit, 0)]:
            names = self.category_names
            out.append({"ts": _rfc3339(ts), "kind": KINDS[kind] if kind < len(KINDS) else "dns",
                        "name": _text(name), "mask": int(mask),
                        "categories": names(int(mask)) if names is not None else [], "policy": _text(policy),
                        "client": _text(client) or None,
                        "action": ACTIONS[action] if action < len(ACTIONS) else "block"})
        return out

    def events_named(self, category_names: Callable[[int], list[str]], limit: int = 50) -> list[dict]:
        """events() with the category mask turned into names."""
        out = self.events(limit)
        for e in out:
            e["categories"] = category_names(e["mask"])
        return out

    def top_blocked(self, limit: int = 20) -> list[tuple[str, int]]:
        """The most blocked names (space-saving counts, summed over writers), most first."""
        acc: dict[bytes, int] = {}
        for s in self._slots:
            top = s.top.copy()
            names = s.top_names.copy()
            for j in np.flatnonzero((top[:, 0] != 0) & (top[:, 1] > 0)):
                name = bytes(names[j])
                if _name_hash(name) == int(top[j, 0]):
                    acc[name] = acc.get(name, 0) + int(top[j, 1])
        best = sorted(acc.items(), key=lambda kv: (-kv[1], kv[0]))[:max(limit, 0)]
        return [(_text(n), c) for n, c in best]

    def category_bits(self) -> dict[int, int]:
        """Blocked counts per category bit (both paths), for counters.json."""
        from filters.dns_fast import counter_values

        t = self._sum()
        _named, bits = counter_values(t[_O_FAST:_O_FAST + FAST_WIDTH])
        cats = t[_O_CAT:_O_CAT + N_CATEGORIES]
        return {b: int(cats[b]) + bits.get(b, 0) for b in range(N_CATEGORIES) if int(cats[b]) + bits.get(b, 0)}

    def seed(self, totals: dict, category_bits: dict | None = None) -> None:
        """Counts carried over from the previous run (counters.json) into SLOT_OWNER's row,
        so totals survive a restart of the appliance (by name: a layout change loses nothing
        but the counters it no longer has)."""
        s = self.slot(SLOT_OWNER)
        for n in NAMED:
            v = totals.get(n)
            if n not in _PRIVATE and n not in _MAX_FIELDS and isinstance(v, int) and v > 0:
                s.add(n, v)
        flows = totals.get("flows") or {}
        for k in ("seen", "blocked", "reset", "monitor"):
            if isinstance(flows.get(k), int):
                s.add("flows_" + k, flows[k])
        for k, v in (flows.get("by_proto") or {}).items():
            if k in KINDS and isinstance(v, int):
                s.add("flows_" + k, v)
        for k, v in {"written": "log_written", "dropped": "log_dropped", "errors": "log_errors"}.items():
            logged = (totals.get("log") or {}).get(k)
            if isinstance(logged, int):
                s.add(v, logged)
        for b, n in (category_bits or {}).items():
            if str(b).isdigit() and int(b) < N_CATEGORIES and isinstance(n, int) and n > 0:
                s.categories[int(b)] += n
