"""A name seen in a flow (a DNS question, a TLS or QUIC SNI, an HTTP Host) -> its verdict.

One object per (matcher, policy mask), used by ``schoolgate inspect`` over a capture file and
by the live capture process for every name it sees. Names arrive as the raw bytes a packet
carried; they are judged the way the DNS server judges a question (on the wire form, so odd
characters in a label still match on the name's suffixes), and a raw UTF-8 name is mapped
the way list entries are mapped (UTS #46). Captures and live traffic repeat names a lot, so
answers are cached — bounded: past ``max_names`` distinct names the cache starts again
(a lookup costs microseconds, a live process sees names for months).
"""

from __future__ import annotations

from typing import NamedTuple

from filters.domain_matcher import DomainMatcher
from filters.errors import BadNameError
from filters.names import normalise_domain

__all__ = ["NameVerdict", "Verdicts", "MAX_CACHED_NAMES"]

# A school's working set of names is a few tens of thousands.
MAX_CACHED_NAMES = 65536
# RFC 1035 §2.3.4: labels of at most 63 octets, names of at most 255 on the wire (253 as text).
_MAX_LABEL = 63
_MAX_NAME = 253


class NameVerdict(NamedTuple):
    verdict: str  # "block" | "allow" | "error" (not a name a matcher can judge)
    categories: list[str]
    rule: str | None  # the listed suffix that decided, if any


_ERROR = NameVerdict("error", [], None)


class Verdicts:
    """Name (bytes) -> :class:`NameVerdict` under ``mask`` (a policy's blocked categories)."""

    def __init__(self, matcher: DomainMatcher, mask: int, max_names: int = MAX_CACHED_NAMES) -> None:
        self.matcher = matcher
        self.mask = matcher.policy_mask(mask)
        self.max_names = max_names
        self._cache: dict[bytes, NameVerdict] = {}

    def __len__(self) -> int:
        return len(self._cache)

    def __call__(self, name: bytes) -> NameVerdict:
        hit = self._cache.get(name)
        if hit is None:
            if len(self._cache) >= self.max_names:
                self._cache.clear()
            hit = self._cache[name] = self._lookup(name)
        return hit

    def _lookup(self, name: bytes) -> NameVerdict:
        text = name.decode("ascii", "backslashreplace")
        if not name.isascii():  # a raw UTF-8 Host or SNI: map it the way lists are mapped
            try:
                text = normalise_domain(name.decode("utf-8"))
                name = text.encode("ascii")
            except (UnicodeDecodeError, BadNameError):
                return _ERROR
        labels = name.split(b".")
        if any(not lab or len(lab) > _MAX_LABEL for lab in labels) or len(name) > _MAX_NAME:
            return _ERROR
        wire = b"".join(bytes([len(lab)]) + lab for lab in labels) + b"\x00"
        self.matcher.match_wire(wire, 0, self.mask)
        v = self.matcher.explain(text, self.matcher.last_row.copy(), int(self.mask))
        return NameVerdict("block" if v.blocked else "allow", list(v.categories), v.rule)
