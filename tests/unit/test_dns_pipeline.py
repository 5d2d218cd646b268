"""appliance.dns.pipeline: the request -> decision step, driven without sockets."""

from __future__ import annotations

import random

import pytest
from dnslib import CNAME, QTYPE, RR, SOA, A, DNSRecord

from appliance.dns.cache import WireCache
from appliance.dns.pipeline import Forward, Pipeline
from appliance.dns.ratelimit import RateLimiter
from filters.dns_answer import BlockAnswers
from filters.policy import NetworkTable, PolicyRule, PolicySet
from signatures.bundle import open_bundle
from tests.bundles import make_bundle
from tests.dnsdata import fuzz_seeds, malformed, mutations, query


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def matcher(tmp_path_factory):
    b = make_bundle(tmp_path_factory.mktemp("b") / "bundle", 3)
    return open_bundle(b).domain_matcher().with_local(block=["local-block.test"])


def _pipeline(matcher, clock=None, limiter=None) -> Pipeline:
    cat = matcher.catalog
    rules = {
        "default": PolicyRule("default", ("gambling",), matcher.policy_mask(cat.mask(["gambling"])),
                              BlockAnswers("null")),
        "staff": PolicyRule("staff", (), matcher.policy_mask(0), BlockAnswers("nxdomain")),
    }
    ps = PolicySet(rules, NetworkTable([("127.0.0.3/32", "staff")], "default"))
    return Pipeline(matcher, ps, WireCache(100, 3600), limiter=limiter, clock=clock or Clock())


def _upstream_answer(fwd: Forward, answers, rcode=0, auth=()) -> bytes:
    q = DNSRecord.parse(fwd.upstream_query(777))
    r = q.reply()
    r.header.rcode = rcode
    for rr in answers:
        r.add_answer(rr)
    for rr in auth:
        r.add_auth(rr)
    return r.pack()


def test_blocked_by_policy_and_local_list(matcher) -> None:
    p = _pipeline(matcher)
    r = DNSRecord.parse(p.handle(query("www.casino.test"), "127.0.0.1"))
    assert str(r.rr[0].rdata) == "0.0.0.0"
    assert p.handle(query("www.casino.test"), "127.0.0.3").__class__ is Forward  # staff: allowed
    r = DNSRecord.parse(p.handle(query("x.local-block.test"), "127.0.0.3"))
    assert r.header.rcode == 3  # local block applies under every policy; staff mode nxdomain
    assert p.counters.snapshot(matcher.catalog.names)["blocked_by_category"] == {"gambling": 1, "local": 1}


def test_bypass_names(matcher) -> None:
    p = _pipeline(matcher)
    assert DNSRecord.parse(p.handle(query("use-application-dns.net"), "127.0.0.1")).header.rcode == 3
    nodata = DNSRecord.parse(p.handle(query("_dns.resolver.arpa", 64), "127.0.0.1"))
    assert nodata.header.rcode == 0 and not nodata.rr


def test_forward_cache_ttl_and_stale(matcher) -> None:
    clock = Clock()
    p = _pipeline(matcher, clock)
    fwd = p.handle(query("WWW.Example.org", qid=1), "127.0.0.1")
    assert isinstance(fwd, Forward) and fwd.question.startswith(b"\x03www\x07example")
    up = _upstream_answer(fwd, [RR("www.example.org", QTYPE.A, rdata=A("192.0.2.10"), ttl=100)])
    r = DNSRecord.parse(p.finish(fwd, up))
    assert r.header.id == 1 and str(r.q.qname) == "WWW.Example.org." and str(r.rr[0].rdata) == "192.0.2.10"
    clock.t += 40
    hit = DNSRecord.parse(p.handle(query("www.example.ORG", qid=2), "127.0.0.1"))
    assert hit.header.id == 2 and hit.rr[0].ttl == 60 and p.counters.cache_hits == 1
    clock.t += 100  # expired: forwarded again; upstream down -> stale answer with TTL 30
    fwd2 = p.handle(query("www.example.org", qid=3), "127.0.0.1")
    assert isinstance(fwd2, Forward)
    stale = DNSRecord.parse(p.finish(fwd2, None))
    assert stale.rr[0].ttl == 30 and p.counters.stale_answers == 1
    fwd3 = p.handle(query("other.example.org", qid=4), "127.0.0.1")
    assert DNSRecord.parse(p.finish(fwd3, None)).header.rcode == 2  # nothing stale: SERVFAIL


def test_negative_answers_are_cached(matcher) -> None:
    p = _pipeline(matcher)
    fwd = p.handle(query("nope.example.org"), "127.0.0.1")
    soa = RR("example.org", QTYPE.SOA, ttl=300, rdata=SOA("ns.example.org", "h.example.org", (1, 2, 3, 4, 60)))
    assert DNSRecord.parse(p.finish(fwd, _upstream_answer(fwd, [], 3, [soa]))).header.rcode == 3
    assert DNSRecord.parse(p.handle(query("nope.example.org"), "127.0.0.1")).header.rcode == 3


def test_blocked_cname_target_blocks_the_answer(matcher) -> None:
    p = _pipeline(matcher)
    fwd = p.handle(query("innocent.example.org"), "127.0.0.1")
    up = _upstream_answer(fwd, [RR("innocent.example.org", QTYPE.CNAME, rdata=CNAME("Promo.Casino.test"), ttl=60),
                                RR("promo.casino.test", QTYPE.A, rdata=A("192.0.2.66"), ttl=60)])
    assert str(DNSRecord.parse(p.finish(fwd, up)).rr[0].rdata) == "0.0.0.0"
    # From the cache too, and per policy: staff may follow the chain.
    assert str(DNSRecord.parse(p.handle(query("innocent.example.org"), "127.0.0.1")).rr[0].rdata) == "0.0.0.0"
    staff = DNSRecord.parse(p.handle(query("innocent.example.org"), "127.0.0.3"))
    assert [str(r.rdata) for r in staff.rr] == ["Promo.Casino.test.", "192.0.2.66"]
    assert p.counters.cname_blocked == 2


def test_failure_policy(matcher) -> None:
    p = _pipeline(matcher)
    bad = malformed()
    assert p.handle(bad["short header"], "127.0.0.1") is None
    assert p.handle(bad["zero length"], "127.0.0.1") is None
    for label in ("compression loop", "pointer past end", "300-byte name", "bad counts (arcount 2, no records)",
                  "trailing garbage", "header only, qdcount 1"):
        r = DNSRecord.parse(p.handle(bad[label], "127.0.0.1"))
        assert r.header.rcode == 1 and r.header.id == 0xBEEF, label
    chaos = DNSRecord.parse(p.handle(query("version.bind", 16, qclass=3), "127.0.0.1"))
    assert chaos.header.rcode == 5
    notify = bytearray(query("example.org"))
    notify[2] |= 4 << 3
    assert DNSRecord.parse(p.handle(bytes(notify), "127.0.0.1")).header.rcode == 4
    # A query carrying an authority record is odd but readable: the slow path (dnslib)
    # rewrites it as a plain query, which the fast path then blocks.
    odd = bytearray(query("www.casino.test"))
    odd[9] = 1  # NSCOUNT
    odd += b"\xc0\x0c\x00\x02\x00\x01\x00\x00\x00\x3c\x00\x02\xc0\x0c"
    r = DNSRecord.parse(p.handle(bytes(odd), "127.0.0.1"))
    assert str(r.q.qname) == "www.casino.test." and str(r.rr[0].rdata) == "0.0.0.0"
    # dnslib refuses forward compression pointers: FORMERR.
    forward = query("casino.test")[:12] + b"\x03www\xc0\x16\x00\x01\x00\x01" + b"\x06casino\x04test\x00"
    assert DNSRecord.parse(p.handle(forward, "127.0.0.1")).header.rcode == 1
    assert p.counters.slow_path >= 1


def test_internal_error_is_servfail(matcher) -> None:
    p = _pipeline(matcher)
    p.policies = None  # type: ignore[assignment]  # any bug inside the pipeline
    r = DNSRecord.parse(p.handle(query("example.org", qid=9), "127.0.0.1"))
    assert r.header.rcode == 2 and r.header.id == 9 and p.counters.internal_errors == 1


def test_rate_limit(matcher) -> None:
    clock = Clock()
    p = _pipeline(matcher, clock, RateLimiter(rate=1.0, burst=3))
    answers = [p.handle(query("casino.test"), "127.0.0.1") for _ in range(5)]
    assert sum(a is not None for a in answers) == 3 and p.counters.rate_limited == 2
    clock.t += 1.0
    assert p.handle(query("casino.test"), "127.0.0.1") is not None


def test_fuzz_never_raises(matcher) -> None:
    p = _pipeline(matcher)
    rng = random.Random(6)
    seeds = fuzz_seeds() + list(malformed().values()) + [query("casino.test", edns=True)]
    for seed in seeds:
        for buf in [seed, *mutations(seed, rng, 40)]:
            p.handle(buf, "127.0.0.1")
    assert p.counters.internal_errors == 0


def test_query_log_all_mode_through_the_pipeline(matcher, tmp_path) -> None:
    """Every way a query ends is logged once with `queries: all`: blocked, by CNAME,
    upstream, cache, stale, SERVFAIL (appliance/observe/querylog.py)."""
    import json

    from appliance.config.log import LogConfig
    from appliance.observe.querylog import ClientPrivacy, QueryLog
    from appliance.observe.stats import SharedStats

    clock = Clock()
    p = _pipeline(matcher, clock)
    stats = SharedStats.create(3)
    priv = ClientPrivacy(tmp_path, "ip")
    p.qlog = QueryLog(tmp_path, LogConfig(queries="all", clients="ip"), priv, stats.slot(0),
                      clock=lambda: 1_800_000_000.0)
    p.handle(query("www.casino.test"), "127.0.0.9")
    fwd = p.handle(query("innocent.example.org", qid=5), "127.0.0.9")
    p.finish(fwd, _upstream_answer(fwd, [RR("innocent.example.org", QTYPE.CNAME, rdata=CNAME("casino.test"),
                                            ttl=60), RR("casino.test", QTYPE.A, rdata=A("192.0.2.1"), ttl=60)]))
    fwd = p.handle(query("Www.Example.org", qid=6), "127.0.0.9")
    p.finish(fwd, _upstream_answer(fwd, [RR("www.example.org", QTYPE.A, rdata=A("192.0.2.10"), ttl=100)]))
    p.handle(query("www.example.org", qid=7), "127.0.0.9")
    clock.t += 200
    p.finish(p.handle(query("www.example.org", qid=8), "127.0.0.9"), None)
    p.finish(p.handle(query("nothing.example.org", qid=9), "127.0.0.9"), None)
    p.qlog.flush()
    got = [json.loads(x) for f in (tmp_path / "logs").glob("queries-*.jsonl") for x in f.read_text().splitlines()]
    assert [(g["name"], g["action"], g.get("answer")) for g in got] == [
        ("www.casino.test", "block", None), ("innocent.example.org", "block", "cname"),
        ("www.example.org", "allow", "upstream"), ("www.example.org", "allow", "cache"),
        ("www.example.org", "allow", "stale"), ("nothing.example.org", "allow", "servfail")]
    assert {g["client"] for g in got} == {"127.0.0.9"} and got[0]["categories"] == ["gambling"]
    assert stats.top_blocked() == [("innocent.example.org", 1), ("www.casino.test", 1)]


def _cd(buf: bytes) -> bytes:
    """The query with CD (checking disabled, RFC 4035 §3.2.2) set."""
    return buf[:3] + bytes((buf[3] | 0x10,)) + buf[4:]


def test_any_with_do_is_forwarded_any_without_do_minimal(matcher) -> None:
    p = _pipeline(matcher)
    plain = DNSRecord.parse(p.handle(query("www.example.org", 255), "127.0.0.1"))
    assert [rr.rtype for rr in plain.rr] == [QTYPE.HINFO]  # RFC 8482
    fwd = p.handle(query("www.example.org", 255, edns=True, do=True), "127.0.0.1")
    assert isinstance(fwd, Forward)  # a validator could not accept a synthesised HINFO
    assert DNSRecord.parse(fwd.upstream_query(1)).q.qtype == 255


@pytest.mark.parametrize("array", [False, True], ids=["WireCache", "ArrayCache"])
def test_cd_answers_never_reach_cd0_clients(matcher, array: bool) -> None:
    from appliance.dns.cache import ArrayCache

    p = _pipeline(matcher)
    if array:
        p.cache = ArrayCache(100, 3600, seed=1)
    for do in (False, True):
        fwd = p.handle(_cd(query("bogus.example.org", edns=do, do=do)), "127.0.0.1")
        assert isinstance(fwd, Forward) and fwd.upstream_query(1)[3] & 0x10  # CD passed upstream
        up = _upstream_answer(fwd, [RR("bogus.example.org", QTYPE.A, rdata=A("192.0.2.99"), ttl=300)])
        assert str(DNSRecord.parse(p.finish(fwd, up)).rr[0].rdata) == "192.0.2.99"
        hit = p.handle(_cd(query("bogus.example.org", edns=do, do=do)), "127.0.0.1")
        assert isinstance(hit, bytes)  # cached for CD=1 clients ...
        again = p.handle(query("bogus.example.org", edns=do, do=do), "127.0.0.1")
        assert isinstance(again, Forward) and not again.upstream_query(1)[3] & 0x10  # ... and for them only
        # the validating upstream's verdict for CD=0: SERVFAIL, and no stale CD=1 answer instead
        servfail = DNSRecord.parse(p.finish(again, _upstream_answer(again, [], rcode=2)))
        assert servfail.header.rcode == 2 and not servfail.rr


def test_zone_transfers_notify_and_update_are_answered_here(matcher) -> None:
    p = _pipeline(matcher)
    for qtype in (251, 252):  # IXFR, AXFR: REFUSED with the question, never forwarded
        r = DNSRecord.parse(p.handle(query("example.org", qtype), "127.0.0.1"))
        assert r.header.rcode == 5 and str(r.q.qname) == "example.org." and r.q.qtype == qtype
    ixfr = bytearray(query("example.org", 251))  # as sent: the client's SOA in the authority section
    ixfr[9] = 1
    ixfr += b"\xc0\x0c\x00\x06\x00\x01\x00\x00\x00\x00\x00\x16\x00\x00" + bytes(20)
    assert DNSRecord.parse(p.handle(bytes(ixfr), "127.0.0.1")).header.rcode == 5
    for opcode in (4, 5):  # NOTIFY (RFC 1996), UPDATE (RFC 2136): NOTIMP
        msg = bytearray(query("example.org", 6))
        msg[2] = opcode << 3
        assert DNSRecord.parse(p.handle(bytes(msg), "127.0.0.1")).header.rcode == 4
    assert p.counters.forwarded == 0


def test_upstream_errors_are_passed_on(matcher) -> None:
    clock = Clock()
    p = _pipeline(matcher, clock)
    # FORMERR, NOTIMP with no question section: its verdict, passed on; its REFUSED: our SERVFAIL
    for rcode, passed in ((1, 1), (4, 4), (5, 2)):
        fwd = p.handle(query("odd.example.org", 65, qid=3), "127.0.0.1")
        bare = (777).to_bytes(2, "big") + bytes((0x80, rcode)) + bytes(8)
        r = DNSRecord.parse(p.finish(fwd, bare))
        assert r.header.rcode == passed and r.header.id == 3 and str(r.q.qname) == "odd.example.org." and not r.rr
        r = DNSRecord.parse(p.finish(fwd, _upstream_answer(fwd, [], rcode=rcode)))  # with the question too
        assert r.header.rcode == passed
    # REFUSED still gets a stale answer when there is one (RFC 8767)
    fwd = p.handle(query("www.example.org"), "127.0.0.1")
    p.finish(fwd, _upstream_answer(fwd, [RR("www.example.org", QTYPE.A, rdata=A("192.0.2.10"), ttl=10)]))
    clock.t += 20
    fwd = p.handle(query("www.example.org"), "127.0.0.1")
    stale = DNSRecord.parse(p.finish(fwd, _upstream_answer(fwd, [], rcode=5)))
    assert stale.header.rcode == 0 and stale.rr[0].ttl == 30
