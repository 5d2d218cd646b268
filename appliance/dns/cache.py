"""The wire cache: upstream answers kept as bytes, served with their TTLs counted down.

Keys are the lower-cased QNAME wire + QTYPE + QCLASS + the DO bit (RFC 4343 makes names
case-insensitive; DNSSEC-OK clients get the signatures, others do not, so they differ).
Entries stay past their TTL for ``stale_ttl`` so that they can be served stale when every
upstream fails (RFC 8767 §4), and are evicted least-recently-used beyond ``max_entries``.
Time is a parameter: the caller passes ``now`` (monotonic seconds).
"""

from __future__ import annotations

from collections import OrderedDict

from filters.dns_response import Normalised, render_body

__all__ = ["CacheEntry", "WireCache", "STALE_ANSWER_TTL"]

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
