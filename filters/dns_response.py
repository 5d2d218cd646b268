"""Read an upstream DNS response from its bytes (sans-IO): records, TTLs, CNAME targets.

The cache stores responses in wire form and rewrites TTLs in place when it serves them, so
it needs, once per response, the offset of every TTL field, how long the response may be
cached (RFC 1035 TTLs; RFC 2308 for negative answers), the CNAME targets to check against
the policy, and the body without the upstream's OPT record (our OPT depends on the client).

Names inside records may be compressed (RFC 1035 §4.1.4). Skipping a name never follows a
pointer; decompressing one (CNAME targets) follows only pointers that go strictly backwards
and stops after MAX_POINTERS, so a crafted loop or a pointer past the end is a PacketError,
never a hang.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from filters.dns_wire import HEADER_LEN, MAX_LABEL, MAX_NAME_WIRE, TYPE_OPT, skip_name
from filters.errors import PacketError

__all__ = [
    "TYPE_A", "TYPE_NS", "TYPE_CNAME", "TYPE_SOA", "TYPE_AAAA", "TYPE_DNAME",
    "RCODE_NOERROR", "RCODE_FORMERR", "RCODE_SERVFAIL", "RCODE_NXDOMAIN", "RCODE_NOTIMP",
    "RCODE_REFUSED", "MAX_RECORDS", "MAX_POINTERS", "Record", "Normalised", "walk_records",
    "read_name", "normalise_response", "render_body", "answers_question",
]

TYPE_A, TYPE_NS, TYPE_CNAME, TYPE_SOA, TYPE_AAAA, TYPE_DNAME = 1, 2, 5, 6, 28, 39
RCODE_NOERROR, RCODE_FORMERR, RCODE_SERVFAIL, RCODE_NXDOMAIN, RCODE_NOTIMP, RCODE_REFUSED = 0, 1, 2, 3, 4, 5

# A 64 KiB message holds at most ~5,400 minimal records (a 1-byte name and 10 fixed bytes
# plus no data); real answers have a few dozen. The walk stops at this count.
MAX_RECORDS = 6000
# Pointer hops while decompressing one name: a name has at most 127 labels, each of which
# could be reached through one pointer.
MAX_POINTERS = 127

_RR_FIXED = struct.Struct(">HHIH")  # type, class, ttl, rdlength
_U32 = struct.Struct(">I")
# RFC 2181 §8: a TTL is an unsigned 31-bit number; larger values are treated as zero.
_TTL_MAX = 0x7FFFFFFF


@dataclass(slots=True)
class Record:
    section: int  # 0 answer, 1 authority, 2 additional
    owner: int  # offset of the owner name
    rtype: int
    rclass: int
    ttl: int
    ttl_offset: int
    rdata: int  # offset of the record data
    rdlength: int


def read_name(buf: bytes, pos: int) -> tuple[bytes, int]:
    """Decompress the name at ``pos``: (uncompressed lower-case wire name, offset after it
    in the record). Pointers must point strictly backwards, at most MAX_POINTERS of them."""
    out = bytearray()
    limit = len(buf)
    after = -1
    hops = 0
    floor = pos  # every pointer must land before the label that holds it
    while True:
        if pos >= limit:
            raise PacketError("name runs past the end of the message")
        ln = buf[pos]
        if ln & 0xC0 == 0xC0:
            if pos + 2 > limit:
                raise PacketError("compression pointer cut short")
            target = ((ln & 0x3F) << 8) | buf[pos + 1]
            if after < 0:
                after = pos + 2
            hops += 1
            if target >= floor or hops > MAX_POINTERS:
                raise PacketError("compression pointer loops or points forward")
            pos = floor = target
            continue
        if ln > MAX_LABEL:
            raise PacketError(f"label type 0x{ln & 0xC0:02x} is not supported")
        if pos + 1 + ln > limit:
            raise PacketError("label runs past the end of the message")
        out.append(ln)
        if ln == 0:
            break
        out += buf[pos + 1:pos + 1 + ln].lower()
        if len(out) > MAX_NAME_WIRE:
            raise PacketError(f"name longer than {MAX_NAME_WIRE} octets")
        pos += 1 + ln
    return bytes(out), (after if after >= 0 else pos + 1)


def walk_records(buf: bytes, pos: int, counts: tuple[int, int, int]) -> list[Record]:
    """Every record of the answer, authority and additional sections from ``pos`` (the end
    of the question). Raises PacketError when a record runs past the end."""
    if sum(counts) > MAX_RECORDS:
        raise PacketError(f"{sum(counts)} records: more than a message can hold")
    out = []
    n = len(buf)
    for section, count in enumerate(counts):
        for _ in range(count):
            owner = pos
            pos = skip_name(buf, pos)
            if pos + 10 > n:
                raise PacketError("record runs past the end of the message")
            rtype, rclass, ttl, rdlen = _RR_FIXED.unpack_from(buf, pos)
            rdata = pos + 10
            if rdata + rdlen > n:
                raise PacketError("record data runs past the end of the message")
            out.append(Record(section, owner, rtype, rclass, ttl if ttl <= _TTL_MAX else 0,
                              pos + 4, rdata, rdlen))
            pos = rdata + rdlen
    return out


@dataclass(slots=True)
class Normalised:
    """A response ready for the cache: everything after the question, minus OPT."""

    flags: int  # the response's flags word with the AA bit cleared (we are not authoritative)
    counts: tuple[int, int, int]  # answer, authority, additional (without OPT)
    body: bytes  # the records; compression offsets assume header + question precede them
    body_offset: int  # absolute offset of body[0] in a message (header + question)
    ttl_fields: list[tuple[int, int]] = field(default_factory=list)  # (offset in body, ttl)
    ttl: int | None = None  # how long it may be cached; None: do not cache
    cname_targets: list[bytes] = field(default_factory=list)  # lower-case wire names

    @property
    def rcode(self) -> int:
        return self.flags & 0xF


def _negative_ttl(buf: bytes, records: list[Record]) -> int | None:
    """RFC 2308 §5: a negative answer is cached for min(SOA TTL, SOA MINIMUM) of the SOA in
    the authority section; without an SOA it is not cached."""
    for r in records:
        if r.section == 1 and r.rtype == TYPE_SOA and r.rdlength >= 22:
            minimum = _U32.unpack_from(buf, r.rdata + r.rdlength - 4)[0]
            return min(r.ttl, minimum)
    return None


def normalise_response(buf: bytes, question_end: int, max_ttl: int) -> Normalised:
    """Prepare an upstream response (already checked to answer our question) for caching.

    ``max_ttl`` caps how long anything is cached. Raises PacketError when it is malformed."""
    if len(buf) < HEADER_LEN or question_end > len(buf):
        raise PacketError("response shorter than its question")
    flags = (buf[2] << 8) | buf[3]
    an, ns, ar = (buf[6] << 8) | buf[7], (buf[8] << 8) | buf[9], (buf[10] << 8) | buf[11]
    records = walk_records(buf, question_end, (an, ns, ar))
    end = len(buf)
    kept_ar = ar
    for i, r in enumerate(records):
        if r.rtype == TYPE_OPT and r.section == 2:
            # Drop OPT and whatever follows it (TSIG, SIG(0)): records after it may point
            # into it, records before it never do, so the body stays consistent.
            end = r.owner
            kept_ar = sum(1 for x in records[:i] if x.section == 2)
            records = records[:i]
            break
    else:
        if records:
            end = records[-1].rdata + records[-1].rdlength
        else:
            end = question_end
    body = buf[question_end:end]
    fields = [(r.ttl_offset - question_end, r.ttl) for r in records]
    rcode = flags & 0xF
    ttl: int | None = None
    answers = [r for r in records if r.section == 0]
    if rcode == RCODE_NXDOMAIN or (rcode == RCODE_NOERROR and not answers):
        ttl = _negative_ttl(buf, records)
    elif rcode == RCODE_NOERROR:
        ttl = min(r.ttl for r in records)  # the whole RRset group expires together
    if ttl is not None:
        ttl = min(ttl, max_ttl)
        if ttl <= 0 or flags & 0x0200:  # TTL 0 means do not cache (RFC 1035 §3.2.1); TC too
            ttl = None
    cnames = []
    for r in answers:
        if r.rtype in (TYPE_CNAME, TYPE_DNAME) and r.rdlength:
            cnames.append(read_name(buf, r.rdata)[0])
    return Normalised(flags & ~0x0400, (an, ns, kept_ar), body, question_end, fields, ttl, cnames)


def render_body(n: Normalised, age: int, fixed_ttl: int | None = None) -> bytes:
    """The body with every TTL lowered by ``age`` seconds (not below zero) — RFC 1035 §7.3:
    a cached record's TTL counts down while it is cached. With ``fixed_ttl`` every TTL is
    that value instead (stale answers, RFC 8767 §4)."""
    if (age <= 0 and fixed_ttl is None) or not n.ttl_fields:
        return n.body
    out = bytearray(n.body)
    pack = _U32.pack_into
    for off, ttl in n.ttl_fields:
        if fixed_ttl is not None:
            ttl, age = fixed_ttl, 0
        pack(out, off, ttl - age if ttl > age else 0)
    return bytes(out)


def answers_question(resp: bytes, qid: int, question: bytes) -> bool:
    """Is ``resp`` a response to our query with ID ``qid`` and this question (header QR set,
    QUERY, one question, the same name compared case-insensitively, type and class)?
    Anything else is ignored by the forwarder (spoofing or a stale reply)."""
    end = HEADER_LEN + len(question)
    return (len(resp) >= end and (resp[0] << 8 | resp[1]) == qid and resp[2] & 0xF8 == 0x80
            and resp[4] == 0 and resp[5] == 1 and resp[HEADER_LEN:end].lower() == question.lower())
