"""Build DNS responses from a query's bytes, without dnslib (sans-IO, the hot path).

A response to a query repeats its ID, its RD and CD bits and its question bytes as sent
(the client may have randomised the case, "0x20" — echoing it is what the client checks),
followed by precomputed record bytes. Names in our records point at the question name
(offset 12, RFC 1035 §4.1.4), so a template is the same bytes for every name.

Negative answers carry a synthetic SOA whose MINIMUM is the block TTL, so that clients cache
the refusal briefly (RFC 2308 §3, §5) rather than asking again at once.
"""

from __future__ import annotations

import ipaddress
import struct

from filters.dns_response import (
    RCODE_FORMERR,
    RCODE_NOERROR,
    RCODE_NXDOMAIN,
    RCODE_REFUSED,
    TYPE_A,
    TYPE_AAAA,
    TYPE_SOA,
    Normalised,
)
from filters.dns_wire import HEADER_LEN, MAX_UDP_PAYLOAD, Query
from filters.errors import InputError

__all__ = [
    "BLOCK_MODES", "DEFAULT_BLOCK_TTL", "TYPE_ANY", "TYPE_HINFO", "opt_record", "error_response",
    "negative_answer", "BlockAnswers", "render_cached", "badvers_response", "minimal_any",
]

BLOCK_MODES = ("nxdomain", "null", "refused", "blockpage")
# Blocked answers live briefly in client caches: short enough that an allowlist change or a
# schedule boundary takes effect within seconds, long enough to stop retry storms.
DEFAULT_BLOCK_TTL = 10
TYPE_HINFO, TYPE_ANY = 13, 255
_QR_RA = 0x80  # QR in the first flags byte, RA in the second
_PTR_QNAME = b"\xc0\x0c"  # compression pointer to the question name at offset 12
_IN = b"\x00\x01"
# The synthetic SOA's names: under .invalid (RFC 6761 §6.4) so they resolve nowhere.
_SOA_MNAME = b"\x0aschoolgate\x07invalid\x00"
_SOA_RNAME = b"\x0ahostmaster\x0aschoolgate\x07invalid\x00"
_BADVERS_HIGH = 1  # RFC 6891 §9: BADVERS = 16, whose upper eight bits are 1


def opt_record(udp_size: int = MAX_UDP_PAYLOAD, do: bool = False, ext_rcode: int = 0) -> bytes:
    """An OPT pseudo-record (RFC 6891 §6.1.2): root owner, our UDP payload size, version 0,
    the DO bit echoed (RFC 3225 §3), no options."""
    return b"\x00\x00\x29" + struct.pack(">HBBHH", udp_size, ext_rcode, 0, 0x8000 if do else 0, 0)


def _soa(ttl: int) -> bytes:
    rdata = _SOA_MNAME + _SOA_RNAME + struct.pack(">IIIII", 1, 3600, 600, 86400, ttl)
    return _PTR_QNAME + struct.pack(">HHIH", TYPE_SOA, 1, ttl, len(rdata)) + rdata


def _flags(buf: bytes, rcode: int) -> bytes:
    # QR, opcode copied, RD copied; RA set; CD copied (RFC 4035 §3.2.2).
    return bytes((0x80 | (buf[2] & 0x79), _QR_RA | (buf[3] & 0x10) | (rcode & 0xF)))


def _assemble(buf: bytes, q: Query, rcode: int, counts: bytes, records: bytes) -> bytes:
    """Header + the query's question + records (+ our OPT when the query had one)."""
    if q.edns:
        return (buf[:2] + _flags(buf, rcode) + b"\x00\x01" + counts[:4]
                + (((counts[4] << 8) | counts[5]) + 1).to_bytes(2, "big")
                + buf[HEADER_LEN:q.qname_end + 4] + records + opt_record(do=q.do))
    return buf[:2] + _flags(buf, rcode) + b"\x00\x01" + counts + buf[HEADER_LEN:q.qname_end + 4] + records


def error_response(buf: bytes, rcode: int, q: Query | None = None) -> bytes | None:
    """FORMERR, SERVFAIL, NOTIMP or REFUSED for a query: the question is repeated when it
    was parsed, else the header alone (counts zero). None when there is no header.

    RFC 6891 §7: a FORMERR caused by the OPT record carries no OPT, so FORMERR never does."""
    if len(buf) < HEADER_LEN:
        return None
    if q is None or q.qname_end < 0:
        return buf[:2] + _flags(buf, rcode) + b"\x00" * 8
    if rcode == RCODE_FORMERR and q.edns:
        q = Query(q.id, q.flags, 1, 0, 0, 0, q.qname_end, q.qtype, q.qclass)
    return _assemble(buf, q, rcode, b"\x00\x00\x00\x00\x00\x00", b"")


def badvers_response(buf: bytes, q: Query) -> bytes:
    """RFC 6891 §6.1.3: an EDNS version we do not implement gets BADVERS and our version 0."""
    return (buf[:2] + _flags(buf, RCODE_NOERROR) + b"\x00\x01\x00\x00\x00\x00\x00\x01"
            + buf[HEADER_LEN:q.qname_end + 4] + opt_record(do=q.do, ext_rcode=_BADVERS_HIGH))


def negative_answer(buf: bytes, q: Query, rcode: int, ttl: int = DEFAULT_BLOCK_TTL) -> bytes:
    """NXDOMAIN (rcode 3) or NODATA (NOERROR, no answer) with an SOA for negative caching."""
    return _assemble(buf, q, rcode, b"\x00\x00\x00\x01\x00\x00", _soa(ttl))


def minimal_any(buf: bytes, q: Query, ttl: int = DEFAULT_BLOCK_TTL) -> bytes:
    """RFC 8482 §4.2: answer ANY with one synthesised HINFO record instead of everything."""
    rdata = b"\x07RFC8482\x00"
    rec = _PTR_QNAME + struct.pack(">HHIH", TYPE_HINFO, 1, ttl, len(rdata)) + rdata
    return _assemble(buf, q, RCODE_NOERROR, b"\x00\x01\x00\x00\x00\x00", rec)


class BlockAnswers:
    """The answer for a blocked name under one block mode, as templates per QTYPE."""

    def __init__(self, mode: str, ttl: int = DEFAULT_BLOCK_TTL,
                 addresses: tuple[str, ...] = ()) -> None:
        if mode not in BLOCK_MODES:
            raise InputError(f"unknown block mode {mode!r} (known: {', '.join(BLOCK_MODES)})")
        if not 0 <= ttl <= 0x7FFFFFFF:
            raise InputError(f"block TTL {ttl} out of range")
        self.mode, self.ttl = mode, ttl
        v4 = v6 = None
        if mode == "null":
            v4, v6 = b"\x00" * 4, b"\x00" * 16
        elif mode == "blockpage":
            for a in addresses:
                ip = ipaddress.ip_address(a)
                if ip.version == 4 and v4 is None:
                    v4 = ip.packed
                elif ip.version == 6 and v6 is None:
                    v6 = ip.packed
            if v4 is None and v6 is None:
                raise InputError("block mode 'blockpage' needs the block page's addresses")
        # qtype -> (rcode, counts, records); anything else gets the default entry.
        self._by_type: dict[int, tuple[int, bytes, bytes]] = {}
        if mode == "nxdomain":
            self._default = (RCODE_NXDOMAIN, b"\x00\x00\x00\x01\x00\x00", _soa(ttl))
        elif mode == "refused":
            self._default = (RCODE_REFUSED, b"\x00" * 6, b"")
        else:
            self._default = (RCODE_NOERROR, b"\x00\x00\x00\x01\x00\x00", _soa(ttl))  # NODATA
            for qtype, addr in ((TYPE_A, v4), (TYPE_AAAA, v6)):
                if addr is not None:
                    rec = _PTR_QNAME + struct.pack(">HHIH", qtype, 1, ttl, len(addr)) + addr
                    self._by_type[qtype] = (RCODE_NOERROR, b"\x00\x01\x00\x00\x00\x00", rec)

    def templates(self) -> tuple[tuple[int, bytes, bytes], dict[int, tuple[int, bytes, bytes]]]:
        """(default, {qtype: ...}): each (rcode, counts (6 bytes: AN, NS, AR), records), for
        the DNS fast path's template table."""
        return self._default, dict(self._by_type)

    def answer(self, buf: bytes, q: Query) -> bytes:
        rcode, counts, records = self._by_type.get(q.qtype, self._default)
        return _assemble(buf, q, rcode, counts, records)


def render_cached(buf: bytes, q: Query, n: Normalised, body: bytes, limit: int) -> bytes:
    """A cached (or just received) response for the query in ``buf``: the client's ID, RD,
    CD and question bytes, the cached records with ``body``'s TTLs, our OPT when the client
    sent one. Larger than ``limit`` (the client's UDP payload size): TC set and no records,
    so the client retries over TCP (RFC 1035 §4.2.1, RFC 7766 §5)."""
    f = n.flags
    # AD only for clients that asked for DNSSEC data or set AD themselves (RFC 6840 §5.8).
    ad = f & 0x20 if (q.do or buf[3] & 0x20) else 0
    flags = bytes((0x80 | (buf[2] & 0x01), _QR_RA | ad | (buf[3] & 0x10) | (f & 0xF)))
    an, ns, ar = n.counts
    opt = opt_record(do=q.do) if q.edns else b""
    if opt:
        ar += 1
    question = buf[HEADER_LEN:q.qname_end + 4]
    size = HEADER_LEN + len(question) + len(body) + len(opt)
    if size > limit:
        return (buf[:2] + bytes((flags[0] | 0x02, flags[1])) + b"\x00\x01\x00\x00\x00\x00"
                + (b"\x00\x01" if opt else b"\x00\x00") + question + opt)
    return (buf[:2] + flags + b"\x00\x01" + struct.pack(">HHH", an, ns, ar) + question + body + opt)
