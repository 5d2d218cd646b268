"""filters.domain_matcher and its kernels against the naive reference.

The reference (tests/reference.py, "Domain reference") restates docs/matching.md over a plain
list of (name, subdomains_only, source) entries. The property tests draw small worlds
(few labels, shallow names, few sources) so that suffix overlaps, wildcard vs full entries,
allow vs block at every relative depth, one name in several sources and local overlay
entries are the common case, then compare every lookup path with the reference.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from filters import _domain_kernels as K
from filters.catalog import Catalog
from filters.classes import LOCAL_CATEGORY_BIT
from filters.domain_builder import DomainSetBuilder
from filters.domain_matcher import LOCAL_SOURCES, DomainMatcher, Verdict
from filters.errors import BadNameError
from filters.names import name_to_wire, normalise_domain
from tests.reference import DomainAnswer, DomainEntry, reference_domain_match

PURE_PYTHON = bool(numba.config.DISABLE_JIT)
EXAMPLES = int(os.environ.get("SCHOOLGATE_HYPOTHESIS_EXAMPLES", 100 if PURE_PYTHON else 400))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ALL = 2**64 - 1
LOCAL = 1 << LOCAL_CATEGORY_BIT
CATEGORIES = tuple(f"cat{i}" for i in range(63))


def category_names(mask: int) -> tuple[str, ...]:
    """What Verdict.categories must say for ``mask``: bit order, "local" for bit 63."""
    out = [CATEGORIES[i] for i in range(63) if mask >> i & 1]
    if mask & LOCAL:
        out.append("local")
    return tuple(out)


@dataclass
class World:
    """Bundle sources and entries, plus the config's local lists, in reference terms."""

    masks: list[int]  # per bundle source
    allow: list[bool]  # per bundle source
    entries: list[DomainEntry]  # bundle entries
    local_block: Sequence[tuple[str, bool]] = ()  # (name, subdomains_only)
    local_allow: Sequence[tuple[str, bool]] = ()
    key: tuple[int, int] = (0x0123456789ABCDEF, 0xFEDCBA9876543210)

    @property
    def n_sources(self) -> int:
        return len(self.masks)

    def source_names(self) -> tuple[str, ...]:
        return tuple(f"list{s}" for s in range(self.n_sources))

    def all_entries(self) -> list[DomainEntry]:
        """Bundle entries, then local ones as two extra sources: S (block), S+1 (allow)."""
        s = self.n_sources
        return (self.entries + [DomainEntry(n, w, s) for n, w in self.local_block]
                + [DomainEntry(n, w, s + 1) for n, w in self.local_allow])

    def ref_masks(self) -> list[int]:
        return self.masks + [LOCAL, 0]

    def ref_allow(self) -> list[bool]:
        return self.allow + [False, True]

    def reference(self, name: str, policy: int) -> DomainAnswer:
        # every policy blocks local entries (docs/matching.md)
        return reference_domain_match(self.all_entries(), self.ref_masks(), self.ref_allow(),
                                      name, policy | LOCAL)

    def source_name(self, sid: int) -> str:
        return (self.source_names() + LOCAL_SOURCES)[sid]

    def matcher(self, with_local: bool = True) -> DomainMatcher:
        b = DomainSetBuilder()
        for e in self.entries:
            b.add([e.name], e.source, e.subdomains_only)
        table, classes = b.build(self.masks, self.allow, lambda: self.key)
        catalog = Catalog(CATEGORIES, self.source_names(), tuple(self.masks), tuple(self.allow))
        m = DomainMatcher(table, classes, catalog)
        if with_local:
            m = m.with_local([("*." if w else "") + n for n, w in self.local_block],
                             [("*." if w else "") + n for n, w in self.local_allow])
        return m


def check_verdict(world: World, v: Verdict, name: str, policy: int) -> None:
    """Verdict, categories, rule and deciding sources exactly as the reference."""
    ref = world.reference(name, policy)
    what = (name, policy, ref)
    assert v.name == name, what
    assert v.blocked == ref.blocked, what
    assert v.categories == category_names(ref.categories), what
    assert v.rule == ref.rule, what
    if ref.rule is None:
        assert v.sources == (), what
        return
    # The lists whose entries at the rule decided, bundle and local, each named once.
    assert len(set(v.sources)) == len(v.sources), what
    assert set(v.sources) == {world.source_name(s) for s in ref.sources}, what


# --- strategies ----------------------------------------------------------------------------

# A handful of labels, some prefixes/suffixes of others ("b" / "ab"), so names share suffix
# strings without sharing a label boundary. "xn--bcher-kva" is spelled "bücher" on input.
LABELS = ["a", "b", "ab", "c", "xn--bcher-kva"]
SPELLINGS = {"xn--bcher-kva": ["xn--bcher-kva", "bücher", "BÜCHER", "Bücher"]}
labels = st.sampled_from(LABELS)
names = st.lists(labels, min_size=1, max_size=3).map(".".join)
deep_names = st.lists(labels, min_size=1, max_size=6).map(".".join)

masks = st.one_of(st.sampled_from([0, 1, 2, 4, 3, 6, 1 << 62, 2**63 - 1]),
                  st.integers(0, 2**63 - 1))
policies = st.one_of(st.sampled_from([0, 1, 2, 3, 4, 5, 1 << 62, 2**63 - 1, ALL]),
                     st.integers(0, ALL))
keys = st.tuples(st.integers(0, ALL), st.integers(0, ALL))


@st.composite
def worlds(draw) -> World:
    n = draw(st.integers(1, 4))
    srcs = draw(st.lists(st.tuples(masks, st.sampled_from([False, False, True])),
                         min_size=n, max_size=n))
    entries = draw(st.lists(st.builds(DomainEntry, names, st.booleans(),
                                      st.integers(0, n - 1)), max_size=12))
    local_block = draw(st.lists(st.tuples(names, st.booleans()), max_size=3))
    local_allow = draw(st.lists(st.tuples(names, st.booleans()), max_size=3))
    return World([m for m, _ in srcs], [a for _, a in srcs], entries, local_block,
                 local_allow, draw(keys))


def queries_for(world: World, extra: list[str], rnd: random.Random) -> list[str]:
    """Entry names, names below and above them, a non-boundary extension ("x" + name),
    and drawn names: canonical, distinct."""
    out = list(extra)
    for e in world.all_entries():
        out += [e.name, rnd.choice(LABELS) + "." + e.name, "x" + e.name,
                f"{rnd.choice(LABELS)}.{rnd.choice(LABELS)}.{e.name}"]
        if "." in e.name:
            out.append(e.name.split(".", 1)[1])
    return list(dict.fromkeys(out))


def spell(name: str, rnd: random.Random) -> str:
    """Another spelling of a canonical name: case, trailing dot, Unicode labels."""
    parts = []
    for lab in name.split("."):
        lab = rnd.choice(SPELLINGS.get(lab, [lab]))
        parts.append("".join(c.upper() if rnd.random() < 0.3 else c for c in lab))
    return ".".join(parts) + ("." if rnd.random() < 0.3 else "")


def wire_0x20(name: str, rnd: random.Random) -> bytes:
    """Wire form with each letter's case randomised, as 0x20-encoding resolvers send it."""
    return bytes(b ^ 0x20 if (97 <= b <= 122 and rnd.random() < 0.5) else b
                 for b in name_to_wire(name))


# --- the property test ---------------------------------------------------------------------


def check_all_paths(world: World, m: DomainMatcher, queries: Sequence[str], policy: int,
                    rnd: random.Random) -> None:
    # match(): one name at a time, in any spelling
    for q in queries:
        check_verdict(world, m.match(spell(q, rnd), policy), q, policy)

    # match_batch(): spellings, some needing IDNA mapping in Python
    spelled = [spell(q, rnd) for q in queries]
    res = m.match_batch(spelled, policy)
    assert res.rows.shape == (len(queries), K.RESULT_WIDTH)
    assert not res.malformed.any()
    blocked, cats = res.blocked.tolist(), res.categories.tolist()
    for i, q in enumerate(queries):
        check_verdict(world, m.explain(q, res.rows[i], policy), q, policy)
        ref = world.reference(q, policy)
        assert (blocked[i], cats[i]) == (ref.blocked, ref.categories)

    # match_wire(): 0x20-encoded wire names at an offset in a larger buffer
    pm = m.policy_mask(policy)
    for q in queries:
        pre = bytes(rnd.randrange(256) for _ in range(rnd.randrange(4)))
        wire = wire_0x20(q, rnd)
        buf = pre + wire + bytes(rnd.randrange(256) for _ in range(rnd.randrange(4)))
        status = m.match_wire(buf, len(pre), pm)
        row = m.last_row.copy()
        assert status == row[K.R_STATUS]
        assert int(row[K.R_END]) == len(pre) + len(wire)
        check_verdict(world, m.explain(q, row, policy), q, policy)
        # the same through a writable numpy buffer (the general dispatch path)
        assert m.match_wire(np.frombuffer(bytearray(buf), np.uint8), len(pre), pm) == status

    # match_wire_batch(): all the names in one buffer, junk between them
    chunks, starts, pos = [], [], 0
    for q in queries:
        junk = bytes(rnd.randrange(256) for _ in range(rnd.randrange(3)))
        wire = wire_0x20(q, rnd)
        chunks += [junk, wire]
        starts.append(pos + len(junk))
        pos += len(junk) + len(wire)
    buf = np.frombuffer(b"".join(chunks), np.uint8)
    res = m.match_wire_batch(buf, np.array(starts, np.int64), policy)
    for i, q in enumerate(queries):
        assert int(res.rows[i, K.R_END]) == starts[i] + len(name_to_wire(q))
        check_verdict(world, m.explain(q, res.rows[i], policy), q, policy)


@SETTINGS
@given(world=worlds(), policy=policies, extra=st.lists(deep_names, max_size=6),
       seed=st.integers(0, 2**32 - 1))
def test_matcher_agrees_with_reference(world: World, policy: int, extra: list[str],
                                       seed: int) -> None:
    rnd = random.Random(seed)
    check_all_paths(world, world.matcher(), queries_for(world, extra, rnd), policy, rnd)


@settings(SETTINGS, max_examples=max(EXAMPLES // 4, 10))
@given(world=worlds(), policy=policies, extra=st.lists(deep_names, max_size=6),
       seed=st.integers(0, 2**32 - 1))
def test_matcher_without_local_overlay(world: World, policy: int, extra: list[str],
                                       seed: int) -> None:
    rnd = random.Random(seed)
    world.local_block, world.local_allow = [], []
    m = world.matcher(with_local=False)
    check_all_paths(world, m, queries_for(world, extra, rnd), policy, rnd)


@settings(SETTINGS, max_examples=max(EXAMPLES // 4, 10))
@given(world=worlds(), seed=st.integers(0, 2**32 - 1))
def test_many_policies_one_matcher(world: World, seed: int) -> None:
    # One matcher, one long run of lookups: scratch state reused across names of every
    # length and across policies must not leak from one lookup into the next.
    rnd = random.Random(seed)
    m = world.matcher()
    queries = queries_for(world, [], rnd)
    rnd.shuffle(queries)
    for policy in (0, 1, 2, 4, 1 << 62, ALL, rnd.getrandbits(64)):
        for q in queries:
            check_verdict(world, m.match(q, policy), q, policy)


# --- hand-written cases --------------------------------------------------------------------

ADS, GAMBLING, ADULT = 1, 2, 4


def simple(entries: Sequence[tuple[str, int]], masks: Sequence[int] = (ADS, GAMBLING),
           allow: Sequence[bool] | None = None, lblock: Sequence[str] = (),
           lallow: Sequence[str] = ()) -> tuple[World, DomainMatcher]:
    """A world from (pattern, source) pairs, pattern in list syntax ("*.x" = below only),
    ``allow`` the sources' allow flags, ``lblock``/``lallow`` the local lists."""
    allow = list(allow) if allow is not None else [False] * len(masks)
    es = [DomainEntry(p[2:], True, s) if p.startswith("*.") else DomainEntry(p, False, s)
          for p, s in entries]
    w = World(list(masks), allow, es,
              [(p[2:], True) if p.startswith("*.") else (p, False)
               for p in lblock],
              [(p[2:], True) if p.startswith("*.") else (p, False)
               for p in lallow])
    return w, w.matcher()


def verdict(m: DomainMatcher, name: str, policy: int = ALL) -> tuple[bool, str | None]:
    v = m.match(name, policy)
    return v.blocked, v.rule


def test_suffix_only_at_label_boundary() -> None:
    w, m = simple([("example.com", 0)])
    assert verdict(m, "example.com") == (True, "example.com")
    assert verdict(m, "www.example.com") == (True, "example.com")
    assert verdict(m, "a.b.c.example.com") == (True, "example.com")
    assert verdict(m, "badexample.com") == (False, None)
    assert verdict(m, "example.com.evil") == (False, None)
    assert verdict(m, "com") == (False, None)
    assert verdict(m, "xample.com") == (False, None)
    for q in ("example.com", "badexample.com", "www.badexample.com"):
        check_verdict(w, m.match(q, ALL), q, ALL)


def test_apex_versus_wildcard() -> None:
    w, m = simple([("*.example.com", 0)])
    assert verdict(m, "example.com") == (False, None)
    assert m.match("example.com", ALL).categories == ()
    assert verdict(m, "www.example.com") == (True, "example.com")
    # a full entry in another source adds the apex, with its own categories only
    w, m = simple([("*.example.com", 0), ("example.com", 1)])
    v = m.match("example.com", ALL)
    assert (v.blocked, v.categories) == (True, ("cat1",))
    v = m.match("www.example.com", ALL)
    assert (v.blocked, v.categories) == (True, ("cat0", "cat1"))
    assert verdict(m, "example.com", ADS) == (False, None)
    assert verdict(m, "www.example.com", ADS) == (True, "example.com")


def test_allow_against_block_at_every_depth() -> None:
    masks, allow = [ADS, 0], [False, True]
    # allow at the same depth wins
    w, m = simple([("ads.example.com", 0), ("ads.example.com", 1)], masks, allow)
    assert verdict(m, "ads.example.com") == (False, "ads.example.com")
    assert verdict(m, "x.ads.example.com") == (False, "ads.example.com")
    # a shorter allow loses to a longer block
    w, m = simple([("ads.example.com", 0), ("example.com", 1)], masks, allow)
    assert verdict(m, "x.ads.example.com") == (True, "ads.example.com")
    assert verdict(m, "www.example.com") == (False, "example.com")
    # a longer allow wins below, not above
    w, m = simple([("example.com", 0), ("good.example.com", 1)], masks, allow)
    assert verdict(m, "good.example.com") == (False, "good.example.com")
    assert verdict(m, "a.good.example.com") == (False, "good.example.com")
    assert verdict(m, "bad.example.com") == (True, "example.com")
    # a wildcard allow does not cover its apex
    w, m = simple([("example.com", 0), ("*.example.com", 1)], masks, allow)
    assert verdict(m, "example.com") == (True, "example.com")
    assert verdict(m, "www.example.com") == (False, "example.com")
    # categories are reported even when allowed
    assert m.match("www.example.com", ALL).categories == ("cat0",)


def test_allow_only_and_policy_miss() -> None:
    # An allow entry that overrides nothing is still the rule named ("why allowed?"), and
    # a block entry outside the policy decides nothing but its categories are reported.
    w, m = simple([("example.com", 1), ("example.com", 0)], [GAMBLING, 0], [False, True])
    v = m.match("www.example.com", ADS)
    assert (v.blocked, v.rule, v.categories) == (False, "example.com", ("cat1",))
    w, m = simple([("example.com", 0)], [GAMBLING])
    v = m.match("www.example.com", ADS)
    assert (v.blocked, v.rule, v.sources, v.categories) == (False, None, (), ("cat1",))


def test_same_name_in_several_sources() -> None:
    w, m = simple([("example.com", 0), ("example.com", 1), ("example.com", 2)],
                  [ADS, GAMBLING, ADULT])
    v = m.match("www.example.com", GAMBLING)
    assert v.blocked and v.rule == "example.com"
    assert v.categories == ("cat0", "cat1", "cat2")
    assert "list1" in v.sources


def test_spellings_reach_the_canonical_name() -> None:
    w, m = simple([("example.com", 0), ("xn--bcher-kva.example", 0)])
    for text in ("WWW.Example.COM.", "www.example.com", "  www.example.com\t",
                 "ｗｗｗ．ｅｘａｍｐｌｅ．ｃｏｍ"):
        v = m.match(text, ALL)
        assert (v.name, v.blocked, v.rule) == ("www.example.com", True, "example.com"), text
    for text in ("bücher.example", "BÜCHER.example.", "xn--bcher-kva.EXAMPLE"):
        v = m.match(text, ALL)
        assert (v.name, v.blocked) == ("xn--bcher-kva.example", True), text
    with pytest.raises(BadNameError):
        m.match("exa mple.com", ALL)
    with pytest.raises(BadNameError):
        m.match("", ALL)
    with pytest.raises(BadNameError):
        m.match("a..b", ALL)


def long_name(labels: int, first: str = "a") -> str:
    return ".".join([first] + ["a"] * (labels - 1))


def test_name_of_253_chars_and_127_labels() -> None:
    name = long_name(127)
    assert len(name) == 253 and name.count(".") == 126
    w, m = simple([(name, 0), ("a.a", 1)])
    assert verdict(m, name) == (True, name)
    other = "b." + name.split(".", 1)[1]  # 127 labels too, not listed itself
    assert verdict(m, other) == (True, "a.a")
    check_verdict(w, m.match(other, GAMBLING), other, GAMBLING)
    wire = name_to_wire(name)
    assert len(wire) == 255
    assert m.match_wire(wire, 0, m.policy_mask(ALL)) == K.ST_BLOCK
    assert int(m.last_row[K.R_BLOCK_DEPTH]) == 127
    res = m.match_batch([name, name.upper() + "."], ALL)
    assert res.blocked.tolist() == [True, True]
    # a 253-character name with long labels
    name2 = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(name2) == 253
    w, m = simple([(name2, 0)])
    assert verdict(m, name2) == (True, name2)


def test_name_of_254_chars_is_rejected() -> None:
    w, m = simple([("a", 0)])
    name = "b" + long_name(127)  # 254 characters, 127 labels
    assert len(name) == 254
    with pytest.raises(BadNameError):
        m.match(name, ALL)
    name128 = long_name(128)  # 255 characters, 128 labels
    res = m.match_batch([name, name128, name + ".", long_name(127)], ALL)
    assert res.malformed.tolist() == [True, True, True, False]
    assert res.blocked.tolist() == [False, False, False, True]
    # wire: 256 octets, and 128 labels
    for wire in (b"\x01b" + name_to_wire(long_name(127)), name_to_wire(name128)):
        assert m.match_wire(wire, 0, m.policy_mask(ALL)) == K.ST_MALFORMED


MALFORMED_WIRE = {
    "label length 64": b"\x40" + b"a" * 64 + b"\x00",
    "label length 0x7f": b"\x03www\x7f" + b"a" * 127 + b"\x00",
    "compression pointer": b"\x03www\xc0\x0c",
    "pointer then root": b"\x03www\xc0\x0c\x00",
    "extended label type": b"\x03www\x41" + b"a" * 65 + b"\x00",
    "truncated label": b"\x07example\x03co",
    "missing root": b"\x07example\x03com",
    "empty buffer": b"",
    "length byte only": b"\x05",
    "256 octets": b"\x3f" + b"a" * 63 + b"\x3f" + b"b" * 63 + b"\x3f" + b"c" * 63
                  + b"\x3e" + b"d" * 62 + b"\x00",
}


@pytest.mark.parametrize("wire", list(MALFORMED_WIRE.values()), ids=list(MALFORMED_WIRE))
def test_malformed_wire_names(wire: bytes) -> None:
    w, m = simple([("com", 0), ("www", 0), ("a", 0)])
    pm = m.policy_mask(ALL)
    assert m.match_wire(wire, 0, pm) == K.ST_MALFORMED
    assert m.last_row[K.R_STATUS] == K.ST_MALFORMED
    # as a writable array, and at the end of a bigger buffer (nothing read past it)
    assert m.match_wire(np.frombuffer(bytearray(b"\x00" * 9 + wire), np.uint8), 9,
                        pm) == K.ST_MALFORMED
    # last in a batch after good names (a malformed name in the middle of a buffer may
    # run on into the next one): only that row is malformed
    good = b"\x03www\x07example\x03com\x00"
    buf = np.frombuffer(good + good + wire, np.uint8)
    res = m.match_wire_batch(buf, np.array([0, len(good), 2 * len(good)], np.int64), ALL)
    assert res.malformed.tolist() == [False, False, True]
    assert res.blocked.tolist() == [True, True, False]


def test_wire_start_past_the_end() -> None:
    w, m = simple([("com", 0)])
    buf = b"\x03com\x00"
    for start in (len(buf), len(buf) + 10):
        assert m.match_wire(buf, start, m.policy_mask(ALL)) == K.ST_MALFORMED


@pytest.mark.parametrize("as_array", [False, True])
def test_wire_negative_start(as_array: bool) -> None:
    w, m = simple([("com", 0)])
    buf = b"\x03com\x00"
    data = np.frombuffer(buf, np.uint8) if as_array else buf
    for start in (-1, -5):
        try:
            status = m.match_wire(data, start, m.policy_mask(ALL))
        except (ValueError, IndexError):
            continue
        assert status == K.ST_MALFORMED, start


def test_wire_root_name() -> None:
    w, m = simple([("com", 0)])
    assert m.match_wire(b"\x00", 0, m.policy_mask(ALL)) == K.ST_ALLOW
    assert int(m.last_row[K.R_END]) == 1


def test_wire_end_offset_and_0x20() -> None:
    w, m = simple([("example.com", 0)])
    buf = b"\xff\xff\x03WwW\x07ExAmPlE\x03CoM\x00\x00\x01"
    assert m.match_wire(buf, 2, m.policy_mask(ALL)) == K.ST_BLOCK
    assert int(m.last_row[K.R_END]) == 2 + 17
    assert m.explain("www.example.com", m.last_row, ALL).rule == "example.com"


def test_wire_bytes_that_are_not_ldh() -> None:
    # The wire form allows any octet; such a label simply is another name.
    w, m = simple([("example.com", 0)])
    pm = m.policy_mask(ALL)
    assert m.match_wire(b"\x03w w\x07example\x03com\x00", 0, pm) == K.ST_BLOCK
    assert m.match_wire(b"\x03w\xffw\x07example\x03com\x00", 0, pm) == K.ST_BLOCK
    assert m.match_wire(b"\x07ex\xc1mple\x03com\x00", 0, pm) == K.ST_ALLOW
    # only ASCII letters fold: 0xC1 / 0xE1 are not the same byte
    w, m = simple([("a", 0)])
    assert m.match_wire(b"\x01A\x00", 0, pm) == K.ST_BLOCK
    assert m.match_wire(b"\x01\xc1\x00", 0, pm) == K.ST_ALLOW


def test_empty_table() -> None:
    w, m = simple([], [], [])
    v = m.match("www.example.com", ALL)
    assert (v.blocked, v.rule, v.categories, v.sources) == (False, None, (), ())
    res = m.match_batch(["a", "b.c"], ALL)
    assert not res.blocked.any()
    assert len(m.table) == 0
    m2 = m.with_local(["example.com"], ["ok.example.com"])
    assert verdict(m2, "www.example.com", 0) == (True, "example.com")
    assert verdict(m2, "a.ok.example.com", 0) == (False, "ok.example.com")
    assert m2.match("www.example.com", 0).sources == (LOCAL_SOURCES[0],)
    empty_batch = m2.match_batch([], ALL)
    assert empty_batch.rows.shape == (0, K.RESULT_WIDTH)
    res = m2.match_wire_batch(np.zeros(0, np.uint8), np.zeros(0, np.int64), ALL)
    assert res.rows.shape == (0, K.RESULT_WIDTH)


def test_policy_zero_blocks_only_local_entries() -> None:
    w, m = simple([("ads.com", 0), ("casino.com", 1)], lblock=["local.test", "*.casino.com"])
    assert m.policy_mask(0) == np.uint64(LOCAL)
    assert m.policy_mask(ADS) == np.uint64(LOCAL | ADS)
    v = m.match("ads.com", 0)
    assert (v.blocked, v.categories) == (False, ("cat0",))
    v = m.match("www.local.test", 0)
    assert (v.blocked, v.rule, v.categories, v.sources) == (
        True, "local.test", ("local",), (LOCAL_SOURCES[0],))
    v = m.match("www.casino.com", 0)
    assert (v.blocked, v.categories) == (True, ("cat1", "local"))
    assert verdict(m, "casino.com", 0) == (False, None)  # the local entry is "*."
    assert verdict(m, "casino.com", GAMBLING) == (True, "casino.com")


def test_local_allow_overrides_the_bundle() -> None:
    w, m = simple([("example.com", 0)], lallow=["good.example.com"])
    v = m.match("a.good.example.com", ALL)
    assert (v.blocked, v.rule, v.sources) == (False, "good.example.com", (LOCAL_SOURCES[1],))
    assert verdict(m, "bad.example.com") == (True, "example.com")
    # and a bundle block deeper than the local allow still wins
    w, m = simple([("ads.good.example.com", 0)], lallow=["good.example.com"])
    assert verdict(m, "x.ads.good.example.com") == (True, "ads.good.example.com")


def test_local_block_under_bundle_allow() -> None:
    w, m = simple([("example.com", 1)], [ADS, 0], [False, True], lblock=["ads.example.com"])
    assert verdict(m, "x.ads.example.com", 0) == (True, "ads.example.com")
    assert verdict(m, "www.example.com", 0) == (False, "example.com")
    # the same name in the local block list and the bundle's allow list: allow wins
    w, m = simple([("example.com", 1)], [ADS, 0], [False, True], lblock=["example.com"])
    assert verdict(m, "example.com", ALL) == (False, "example.com")


def test_with_local_rejects_bad_entries() -> None:
    w, m = simple([("a", 0)])
    with pytest.raises(BadNameError):
        m.with_local(["bad name.com"])
    with pytest.raises(BadNameError):
        m.with_local([], ["*."])
    # list syntax: a leading dot is ignored, "*." means below only
    m2 = m.with_local([".dot.test", "*.star.test"])
    assert verdict(m2, "dot.test") == (True, "dot.test")
    assert verdict(m2, "star.test") == (False, None)
    assert verdict(m2, "x.star.test") == (True, "star.test")


def test_deep_entries_share_the_last_depth_bit() -> None:
    # Depths 64 and above share one bit of the depth mask: entries at 64, 65 and 70
    # labels, queries at every depth from 60 to 75 below them.
    base = long_name(60, "z")
    e64 = "q.r.s." + "b." + base  # 64 labels
    e65 = "p." + e64
    e70 = "u.v.w.x.y." + e65
    assert [e.count(".") + 1 for e in (e64, e65, e70)] == [64, 65, 70]
    w, m = simple([(e64, 0), (e65, 1), ("*." + e70, 0)])
    queries = [".".join(e70.split(".")[i:]) for i in range(len(e70.split(".")))]
    queries += ["t.s.t." + e70, "c." + e64, "c." + base]
    for q in queries:
        check_verdict(w, m.match(q, ALL), q, ALL)
        check_verdict(w, m.match(q, GAMBLING), q, GAMBLING)
    assert verdict(m, e70) == (True, e65)
    assert verdict(m, "a." + e70) == (True, e70)


def test_batch_mixes_unicode_malformed_and_good_names() -> None:
    w, m = simple([("example.com", 0), ("xn--bcher-kva.example", 1), ("a", 0)])
    names_ = ["www.example.com", "bücher.example", "a..b", "", "ok.test", "Bücher.Example.",
              "ｗｗｗ．ｅｘａｍｐｌｅ．ｃｏｍ", "x" * 64 + ".com", "b" * 300, "ünï..code",
              "EXAMPLE.COM.", "example.com..", ".", "a", "é"]
    res = m.match_batch(names_, ALL)
    want_bad = []
    for i, text in enumerate(names_):
        try:
            canonical = normalise_domain(text)
        except BadNameError:
            want_bad.append(i)
            continue
        single = m.match(text, ALL)
        assert not res.malformed[i], text
        assert m.explain(canonical, res.rows[i], ALL) == single, text
        check_verdict(w, single, canonical, ALL)
    assert np.flatnonzero(res.malformed).tolist() == want_bad
    assert not res.blocked[want_bad].any()
    # the same names one per chunk boundary: more names than one kernel chunk
    many = names_ * 20
    res2 = m.match_batch(many, ALL)
    np.testing.assert_array_equal(res2.rows[:, :K.R_END], np.tile(res.rows[:, :K.R_END],
                                                                  (20, 1)))


NOT_DOMAIN_NAMES = [" example.com", "example.com ", "exa mple.com", "*.example.com",
                    "www.example.com/path", "a\tb.example.com", "www.example.com:443"]


@pytest.mark.parametrize("text", NOT_DOMAIN_NAMES)
def test_batch_agrees_with_match_on_non_ldh_ascii(text: str) -> None:
    w, m = simple([("example.com", 0)])
    res = m.match_batch([text], ALL)
    try:
        single = m.match(text, ALL)
    except BadNameError:
        assert res.malformed[0], "match_batch promises: not a domain name -> malformed"
    else:
        assert bool(res.blocked[0]) == single.blocked


# --- the "why": two known gaps, pinned ----------------------------------------------------


def test_why_apex_match_does_not_name_wildcard_only_lists() -> None:
    w, m = simple([("example.com", 0), ("*.example.com", 1)], [ADS, 0], [False, True])
    v = m.match("example.com", ALL)
    assert (v.blocked, v.rule) == (True, "example.com")
    assert v.sources == ("list0",)  # list1 (an allow list!) says only *.example.com


def test_why_names_bundle_and_local_lists_of_the_deciding_name() -> None:
    w, m = simple([("ads.test", 0)], lblock=["ads.test"])
    v = m.match("www.ads.test", ALL)
    assert v.blocked and v.rule == "ads.test"
    assert set(v.sources) == {"list0", LOCAL_SOURCES[0]}


def test_verdict_to_json() -> None:
    w, m = simple([("example.com", 0)])
    j = m.match("www.example.com", ALL).to_json()
    assert j == {"name": "www.example.com", "verdict": "block", "categories": ["cat0"],
                 "rule": "example.com", "source": "list0", "sources": ["list0"]}
    j = m.match("other.test", ALL).to_json()
    assert (j["verdict"], j["rule"], j["source"], j["sources"]) == ("allow", None, None, [])


# --- real data -----------------------------------------------------------------------------


def _read_list(fmt: str, path: Path):
    from filters.lists import get_format

    with path.open(encoding="utf-8", errors="replace") as f:
        return get_format(fmt).parse(f, str(path))


def test_real_lists_against_a_suffix_set(shared_data: Path) -> None:
    """StevenBlack + UT1 gambling + UT1 doh, every listed name, 20k names below them and
    20k names that extend them without a label boundary, against a set of suffixes.
    (~1 s with the JIT: not marked slow.)"""
    if PURE_PYTHON:
        pytest.skip("160k lookups through pure-Python kernels: the JIT run covers this")
    t0 = time.perf_counter()
    lists = shared_data / "lists"
    parsed = [
        _read_list("hosts", lists / "stevenblack" / "hosts0"),
        _read_list("ut1", lists / "ut1" / "gambling" / "domains"),
        _read_list("ut1", lists / "ut1" / "doh" / "domains"),
    ]
    src_masks = [ADS, GAMBLING, ADULT]  # third: "doh", any distinct bit
    full: dict[str, int] = {}  # name -> mask of sources listing "name"
    below: dict[str, int] = {}  # name -> mask of sources listing "*.name" (or "name")
    b = DomainSetBuilder()
    for s, p in enumerate(parsed):
        assert not p.allow and not p.allow_subdomains
        assert len(p.block) > 1000
        b.add(p.block, s)
        b.add(p.block_subdomains, s, subdomains_only=True)
        for n in p.block:
            full[n] = full.get(n, 0) | src_masks[s]
            below[n] = below.get(n, 0) | src_masks[s]
        for n in p.block_subdomains:
            below[n] = below.get(n, 0) | src_masks[s]
    table, classes = b.build(src_masks, [False] * 3, lambda: (0x5EED, 0xC0FFEE))
    m = DomainMatcher(table, classes, Catalog(CATEGORIES[:3], ("sb", "ut1-gambling",
                                                               "ut1-doh")))

    def ref(q: str) -> tuple[int, int]:
        """(union mask, deciding depth) by walking q's suffixes through the two dicts."""
        labels_ = q.split(".")
        union, depth = 0, 0
        for i in range(len(labels_)):
            suffix = ".".join(labels_[i:])
            mask = full.get(suffix, 0) if i == 0 else below.get(suffix, 0)
            union |= mask
            if mask and not depth:
                depth = len(labels_) - i
        return union, depth

    rnd = random.Random(20261124)
    listed = sorted(set(full) | set(below))
    subs = [f"{rnd.choice(['www', 'a', 'x1', 'cdn-7', 'xn--bcher-kva'])}.{n}"
            for n in rnd.sample(listed, 20_000)]
    glued = ["x" + n for n in rnd.sample(listed, 20_000)]
    queries = listed + subs + glued
    res = m.match_batch(queries, ALL)
    assert not res.malformed.any()
    blocked = res.blocked.tolist()  # (a property: computed on each access)
    rows = res.rows.tolist()
    bad = []
    for i, q in enumerate(queries):
        union, depth = ref(q)
        if (blocked[i], rows[i][K.R_UNION], rows[i][K.R_BLOCK_DEPTH]) != (
                union != 0, union, depth):
            bad.append(q)
    assert bad == [], f"{len(bad)} disagreements, e.g. {bad[:5]}"
    # every listed full name is blocked; "x" + name is blocked only through a real suffix
    assert all(b for b, n in zip(blocked, listed) if n in full)
    n_glued_blocked = sum(blocked[-20_000:])
    assert n_glued_blocked < 20_000  # most glued names share no listed suffix
    # the single-name paths on a sample, with the verdict's rule
    for q in rnd.sample(queries, 2_000):
        union, depth = ref(q)
        v = m.match(q, ALL)
        assert v.blocked == (union != 0), q
        assert v.rule == (".".join(q.split(".")[-depth:]) if depth else None), q
        assert m.match_wire(name_to_wire(q).upper(), 0, m.policy_mask(ALL)) == (
            K.ST_BLOCK if union else K.ST_ALLOW), q
    print(f"real lists: {len(table)} entries, {len(queries)} queries, "
          f"{n_glued_blocked} glued names blocked, {time.perf_counter() - t0:.1f}s")
