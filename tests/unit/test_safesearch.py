"""filters.safesearch: the rewrite table, the config value, the CNAME + records answer."""

from __future__ import annotations

import struct

import pytest
from dnslib import DNSRecord

from filters.dns_response import normalise_response
from filters.dns_wire import parse_query
from filters.errors import InputError
from filters.names import name_to_wire
from filters.safesearch import (
    GOOGLE_TARGET,
    MAX_CNAME_TTL,
    SafeSearch,
    google_domains,
    parse_safesearch,
    rewrite_answer,
)
from tests.dnsdata import query


def test_google_domains_from_the_published_list() -> None:
    doms = google_domains()
    assert len(doms) > 180 and len(set(doms)) == len(doms)
    assert {"google.com", "google.co.uk", "google.fr", "google.com.br", "google.cat"} <= set(doms)
    assert all(d.startswith("google.") for d in doms)


def test_rewrites_per_engine() -> None:
    assert SafeSearch().rewrites() == {} and not SafeSearch().enabled
    r = SafeSearch(google=True).rewrites()
    assert r["www.google.com"] == GOOGLE_TARGET and r["www.google.co.jp"] == GOOGLE_TARGET
    assert "google.com" not in r and "www.bing.com" not in r
    r = SafeSearch(bing=True, duckduckgo=True, youtube="strict").rewrites()
    assert r == {"bing.com": "strict.bing.com", "www.bing.com": "strict.bing.com",
                 "duckduckgo.com": "safe.duckduckgo.com", "www.duckduckgo.com": "safe.duckduckgo.com",
                 "www.youtube.com": "restrict.youtube.com", "m.youtube.com": "restrict.youtube.com",
                 "youtubei.googleapis.com": "restrict.youtube.com", "youtube.googleapis.com": "restrict.youtube.com",
                 "www.youtube-nocookie.com": "restrict.youtube.com"}
    assert set(SafeSearch(youtube="moderate").rewrites().values()) == {"restrictmoderate.youtube.com"}
    w = SafeSearch(google=True).wire_rewrites()
    assert w[name_to_wire("www.google.de")] == name_to_wire(GOOGLE_TARGET)


def test_parse_safesearch() -> None:
    assert parse_safesearch(True) == SafeSearch(True, True, True, "moderate")
    assert parse_safesearch(False) == SafeSearch() == parse_safesearch(None)
    assert parse_safesearch({"google": True, "youtube": "strict"}) == SafeSearch(google=True, youtube="strict")
    assert parse_safesearch({"youtube": True}).youtube == "moderate"
    for bad in ({"yahoo": True}, {"google": "yes"}, {"youtube": "extreme"}, "on", 1):
        with pytest.raises(InputError):
            parse_safesearch(bad)


def _endpoint_response(target: bytes, qtype: int, ttl: int) -> bytes:
    """An upstream's answer for the endpoint: A/AAAA with compressed owners, a CNAME inside."""
    q = target + struct.pack(">HH", qtype, 1)
    alias = b"\x05alias" + b"\xc0\x0c"  # alias.<endpoint>, compressed
    an = (b"\xc0\x0c" + struct.pack(">HHIH", 5, 1, ttl + 50, len(alias)) + alias)
    rdata = bytes((216, 239, 38, 120)) if qtype == 1 else bytes(15) + b"\x78"
    owner_off = 12 + len(q) + 12  # where "alias..." starts in this message
    an += struct.pack(">H", 0xC000 | owner_off) + struct.pack(">HHIH", qtype, 1, ttl, len(rdata)) + rdata
    return struct.pack(">HHHHHH", 1, 0x8180, 1, 2, 0, 0) + q + an


def test_rewrite_answer_is_cname_plus_records() -> None:
    target = name_to_wire(GOOGLE_TARGET)
    resp = _endpoint_response(target, 1, 200)
    norm = normalise_response(resp, 12 + len(target) + 4, 86400)
    buf = query("WWW.Google.com", 1, edns=True)
    q = parse_query(buf)
    r = DNSRecord.parse(rewrite_answer(buf, q, target, norm, norm.body, 1232))
    assert str(r.q.qname) == "WWW.Google.com." and r.header.rcode == 0 and not r.header.aa
    assert [(str(x.rname), x.rtype, str(x.rdata)) for x in r.rr] == [
        ("WWW.Google.com.", 5, "forcesafesearch.google.com."),
        ("forcesafesearch.google.com.", 5, "alias.forcesafesearch.google.com."),
        ("alias.forcesafesearch.google.com.", 1, "216.239.38.120")]
    assert r.rr[0].ttl == 200 and r.rr[2].ttl == 200 and [x.rtype for x in r.ar] == [41]
    # Aged body: TTLs counted down, the CNAME follows; never above MAX_CNAME_TTL.
    long = normalise_response(_endpoint_response(target, 28, 5000), 12 + len(target) + 4, 86400)
    r = DNSRecord.parse(rewrite_answer(query("www.google.com", 28), parse_query(query("www.google.com", 28)),
                                       target, long, long.body, 512))
    assert r.rr[0].ttl == MAX_CNAME_TTL and r.rr[2].rtype == 28
    # Too large for the client: TC, no records. ANY: the CNAME alone.
    small = rewrite_answer(buf, q, target, norm, norm.body, 60)
    assert DNSRecord.parse(small).header.tc and not DNSRecord.parse(small).rr
    any_q = query("www.google.com", 255)
    r = DNSRecord.parse(rewrite_answer(any_q, parse_query(any_q), target, None, b"", 512))
    assert [x.rtype for x in r.rr] == [5]
