"""DNS question names from messages over UDP and TCP (sans-IO).

Queries and responses both carry the question (RFC 1035 §4.1.2), so names are read from
either: a capture may hold only one side. mDNS (RFC 6762, port 5353) and LLMNR (RFC 4795,
port 5355) use the same message format and are read the same way, as Wireshark does.
The header and name walking reuse the DNS server's parsers (dns_wire.py, dns_response.py);
their PacketErrors are turned into an ERROR outcome here, with the names read so far.

Over TCP every message is preceded by a two-byte length (RFC 1035 §4.2.2, RFC 7766 §8);
:class:`DnsTcpSession` is fed the stream in order and yields each message's names.
"""

from __future__ import annotations

from filters.dns_response import read_name
from filters.dns_wire import HEADER_LEN, MAX_LABEL, MAX_NAME_WIRE
from filters.errors import PacketError
from filters.extraction import Extraction, Status

__all__ = ["UDP_PORTS", "TCP_PORTS", "MAX_TCP_MESSAGES", "message_names", "DnsTcpSession"]

# DNS (53), mDNS (5353, RFC 6762), LLMNR (5355, RFC 4795): one message format.
UDP_PORTS = frozenset({53, 5353, 5355})
# LLMNR also runs over TCP (RFC 4795 §2.4); Wireshark reads TCP 5353 as DNS too (unicast
# mDNS-style queries to a responder), and so do we.
TCP_PORTS = frozenset({53, 5353, 5355})
# Messages read from one TCP connection. RFC 7766 lets a client pipeline many queries on
# one connection; a few hundred is plenty for inspection and bounds the work one flow costs.
MAX_TCP_MESSAGES = 1000
# A question is at least a root name (1 octet) plus QTYPE and QCLASS (RFC 1035 §4.1.2).
_MIN_QUESTION = 5


def _dotted(wire: bytes) -> bytes:
    """b"\x03www\x07example\x03org\x00" -> b"www.example.org" (labels may hold dots or
    any other byte; they are kept as they are, the matcher hashes the wire form anyway)."""
    out = []
    pos = 0
    while wire[pos]:
        ln = wire[pos]
        out.append(wire[pos + 1:pos + 1 + ln])
        pos += 1 + ln
    return b".".join(out)


def _plain_name(msg: bytes, pos: int) -> tuple[bytes, int] | None:
    """The common case, an uncompressed name: (dotted lower-case name, offset after it),
    or None when it holds a pointer or is malformed (then read_name decides, with reasons)."""
    labels: list[bytes] = []
    n = len(msg)
    start = pos
    while pos < n:
        ln = msg[pos]
        if ln == 0:
            if pos + 1 - start > MAX_NAME_WIRE:
                return None
            return b".".join(labels).lower(), pos + 1
        if ln > MAX_LABEL or pos + 1 + ln > n:
            return None
        labels.append(msg[pos + 1:pos + 1 + ln])
        pos += 1 + ln
    return None


def message_names(msg: bytes) -> Extraction:
    """The question names of one DNS message (query or response). The root name is
    skipped (it names nothing to filter). Never raises."""
    n = len(msg)
    if n < HEADER_LEN:
        return Extraction(Status.ERROR, reason=f"{n} bytes: shorter than a DNS header")
    qdcount = (msg[4] << 8) | msg[5]
    if qdcount == 0:
        return Extraction(Status.DONE, reason="no question")
    names: list[bytes] = []
    pos = HEADER_LEN
    # A lying QDCOUNT cannot make us loop longer than the message could hold questions.
    for _ in range(min(qdcount, (n - HEADER_LEN) // _MIN_QUESTION + 1)):
        plain = _plain_name(msg, pos)
        if plain is not None:
            name, pos = plain
        else:
            try:
                wire, pos = read_name(msg, pos)
            except PacketError as exc:
                return Extraction(Status.ERROR, tuple(names), f"question {len(names) + 1}: {exc}")
            name = _dotted(wire)
        if name:
            names.append(name)
        pos += 4
        if pos > n:
            return Extraction(Status.ERROR, tuple(names), "question ends before QTYPE and QCLASS")
    if qdcount * _MIN_QUESTION > n - HEADER_LEN:
        return Extraction(Status.ERROR, tuple(names), f"QDCOUNT {qdcount} larger than the message")
    return Extraction(Status.DONE, tuple(names))


class DnsTcpSession:
    """One direction of a DNS-over-TCP connection, fed its bytes in order."""

    def __init__(self) -> None:
        # At most one message (2 + 65535 octets, RFC 1035 §4.2.2) plus one segment waits
        # here: complete messages are consumed as soon as they arrive.
        self._buf = bytearray()
        self._messages = 0

    def feed(self, data: bytes) -> Extraction:
        self._buf += data
        names: list[bytes] = []
        reasons: list[str] = []
        while len(self._buf) >= 2:
            ln = (self._buf[0] << 8) | self._buf[1]
            if len(self._buf) < 2 + ln:
                break  # the rest of this message is in a later segment
            res = message_names(bytes(self._buf[2:2 + ln]))
            names += res.names
            if res.status == Status.ERROR:
                reasons.append(res.reason)
            del self._buf[:2 + ln]
            self._messages += 1
            if self._messages >= MAX_TCP_MESSAGES:
                self._buf.clear()
                return Extraction(Status.DONE, tuple(names),
                                  f"stopped after {MAX_TCP_MESSAGES} messages on one connection")
        # A malformed message inside the stream still had an honest length prefix, so the
        # stream stays in step: keep reading; ``reason`` reports the bad message.
        return Extraction(Status.MORE, tuple(names), "; ".join(reasons))
