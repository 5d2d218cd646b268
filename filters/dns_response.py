"""Read an upstream DNS response from its bytes (sans-IO): records, TTLs, CNAME targets.

The cache stores responses in wire form and rewrites TTLs in place when it serves them, so
it needs, once per response, the offset of every TTL field, how long the response may be
cached (RFC 1035 TTLs; RFC 2308 for negative answers), the CNAME targets to check against
the policy, and the body without the upstream's OPT record (our OPT depends on the client)
and without records that do not belong to the question (``scrub``: minimal responses, with
everything DNSSEC needs to validate the answer or the denial kept).

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
    "read_name", "normalise_response", "scrub", "render_body", "answers_question", "bare_error",
    "BARE_ERRORS", "MAX_CHAIN",
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
_U16 = struct.Struct(">H")
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


def read_name(buf: bytes, pos: int, lower: bool = True) -> tuple[bytes, int]:
    """Decompress the name at ``pos``: (uncompressed wire name, lower-cased unless ``lower``
    is false, offset after it in the record). Pointers must point strictly backwards, at
    most MAX_POINTERS of them."""
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
        label = buf[pos + 1:pos + 1 + ln]
        out += label.lower() if lower else label
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
    """Prepare an upstream response (already checked to answer our question) for caching:
    OPT (and what follows it) dropped, unrelated records scrubbed (:func:`scrub`), the TTL
    it may be cached for. An error answered with the header alone (:func:`bare_error`) is
    its rcode and nothing else.

    ``max_ttl`` caps how long anything is cached. Raises PacketError when it is malformed."""
    if len(buf) >= HEADER_LEN and buf[4] == buf[5] == 0 and bare_error(buf):
        return Normalised(((buf[2] << 8) | buf[3]) & ~0x0400, (0, 0, 0), b"", question_end)
    if len(buf) < HEADER_LEN or question_end > len(buf) or question_end < HEADER_LEN + 5:
        raise PacketError("response shorter than its question")
    qname = bytes(buf[HEADER_LEN:question_end - 4]).lower()
    if _name_end(qname, 0) != len(qname):
        raise PacketError("the question is not one uncompressed name")
    qtype = (buf[question_end - 4] << 8) | buf[question_end - 3]
    flags = (buf[2] << 8) | buf[3]
    an, ns, ar = (buf[6] << 8) | buf[7], (buf[8] << 8) | buf[9], (buf[10] << 8) | buf[11]
    records = walk_records(buf, question_end, (an, ns, ar))
    end = len(buf)
    for i, r in enumerate(records):
        if r.rtype == TYPE_OPT and r.section == 2:
            # Drop OPT and whatever follows it (TSIG, SIG(0)): records after it may point
            # into it, records before it never do, so the body stays consistent.
            end = r.owner
            records = records[:i]
            break
    else:
        if records:
            end = records[-1].rdata + records[-1].rdlength
        else:
            end = question_end
    kept = scrub(buf, records, qname, qtype)
    if len(kept) == len(records):
        body = buf[question_end:end]
        fields = [(r.ttl_offset - question_end, r.ttl) for r in records]
    else:  # records dropped: the names of those kept may point into them, so write anew
        body, fields = _rewrite(buf, kept, qname, question_end)
    counts = (sum(1 for r in kept if r.section == 0), sum(1 for r in kept if r.section == 1),
              sum(1 for r in kept if r.section == 2))
    rcode = flags & 0xF
    ttl: int | None = None
    answers = [r for r in kept if r.section == 0]
    if rcode == RCODE_NXDOMAIN or (rcode == RCODE_NOERROR and not answers):
        ttl = _negative_ttl(buf, kept)
    elif rcode == RCODE_NOERROR:
        ttl = min(r.ttl for r in kept)  # the whole RRset group expires together
    if ttl is not None:
        ttl = min(ttl, max_ttl)
        if ttl <= 0 or flags & 0x0200:  # TTL 0 means do not cache (RFC 1035 §3.2.1); TC too
            ttl = None
    cnames = []
    for r in answers:
        if r.rtype in (TYPE_CNAME, TYPE_DNAME) and r.rdlength:
            cnames.append(read_name(buf, r.rdata)[0])
    return Normalised(flags & ~0x0400, counts, body, question_end, fields, ttl, cnames)


# -- scrubbing: the answer to the question and what proves it, nothing else -------------------

# CNAME chains longer than this are not followed further (resolvers stop well before).
MAX_CHAIN = 32
_TYPE_RRSIG, _TYPE_NSEC, _TYPE_NSEC3, _TYPE_ANY = 46, 47, 50, 255
# RDATA layouts of the types whose names may be compressed (RFC 1035 §3.3; RFC 3597 §4 lets
# receivers decompress the later ones too): "n" a name, "s" a character-string, an int that
# many fixed bytes; whatever follows is copied as it is. Rewriting a response decompresses
# these names; it compresses again only those RFC 1035 lets a sender compress (``_COMPRESS``).
# Other types' RDATA never holds a compressed name (RFC 3597 §4, RFC 4034 §3.1.7, RFC 6672 §2.5).
_NAMES_IN_RDATA: dict[int, tuple] = {
    2: ("n",), 3: ("n",), 4: ("n",), 5: ("n",), 6: ("n", "n"), 7: ("n",), 8: ("n",), 9: ("n",), 12: ("n",),
    14: ("n", "n"), 15: (2, "n"), 17: ("n", "n"), 18: (2, "n"), 21: (2, "n"), 26: (2, "n", "n"), 33: (6, "n"),
    35: (4, "s", "s", "s", "n"), 36: (2, "n"), 39: ("n",)}
_COMPRESS = frozenset((2, 3, 4, 5, 6, 7, 8, 9, 12, 14, 15))


def _name_end(wire: bytes, pos: int) -> int:
    """Offset after the uncompressed name at ``pos``, -1 when it is not one."""
    while pos < len(wire):
        ln = wire[pos]
        if ln == 0:
            return pos + 1
        if ln > MAX_LABEL:
            return -1
        pos += 1 + ln
    return -1


def _under(name: bytes, zone: bytes) -> bool:
    """Is the (lower-case, uncompressed) wire ``name`` ``zone`` or below it?"""
    if len(zone) > len(name):
        return False
    pos = 0
    while True:
        if len(name) - pos == len(zone) and name[pos:] == zone:
            return True
        if pos >= len(name) or name[pos] == 0:
            return False
        pos += 1 + name[pos]


def scrub(buf: bytes, records: list[Record], qname: bytes, qtype: int) -> list[Record]:
    """The records of a response that belong to its question (minimal responses), in order:

    - answer: the CNAME chain from ``qname`` (DNAMEs above a name of it), and the records of
      the asked type (every type for ANY) at the chain's names, each with its RRSIGs;
    - authority: SOA and NS records of a zone the chain's names are in (in bailiwick: an
      ancestor of one of them or the name itself), and the NSEC/NSEC3 records of such a
      zone (known from those SOAs and from the signers of the kept RRSIGs) that DNSSEC
      needs to prove a denial or a wildcard answer, each with its RRSIGs;
    - additional: nothing (our OPT is added when the answer is rendered).

    Anything else — records for other names, other zones' NS and SOA, glue — is dropped,
    so an upstream cannot hand a client (or a cache behind us) data it did not ask for."""
    owners = [read_name(buf, r.owner)[0] for r in records]
    keep = [False] * len(records)
    chain = {qname}
    answer = [i for i, r in enumerate(records) if r.section == 0]
    follow = qtype != TYPE_CNAME
    for _ in range(MAX_CHAIN):
        grown = False
        for i in answer:
            r = records[i]
            if keep[i] or r.rtype not in (TYPE_CNAME, TYPE_DNAME):
                continue
            if r.rtype == TYPE_CNAME and follow and owners[i] in chain:
                keep[i] = True
                target = read_name(buf, r.rdata)[0]
                if target not in chain:
                    chain.add(target)
                    grown = True
            elif r.rtype == TYPE_DNAME and any(n != owners[i] and _under(n, owners[i]) for n in chain):
                keep[i] = True  # the CNAME synthesised from it brings the new name
        if not grown:
            break
    for i in answer:
        r = records[i]
        if not keep[i] and owners[i] in chain and (r.rtype == qtype or qtype == _TYPE_ANY):
            keep[i] = True
    zones: set[bytes] = set()
    _keep_signatures(buf, records, owners, keep, answer, zones, chain)
    authority = [i for i, r in enumerate(records) if r.section == 1]
    for i in authority:
        r = records[i]
        if r.rtype in (TYPE_SOA, TYPE_NS) and any(_under(n, owners[i]) for n in chain):
            keep[i] = True
            if r.rtype == TYPE_SOA:
                zones.add(owners[i])
        elif r.rtype == _TYPE_RRSIG and r.rdlength > 18:
            signer = read_name(buf, r.rdata + 18)[0]
            if any(_under(n, signer) for n in chain):
                zones.add(signer)
    for i in authority:
        if records[i].rtype in (_TYPE_NSEC, _TYPE_NSEC3) and any(_under(owners[i], z) for z in zones):
            keep[i] = True
    _keep_signatures(buf, records, owners, keep, authority, zones, chain)
    return [r for i, r in enumerate(records) if keep[i]]


def _keep_signatures(buf: bytes, records: list[Record], owners: list[bytes], keep: list[bool],
                     section: list[int], zones: set[bytes], chain: set[bytes]) -> None:
    """Keep the RRSIGs in ``section`` that cover a kept record of it (same owner, the type
    covered); add the signers of those that sign a name of ``chain`` to ``zones``."""
    kept = {(owners[i], records[i].rtype) for i in section if keep[i]}
    for i in section:
        r = records[i]
        if r.rtype != _TYPE_RRSIG or r.rdlength < 2:
            continue
        covered = (buf[r.rdata] << 8) | buf[r.rdata + 1]
        if keep[i] or (owners[i], covered) in kept:
            keep[i] = True
            if r.rdlength > 18 and owners[i] in chain:
                signer = read_name(buf, r.rdata + 18)[0]
                if _under(owners[i], signer):
                    zones.add(signer)


class _Writer:
    """Records written anew after the question, names compressed against the question and
    the names already written (case-insensitively, as servers compress)."""

    def __init__(self, qname: bytes, base: int) -> None:
        self.out = bytearray()
        self.base = base  # absolute offset of out[0] in the message
        self.seen: dict[bytes, int] = {}
        self._remember(qname, HEADER_LEN, len(qname))

    def _remember(self, wire: bytes, at: int, upto: int) -> None:
        """Note the suffixes of ``wire`` that start before ``upto``, written at ``at``."""
        pos = 0
        while pos < upto and wire[pos] != 0 and at + pos < 0x4000:
            self.seen.setdefault(wire[pos:].lower(), at + pos)
            pos += 1 + wire[pos]

    def name(self, wire: bytes, compress: bool) -> None:
        at = self.base + len(self.out)
        if compress:
            low = wire.lower()
            pos = 0
            while wire[pos] != 0:
                ptr = self.seen.get(low[pos:])
                if ptr is not None:
                    self.out += wire[:pos] + bytes((0xC0 | ptr >> 8, ptr & 0xFF))
                    self._remember(wire, at, pos)
                    return
                pos += 1 + wire[pos]
        self.out += wire
        self._remember(wire, at, len(wire))


def _rewrite(buf: bytes, kept: list[Record], qname: bytes, base: int) -> tuple[bytes, list[tuple[int, int]]]:
    """``kept`` written as a body that follows the question at ``base``: (body, TTL fields)."""
    w = _Writer(qname, base)
    fields = []
    for r in kept:
        w.name(read_name(buf, r.owner, lower=False)[0], True)  # case kept: a client may look at it
        fixed = r.ttl_offset - 4
        w.out += buf[fixed:fixed + 8]  # type, class, TTL
        fields.append((len(w.out) - 4, r.ttl))
        size_at = len(w.out)
        w.out += b"\x00\x00"
        layout = _NAMES_IN_RDATA.get(r.rtype)
        end = r.rdata + r.rdlength
        pos = r.rdata
        if layout is not None:
            for item in layout:
                if item == "n":
                    name, pos = read_name(buf, pos, lower=False)
                    w.name(name, r.rtype in _COMPRESS)
                else:
                    n = item if isinstance(item, int) else 1 + buf[pos] if pos < end else 1
                    w.out += buf[pos:pos + n]
                    pos += n
                if pos > end:
                    raise PacketError("record data shorter than its names")
        w.out += buf[pos:end]
        _U16.pack_into(w.out, size_at, len(w.out) - size_at - 2)
    return bytes(w.out), fields


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


# The rcodes a server may answer with the header alone (no question, no records): what
# servers do with a message they will not parse or take (RFC 1035 §4.1.1).
BARE_ERRORS = (RCODE_FORMERR, RCODE_SERVFAIL, RCODE_NOTIMP, RCODE_REFUSED)


def bare_error(resp: bytes) -> bool:
    """Is ``resp`` an error answered with no question and no records (an OPT at most)?"""
    return (len(resp) >= HEADER_LEN and resp[4] == resp[5] == resp[6] == resp[7] == resp[8] == resp[9] == 0
            and resp[10] == 0 and resp[11] <= 1 and resp[3] & 0xF in BARE_ERRORS)


def answers_question(resp: bytes, qid: int, question: bytes) -> bool:
    """Is ``resp`` a response to our query with ID ``qid`` and this question (header QR set,
    QUERY, one question, the same name compared case-insensitively, type and class)? An
    error without a question (:func:`bare_error`: FORMERR, SERVFAIL, NOTIMP, REFUSED) with our
    ID is an answer too: the server has answered, and waiting for another would turn a
    query it rejects into a timeout that counts against it. Anything else is ignored by the
    forwarder (spoofing or a stale reply)."""
    end = HEADER_LEN + len(question)
    if len(resp) < HEADER_LEN or (resp[0] << 8 | resp[1]) != qid or resp[2] & 0xF8 != 0x80:
        return False
    if resp[4] == resp[5] == 0:
        return bare_error(resp)
    return len(resp) >= end and resp[4] == 0 and resp[5] == 1 and resp[HEADER_LEN:end].lower() == question.lower()
