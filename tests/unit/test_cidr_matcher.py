"""filters.cidr_matcher and its kernels, checked against the naive tests/reference.py."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Sequence
from pathlib import Path

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from filters import _cidr_kernels
from filters.catalog import Catalog
from filters.cidr_matcher import CidrMatcher, IpVerdict
from filters.cidr_table import CidrTable, build_cidr_table
from filters.classes import ALLOW_APEX, ALLOW_BELOW, ClassTable, build_classes
from filters.domain_matcher import Verdict
from filters.errors import BadNameError, BundleError
from tests.reference import CidrRule, reference_cidr_match

Net = ipaddress.IPv4Network | ipaddress.IPv6Network
ALL = 2**64 - 1
W64 = 2**64 - 1
ADULT, GAMBLING, DOH = 1, 2, 4
# With NUMBA_DISABLE_JIT=1 (tests/unit/test_nojit.py) the kernels are plain Python: fewer examples.
PURE_PYTHON = bool(numba.config.DISABLE_JIT)


def classes(masks: Sequence[int], allow: Sequence[int]) -> ClassTable:
    n = len(masks)
    return ClassTable(
        np.array(masks, np.uint64), np.array(masks, np.uint64), np.array(allow, np.uint8),
        np.zeros(n + 1, np.uint32), np.zeros(0, np.uint32),
    )


def matcher(entries: Sequence[tuple[str | Net, int]], cls: ClassTable) -> CidrMatcher:
    nets = [(ipaddress.ip_network(n), c) for n, c in entries]
    return CidrMatcher(build_cidr_table(nets), cls)


def split(addresses: Sequence[ipaddress.IPv6Address]) -> tuple[np.ndarray, np.ndarray]:
    ints = [int(a) for a in addresses]
    return (np.array([i >> 64 for i in ints], np.uint64),
            np.array([i & W64 for i in ints], np.uint64))


# Classes for the hand-written cases: 0 adult, 1 gambling, 2 allow, 3 doh, 4 adult+allow.
CLASSES = classes([ADULT, GAMBLING, 0, DOH, ADULT], [0, 0, ALLOW_BELOW | ALLOW_APEX, 0, 3])
ENTRIES = [
    ("10.0.0.0/8", 0),
    ("10.1.0.0/16", 2),  # an allow hole in an adult block
    ("10.1.2.0/24", 1),  # a gambling block inside the hole
    ("10.1.2.128/25", 2),
    ("192.0.2.1/32", 3),
    ("2001:db8::/32", 0),
    ("2001:db8:1::/48", 2),
    ("2001:db8:1::53/128", 3),
    ("198.51.100.0/24", 4),  # listed by an adult list and an allow list: allowed
]


@pytest.fixture(scope="module")
def m() -> CidrMatcher:
    return matcher(ENTRIES, CLASSES)


@pytest.mark.parametrize(
    ("address", "policy", "blocked", "categories", "rule"),
    [
        ("10.9.9.9", ALL, True, ADULT, "10.0.0.0/8"),
        ("10.9.9.9", GAMBLING, False, ADULT, None),  # categories reported, policy unmet
        ("10.1.0.1", ALL, False, ADULT, "10.1.0.0/16"),  # the allow that overrode
        ("10.1.2.3", ALL, True, ADULT | GAMBLING, "10.1.2.0/24"),  # longer than the allow
        ("10.1.2.3", ADULT, False, ADULT | GAMBLING, "10.1.0.0/16"),
        ("10.1.2.200", ALL, False, ADULT | GAMBLING, "10.1.2.128/25"),
        ("11.0.0.0", ALL, False, 0, None),
        ("9.255.255.255", ALL, False, 0, None),
        ("192.0.2.1", DOH, True, DOH, "192.0.2.1/32"),
        ("192.0.2.2", DOH, False, 0, None),
        ("198.51.100.7", ALL, False, ADULT, "198.51.100.0/24"),  # allow and block at once
        ("2001:db8:ffff::1", ADULT, True, ADULT, "2001:db8::/32"),
        ("2001:db8:1::1", ADULT, False, ADULT, "2001:db8:1::/48"),
        ("2001:db8:1::53", ALL, True, ADULT | DOH, "2001:db8:1::53/128"),
        ("2001:db8:1::54", ALL, False, ADULT, "2001:db8:1::/48"),
        ("::ffff:10.9.9.9", ALL, True, ADULT, "10.0.0.0/8"),  # IPv4-mapped: the v4 table
        ("::ffff:192.0.2.1", DOH, True, DOH, "192.0.2.1/32"),
        ("::10.9.9.9", ALL, False, 0, None),  # IPv4-compatible (deprecated): plain v6
        ("64:ff9b::10.9.9.9", ALL, False, 0, None),  # NAT64: plain v6
        ("fe80::1%eth0", ALL, False, 0, None),  # a scope id is ignored
    ],
)
def test_hand_written_cases(
    m: CidrMatcher, address: str, policy: int, blocked: bool, categories: int, rule: str | None
) -> None:
    v = m.match(address, policy)
    assert (v.blocked, v.categories, v.rule) == (blocked, categories, rule)
    if rule is None:
        assert v.cls is None and v.entry is None
    else:
        assert m.rule_text(v.entry) == rule
        assert v.cls == int(m.table.cls[v.entry])


def test_verdict_carries_class_for_sources() -> None:
    # Class ids from build_classes: source 0 adult, 1 doh, 2 an allow list.
    ct = build_classes([0b000001, 0b000101, 0b010000], [ADULT, DOH, 0], [False, False, True])
    mm = matcher([("10.0.0.0/8", 0), ("10.0.0.0/24", 1), ("10.0.0.0/30", 2)], ct)
    v = mm.match(ipaddress.ip_address("10.0.0.9"), ALL)
    assert v == IpVerdict("10.0.0.9", True, ADULT | DOH, "10.0.0.0/24", 1, 1)
    assert ct.sources(v.cls) == [0, 1]
    assert mm.match("10.0.0.1", ALL).rule == "10.0.0.0/30"


def test_explain_names_categories_rule_and_the_deciding_lists() -> None:
    ct = build_classes([0b000001, 0b000101, 0b010000], [ADULT, DOH, 0], [False, False, True])
    mm = matcher([("10.0.0.0/8", 0), ("10.0.0.0/24", 1), ("10.0.0.0/30", 2)], ct)
    cat = Catalog(("adult", "gambling", "doh"), ("adult: a.txt", "doh: d.txt", "allow: ok.txt"),
                  (ADULT, DOH, 0), (False, False, True))
    why = mm.explain(mm.match("10.0.0.9", ALL), cat, ALL)
    assert why == Verdict("10.0.0.9", True, ("adult", "doh"), "10.0.0.0/24", ("adult: a.txt", "doh: d.txt"))
    # under a policy blocking doh alone, only the doh list decided
    assert mm.explain(mm.match("10.0.0.9", DOH), cat, DOH).sources == ("doh: d.txt",)
    assert mm.explain(mm.match("10.0.0.1", ALL), cat, ALL) == Verdict(
        "10.0.0.1", False, ("adult", "doh"), "10.0.0.0/30", ("allow: ok.txt",))
    assert mm.explain(mm.match("::ffff:10.9.9.9", GAMBLING), cat, GAMBLING) == Verdict(
        "::ffff:10.9.9.9", False, ("adult",), None, ())


@pytest.mark.parametrize(
    ("net", "inside", "outside"),
    [
        ("0.0.0.0/0", ["0.0.0.0", "255.255.255.255", "::ffff:255.255.255.255"], ["::", "::1"]),
        ("::/0", ["::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::1"],
         ["0.0.0.0", "::ffff:0.0.0.0"]),
        ("255.255.255.255/32", ["255.255.255.255"], ["255.255.255.254", "0.0.0.0"]),
        ("0.0.0.0/32", ["0.0.0.0"], ["0.0.0.1"]),
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128",
         ["ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
         ["ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", "::"]),
        ("::/128", ["::"], ["::1", "0.0.0.0"]),
        ("ffff:ffff:ffff:ffff::/64", ["ffff:ffff:ffff:ffff:1::"], ["ffff:ffff:ffff:fffe::"]),
        ("8000::/1", ["8000::", "ffff::"], ["7fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]),
        ("::8000:0:0:0/65", ["::8000:0:0:1", "::ffff:ffff:ffff:ffff"], ["::7fff:0:0:0", "::"]),
    ],
)
def test_edges_of_the_address_space(net: str, inside: list[str], outside: list[str]) -> None:
    mm = matcher([(net, 0)], CLASSES)
    for a in inside:
        assert mm.match(a, ADULT).rule == net, a
    for a in outside:
        assert not mm.match(a, ALL).blocked, a


def test_empty_table() -> None:
    mm = CidrMatcher(build_cidr_table([]), classes([], []))
    assert mm.match("1.2.3.4", ALL) == IpVerdict("1.2.3.4", False, 0, None, None, None)
    assert not mm.match("::1", ALL).blocked
    blocked, cats, rule = mm.match_batch_v4(np.array([0, 2**32 - 1], np.uint32), ALL)
    assert blocked.tolist() == [False, False] and rule.tolist() == [-1, -1]
    blocked, cats, rule = mm.match_batch_v6(*split([ipaddress.IPv6Address("::1")]), ALL)
    assert rule.tolist() == [-1]


@pytest.mark.parametrize("bad", ["", "1.2.3", "1.2.3.256", "01.2.3.4", "example.com",
                                 "10.0.0.0/8", ":::", b"1.2.3.4", 16909060, None])
def test_bad_addresses(m: CidrMatcher, bad: object) -> None:
    with pytest.raises(BadNameError):
        m.match(bad, ALL)  # type: ignore[arg-type]


def test_surrounding_whitespace_is_accepted(m: CidrMatcher) -> None:
    assert m.match(" 10.9.9.9\n", ALL).blocked


@pytest.mark.parametrize("policy", [-1, 2**64, 1.5, "1"])
def test_bad_policy(m: CidrMatcher, policy: object) -> None:
    with pytest.raises(ValueError):
        m.match("1.2.3.4", policy)  # type: ignore[arg-type]


def test_batch_arguments_are_checked(m: CidrMatcher) -> None:
    with pytest.raises(TypeError):
        m.match_batch_v4(np.array([1], np.int64), ALL)
    with pytest.raises(TypeError):
        m.match_batch_v4([1, 2], ALL)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        m.match_batch_v6(np.zeros(1, np.uint32), np.zeros(1, np.uint64), ALL)
    with pytest.raises(ValueError):
        m.match_batch_v6(np.zeros(1, np.uint64), np.zeros(2, np.uint64), ALL)


def test_batch_accepts_strided_input(m: CidrMatcher) -> None:
    a = np.array([int(ipaddress.IPv4Address("10.9.9.9")), 0] * 3, np.uint32)[::2]
    blocked, cats, rule = m.match_batch_v4(a, ALL)
    assert blocked.tolist() == [True] * 3 and cats.dtype == np.uint64 and rule.dtype == np.int64


def test_class_table_must_cover_every_class_id() -> None:
    with pytest.raises(BundleError, match="class 3"):
        CidrMatcher(build_cidr_table([(ipaddress.ip_network("1.0.0.0/8"), 3)]),
                    classes([1, 1, 1], [0, 0, 0]))
    bad = ClassTable(np.zeros(1, np.int64), np.zeros(1, np.uint64), np.zeros(1, np.uint8),
                     np.zeros(2, np.uint32), np.zeros(0, np.uint32))
    with pytest.raises(BundleError, match="uint64"):
        CidrMatcher(build_cidr_table([]), bad)


def test_rule_text(m: CidrMatcher) -> None:
    assert [m.rule_text(i) for i in range(len(m.table))] == [
        str(m.table.network(i)) for i in range(len(m.table))]
    with pytest.raises(IndexError):
        m.rule_text(-1)


def test_kernels_are_callable_directly(m: CidrMatcher) -> None:
    net4, index4, hi6, lo6, prefix, cls, parent, mask, allow = m.kernel_args
    b, c, r = _cidr_kernels.lookup_v4(net4, index4, prefix, cls, parent, mask, allow,
                                      np.uint32(0x0A090909), np.uint64(ALL))
    assert (b, c, m.rule_text(r)) == (True, ADULT, "10.0.0.0/8")
    a = int(ipaddress.IPv6Address("2001:db8:1::53"))
    b, c, r = _cidr_kernels.lookup_v6(net4, index4, hi6, lo6, prefix, cls, parent, mask,
                                      allow, np.uint64(a >> 64), np.uint64(a & W64),
                                      np.uint64(ALL))
    assert (b, m.rule_text(r)) == (True, "2001:db8:1::53/128")


def test_mmapped_tables_match(tmp_path: Path) -> None:
    t = build_cidr_table([(ipaddress.ip_network(n), c) for n, c in ENTRIES])
    for stem, a in t.arrays().items():
        np.save(tmp_path / f"{stem}.npy", a)
    mapped = {p.stem: np.load(p, mmap_mode="r") for p in tmp_path.glob("*.npy")}
    mm = CidrMatcher(CidrTable.from_arrays(mapped), CLASSES)
    assert mm.match("10.1.2.3", ALL).rule == "10.1.2.0/24"
    assert mm.match("2001:db8:1::53", ALL).blocked
    assert mm.match_batch_v4(np.array([0x0A090909], np.uint32), ALL)[0].tolist() == [True]


# --- property tests against the reference ------------------------------------------------


@st.composite
def cidr_sets(draw: st.DrawFn, bits: int) -> list[Net]:
    """Distinct CIDRs clustered around a few seeds, so that many nest and many are siblings."""
    kind = ipaddress.IPv4Network if bits == 32 else ipaddress.IPv6Network
    seeds = draw(st.lists(st.integers(0, 2**bits - 1), min_size=1, max_size=3))
    nets: set[Net] = set()
    for _ in range(draw(st.integers(0, 20))):
        addr = draw(st.sampled_from(seeds))
        if draw(st.booleans()):  # a neighbour: flip a few bits somewhere
            addr ^= draw(st.integers(1, 255)) << draw(st.integers(0, bits - 8))
        plen = draw(st.one_of(st.integers(0, bits), st.sampled_from([0, bits, bits - 1, 1])))
        nets.add(kind((addr, plen), strict=False))
    return sorted(nets, key=str)


def probes(nets: Sequence[Net], rnd: random.Random, bits: int) -> list[int]:
    """First and last address of every CIDR and their neighbours, the ends of the space,
    the v4 index's bucket edges (for up to 2**4 buckets) and a few random addresses."""
    top = 2**bits - 1
    out = {0, 1, top - 1, top}
    if bits == 32:
        out.update(x for b in range(1, 16) for x in ((b << 28) - 1, b << 28))
    for n in nets:
        first, last = int(n.network_address), int(n.broadcast_address)
        out.update(x for x in (first - 1, first, first + 1, last - 1, last, last + 1)
                   if 0 <= x <= top)
    out.update(rnd.randrange(2**bits) for _ in range(8))
    return sorted(out)


def check_against_reference(mm: CidrMatcher, rules: list[CidrRule], v4: list[int],
                            v6: list[int], policy: int) -> None:
    addresses = ([ipaddress.IPv4Address(a) for a in v4]
                 + [ipaddress.IPv6Address(a) for a in v6]
                 + [ipaddress.IPv6Address(0xFFFF_0000_0000 | a) for a in v4])  # v4-mapped
    singles = [mm.match(a, policy) for a in addresses]
    b4, c4, r4 = mm.match_batch_v4(np.array(v4, np.uint32), policy)
    b6, c6, r6 = mm.match_batch_v6(*split(addresses[len(v4):]), policy)
    batch = zip(np.concatenate([b4, b6]).tolist(), np.concatenate([c4, c6]).tolist(),
                np.concatenate([r4, r6]).tolist(), strict=True)
    for a, v, (bb, bc, br) in zip(addresses, singles, batch, strict=True):
        ref = reference_cidr_match(rules, a, policy)
        want_rule = None if ref.rule is None else str(ref.rule)
        assert (v.blocked, v.categories, v.rule) == (ref.blocked, ref.categories, want_rule), a
        assert (bb, bc, br) == (v.blocked, v.categories, -1 if v.entry is None else v.entry), a


masks = st.one_of(st.integers(0, 15), st.just(1 << 63), st.integers(0, 2**64 - 1))
class_lists = st.lists(st.tuples(masks, st.sampled_from([0, 0, ALLOW_BELOW | ALLOW_APEX])),
                       min_size=1, max_size=5)
policies = st.one_of(st.sampled_from([0, 1, 2, 3, 1 << 63, ALL]), st.integers(0, 2**64 - 1))


@settings(max_examples=100 if PURE_PYTHON else 300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nets4=cidr_sets(32), nets6=cidr_sets(128), cls=class_lists, policy=policies,
       data=st.data())
def test_matches_reference(nets4: list[Net], nets6: list[Net], cls: list[tuple[int, int]],
                           policy: int, data: st.DataObject) -> None:
    nets = nets4 + nets6
    ids = data.draw(st.lists(st.integers(0, len(cls) - 1), min_size=len(nets),
                             max_size=len(nets)))
    ct = classes([c[0] for c in cls], [c[1] for c in cls])
    mm = CidrMatcher(build_cidr_table(list(zip(nets, ids, strict=True))), ct)
    rules = [CidrRule(n, cls[i][0], bool(cls[i][1] & ALLOW_BELOW))
             for n, i in zip(nets, ids, strict=True)]
    rnd = random.Random(data.draw(st.integers(0, 2**32)))
    check_against_reference(mm, rules, probes(nets4, rnd, 32), probes(nets6, rnd, 128), policy)


# --- real data ---------------------------------------------------------------------------


def test_real_doh_lists(shared_data: Path) -> None:
    if PURE_PYTHON:
        pytest.skip("3000 real networks through pure-Python kernels: the JIT run covers this")
    from filters.lists import cidr  # written alongside this matcher; parses "cidr" sources

    folder = shared_data / "lists" / "doh" / "dibdot"
    nets: list[Net] = []
    for name in ("doh-ipv4.txt", "doh-ipv6.txt"):
        with open(folder / name, encoding="utf-8") as f:
            parsed = cidr.parse(f, name)
        assert not parsed.rejected, parsed.rejected[:3]
        nets.extend(parsed.networks)
    nets = sorted(set(nets), key=lambda n: (n.version, n))
    assert len(nets) > 3000
    # A covering allow range and a nested block, so the real list sits inside nesting too.
    extra = [(ipaddress.ip_network("1.0.0.0/8"), 1), (ipaddress.ip_network("1.1.1.0/24"), 2)]
    ct = classes([DOH, 0, ADULT], [0, ALLOW_BELOW | ALLOW_APEX, 0])
    mm = CidrMatcher(build_cidr_table([(n, 0) for n in nets] + extra), ct)

    v4 = [int(n.network_address) for n in nets if n.version == 4]
    v6 = [n.network_address for n in nets if n.version == 6]
    blocked, _, rule = mm.match_batch_v4(np.array(v4, np.uint32), DOH)
    assert blocked.all()
    assert [mm.rule_text(r) for r in rule] == [f"{ipaddress.IPv4Address(a)}/32" for a in v4]
    assert mm.match_batch_v6(*split(v6), DOH)[0].all()
    assert all(mm.match(str(n.network_address), DOH).blocked for n in nets[:50])

    rules = [CidrRule(n, DOH, False) for n in nets]
    rules += [CidrRule(extra[0][0], 0, True), CidrRule(extra[1][0], ADULT, False)]
    rnd = random.Random(20240601)
    sample4 = [rnd.randrange(2**32) for _ in range(300)]
    sample4 += [min(rnd.choice(v4) + 1, 2**32 - 1) for _ in range(100)]
    sample4 += [rnd.randrange(0x01000000, 0x02000000) for _ in range(100)]
    sample6 = [max(int(a) + rnd.choice((-1, 0, 1)), 0) for a in rnd.sample(v6, 100)]
    sample6 += [rnd.randrange(2**128) for _ in range(100)]
    for policy in (DOH, ADULT, DOH | ADULT, 0):
        check_against_reference(mm, rules, sample4, sample6, policy)
