"""Put one direction of a TCP connection's payload back in sequence order (sans-IO).

Captures hold retransmissions, overlapping segments and segments out of order; a ClientHello
split over two segments may well arrive second half first. :class:`TcpStream` is pushed
segments as captured and returns the bytes that have become contiguous, each byte once.

Overlaps keep the first copy (Suricata's default "first" policy for most host OSes is
subtler; for a name the client sent, any copy the server could accept gives the same name,
and an evasion that relies on the policy difference is out of scope here). Sequence numbers
compare modulo 2^32 (RFC 9293 §3.4). Out-of-order data waits in a bounded buffer; past
its bounds the oldest hole is given up on and the stream jumps ahead (``gaps`` counts it).
"""

from __future__ import annotations

__all__ = ["MAX_PENDING_SEGMENTS", "MAX_PENDING_BYTES", "MAX_WINDOW", "TcpStream"]

# Segments waiting for a hole before it: a first flight is 1-12 segments even with
# post-quantum key shares and small MSS; a hole that 32 later segments cannot fill is lost.
MAX_PENDING_SEGMENTS = 32
# Octets waiting in total: a first flight's cap (extract_tls.MAX_FIRST_FLIGHT) and change.
MAX_PENDING_BYTES = 32 * 1024
# A segment further ahead than this is not part of what we reassemble (a window's worth
# beyond the first flight; RFC 7323 windows can be larger, but we only read the start).
MAX_WINDOW = 1 << 20

_MOD = 1 << 32


def _diff(a: int, b: int) -> int:
    """a - b as a signed 32-bit sequence-space distance."""
    d = (a - b) % _MOD
    return d - _MOD if d >= 1 << 31 else d


class TcpStream:
    """One direction of one connection. The first call fixes the start: ``syn(seq)`` when
    the SYN was seen (data then starts at seq + 1), else the first data segment's seq."""

    def __init__(self) -> None:
        self.next: int | None = None  # sequence number of the next byte to deliver
        self._pending: dict[int, bytes] = {}
        self._pending_bytes = 0
        self.gaps = 0  # holes given up on
        self.duplicates = 0  # segments that carried nothing new

    def syn(self, seq: int) -> None:
        if self.next is None:
            self.next = (seq + 1) % _MOD

    def push(self, seq: int, data: bytes) -> bytes:
        """Add a segment; returns the newly contiguous bytes (often ``b""``)."""
        if not data:
            return b""
        if self.next is None:
            self.next = seq
        d = _diff(seq, self.next)
        if d > 0:
            if d > MAX_WINDOW:
                return b""
            if seq not in self._pending or len(self._pending[seq]) < len(data):
                self._pending_bytes += len(data) - len(self._pending.get(seq, b""))
                self._pending[seq] = data
            if len(self._pending) > MAX_PENDING_SEGMENTS or self._pending_bytes > MAX_PENDING_BYTES:
                # Give up on the hole: continue from the earliest waiting segment.
                self.gaps += 1
                before = self.next
                self.next = min(self._pending, key=lambda s: _diff(s, before))
                return self._drain(b"")
            return b""
        if -d >= len(data):
            self.duplicates += 1
            return self._drain(b"")
        out = data[-d:] if d else data
        self.next = (self.next + len(out)) % _MOD
        return self._drain(out)

    def _drain(self, out: bytes) -> bytes:
        assert self.next is not None  # the first segment set it
        while self._pending:
            progressed = False
            for seq in list(self._pending):
                d = _diff(seq, self.next)
                if d > 0:
                    continue
                data = self._pending.pop(seq)
                self._pending_bytes -= len(data)
                progressed = True
                if -d < len(data):
                    chunk = data[-d:] if d else data
                    out += chunk
                    self.next = (self.next + len(chunk)) % _MOD
            if not progressed:
                break
        return out
