"""The DNS fast path (filters/_dns_kernels.py via filters/dns_fast.py) against the Python pipeline.

Two pipelines are built alike — same matcher, policies, cache layout and key, rate limiter,
clock. One answers every query in Python (``Pipeline.handle``); the other lets the batch
kernel answer what it can and hands the rest to its pipeline as the server does. Every
answer must be the same bytes (TTLs included: both count down on the same clock), every
forwarded query the same question, and the counters the same numbers.
"""

from __future__ import annotations

import os
import random
import struct

import numpy as np
import pytest
from dnslib import DNSRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.dns.cache import ArrayCache, WireCache
from appliance.dns.pipeline import Forward, Pipeline
from appliance.dns.ratelimit import ArrayRateLimiter
from filters.dns_answer import BlockAnswers
from filters.dns_fast import ACT_DROP, ACT_PYTHON, Batch, FastTables
from filters.names import wire_to_name
from filters.policy import NetworkTable, PolicyRule, PolicySet
from signatures.bundle import open_bundle
from tests.bundles import make_bundle
from tests.dnsdata import hostile_packets, mutations, query

EXAMPLES = int(os.environ.get("SCHOOLGATE_HYPOTHESIS_EXAMPLES", "150"))

BLOCKED = ["casino.test", "www.casino.test", "x.y.casino.test", "ads.example", "v3.test", "local-block.test",
           "a.local-block.test"]
ALLOWED = ["example.org", "www.example.org", "fine.casino.test", "innocent.example", "cdn.example.net",
           "big.example", "nx.example", "nodata.example", "zero.example", "servfail.example", "down.example",
           "x" * 63 + ".example", "a.b.c.d.e.f.g.h.example", "xn--bcher-kva.example", "_srv._tcp.example"]
BYPASS = ["use-application-dns.net", "mask.icloud.com", "mask-h2.icloud.com", "_dns.resolver.arpa"]
CLIENTS = ["127.0.0.1", "127.0.0.3", "10.1.2.3", "10.1.9.9", "::1", "fd00:10::5", "::ffff:10.1.2.3",
           "2001:db8::1", "192.0.2.7"]
QTYPES = [1, 28, 15, 16, 255, 65, 6, 33, 12]


class Clock:
    def __init__(self) -> None:
        self.t = 5000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def matcher(tmp_path_factory):
    b = make_bundle(tmp_path_factory.mktemp("fast") / "bundle", 3, extra=("ads.example",))
    return open_bundle(b).domain_matcher().with_local(block=["local-block.test"], allow=["ok.ads.example"])


def policies(matcher) -> PolicySet:
    cat = matcher.catalog
    gam = matcher.policy_mask(cat.mask(["gambling"]))
    rules = {
        "default": PolicyRule("default", ("gambling",), gam, BlockAnswers("null")),
        "staff": PolicyRule("staff", (), matcher.policy_mask(0), BlockAnswers("nxdomain")),
        "students": PolicyRule("students", ("gambling",), gam,
                               BlockAnswers("blockpage", 30, ("192.0.2.80", "2001:db8::80"))),
        "lab": PolicyRule("lab", ("gambling",), gam, BlockAnswers("refused")),
        "guest": PolicyRule("guest", ("gambling",), gam, BlockAnswers("blockpage", 5, ("192.0.2.81",))),
    }
    nets = NetworkTable([("127.0.0.3/32", "staff"), ("10.1.0.0/16", "students"), ("fd00:10::/48", "students"),
                         ("10.1.9.0/24", "lab"), ("2001:db8::/32", "guest")], "default")
    return PolicySet(rules, nets)


class Twin:
    """The Python pipeline and the fast path side by side, on one clock."""

    def __init__(self, matcher, *, rate: float = 0.0, burst: float = 4, cache_size: int = 64,
                 max_clients: int = 8) -> None:
        self.clock = Clock()
        ps = policies(matcher)

        def pipe() -> Pipeline:
            limiter = ArrayRateLimiter(rate, burst, max_clients, seed=3) if rate else None
            return Pipeline(matcher, ps, ArrayCache(cache_size, 600, seed=5), limiter=limiter, clock=self.clock)

        self.py, self.fast = pipe(), pipe()
        self.tables = FastTables.build(ps, matcher)
        self.batch = Batch(64)
        self.names = matcher.catalog.names
        self.kernel_answers = 0

    def run(self, packets: list[bytes], clients: list[str]) -> list[tuple[object, object]]:
        """Both paths' results for one batch, in order."""
        ref = [self.py.handle(p, c) for p, c in zip(packets, clients)]
        f = self.fast
        limiter = f.limiter.arrays if f.limiter is not None else _disabled()
        out = self.batch.run_packets(packets, clients, self.tables, f.cache.arrays, limiter, f.counters.fast,
                                     self.clock())
        got = []
        for p, c, o in zip(packets, clients, out):
            if isinstance(o, bytes):
                self.kernel_answers += 1
                got.append(o)
            elif o == ACT_DROP:
                got.append(None)
            else:
                assert o == ACT_PYTHON
                got.append(f.handle(p, c, True, rate_checked=True))
        return list(zip(ref, got))

    def check(self, packets: list[bytes], clients: list[str], upstream=None) -> None:
        for (a, b), p in zip(self.run(packets, clients), packets):
            if isinstance(a, Forward):
                assert isinstance(b, Forward), (p, b)
                assert (a.key, a.limit, a.buf, a.rule.name, a.question) == (b.key, b.limit, b.buf, b.rule.name,
                                                                            b.question)
                response = upstream(a) if upstream else None
                assert self.py.finish(a, response) == self.fast.finish(b, response), p
            else:
                assert a == b, (p, a, b)

    def counters(self, pipeline: Pipeline) -> dict:
        snap = pipeline.counters.snapshot(self.names)
        snap.pop("fast_path")
        return snap

    def check_counters(self) -> None:
        assert self.counters(self.py) == self.counters(self.fast)


_DISABLED = None


def _disabled():
    global _DISABLED
    if _DISABLED is None:
        from appliance.dns.ratelimit import disabled_limiter

        _DISABLED = disabled_limiter()
    return _DISABLED


def _rr(owner: bytes, rtype: int, ttl: int, rdata: bytes) -> bytes:
    return owner + struct.pack(">HHIH", rtype, 1, ttl, len(rdata)) + rdata


def upstream_answer(fwd: Forward, kind: int | None = None) -> bytes | None:
    """An upstream's response to ``fwd`` (built as bytes: the question may hold any byte),
    chosen by the name (or ``kind``)."""
    question = fwd.question
    name = wire_to_name(question) if b"\x00" not in question[:-5] else ""
    if kind is None:
        kind = {"innocent.example": 1, "cdn.example.net": 2, "nx.example": 3, "nodata.example": 4,
                "big.example": 5, "zero.example": 6, "servfail.example": 7, "down.example": 8}.get(name, 0)
    q = b"\xc0\x0c"  # the question's name
    an: list[bytes] = []
    ns: list[bytes] = []
    rcode = 0
    if kind == 0:
        for i in range(1 + len(question) % 3):
            an.append(_rr(q, 1, 60 + 7 * i, bytes((192, 0, 2, 10 + i))))
        ns.append(_rr(q, 2, 3600, b"\x02ns\x07example\x00"))
    elif kind == 1:
        an.append(_rr(q, 5, 120, b"\x05Promo\x06Casino\x04test\x00"))
        an.append(_rr(b"\x05promo\x06casino\x04test\x00", 1, 30, bytes((192, 0, 2, 66))))
    elif kind == 2:
        an.append(_rr(q, 5, 300, b"\x04edge\x03cdn\x07example\x00"))
        an.append(_rr(b"\x04edge\x03cdn\x07example\x00", 28, 20, bytes(15) + b"\x05"))
    elif kind in (3, 4):
        rcode = 3 if kind == 3 else 0
        soa = b"\x02ns\xc0\x0c\x01h\xc0\x0c" + struct.pack(">IIIII", 1, 2, 3, 4, 45)
        ns.append(_rr(b"\x07example\x00", 6, 900, soa))
    elif kind == 5:
        for i in range(40):
            txt = b"x" * 40 + str(i).encode()
            an.append(_rr(q, 16, 100, bytes((len(txt),)) + txt))
    elif kind == 6:
        an.append(_rr(q, 1, 0, bytes((192, 0, 2, 99))))
    elif kind == 7:
        rcode = 2
    else:
        return None
    header = struct.pack(">HHHHHH", 4242, 0x8180 | rcode, 1, len(an), len(ns), 0)
    return header + question + b"".join(an) + b"".join(ns)


def _wire_query(name: str, qtype: int, qid: int, edns: int, do: bool, version: int, flags: int,
                case: int) -> bytes:
    pkt = bytearray(query(name, qtype, qid, edns=edns > 0, do=do, udp=edns, version=version))
    pkt[2] = (pkt[2] & 0x80) | (flags & 0x7F)  # opcode stays 0 unless flags say otherwise
    pkt[3] = (flags >> 8) & 0x70
    if case:  # 0x20: random letter case in the QNAME
        rng = random.Random(case)
        i = 12
        while pkt[i]:
            for j in range(i + 1, i + 1 + pkt[i]):
                if rng.random() < 0.5 and 97 <= pkt[j] <= 122:
                    pkt[j] -= 32
            i += 1 + pkt[i]
    return bytes(pkt)


query_st = st.builds(
    _wire_query,
    name=st.sampled_from(BLOCKED + ALLOWED + BYPASS + ["ok.ads.example", "WWW.CASINO.TEST"]),
    qtype=st.sampled_from(QTYPES),
    qid=st.integers(0, 0xFFFF),
    edns=st.sampled_from([0, 0, 512, 1232, 4096, 100, 65535]),
    do=st.booleans(),
    version=st.sampled_from([0, 0, 0, 1]),
    flags=st.sampled_from([0x01, 0x01, 0x00, 0x1001, 0x2001, 0x11, 0x09]),  # RD, CD, AD, opcode
    case=st.integers(0, 3),
)
step_st = st.one_of(
    st.lists(st.tuples(query_st, st.sampled_from(CLIENTS)), min_size=1, max_size=70),
    st.floats(0.2, 700),  # the clock moves
    st.tuples(query_st, st.integers(0, 2**32 - 1)),  # a mutated query
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(step_st, min_size=1, max_size=12), rate=st.sampled_from([0.0, 0.0, 2.0]),
       cache_size=st.sampled_from([64, 3]))
def test_fast_path_answers_like_the_pipeline(matcher, steps, rate, cache_size) -> None:
    twin = Twin(matcher, rate=rate, cache_size=cache_size)
    for step in steps:
        if isinstance(step, float):
            twin.clock.t += step
            continue
        if isinstance(step, tuple):
            pkt, seed = step
            pkts = list(mutations(pkt, random.Random(seed), 3))[-2:]
            twin.check(pkts, [CLIENTS[seed % len(CLIENTS)]] * len(pkts), upstream_answer)
            continue
        pkts, clients = [p for p, _ in step], [c for _, c in step]
        twin.check(pkts[:64], clients[:64], upstream_answer)
        twin.check(pkts[64:], clients[64:], upstream_answer)
        twin.check(pkts[:20], clients[:20], upstream_answer)  # again: cache hits now
    twin.check_counters()


def test_every_kind_of_answer_is_byte_identical(matcher) -> None:
    twin = Twin(matcher)
    cases = []
    for name in BLOCKED + ALLOWED + BYPASS:
        for qtype in (1, 28, 15, 255):
            for edns, do in ((0, False), (1232, True), (4096, False), (512, False)):
                for client in CLIENTS:
                    cases.append((_wire_query(name, qtype, 77, edns, do, 0, 0x01, 1), client))
    cases.append((_wire_query("casino.test", 1, 78, 1232, False, 1, 0x01, 0), "127.0.0.1"))  # BADVERS
    for i in range(0, len(cases), 64):
        chunk = cases[i:i + 64]
        twin.check([p for p, _ in chunk], [c for _, c in chunk], upstream_answer)
    twin.clock.t += 25  # cached answers count down
    for i in range(0, len(cases), 64):
        chunk = cases[i:i + 64]
        twin.check([p for p, _ in chunk], [c for _, c in chunk], upstream_answer)
    twin.check_counters()
    # The kernel answered the blocked, bypass, ANY, BADVERS answers and the cache hits.
    assert twin.kernel_answers > len(cases)
    snap = twin.counters(twin.fast)
    assert snap["cache_hits"] > 100 and snap["cname_blocked"] > 0 and snap["blocked_by_category"]["local"] > 0


def test_cache_hit_details(matcher) -> None:
    twin = Twin(matcher)
    # DNSSEC OK and checking disabled (CD, flags 0x1000): a cache key of its own.
    q1 = _wire_query("www.example.org", 1, 1, 4096, True, 0, 0x1001, 0)
    twin.check([q1], ["127.0.0.1"], upstream_answer)  # forwarded, cached
    twin.clock.t += 10.5
    # An answer fetched with CD=1 never reaches a CD=0 client (nor one without DO): a miss,
    # for the kernel as for the pipeline; forwarded with CD=0.
    for flags, do in ((0x01, True), (0x01, False), (0x1001, False)):
        miss = _wire_query("www.example.org", 1, 8, 4096, True, 0, flags, 0)
        if not do:
            miss = _wire_query("www.example.org", 1, 8, 4096, False, 0, flags, 0)
        assert twin.batch.run_packets([miss], ["127.0.0.1"], twin.tables, twin.fast.cache.arrays, _disabled(),
                                      twin.fast.counters.fast, twin.clock())[0] == ACT_PYTHON
        fwd = twin.fast.handle(miss, "127.0.0.1", True, rate_checked=True)
        assert isinstance(fwd, Forward) and fwd.upstream_query(9)[3] & 0x10 == flags >> 8 & 0x10
    hit = twin.batch.run_packets([_wire_query("WWW.example.ORG", 1, 2, 1232, True, 0, 0x1001, 0)], ["::1"],
                                 twin.tables, twin.fast.cache.arrays, _disabled(), twin.fast.counters.fast,
                                 twin.clock())[0]
    r = DNSRecord.parse(hit)
    assert r.header.id == 2 and str(r.q.qname) == "WWW.example.ORG." and r.rr[0].ttl == 50  # 60 - 10
    assert r.header.rd and not r.header.aa and r.header.ra
    assert [rr.rtype for rr in r.ar] == [41] and r.ar[0].edns_do  # our OPT, DO echoed
    # Negative answers come from the cache too, and blocked CNAME targets block per policy.
    twin.check([_wire_query("nx.example", 1, 3, 0, False, 0, 1, 0)], ["127.0.0.1"], upstream_answer)
    twin.check([_wire_query("innocent.example", 1, 4, 0, False, 0, 1, 0)], ["127.0.0.1"], upstream_answer)
    out = twin.batch.run_packets([_wire_query("nx.example", 1, 5, 0, False, 0, 1, 0),
                                  _wire_query("innocent.example", 1, 6, 0, False, 0, 1, 0),
                                  _wire_query("innocent.example", 1, 7, 0, False, 0, 1, 0)],
                                 ["127.0.0.1", "127.0.0.1", "127.0.0.3"], twin.tables, twin.fast.cache.arrays,
                                 _disabled(), twin.fast.counters.fast, twin.clock())
    assert DNSRecord.parse(out[0]).header.rcode == 3
    assert str(DNSRecord.parse(out[1]).rr[0].rdata) == "0.0.0.0"  # default policy: blocked target
    assert [str(x.rdata) for x in DNSRecord.parse(out[2]).rr] == ["Promo.Casino.test.", "192.0.2.66"]  # staff


def test_large_cached_answer_is_truncated_for_small_clients(matcher) -> None:
    twin = Twin(matcher)
    twin.check([_wire_query("big.example", 16, 1, 0, False, 0, 1, 0)], ["127.0.0.1"], upstream_answer)
    small = twin.batch.run_packets([_wire_query("big.example", 16, 2, 0, False, 0, 1, 0)], ["127.0.0.1"],
                                   twin.tables, twin.fast.cache.arrays, _disabled(), twin.fast.counters.fast,
                                   twin.clock())[0]
    r = DNSRecord.parse(small)
    assert r.header.tc and not r.rr


def test_rate_limit_is_shared_and_identical(matcher) -> None:
    twin = Twin(matcher, rate=1.0, burst=3, max_clients=4)
    rng = random.Random(9)
    for _ in range(40):
        n = rng.randint(1, 20)
        pkts = [_wire_query(rng.choice(BLOCKED + ALLOWED), 1, rng.randrange(65536), 0, False, 0, 1, 0)
                for _ in range(n)]
        clients = [f"10.0.0.{rng.randint(1, 9)}" for _ in range(n)]
        twin.check(pkts, clients, upstream_answer)
        twin.clock.t += rng.random() * 3
    twin.check_counters()
    assert twin.counters(twin.fast)["rate_limited"] > 10


def test_tables_follow_the_policies(matcher) -> None:
    t = FastTables.build(policies(matcher), matcher)
    assert t.policy_names == ("default", "staff", "students", "lab", "guest")
    v4, v6, v6pol, default = t.tables[:4]
    assert [tuple(r) for r in v4] == [(0x7F000003, 0xFFFFFFFF, 1), (0x0A010900, 0xFFFFFF00, 3),
                                      (0x0A010000, 0xFFFF0000, 2)]  # most specific first
    assert list(v6pol) == [2, 4] and default == 0


# -- hostile input -----------------------------------------------------------------------------

# >= 100k packets compiled; a few thousand in the pure-Python (NUMBA_DISABLE_JIT) run.
FUZZ_PACKETS = int(os.environ.get("SCHOOLGATE_FUZZ_PACKETS",
                                  "3000" if os.environ.get("NUMBA_DISABLE_JIT") == "1" else "120000"))


def test_fuzz_kernel_never_crashes(matcher) -> None:
    """>= 100k hostile packets through the kernel; a sample also through the pipeline to
    require the same outcome."""
    rng = random.Random(4)
    twin = Twin(matcher, rate=1e6, burst=1e6, max_clients=16)  # the limiter runs, never empties
    twin.check([query("www.example.org")], ["127.0.0.1"], upstream_answer)  # something cached
    corpus = hostile_packets(rng, FUZZ_PACKETS, [query(n, t, edns=e, do=e) for n in BLOCKED + ALLOWED[:4]
                                                  for t in (1, 28, 255) for e in (False, True)])
    batch = twin.batch
    limiter = twin.fast.limiter.arrays
    handed = 0
    for i in range(0, len(corpus), 64):
        chunk = corpus[i:i + 64]
        out = batch.run_packets(chunk, [CLIENTS[(i // 64 + k) % len(CLIENTS)] for k in range(len(chunk))],
                                twin.tables, twin.fast.cache.arrays, limiter, twin.fast.counters.fast,
                                twin.clock())
        for pkt, o in zip(chunk, out):
            if isinstance(o, bytes):
                assert len(o) >= 12 and o[:2] == pkt[:2] and o[2] & 0x80
            else:
                handed += o == ACT_PYTHON
        twin.clock.t += 0.01
    assert handed > 0 and (len(corpus) >= 100_000 or os.environ.get("NUMBA_DISABLE_JIT") == "1")
    # Differential on a sample (the pipeline is ~100x slower on these: dnslib).
    sample = Twin(matcher)
    for i in range(0, 6400, 64):
        chunk = corpus[i:i + 64]
        sample.check(chunk, ["127.0.0.1"] * len(chunk), upstream_answer)
    sample.check_counters()


def test_array_cache_behaves_like_wire_cache_without_eviction(matcher) -> None:
    """Same answers from a pipeline over WireCache and one over ArrayCache when nothing is
    evicted (they differ only in what they evict: LRU vs FIFO)."""
    clock = Clock()
    ps = policies(matcher)
    a = Pipeline(matcher, ps, WireCache(1000, 600), clock=clock)
    b = Pipeline(matcher, ps, ArrayCache(1000, 600, seed=1), clock=clock)
    rng = random.Random(2)
    for _ in range(300):
        pkt = _wire_query(rng.choice(ALLOWED), rng.choice([1, 28, 16]), rng.randrange(65536),
                          rng.choice([0, 1232]), rng.random() < 0.3, 0, 1, rng.randrange(3))
        ra, rb = a.handle(pkt, "127.0.0.1"), b.handle(pkt, "127.0.0.1")
        if isinstance(ra, Forward):
            resp = upstream_answer(ra)
            ra, rb = a.finish(ra, resp), b.finish(rb, resp)
        assert ra == rb
        clock.t += rng.random() * 40
    assert len(a.cache) == len(b.cache)


def test_array_cache_ring_and_index() -> None:
    """ArrayCache against a dict model under random puts, stale reads and replacement: what
    it holds is always a subset of the model's newest entries, FIFO by insertion."""
    from filters.dns_response import Normalised

    rng = random.Random(11)
    cache = ArrayCache(8, 100, bytes_per_entry=64, seed=1)  # arena 64 KiB minimum
    small = ArrayCache(8, 100, bytes_per_entry=64, seed=2)
    small.arrays[0][5] = 600  # a tiny arena: eviction by space (CS_ARENA)
    order: list[bytes] = []
    for step in range(500 if os.environ.get("NUMBA_DISABLE_JIT") == "1" else 3000):  # pure Python: fewer
        key = b"\x03k%02d\x00\x00\x01\x00\x01\x00" % rng.randrange(30)
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 120)))
        norm = Normalised(0x8180, (1, 0, 0), body, 20, [], rng.randrange(1, 50), [b"\x01a\x00"] * rng.randrange(3))
        now = float(step)
        for c in (cache, small):
            c.put(key, norm, now)
            got = c.get(key, now)
            assert got is not None and got.norm.body == body and got.norm.cname_targets == norm.cname_targets
        if key in order:
            order.remove(key)
        order.append(key)
        held = [k for k in order if cache.get_stale(k, now) is not None]
        assert held == order[-len(held):] and len(held) <= 8
        assert len(cache) == len(held)
        for k in order[:-8]:
            assert cache.get(k, now) is None
        assert len(small) <= 8
    cache.clear()
    assert len(cache) == 0


def test_counters_merge(matcher) -> None:
    twin = Twin(matcher)
    twin.check([query("casino.test"), query("local-block.test")], ["127.0.0.1", "127.0.0.1"])
    snap = twin.fast.counters.snapshot(twin.names)
    assert snap["queries"] == 2 and snap["blocked"] == 2 and snap["fast_path"] == 2
    assert snap["blocked_by_category"] == {"gambling": 1, "local": 1}


def test_batch_limits() -> None:
    with pytest.raises(ValueError):
        Batch(0)
    b = Batch(2)
    with pytest.raises(ValueError):
        b.run_packets([b"", b"", b""], ["", "", ""], None, (), (), np.zeros(1), 0.0)  # type: ignore[arg-type]


# -- SafeSearch, temporary allows, schedules: names the kernel hands to Python -----------------

SAFE = ["www.google.com", "WWW.Google.co.uk", "www.bing.com", "duckduckgo.com", "www.youtube.com",
        "youtubei.googleapis.com", "m.youtube.com", "forcesafesearch.google.com", "google.com", "a.www.bing.com"]
TEMP = ["casino.test", "www.casino.test", "x.y.casino.test", "local-block.test", "promo.casino.test"]


def compiled_policies(matcher, temporary=(("www.casino.test", "students"), ("promo.casino.test", "*"),
                                          ("local-block.test", "lab")), extra_block=()):
    """The same networks as policies(), built the way the service builds them: SafeSearch
    for students (YouTube moderate) and guest (strict, Google only), temporary allows,
    ``extra_block`` as a schedule would add it for students."""
    from filters.policy import PolicySpec, compile_policies
    from filters.safesearch import SafeSearch

    specs = [PolicySpec("default", ("gambling",), BlockAnswers("null")),
             PolicySpec("staff", (), BlockAnswers("nxdomain")),
             PolicySpec("students", ("gambling",) + tuple(extra_block),
                        BlockAnswers("blockpage", 30, ("192.0.2.80", "2001:db8::80")),
                        SafeSearch(True, True, True, "moderate")),
             PolicySpec("lab", ("gambling",), BlockAnswers("refused")),
             PolicySpec("guest", ("gambling",), BlockAnswers("blockpage", 5, ("192.0.2.81",)),
                        SafeSearch(google=True, youtube="strict"))]
    nets = NetworkTable([("127.0.0.3/32", "staff"), ("10.1.0.0/16", "students"), ("fd00:10::/48", "students"),
                         ("10.1.9.0/24", "lab"), ("2001:db8::/32", "guest")], "default")
    return compile_policies(matcher, ["local-block.test"], ["ok.ads.example"], specs, nets, temporary)


class PolicyTwin(Twin):
    def __init__(self, matcher, **kw) -> None:
        full, ps = compiled_policies(matcher, **kw)
        self.clock = Clock()

        def pipe() -> Pipeline:
            return Pipeline(full, ps, ArrayCache(64, 600, seed=5), clock=self.clock)

        self.py, self.fast = pipe(), pipe()
        self.tables = FastTables.build(ps, full)
        self.batch = Batch(64)
        self.names = full.catalog.names
        self.kernel_answers = 0


policy_query_st = st.builds(
    _wire_query, name=st.sampled_from(SAFE + TEMP + BLOCKED[:3] + ALLOWED[:4]), qtype=st.sampled_from([1, 28, 65, 255]),
    qid=st.integers(0, 0xFFFF), edns=st.sampled_from([0, 1232]), do=st.booleans(), version=st.just(0),
    flags=st.just(0x01), case=st.integers(0, 3))


@settings(max_examples=max(EXAMPLES // 3, 10), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.lists(st.tuples(policy_query_st, st.sampled_from(CLIENTS)), min_size=1, max_size=40),
                        min_size=1, max_size=4),
       schedule_on=st.booleans())
def test_fast_path_agrees_on_safesearch_temporary_and_scheduled_names(matcher, batches, schedule_on) -> None:
    twin = PolicyTwin(matcher, extra_block=("local",) if schedule_on else ())
    for batch in batches:
        pkts, clients = [p for p, _ in batch], [c for _, c in batch]
        twin.check(pkts, clients, upstream_answer)
        twin.check(pkts, clients, upstream_answer)  # cache hits (endpoints' answers too)
        twin.clock.t += 7
    twin.check_counters()


def test_safesearch_and_temporary_names_go_to_python(matcher) -> None:
    twin = PolicyTwin(matcher)
    students, staff, guest, lab = "10.1.2.3", "127.0.0.3", "2001:db8::1", "10.1.9.9"
    cases = [("www.google.com", students, ACT_PYTHON), ("www.google.com", staff, "kernel"),
             ("www.youtube.com", guest, ACT_PYTHON), ("www.bing.com", guest, "kernel"),
             ("www.casino.test", students, ACT_PYTHON), ("casino.test", students, "kernel"),
             ("promo.casino.test", staff, ACT_PYTHON), ("local-block.test", lab, ACT_PYTHON),
             ("local-block.test", students, "kernel")]
    for name, client, want in cases:  # forwarded once: the kernel answers cache hits
        if want == "kernel":
            twin.check([query(name)], [client], upstream_answer)
    out = twin.batch.run_packets([query(n) for n, _, _ in cases], [c for _, c, _ in cases], twin.tables,
                                 twin.fast.cache.arrays, _disabled(), twin.fast.counters.fast, twin.clock())
    for (name, client, want), got in zip(cases, out):
        if want == "kernel":
            assert isinstance(got, bytes), (name, client, got)
        else:
            assert got == want, (name, client, got)
    # The Python answers: a CNAME to the endpoint plus its address records; the allow wins.
    fwd = twin.fast.handle(query("www.google.com"), students)
    assert isinstance(fwd, Forward) and fwd.question == b"\x0fforcesafesearch\x06google\x03com\x00\x00\x01\x00\x01"
    r = DNSRecord.parse(twin.fast.finish(fwd, upstream_answer(fwd)))
    assert str(r.q.qname) == "www.google.com." and r.rr[0].rtype == 5
    assert str(r.rr[0].rdata) == "forcesafesearch.google.com." and r.rr[0].ttl <= 300
    assert [str(x.rdata) for x in r.rr[1:]] and all(str(x.rname) == "forcesafesearch.google.com." for x in r.rr[1:])
    yt = DNSRecord.parse(twin.fast.finish(*(lambda f: (f, upstream_answer(f)))(twin.fast.handle(query("m.youtube.com"),
                                                                                                 students))))
    assert str(yt.rr[0].rdata) == "restrictmoderate.youtube.com."
    assert isinstance(twin.fast.handle(query("www.casino.test"), students), Forward)  # temporarily allowed
    assert DNSRecord.parse(twin.fast.handle(query("casino.test"), students)).rr  # still blocked (blockpage)


def test_blocked_mask_output(matcher) -> None:
    twin = Twin(matcher)
    twin.check([query("innocent.example")], ["127.0.0.1"], upstream_answer)  # cached, CNAME to a casino
    pkts = [query("casino.test"), query("example.org"), query("local-block.test"), query("innocent.example"),
            query("casino.test")]
    out = twin.batch.run_packets(pkts, ["127.0.0.1", "127.0.0.1", "127.0.0.1", "127.0.0.1", "127.0.0.3"],
                                 twin.tables, twin.fast.cache.arrays, _disabled(), twin.fast.counters.fast,
                                 twin.clock())
    masks = [int(m) for m in twin.batch.blocked_mask[:5]]
    gam = matcher.catalog.mask(["gambling"])
    assert isinstance(out[0], bytes) and masks[0] == gam
    assert masks[1] == 0 and masks[2] == 1 << 63 and masks[3] == gam  # local; CNAME target's categories
    assert masks[4] == 0 and out[4] == ACT_PYTHON  # staff: not blocked, a cache miss


def test_divert_bits_run_out(matcher) -> None:
    """More distinct sets of names than free bits share the last bit; none free: all to Python."""
    from filters.policy import DIVERT_ALL, assign_divert_bits

    names = {f"p{i}": frozenset({f"n{i}.test"}) for i in range(4)}
    masks, table = assign_divert_bits(names, [62, 61])
    assert len(set(masks.values())) == 2 and table[1 << 61] >= {"n1.test", "n2.test", "n3.test"}
    masks, table = assign_divert_bits(names | {"none": frozenset()}, [])
    assert table == {} and masks["p0"] == DIVERT_ALL and masks["none"] == 0
    full, ps = compiled_policies(matcher)
    fast = FastTables.build(ps, full)
    rules = dict(ps.rules)
    rules["students"] = PolicyRule("students", (), rules["students"].mask, rules["students"].answers,
                                   rules["students"].safesearch, rules["students"].temp_allowed, DIVERT_ALL)
    fast = FastTables.build(PolicySet(rules, ps.networks), full)
    out = Batch(2).run_packets([query("example.org"), query("example.org")], ["10.1.2.3", "127.0.0.1"], fast,
                               ArrayCache(4, 1).arrays, _disabled(), np.zeros(80, dtype=np.int64), 0.0)
    assert out[0] == ACT_PYTHON and out[1] == ACT_PYTHON  # students: everything; default: a cache miss
