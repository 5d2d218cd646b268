"""Parse a DNS query's header and single question from its bytes (sans-IO).

The DNS server's fast path reads a query in place: the header, the QNAME's end (which the
domain matcher already found while hashing, so it is passed in and not walked twice), QTYPE,
QCLASS and the EDNS0 OPT record in the additional section (RFC 6891). Nothing here copies
the name or builds strings.

Outcomes, which the server's failure policy (appliance/dns/pipeline.py) maps to answers:

- :class:`RuntPacketError` — shorter than a header, or QR set (a response): drop it.
- :class:`PacketError` — a header exists but the rest cannot be parsed: FORMERR.
- a :class:`Query` whose ``fast`` is False — parseable, but not the common one-question
  class-IN QUERY (several questions, another opcode or class, records in the answer or
  authority section): the slow path handles it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from filters.errors import PacketError, RuntPacketError

__all__ = [
    "skip_name",
    "HEADER_LEN", "MAX_NAME_WIRE", "MAX_LABEL", "MAX_MESSAGE", "MIN_UDP_PAYLOAD",
    "MAX_UDP_PAYLOAD", "OPCODE_QUERY", "CLASS_IN", "TYPE_OPT", "Query", "parse_query",
    "qname_end", "make_query",
]

# RFC 1035 §4.1.1: the fixed header.
HEADER_LEN = 12
# RFC 1035 §2.3.4: a name is at most 255 octets in wire form, a label at most 63.
MAX_NAME_WIRE = 255
MAX_LABEL = 63
# RFC 1035 §4.2.2: TCP messages carry a 16-bit length, so no message is longer.
MAX_MESSAGE = 65535
# RFC 1035 §4.2.1 limits UDP messages to 512 octets without EDNS; RFC 6891 §6.2.5 says a
# requestor's UDP payload size below 512 is treated as 512.
MIN_UDP_PAYLOAD = 512
# What we accept and advertise over UDP: 1232 is the DNS Flag Day 2020 value, the largest
# payload that avoids IP fragmentation on an IPv6 path with a 1280 MTU.
MAX_UDP_PAYLOAD = 1232
# Records in a query's additional section we are willing to walk (OPT, perhaps a TSIG or a
# cookie-bearing OPT): a real query has at most two; more is an attack on our CPU.
MAX_QUERY_ADDITIONAL = 4

OPCODE_QUERY = 0
CLASS_IN = 1
TYPE_OPT = 41  # RFC 6891 §6.1.1
_DO_BIT = 0x8000  # RFC 3225: DNSSEC OK, in the OPT record's TTL field

_HEADER = struct.Struct(">HHHHHH")
_U16 = struct.Struct(">H")
_OPT_FIXED = struct.Struct(">HHBBHH")  # type, udp size, ext-rcode, version, flags, rdlen


@dataclass(slots=True)
class Query:
    """A parsed query. Offsets index the original bytes."""

    id: int
    flags: int  # the 16-bit flags word (QR, opcode, AA, TC, RD, RA, Z, AD, CD, RCODE)
    qdcount: int
    ancount: int
    nscount: int
    arcount: int
    qname_end: int = -1  # offset just after the QNAME; -1 when there is no single question
    qtype: int = 0
    qclass: int = 0
    edns: bool = False  # an OPT record was present
    udp_size: int = MIN_UDP_PAYLOAD  # the requestor's UDP payload size, clamped to >= 512
    do: bool = False  # DNSSEC OK (RFC 3225)
    edns_version: int = 0

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def question_end(self) -> int:
        return self.qname_end + 4

    @property
    def fast(self) -> bool:
        """The common case the fast path answers: one class-IN question, plain QUERY,
        empty answer and authority sections."""
        return (self.qname_end > 0 and self.qclass == CLASS_IN and self.opcode == OPCODE_QUERY
                and not self.ancount and not self.nscount)


def make_query(qid: int, wire_name: bytes, qtype: int, *, rd: bool = True) -> bytes:
    """A one-question class-IN query (RFC 1035 §4.1) for a name already in wire form."""
    flags = 0x0100 if rd else 0
    return (struct.pack("!HHHHHH", qid & 0xFFFF, flags, 1, 0, 0, 0) + wire_name
            + struct.pack("!HH", qtype, CLASS_IN))


def qname_end(buf: bytes, start: int = HEADER_LEN) -> int:
    """End offset of the uncompressed wire name at ``buf[start]``. A question name in a
    query never needs compression (nothing precedes it to point at), so pointers and
    extended label types (RFC 6891 §5) are a PacketError here; the slow path may still try."""
    pos = start
    limit = len(buf)
    while True:
        if pos >= limit:
            raise PacketError("name runs past the end of the message")
        ln = buf[pos]
        if ln == 0:
            pos += 1
            break
        if ln > MAX_LABEL:
            raise PacketError(f"label length byte 0x{ln:02x}: compression pointer or extended label in a question")
        pos += 1 + ln
        if pos - start > MAX_NAME_WIRE:
            raise PacketError(f"name longer than {MAX_NAME_WIRE} octets")
    if pos - start > MAX_NAME_WIRE:
        raise PacketError(f"name longer than {MAX_NAME_WIRE} octets")
    return pos


def skip_name(buf: bytes, pos: int) -> int:
    """Offset after a possibly compressed name (pointers are not followed: skipping cannot
    loop). Bounded by the name length limit."""
    start = pos
    limit = len(buf)
    while pos < limit and pos - start <= MAX_NAME_WIRE:
        ln = buf[pos]
        if ln == 0:
            return pos + 1
        if ln & 0xC0 == 0xC0:
            if pos + 2 > limit:
                break
            return pos + 2
        if ln > MAX_LABEL:
            raise PacketError(f"label type 0x{ln & 0xC0:02x} is not supported")
        pos += 1 + ln
    raise PacketError("name in a record runs past the end of the message or is too long")


def parse_query(buf: bytes, name_end: int | None = None) -> Query:
    """Parse a query's header, its question (when QDCOUNT is 1) and its OPT record.

    ``name_end`` is the offset after the QNAME when the caller already knows it (the
    matcher's R_END); otherwise the name is walked here.
    Raises RuntPacketError (drop) or PacketError (FORMERR)."""
    n = len(buf)
    if n < HEADER_LEN:
        raise RuntPacketError(f"{n} bytes: shorter than a DNS header")
    if n > MAX_MESSAGE:
        raise PacketError(f"{n} bytes: longer than a DNS message can be")
    qid, flags, qd, an, ns, ar = _HEADER.unpack_from(buf)
    if flags & 0x8000:
        raise RuntPacketError("QR is set: a response, not a query")
    q = Query(qid, flags, qd, an, ns, ar)
    if qd != 1:
        return q  # RFC 9619: QUERY needs exactly one question; the slow path says FORMERR
    end = name_end if name_end is not None and name_end > HEADER_LEN else qname_end(buf)
    if end + 4 > n:
        raise PacketError("question ends before QTYPE and QCLASS")
    q.qname_end = end
    q.qtype = (buf[end] << 8) | buf[end + 1]
    q.qclass = (buf[end + 2] << 8) | buf[end + 3]
    pos = end + 4
    if an or ns:
        return q  # records a query should not carry: the slow path parses them (or not)
    if ar > MAX_QUERY_ADDITIONAL:
        raise PacketError(f"ARCOUNT {ar}: more additional records than a query carries")
    for _ in range(ar):
        owner = pos
        pos = skip_name(buf, pos)
        if pos + 10 > n:
            raise PacketError("additional record runs past the end of the message")
        rtype, rclass, ext_rcode, version, eflags, rdlen = _OPT_FIXED.unpack_from(buf, pos)
        rdata_end = pos + 10 + rdlen
        if rdata_end > n:
            raise PacketError("record data runs past the end of the message")
        if rtype == TYPE_OPT:
            # RFC 6891 §6.1.1: one OPT at most, owned by the root name.
            if q.edns:
                raise PacketError("more than one OPT record")
            if buf[owner] != 0 or pos != owner + 1:
                raise PacketError("OPT record not owned by the root name")
            q.edns = True
            q.udp_size = min(max(rclass, MIN_UDP_PAYLOAD), MAX_MESSAGE)
            q.edns_version = version
            q.do = bool(eflags & _DO_BIT)
        pos = rdata_end
    if pos != n:
        # Bytes after the counted records: the counts lie (RFC 1035 §4.1 fixes them).
        raise PacketError(f"{n - pos} bytes after the last counted record")
    return q
