"""filters.dns_response: record walk, safe decompression, cache TTLs (RFC 2308), OPT removal."""

from __future__ import annotations

import random

import pytest
from dnslib import AAAA, CNAME, EDNS0, QTYPE, RR, SOA, A, DNSRecord

from filters.dns_response import RCODE_NXDOMAIN, normalise_response, read_name, render_body, walk_records
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
