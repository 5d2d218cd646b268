"""filters.dns_response: record walk, safe decompression, cache TTLs (RFC 2308), OPT removal."""

from __future__ import annotations

import random
import struct

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from dnslib import AAAA, CNAME, EDNS0, QTYPE, RR, SOA, A, DNSRecord

from filters.dns_response import (
    RCODE_FORMERR,
    RCODE_NOTIMP,
    RCODE_NXDOMAIN,
    answers_question,
    bare_error,
    normalise_response,
    read_name,
    render_body,
    walk_records,
)
from filters.dns_wire import parse_query
from filters.errors import PacketError
from tests.dnsdata import fuzz_seeds, malformed, mutations


def _response(name: str = "www.example.org", qtype: str = "A", *, rcode: int = 0, edns: bool = True,
              answers=(), authority=()) -> tuple[bytes, int]:
    q = DNSRecord.question(name, qtype)
    if edns:
        q.add_ar(EDNS0(udp_len=1232))
    r = q.reply()
    r.header.rcode = rcode
    for rr in answers:
        r.add_answer(rr)
    for rr in authority:
        r.add_auth(rr)
    buf = r.pack()
    return buf, parse_query(q.pack()).question_end


def test_positive_answer_ttl_cnames_and_opt_stripped() -> None:
    buf, qend = _response(answers=[
        RR("www.example.org", QTYPE.CNAME, rdata=CNAME("Edge.CDN.example.net"), ttl=300),
        RR("edge.cdn.example.net", QTYPE.A, rdata=A("192.0.2.1"), ttl=60)])
    n = normalise_response(buf, qend, max_ttl=86400)
    assert n.ttl == 60 and n.counts == (2, 0, 0)
    assert n.cname_targets == [b"\x04edge\x03cdn\x07example\x03net\x00"]
    assert b"\x00\x00\x29" not in n.body[-11:]  # the OPT is gone
    assert len(n.ttl_fields) == 2
    aged = render_body(n, 50)
    recs = walk_records(buf[:qend] + aged, qend, (2, 0, 0))
    assert [r.ttl for r in recs] == [250, 10]
    assert [r.ttl for r in walk_records(buf[:qend] + render_body(n, 400), qend, (2, 0, 0))] == [0, 0]
    assert n.ttl is not None and normalise_response(buf, qend, max_ttl=30).ttl == 30


def test_negative_ttl_from_soa() -> None:
    soa = RR("example.org", QTYPE.SOA, ttl=900,
             rdata=SOA("ns.example.org", "host.example.org", (1, 2, 3, 4, 120)))
    buf, qend = _response(rcode=RCODE_NXDOMAIN, authority=[soa])
    n = normalise_response(buf, qend, 86400)
    assert n.rcode == RCODE_NXDOMAIN and n.ttl == 120  # min(SOA TTL, MINIMUM)
    nodata, qend = _response(qtype="AAAA", authority=[soa])
    assert normalise_response(nodata, qend, 86400).ttl == 120
    bare, qend = _response(rcode=RCODE_NXDOMAIN)
    assert normalise_response(bare, qend, 86400).ttl is None  # no SOA: not cached


def test_ttl_zero_and_servfail_not_cached() -> None:
    buf, qend = _response(answers=[RR("www.example.org", QTYPE.AAAA, rdata=AAAA("2001:db8::1"), ttl=0)])
    assert normalise_response(buf, qend, 86400).ttl is None
    buf, qend = _response(rcode=2)
    assert normalise_response(buf, qend, 86400).ttl is None


def test_read_name_rejects_loops_and_forward_pointers() -> None:
    hdr = b"\x00" * 12
    with pytest.raises(PacketError):
        read_name(hdr + b"\xc0\x0c", 12)  # points at itself
    with pytest.raises(PacketError):
        read_name(hdr + b"\x01a\xc0\x0c", 12)  # loop through a label
    with pytest.raises(PacketError):
        read_name(hdr + b"\xc0\x20", 12)  # forward / past the end
    assert read_name(hdr + b"\x01a\x00\x01B\xc0\x0c", 15) == (b"\x01b\x01a\x00", 19)


def test_fuzz_seeds_raise_only_packet_errors() -> None:
    seeds = fuzz_seeds() + list(malformed().values())
    rng = random.Random(5)
    n = 0
    for seed in seeds:
        for buf in [seed, *mutations(seed, rng, 60)]:
            n += 1
            for start in (12, 17, len(buf) // 2):
                try:
                    normalise_response(buf, start, 86400)
                except PacketError:
                    pass
                try:
                    read_name(buf, start)
                except PacketError:
                    pass
    assert n > 100


# -- scrubbing: minimal responses, with what DNSSEC needs kept ---------------------------------

SIG = "{covered} 13 3 300 20300101000000 20200101000000 1234 {signer} AAAA"


def _dnspython_response(qname: str, qtype: str, *, rcode: int = 0, answer=(), authority=(), additional=()):
    """(wire, question end) of a response built by dnspython (which compresses every name it
    can: kept records' names point into records that scrubbing drops)."""
    q = dns.message.make_query(qname, qtype, want_dnssec=True)
    r = dns.message.make_response(q)
    r.set_rcode(dns.rcode.Rcode.make(rcode))
    for section, texts in ((r.answer, answer), (r.authority, authority), (r.additional, additional)):
        for text in texts:
            name, ttl, rdtype, rdata = text.split(" ", 3)
            section.append(dns.rrset.from_text(dns.name.from_text(name), int(ttl), "IN", rdtype, rdata))
    return r.to_wire(), 12 + len(dns.name.from_text(qname).to_wire() or b"") + 4


def _parsed(buf: bytes, qend: int, n) -> dns.message.Message:
    """What a client receives: our header and the question, then the normalised body."""
    head = buf[:4] + struct.pack(">HHHH", 1, *n.counts)
    return dns.message.from_wire(head + buf[12:qend] + n.body)


def _names(section) -> list[tuple[str, str]]:
    return [(rs.name.to_text().lower(), dns.rdatatype.to_text(rs.rdtype)) for rs in section]



def test_scrub_keeps_the_chain_with_signatures_and_drops_the_rest() -> None:
    buf, qend = _dnspython_response("www.example.org", "A", answer=[
        "bank.example 300 A 198.51.100.66",  # first, so that the kept names point into it
        "www.example.org 300 CNAME Edge.CDN.example.net.",
        "www.example.org 300 RRSIG " + SIG.format(covered="CNAME", signer="example.org."),
        "www.example.org 300 AAAA 2001:db8::6",  # not the type asked
        "edge.cdn.example.net 60 A 192.0.2.1",
        "edge.cdn.example.net 60 RRSIG " + SIG.format(covered="A", signer="example.net."),
        "edge.cdn.example.net 60 RRSIG " + SIG.format(covered="AAAA", signer="example.net."),  # covers nothing kept
    ], authority=["example.org 300 NS ns.example.org.", "example 300 NS ns.evil.example.",
                  "other.test 300 SOA ns.other.test. h.other.test. 1 2 3 4 5"],
        additional=["ns.example.org 300 A 192.0.2.53", "ns.evil.example 300 A 198.51.100.53"])
    n = normalise_response(buf, qend, 86400)
    assert n.counts == (4, 1, 0) and n.ttl == 60
    m = _parsed(buf, qend, n)
    assert _names(m.answer) == [("www.example.org.", "CNAME"), ("www.example.org.", "RRSIG"),
                                ("edge.cdn.example.net.", "A"), ("edge.cdn.example.net.", "RRSIG")]
    assert m.answer[0][0].target.to_text() == "Edge.CDN.example.net."  # the letter case is kept
    assert [rd.to_text() for rd in m.answer[3]] == [SIG.format(covered="A", signer="example.net.")]
    assert _names(m.authority) == [("example.org.", "NS")] and not m.additional
    assert n.cname_targets == [b"\x04edge\x03cdn\x07example\x03net\x00"]
    # the TTL fields point at the TTLs of the records written anew
    aged = dns.message.from_wire(buf[:4] + struct.pack(">HHHH", 1, *n.counts) + buf[12:qend] + render_body(n, 10))
    assert [rs.ttl for rs in aged.answer] == [290, 290, 50, 50]


def test_names_pointing_into_dropped_records_are_rewritten() -> None:
    """By hand: the junk record holds the name the kept ones point at."""
    def rr(owner: bytes, rtype: int, rdata: bytes) -> bytes:
        return owner + struct.pack(">HHIH", rtype, 1, 300, len(rdata)) + rdata

    question = b"\x01a\x04test\x00" + b"\x00\x01\x00\x01"
    qend = 12 + len(question)
    junk_owner_at = qend  # "x.other.example" starts the answer section; "other.example" at +2
    junk = rr(b"\x01x\x05other\x07example\x00", 1, bytes((198, 51, 100, 1)))
    other = bytes((0xC0, junk_owner_at + 2))
    cname = rr(b"\xc0\x0c", 5, b"\x01b" + other)
    a = rr(b"\x01b" + other, 1, bytes((192, 0, 2, 5)))
    buf = struct.pack(">HHHHHH", 7, 0x8180, 1, 3, 0, 0) + question + junk + cname + a
    n = normalise_response(buf, qend, 86400)
    m = _parsed(buf, qend, n)
    assert [(rs.name.to_text(), rs[0].to_text()) for rs in m.answer] == [("a.test.", "b.other.example."),
                                                                         ("b.other.example.", "192.0.2.5")]
    assert n.cname_targets == [b"\x01b\x05other\x07example\x00"]


def test_negative_answer_keeps_its_zone_soa_and_denial_only() -> None:
    buf, qend = _dnspython_response("nx.example.org", "A", rcode=RCODE_NXDOMAIN, authority=[
        "other.test 300 SOA ns.other.test. h.other.test. 1 2 3 4 5",  # another zone's: dropped
        "example.org 900 SOA ns.example.org. h.example.org. 1 2 3 4 120",
        "example.org 900 RRSIG " + SIG.format(covered="SOA", signer="example.org."),
        "a.example.org 300 NSEC z.example.org. A RRSIG NSEC",
        "a.example.org 300 RRSIG " + SIG.format(covered="NSEC", signer="example.org."),
        "x.other.test 300 NSEC y.other.test. A RRSIG NSEC",
        "evil.example 300 NS ns.evil.example."])
    n = normalise_response(buf, qend, 86400)
    m = _parsed(buf, qend, n)
    assert _names(m.authority) == [("example.org.", "SOA"), ("example.org.", "RRSIG"), ("a.example.org.", "NSEC"),
                                   ("a.example.org.", "RRSIG")]
    assert n.ttl == 120 and n.rcode == RCODE_NXDOMAIN  # from the kept SOA, not the dropped one's 5


def test_wildcard_answer_keeps_the_nsec_that_proves_it() -> None:
    buf, qend = _dnspython_response("x.wild.example.org", "A", answer=[
        "x.wild.example.org 300 A 192.0.2.7",
        "x.wild.example.org 300 RRSIG " + SIG.format(covered="A", signer="example.org.")],
        authority=["w.example.org 300 NSEC z.example.org. A RRSIG NSEC",
                   "w.example.org 300 RRSIG " + SIG.format(covered="NSEC", signer="example.org."),
                   "q.other.test 300 NSEC r.other.test. A RRSIG NSEC",
                   "q.other.test 300 RRSIG " + SIG.format(covered="NSEC", signer="other.test.")])
    m = _parsed(buf, qend, normalise_response(buf, qend, 86400))
    assert _names(m.authority) == [("w.example.org.", "NSEC"), ("w.example.org.", "RRSIG")]


def test_dname_chain_and_any() -> None:
    buf, qend = _dnspython_response("www.sub.example.org", "A", answer=[
        "sub.example.org 300 DNAME sub.example.net.", "www.sub.example.org 300 CNAME www.sub.example.net.",
        "www.sub.example.net 300 A 192.0.2.9", "unrelated.example.net 300 A 192.0.2.10"])
    n = normalise_response(buf, qend, 86400)
    assert _names(_parsed(buf, qend, n).answer) == [("sub.example.org.", "DNAME"), ("www.sub.example.org.", "CNAME"),
                                                    ("www.sub.example.net.", "A")]
    assert n.cname_targets == [b"\x03sub\x07example\x03net\x00", b"\x03www\x03sub\x07example\x03net\x00"]
    buf, qend = _dnspython_response("www.example.org", "ANY", answer=[
        "www.example.org 300 A 192.0.2.1", "www.example.org 300 TXT hello",
        "www.example.org 300 RRSIG " + SIG.format(covered="A", signer="example.org."),
        "mail.example.org 300 A 192.0.2.2"])
    assert _names(_parsed(buf, qend, normalise_response(buf, qend, 86400)).answer) == [
        ("www.example.org.", "A"), ("www.example.org.", "TXT"), ("www.example.org.", "RRSIG")]


def test_nothing_to_scrub_keeps_the_bytes() -> None:
    buf, qend = _dnspython_response("www.example.org", "A", answer=[
        "www.example.org 300 A 192.0.2.1",
        "www.example.org 300 RRSIG " + SIG.format(covered="A", signer="example.org.")],
        authority=["example.org 300 NS ns.example.org."])
    n = normalise_response(buf, qend, 86400)
    opt_at = len(buf) - 11  # dnspython puts the OPT last
    assert n.body == buf[qend:opt_at] and n.counts == (2, 1, 0)


def test_errors_without_a_question_are_answers() -> None:
    bare = struct.pack(">HHHHHH", 4242, 0x8000 | RCODE_FORMERR, 0, 0, 0, 0)
    question = b"\x01a\x04test\x00\x00\xfb\x00\x01"
    assert bare_error(bare) and answers_question(bare, 4242, question)
    assert not answers_question(bare, 4243, question)  # not our ID
    assert not answers_question(struct.pack(">HHHHHH", 4242, 0x8000, 0, 0, 0, 0), 4242, question)  # NOERROR
    assert not answers_question(struct.pack(">HHHHHH", 4242, 0x8000 | RCODE_FORMERR, 0, 1, 0, 0), 4242, question)
    n = normalise_response(bare, 12 + len(question), 86400)
    assert n.rcode == RCODE_FORMERR and n.counts == (0, 0, 0) and n.body == b"" and n.ttl is None
    notimp = struct.pack(">HHHHHH", 1, 0x8000 | RCODE_NOTIMP, 0, 0, 0, 1) + b"\x00\x00\x29\x04\xd0" + bytes(6)
    assert bare_error(notimp) and normalise_response(notimp, 12 + len(question), 86400).rcode == RCODE_NOTIMP


def test_scrubbing_mutated_responses_raises_only_packet_errors() -> None:
    seeds = [
        _dnspython_response("www.example.org", "A", answer=[
            "bank.example 300 A 198.51.100.66", "www.example.org 300 CNAME edge.cdn.example.net.",
            "edge.cdn.example.net 60 A 192.0.2.1",
            "edge.cdn.example.net 60 RRSIG " + SIG.format(covered="A", signer="example.net.")],
            authority=["example 300 NS ns.evil.example.", "example.org 300 NS ns.example.org."],
            additional=["ns.example.org 300 A 192.0.2.53", "x.test 300 MX 10 mail.example.org."]),
        _dnspython_response("nx.example.org", "A", rcode=RCODE_NXDOMAIN, authority=[
            "other.test 300 SOA ns.other.test. h.other.test. 1 2 3 4 5",
            "example.org 900 SOA ns.example.org. h.example.org. 1 2 3 4 120",
            "a.example.org 300 NSEC z.example.org. A RRSIG NSEC",
            "a.example.org 300 RRSIG " + SIG.format(covered="NSEC", signer="example.org."),
            "x.example.org 300 SRV 0 0 443 srv.example.org.",
            'y.example.org 300 NAPTR 1 2 "u" "s" "" t.example.org.']),
    ]
    rng = random.Random(11)
    ok = 0
    for buf, qend in seeds:
        for m in mutations(buf, rng, 3000):
            if len(m) < qend or m[12:qend] != buf[12:qend]:
                continue  # the forwarder only takes responses to its own question
            try:
                n = normalise_response(m, qend, 86400)
            except PacketError:
                continue
            ok += 1
            # what we keep is a well-formed message: every record and name reads back
            for r in walk_records(m[:qend] + n.body, qend, n.counts):
                read_name(m[:qend] + n.body, r.owner)
    assert ok > 100
