"""What every extractor (extract_*.py) returns: the names found in a payload, and why not.

Extractors are pure functions and small sans-IO session objects fed bytes. They never raise
on bad input: truncated, garbage or hostile payloads come back as an :class:`Extraction`
whose status says what happened and whose ``reason`` says why, so the caller can count it.

Names are lower-cased dotted text as bytes, exactly as found (no IDNA mapping, no
validation): the matcher looks up whatever a client asked for, the way the DNS server
matches the wire QNAME, so a name with odd characters still matches on its suffixes.
"""

from __future__ import annotations

import enum
from typing import NamedTuple, Protocol

__all__ = ["Status", "Extraction", "Session", "MORE", "NONE"]


class Status(enum.IntEnum):
    DONE = 0  # parsed: ``names`` holds what was found (possibly nothing, e.g. no SNI)
    MORE = 1  # keep feeding this flow (a ClientHello still incomplete, a DNS/TCP stream)
    NONE = 2  # not this protocol (or nothing left to do on this flow): stop feeding
    ERROR = 3  # this protocol, but malformed or past a named limit; ``names`` may be partial


class Extraction(NamedTuple):
    """The outcome of one ``feed``: ``names`` are the names this call found (a stream
    session such as DNS over TCP may find more on later calls while its status is MORE).
    A NamedTuple: one is made per packet inspected, and tuples are the cheapest to make."""

    status: Status
    names: tuple[bytes, ...] = ()
    reason: str = ""  # why not DONE, or a note on a partial result
    alpn: tuple[bytes, ...] = ()  # TLS/QUIC: the offered application protocols (RFC 7301)
    ech: bool = False  # TLS/QUIC: an encrypted_client_hello extension was present

    @property
    def finished(self) -> bool:
        """No point feeding this session more bytes."""
        return self.status != Status.MORE


MORE = Extraction(Status.MORE)
NONE = Extraction(Status.NONE, reason="not this protocol")


class Session(Protocol):
    """Per flow and direction: fed payloads in order, answers what it found so far."""

    def feed(self, data: bytes) -> Extraction: ...
