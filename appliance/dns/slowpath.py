"""The slow path: what the fast path does not handle, parsed by dnslib (~90 µs a query).

That is: a question name with a compression pointer or an odd label, records in a query's
answer or authority section, several or no questions, other opcodes and classes. A query
dnslib can read is rewritten as a plain one-question query (same ID, RD, CD, EDNS fields)
and goes through the fast path again, so blocking, caching and forwarding stay in one place.
"""

from __future__ import annotations

from dnslib import DNSRecord

from filters.dns_answer import error_response, opt_record
from filters.dns_response import RCODE_NOTIMP, RCODE_REFUSED
from filters.dns_wire import CLASS_IN, MAX_LABEL, MAX_NAME_WIRE, OPCODE_QUERY, TYPE_OPT, Query
from filters.errors import PacketError, RuntPacketError

__all__ = ["canonical_query", "MAX_SLOW_QUERY"]

# No real query is this large (a name, a type, an OPT with a cookie: under 300 bytes); a
# larger one is not worth dnslib's time, which grows with the record count.
MAX_SLOW_QUERY = 4096


def canonical_query(buf: bytes, q: Query | None) -> bytes | tuple[bytes | None]:
    """A plain query equivalent to ``buf``, or ``(answer,)`` when it is answered here
    (NOTIMP, REFUSED). Raises PacketError (FORMERR) or RuntPacketError (drop)."""
    if len(buf) > MAX_SLOW_QUERY:
        raise PacketError(f"{len(buf)} bytes: too large for a query")
    if buf[2] & 0x80:
        raise RuntPacketError("QR is set: a response, not a query")
    opcode = (buf[2] >> 3) & 0xF
    if opcode != OPCODE_QUERY:
        return (error_response(buf, RCODE_NOTIMP),)  # RFC 1035 §4.1.1: not implemented
    try:
        rec = DNSRecord.parse(buf)
    except Exception as exc:  # dnslib raises DNSError, struct.error, IndexError, ...
        raise PacketError(f"unparseable message: {type(exc).__name__}") from exc
    if len(rec.questions) != 1:
        raise PacketError(f"{len(rec.questions)} questions (RFC 9619: exactly one)")
    question = rec.questions[0]
    if question.qclass != CLASS_IN:
        return (error_response(buf, RCODE_REFUSED),)  # we serve class IN only (no CHAOS version.bind)
    labels = question.qname.label
    if any(not 0 < len(lab) <= MAX_LABEL for lab in labels):
        raise PacketError("empty or over-long label in the question")
    wire = b"".join(bytes((len(lab),)) + bytes(lab) for lab in labels) + b"\x00"
    if len(wire) > MAX_NAME_WIRE:
        raise PacketError(f"question name longer than {MAX_NAME_WIRE} octets")
    opts = [rr for rr in rec.ar if rr.rtype == TYPE_OPT]
    if len(opts) > 1:
        raise PacketError("more than one OPT record")
    header = buf[:2] + bytes((buf[2] & 0x01, buf[3] & 0x10)) + b"\x00\x01\x00\x00\x00\x00"
    tail = wire + question.qtype.to_bytes(2, "big") + b"\x00\x01"
    if not opts:
        return header + b"\x00\x00" + tail
    o = opts[0]
    version = (o.ttl >> 16) & 0xFF
    opt = opt_record(max(int(o.rclass), 512), bool(o.ttl & 0x8000))
    opt = opt[:6] + bytes((version,)) + opt[7:]  # keep the client's EDNS version (BADVERS check)
    return header + b"\x00\x01" + tail + opt
