"""filters.dns_answer: every built response parses (dnslib) and says what it should."""

from __future__ import annotations

import pytest
from dnslib import QTYPE, RR, A, DNSRecord

from filters.dns_answer import (
    BlockAnswers,
    badvers_response,
    error_response,
    minimal_any,
    negative_answer,
    render_cached,
)
from filters.dns_response import normalise_response
from filters.dns_wire import parse_query
from filters.errors import InputError
from tests.dnsdata import query


def _ask(answers: BlockAnswers, name: str, qtype: int, **kw) -> DNSRecord:
    buf = query(name, qtype, **kw)
    out = answers.answer(buf, parse_query(buf))
    return DNSRecord.parse(out)


def test_null_mode() -> None:
    b = BlockAnswers("null", ttl=10)
    r = _ask(b, "Ads.Example.org", 1, qid=99)
    assert r.header.id == 99 and r.header.qr == 1 and r.header.rd == 1 and r.header.ra == 1
    assert str(r.q.qname) == "Ads.Example.org."  # the client's case is echoed
    assert [(str(a.rdata), a.ttl) for a in r.rr] == [("0.0.0.0", 10)]
    assert [str(a.rdata) for a in _ask(b, "ads.example.org", 28).rr] == ["::"]
    mx = _ask(b, "ads.example.org", 15)
    assert mx.header.rcode == 0 and not mx.rr and mx.auth[0].rtype == QTYPE.SOA  # NODATA


def test_nxdomain_refused_blockpage_modes() -> None:
    nx = _ask(BlockAnswers("nxdomain", ttl=5), "x.test", 1)
    assert nx.header.rcode == 3 and nx.auth[0].rdata.times[-1] == 5
    assert _ask(BlockAnswers("refused"), "x.test", 1).header.rcode == 5
    bp = BlockAnswers("blockpage", addresses=("192.0.2.8",))
    assert [str(a.rdata) for a in _ask(bp, "x.test", 1).rr] == ["192.0.2.8"]
    assert not _ask(bp, "x.test", 28).rr  # no v6 block page: NODATA
    with pytest.raises(InputError):
        BlockAnswers("blockpage")
    with pytest.raises(InputError):
        BlockAnswers("sinkhole")


def test_edns_is_echoed_with_do() -> None:
    r = _ask(BlockAnswers("null"), "x.test", 1, edns=True, do=True)
    opt = [a for a in r.ar if a.rtype == QTYPE.OPT]
    assert len(opt) == 1 and opt[0].edns_do and opt[0].rclass == 1232


def test_error_responses() -> None:
    buf = query("x.test", edns=True)
    q = parse_query(buf)
    assert error_response(b"\x01\x02\x03", 1) is None
    hdr_only = DNSRecord.parse(error_response(buf[:12], 1))
    assert hdr_only.header.rcode == 1 and hdr_only.header.q == 0
    formerr = DNSRecord.parse(error_response(buf, 1, q))
    assert formerr.header.rcode == 1 and not formerr.ar  # RFC 6891 §7: no OPT on FORMERR
    servfail = DNSRecord.parse(error_response(buf, 2, q))
    assert servfail.header.rcode == 2 and len(servfail.ar) == 1
    bad = DNSRecord.parse(badvers_response(buf, q))
    assert bad.ar[0].rtype == QTYPE.OPT and (bad.ar[0].ttl >> 24) == 1
    anyr = DNSRecord.parse(minimal_any(buf, q))
    assert anyr.rr[0].rtype == QTYPE.HINFO
    assert DNSRecord.parse(negative_answer(buf, q, 3)).header.rcode == 3


def test_render_cached_rewrites_id_case_and_truncates() -> None:
    up_q = DNSRecord.question("www.example.org", "A")
    up = up_q.reply()
    for i in range(40):
        up.add_answer(RR("www.example.org", QTYPE.A, rdata=A(f"192.0.2.{i}"), ttl=300))
    buf = up.pack()
    n = normalise_response(buf, parse_query(up_q.pack()).question_end, 86400)
    client = query("WWW.example.ORG", 1, qid=4242)
    q = parse_query(client)
    out = DNSRecord.parse(render_cached(client, q, n, n.body, 65535))
    assert out.header.id == 4242 and str(out.q.qname) == "WWW.example.ORG." and len(out.rr) == 40
    tc = DNSRecord.parse(render_cached(client, q, n, n.body, 512))
    assert tc.header.tc == 1 and not tc.rr
