"""The wire cache: upstream answers kept as bytes, served with their TTLs counted down.

Keys are the lower-cased QNAME wire + QTYPE + QCLASS + a byte for the DO and CD bits
(appliance.dns.pipeline.key_flags; RFC 4343 makes names case-insensitive; DNSSEC-OK clients
get the signatures, others do not; an answer fetched with CD=1 may hold data a validating
upstream would have refused, so it must never be served to a CD=0 client).
Entries stay past their TTL for ``stale_ttl`` so that they can be served stale when every
upstream fails (RFC 8767 §4), and are evicted least-recently-used beyond ``max_entries``.
Time is a parameter: the caller passes ``now`` (monotonic seconds).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

import numpy as np

from filters import _dns_kernels as K
from filters.dns_response import Normalised, render_body

__all__ = ["CacheEntry", "WireCache", "ArrayCache", "STALE_ANSWER_TTL", "ARENA_BYTES_PER_ENTRY"]

# RFC 8767 §4: a stale answer carries a TTL of 30 s so clients come back soon.
STALE_ANSWER_TTL = 30


class CacheEntry:
    __slots__ = ("norm", "stored", "expires", "stale_until", "_age", "_body")

    def __init__(self, norm: Normalised, now: float, ttl: int, stale_ttl: int) -> None:
        self.norm = norm
        self.stored = now
        self.expires = now + ttl
        self.stale_until = self.expires + stale_ttl
        self._age = 0
        self._body = norm.body

    def body(self, now: float) -> bytes:
        """The records with TTLs lowered by the whole seconds spent in the cache; rendered
        once per second of age, not per hit."""
        age = int(now - self.stored)
        if age != self._age:
            self._body = render_body(self.norm, age)
            self._age = age
        return self._body

    def stale_body(self) -> bytes:
        return render_body(self.norm, 0, fixed_ttl=STALE_ANSWER_TTL)


class AnswerCache(Protocol):
    """What the pipeline asks of a cache of upstream answers: :class:`WireCache` (an LRU of
    objects, the Python path) or :class:`ArrayCache` (flat arrays the fast path's kernel
    reads too). Keys are Pipeline cache keys; entries count their TTLs down from ``now``."""

    max_entries: int
    stale_ttl: int

    def __len__(self) -> int: ...

    def get(self, key: bytes, now: float) -> CacheEntry | None:
        """A fresh entry, or None (an expired one stays for get_stale)."""
        ...

    def get_stale(self, key: bytes, now: float) -> CacheEntry | None:
        """An expired entry still within ``stale_ttl`` (RFC 8767 serve-stale), or None."""
        ...

    def put(self, key: bytes, norm: Normalised, now: float) -> None: ...

    def clear(self) -> None: ...


class WireCache:
    def __init__(self, max_entries: int, stale_ttl: int) -> None:
        self.max_entries = max_entries
        self.stale_ttl = stale_ttl
        self._d: OrderedDict[bytes, CacheEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._d)

    def get(self, key: bytes, now: float) -> CacheEntry | None:
        """A fresh entry, or None (an expired one stays for get_stale)."""
        e = self._d.get(key)
        if e is None or now >= e.expires:
            return None
        self._d.move_to_end(key)
        return e

    def get_stale(self, key: bytes, now: float) -> CacheEntry | None:
        e = self._d.get(key)
        if e is None:
            return None
        if now >= e.stale_until:
            del self._d[key]
            return None
        return e

    def put(self, key: bytes, norm: Normalised, now: float) -> None:
        if norm.ttl is None or self.max_entries <= 0:
            return
        self._d[key] = CacheEntry(norm, now, norm.ttl, self.stale_ttl)
        self._d.move_to_end(key)
        while len(self._d) > self.max_entries:
            self._d.popitem(last=False)

    def clear(self) -> None:
        self._d.clear()


# -- the fast path's cache: the same interface over flat arrays the batch kernel reads --------

# Arena bytes per entry: a typical answer with its key (one or two A/AAAA records, or a short
# CNAME chain to a CDN) is 60-300 bytes; 512 lets longer chains in before entries are pushed
# out by space rather than by count.
ARENA_BYTES_PER_ENTRY = 512
# The smallest arena (tiny caches in tests still take a 16 KiB answer: a quarter of it).
MIN_ARENA_BYTES = 64 * 1024


class ArrayCache:
    """WireCache's interface (get, get_stale, put, len, clear) over arrays that the DNS fast
    path's batch kernel reads directly (filters/_dns_kernels.py), so UDP cache hits are
    answered without Python and both paths serve the same entries.

    Layout: entries live in a ring in insertion order, their bytes (key, records, TTL field
    offsets and original TTLs, CNAME targets) in a byte arena written as a ring; an
    open-addressing index (linear probing, keyed SipHash, no tombstones) finds them by key.
    Eviction is therefore first-in first-out — by count (``max_entries``) or by arena space —
    rather than WireCache's LRU; a re-fetched answer (every TTL expiry of a popular name)
    goes to the back of the ring again. Entries expire and go stale exactly as in WireCache.
    """

    def __init__(self, max_entries: int, stale_ttl: int, *, bytes_per_entry: int = ARENA_BYTES_PER_ENTRY,
                 seed: int | None = None) -> None:
        self.stale_ttl = stale_ttl
        self._bytes_per_entry = bytes_per_entry
        rng = np.random.default_rng(seed)
        self._key = rng.integers(0, 2**64, size=2, dtype=np.uint64)
        self._max = -1
        self.arrays: tuple = ()
        self.max_entries = max_entries

    @property
    def max_entries(self) -> int:
        return self._max

    @max_entries.setter
    def max_entries(self, value: int) -> None:
        if value != self._max:
            self._max = value
            self._allocate()

    def _allocate(self) -> None:
        cap = max(self._max, 0)
        slots = 16
        while slots < 2 * cap:
            slots *= 2
        cst = np.zeros(K.CS_WIDTH, dtype=np.int64)
        cst[K.CS_CAP] = cap
        cst[K.CS_ARENA] = max(cap * self._bytes_per_entry, MIN_ARENA_BYTES) if cap else 0
        cst[K.CS_SMASK] = slots - 1
        self.arrays = (cst, self._key, np.zeros(slots, dtype=np.int64), np.zeros(max(cap, 1), dtype=np.uint64),
                       np.zeros((max(cap, 1), K.EI_WIDTH), dtype=np.int64),
                       np.zeros((max(cap, 1), K.EF_WIDTH), dtype=np.float64),
                       np.zeros(max(int(cst[K.CS_ARENA]), 1), dtype=np.uint8))

    def __len__(self) -> int:
        return int(self.arrays[0][K.CS_LIVE])

    def clear(self) -> None:
        self._allocate()

    def _find(self, key: bytes) -> int:
        if self._max <= 0:
            return -1
        return int(K.cache_lookup_key(self.arrays, np.frombuffer(key, dtype=np.uint8)))

    def _entry(self, e: int) -> CacheEntry:
        _cst, _k, _slots, _h, eint, ef, arena = self.arrays
        off, klen, blen = int(eint[e, K.EI_OFF]), int(eint[e, K.EI_KLEN]), int(eint[e, K.EI_BLEN])
        b0 = off + klen
        body = arena[b0:b0 + blen].tobytes()
        t = b0 + blen
        fields = []
        for _ in range(int(eint[e, K.EI_NTTL])):
            raw = arena[t:t + K.TTL_FIELD].tobytes()
            fields.append((int.from_bytes(raw[:2], "big"), int.from_bytes(raw[2:], "big")))
            t += K.TTL_FIELD
        targets = []
        for _ in range(int(eint[e, K.EI_NCN])):
            ln = int(arena[t])
            targets.append(arena[t + 1:t + 1 + ln].tobytes())
            t += 1 + ln
        counts = (int(eint[e, K.EI_AN]), int(eint[e, K.EI_NS]), int(eint[e, K.EI_AR]))
        norm = Normalised(int(eint[e, K.EI_FLAGS]), counts, body, int(eint[e, K.EI_BODYOFF]), fields,
                          int(eint[e, K.EI_TTL]), targets)
        entry = CacheEntry(norm, float(ef[e, K.EF_STORED]), 0, 0)
        entry.expires = float(ef[e, K.EF_EXPIRES])
        entry.stale_until = float(ef[e, K.EF_STALE])
        return entry

    def get(self, key: bytes, now: float) -> CacheEntry | None:
        """A fresh entry, or None (an expired one stays for get_stale)."""
        e = self._find(key)
        if e < 0 or now >= self.arrays[5][e, K.EF_EXPIRES]:
            return None
        return self._entry(e)

    def get_stale(self, key: bytes, now: float) -> CacheEntry | None:
        e = self._find(key)
        if e < 0:
            return None
        if now >= self.arrays[5][e, K.EF_STALE]:
            K.cache_unlink(self.arrays, e)
            return None
        return self._entry(e)

    def put(self, key: bytes, norm: Normalised, now: float) -> None:
        if norm.ttl is None or self._max <= 0:
            return
        targets = b"".join(bytes((len(t),)) + t for t in norm.cname_targets)
        meta = np.array([norm.flags, *norm.counts, norm.body_offset, norm.ttl], dtype=np.int64)
        expires = now + norm.ttl
        K.cache_put(self.arrays, np.frombuffer(key, dtype=np.uint8), np.frombuffer(norm.body, dtype=np.uint8),
                    np.array([o for o, _ in norm.ttl_fields], dtype=np.int64),
                    np.array([t for _, t in norm.ttl_fields], dtype=np.int64),
                    np.frombuffer(targets, dtype=np.uint8), meta, float(now), float(expires),
                    float(expires + self.stale_ttl))
