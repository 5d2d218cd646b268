"""filters.domain_table and filters.domain_builder: layout, bundle round trip, validation
of foreign arrays, key collisions, and the size/occupancy properties of the layout."""

from __future__ import annotations

import random
from pathlib import Path

import numba
import numpy as np
import pytest

from filters import _domain_kernels as K
from filters.catalog import Catalog
from filters.classes import ClassTable
from filters.domain_builder import DomainSetBuilder
from filters.domain_matcher import DomainMatcher
from filters.domain_table import (
    HASH_SCHEME,
    DomainTable,
    KeyCollision,
    bucket_bits_for,
    build_domain_table,
    pack_names,
)
from filters.errors import BundleError, InputError
from tests.reference import sip_words, suffix_message

PURE_PYTHON = bool(numba.config.DISABLE_JIT)
ALL = 2**64 - 1
KEY = (0x0706050403020100, 0x0F0E0D0C0B0A0908)


def random_names(n: int, seed: int = 1) -> list[str]:
    """n distinct synthetic names of 2-4 labels."""
    rnd = random.Random(seed)
    tlds = ["com", "net", "org", "de", "fr", "co.uk"]
    out = {f"{rnd.getrandbits(40):x}.{rnd.choice(tlds)}" for _ in range(n)}
    while len(out) < n:
        out.add(f"w{rnd.getrandbits(48):x}.x{rnd.getrandbits(8)}.{rnd.choice(tlds)}")
    return sorted(out)[:n]


def sample_builder() -> DomainSetBuilder:
    b = DomainSetBuilder()
    b.add(["example.com", "ads.example.net", "tracker.io", "a.b.c.d.e"], 0)
    b.add(["casino.test", "example.com"], 1)
    b.add(["ads.example.net"], 1, subdomains_only=True)
    b.add(["good.example.com"], 2)
    return b


SOURCE_MASKS, SOURCE_ALLOW = [1, 2, 0], [False, False, True]
CATALOG = Catalog(("ads", "gambling"), ("ads-list", "casino-list", "allow-list"))
QUERIES = ["example.com", "www.example.com", "good.example.com", "x.good.example.com",
           "ads.example.net", "x.ads.example.net", "casino.test", "tracker.io", "e",
           "a.b.c.d.e", "z.a.b.c.d.e", "b.c.d.e", "other.org"]


def verdicts(m: DomainMatcher) -> list:
    return [m.match(q, ALL) for q in QUERIES] + [m.match(q, 1) for q in QUERIES]


# --- layout ----------------------------------------------------------------------------


def test_layout_of_a_small_table() -> None:
    t, classes = sample_builder().build(SOURCE_MASKS, SOURCE_ALLOW, lambda: KEY)
    assert len(t) == 6
    arrays = t.arrays()
    assert list(arrays) == ["domain_params", "domain_offsets", "domain_fps", "domain_cls"]
    assert [a.dtype for a in arrays.values()] == [np.uint64, np.uint32, np.uint64, np.uint16]
    bits = int(t.params[2])
    assert bits == bucket_bits_for(6)
    assert t.key == KEY
    assert int(t.params[3]) == HASH_SCHEME
    # depth mask: names of 1 (none), 2, 3 and 5 labels
    assert int(t.params[4]) == (1 << 1) | (1 << 2) | (1 << 4)
    assert t.offsets[0] == 0 and t.offsets[-1] == 6
    assert (np.diff(t.offsets.astype(np.int64)) >= 0).all()
    # each entry sits in the bucket its reference hash names, fingerprints sorted in it
    names = ["example.com", "ads.example.net", "tracker.io", "a.b.c.d.e", "casino.test",
             "good.example.com"]
    where = {}
    for name in names:
        h0, h1 = sip_words(*KEY, suffix_message(name), K.C_ROUNDS, K.D_ROUNDS)
        b = h1 >> (64 - bits)
        lo, hi = int(t.offsets[b]), int(t.offsets[b + 1])
        fps = t.fps[lo:hi].tolist()
        assert fps == sorted(fps)
        assert h0 in fps, name
        where[name] = lo + fps.index(h0)
    assert sorted(where.values()) == list(range(6))
    assert t.nbytes == 5 * 8 + 4 * ((1 << bits) + 1) + 8 * 6 + 2 * 6


def test_shift_and_bucket_bits() -> None:
    assert bucket_bits_for(0) == 1 and bucket_bits_for(7) == 1
    for n in (10, 100, 4096, 1 << 17, 10**6, 10**7):
        bits = bucket_bits_for(n)
        assert 2.5 <= n / (1 << bits) < 5, n  # average bucket: 2.5 to 5 entries
        if n >= 4096:  # (the one extra offset dominates only for toy tables)
            assert 4 * ((1 << bits) + 1) / n <= 1.6, n  # offsets under 1.6 B per entry
    t = build_domain_table(["a"], np.zeros(1, np.uint32), KEY)
    assert t.shift == np.uint64(64 - int(t.params[2]))


def test_class_ids_widen_past_65535() -> None:
    names = random_names(70_000, seed=3)
    ids = np.arange(70_000, dtype=np.uint32)
    t = build_domain_table(names, ids, KEY)
    assert t.cls.dtype == np.uint32
    assert sorted(t.cls.tolist()) == list(range(70_000))
    small = build_domain_table(names[:10], ids[:10], KEY)
    assert small.cls.dtype == np.uint16


def test_build_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        build_domain_table(["a", "b"], np.zeros(3, np.uint32), KEY)
    for bad in ("a..b", "", ".", "x" * 64 + ".com", "a." * 127 + "a"):
        with pytest.raises(InputError):
            build_domain_table(["ok.test", bad], np.zeros(2, np.uint32), KEY)
    t = build_domain_table([], np.zeros(0, np.uint32), KEY)
    assert len(t) == 0 and t.offsets.tolist() == [0, 0, 0] and int(t.params[4]) == 0


def test_pack_names() -> None:
    names = ["a.com", "bücher.de", "", "x"]
    buf, starts, stops = pack_names(names)
    got = [bytes(buf[s:e]).decode() for s, e in zip(starts, stops)]
    assert got == names
    buf, starts, stops = pack_names([])
    assert len(starts) == 0 and len(stops) == 0


# --- bundle round trip -------------------------------------------------------------------


def test_from_arrays_round_trip() -> None:
    t, classes = sample_builder().build(SOURCE_MASKS, SOURCE_ALLOW, lambda: KEY)
    t2 = DomainTable.from_arrays(t.arrays(), len(classes))
    for a, b in zip(t.arrays().values(), t2.arrays().values()):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    assert verdicts(DomainMatcher(t2, classes, CATALOG)) == verdicts(
        DomainMatcher(t, classes, CATALOG))


def save_and_map(arrays: dict[str, np.ndarray], tmp_path: Path) -> dict[str, np.ndarray]:
    for stem, a in arrays.items():
        np.save(tmp_path / f"{stem}.npy", a)
    return {stem: np.load(tmp_path / f"{stem}.npy", mmap_mode="r") for stem in arrays}


@pytest.mark.parametrize("n_names", [0, 6, 20_000])
def test_round_trip_through_npy_memory_maps(tmp_path: Path, n_names: int) -> None:
    b = sample_builder() if n_names == 6 else DomainSetBuilder()
    if n_names > 6:
        b.add(random_names(n_names), 0)
        b.add(random_names(n_names // 10, seed=9), 2)
    t, classes = b.build(SOURCE_MASKS, SOURCE_ALLOW, lambda: KEY)
    mapped = save_and_map(t.arrays(), tmp_path)
    cmapped = save_and_map(classes.arrays(), tmp_path)
    for a in list(mapped.values()) + list(cmapped.values()):
        assert isinstance(a, np.memmap)
        assert not a.flags.writeable
        if a.size:
            with pytest.raises(ValueError):
                a[0] = a[0]
    t2 = DomainTable.from_arrays(mapped, len(classes))
    c2 = ClassTable(**cmapped)
    m1 = DomainMatcher(t, classes, CATALOG)
    m2 = DomainMatcher(t2, c2, CATALOG)
    assert verdicts(m2) == verdicts(m1)
    queries = QUERIES + (random_names(n_names)[:2000] if n_names > 6 else [])
    queries += ["www." + q for q in queries]
    r1, r2 = m1.match_batch(queries, ALL), m2.match_batch(queries, ALL)
    np.testing.assert_array_equal(r1.rows, r2.rows)
    if n_names > 6:
        assert r2.blocked[len(QUERIES):len(QUERIES) + 2000].all()
    # the local overlay on top of a mapped table
    m3 = m2.with_local(["other.org"], ["x.good.example.com"])
    assert m3.match("www.other.org", 0).blocked
    # and the wire path with bytes (the pre-resolved entry point) on mapped arrays
    assert m2.match_wire(b"\x03www\x07example\x03com\x00", 0, m2.policy_mask(ALL)) == (
        K.ST_BLOCK if n_names == 6 else K.ST_ALLOW)


# --- from_arrays rejects what is not a table -----------------------------------------------


def good_arrays() -> tuple[dict[str, np.ndarray], int]:
    t, classes = sample_builder().build(SOURCE_MASKS, SOURCE_ALLOW, lambda: KEY)
    return {k: v.copy() for k, v in t.arrays().items()}, len(classes)


CORRUPTIONS: dict = {}
CORRUPTIONS["missing fps"] = lambda a: a.pop("domain_fps")
CORRUPTIONS["missing params"] = lambda a: a.pop("domain_params")
CORRUPTIONS["params int64"] = lambda a: a.update(domain_params=a["domain_params"].astype(np.int64))
CORRUPTIONS["params short"] = lambda a: a.update(domain_params=a["domain_params"][:4])
CORRUPTIONS["params 2-d"] = lambda a: a.update(domain_params=a["domain_params"][None, :])
CORRUPTIONS["offsets uint64"] = lambda a: a.update(
    domain_offsets=a["domain_offsets"].astype(np.uint64))
CORRUPTIONS["offsets int32"] = lambda a: a.update(
    domain_offsets=a["domain_offsets"].astype(np.int32))
CORRUPTIONS["fps int64"] = lambda a: a.update(domain_fps=a["domain_fps"].astype(np.int64))
CORRUPTIONS["fps float"] = lambda a: a.update(domain_fps=a["domain_fps"].astype(np.float64))
CORRUPTIONS["fps 2-d"] = lambda a: a.update(domain_fps=a["domain_fps"].reshape(2, -1))
CORRUPTIONS["cls int32"] = lambda a: a.update(domain_cls=a["domain_cls"].astype(np.int32))
CORRUPTIONS["cls uint8"] = lambda a: a.update(domain_cls=a["domain_cls"].astype(np.uint8))
CORRUPTIONS["cls 2-d"] = lambda a: a.update(domain_cls=a["domain_cls"].reshape(2, -1))
CORRUPTIONS["truncated fps"] = lambda a: a.update(domain_fps=a["domain_fps"][:-1])
CORRUPTIONS["truncated cls"] = lambda a: a.update(domain_cls=a["domain_cls"][:-1])
CORRUPTIONS["extra fps and cls"] = lambda a: a.update(
    domain_fps=np.append(a["domain_fps"], np.uint64(7)),
    domain_cls=np.append(a["domain_cls"], np.uint16(0)))
CORRUPTIONS["offsets one short"] = lambda a: a.update(domain_offsets=a["domain_offsets"][:-1])
CORRUPTIONS["offsets one long"] = lambda a: a.update(
    domain_offsets=np.append(a["domain_offsets"], a["domain_offsets"][-1:]))
CORRUPTIONS["bits + 1"] = lambda a: a["domain_params"].__setitem__(2, a["domain_params"][2] + 1)
CORRUPTIONS["bits 0"] = lambda a: a["domain_params"].__setitem__(2, 0)
CORRUPTIONS["bits 64"] = lambda a: a["domain_params"].__setitem__(2, 64)
CORRUPTIONS["offsets end past n"] = lambda a: a["domain_offsets"].__setitem__(-1, 7)
CORRUPTIONS["offsets start not 0"] = lambda a: a["domain_offsets"].__setitem__(0, 1)
CORRUPTIONS["scheme 0"] = lambda a: a["domain_params"].__setitem__(3, 0)
CORRUPTIONS["unknown scheme"] = lambda a: a["domain_params"].__setitem__(3, HASH_SCHEME + 1)


@pytest.mark.parametrize("what", list(CORRUPTIONS))
def test_from_arrays_rejects_corrupted_arrays(what: str) -> None:
    arrays, n_classes = good_arrays()
    CORRUPTIONS[what](arrays)
    with pytest.raises(BundleError):
        DomainTable.from_arrays(arrays, n_classes)


def test_from_arrays_rejects_class_id_out_of_range() -> None:
    arrays, n_classes = good_arrays()
    top = int(arrays["domain_cls"].max())
    DomainTable.from_arrays(arrays, top + 1)  # exactly enough classes: fine
    with pytest.raises(BundleError):
        DomainTable.from_arrays(arrays, top)
    arrays["domain_cls"][0] = n_classes
    with pytest.raises(BundleError):
        DomainTable.from_arrays(arrays, n_classes)
    arrays["domain_cls"] = arrays["domain_cls"].astype(np.uint32)
    arrays["domain_cls"][0] = 2**32 - 1
    with pytest.raises(BundleError):
        DomainTable.from_arrays(arrays, n_classes)


def test_from_arrays_rejects_offsets_that_go_backwards() -> None:
    # Buckets [off[b], off[b+1]) must not run past the entries: an interior offset beyond
    # N would make the kernel (no bounds checks) read past the fingerprint array.
    arrays, n_classes = good_arrays()
    off = arrays["domain_offsets"]
    n = len(arrays["domain_fps"])
    assert len(off) >= 3
    off[1] = n + 1000  # off[0] == 0 and off[-1] == n still hold
    with pytest.raises(BundleError):
        DomainTable.from_arrays(arrays, n_classes)


def test_empty_table_round_trip() -> None:
    t = build_domain_table([], np.zeros(0, np.uint32), KEY)
    t2 = DomainTable.from_arrays(t.arrays(), 0)
    assert len(t2) == 0


# --- key collisions ------------------------------------------------------------------------


def test_duplicate_names_are_refused() -> None:
    # build_domain_table's precondition is distinct names. Given the same name twice (or two
    # spellings that hash alike) it refuses to build rather than keep two entries, and says
    # so with ValueError: a KeyCollision would make a retrying caller burn fresh keys.
    ids = np.zeros(2, np.uint32)
    for pair in (["a.com", "a.com"], ["A.com", "a.com"], ["a.com.", "a.com"]):
        with pytest.raises(ValueError, match="name given twice"):
            build_domain_table(pair, ids, KEY)
    # distinct names never do
    build_domain_table(["a.com", "b.com"], ids, KEY)


@pytest.fixture
def forge_collisions(monkeypatch: pytest.MonkeyPatch):
    """Make hash_names give names[1] the hash of names[0] under the keys in ``bad``."""
    bad: set[tuple[int, int]] = set()
    real = K.hash_names

    def hash_names(buf, starts, stops, k0, k1, h0, h1, depth):
        real(buf, starts, stops, k0, k1, h0, h1, depth)
        if (int(k0), int(k1)) in bad and len(h0) > 1:
            h0[1], h1[1] = h0[0], h1[0]

    monkeypatch.setattr(K, "hash_names", hash_names)
    return bad


def test_forged_collision_raises(forge_collisions: set) -> None:
    forge_collisions.add(KEY)
    with pytest.raises(KeyCollision):
        build_domain_table(["a.com", "b.com", "c.com"], np.zeros(3, np.uint32), KEY)
    build_domain_table(["a.com", "b.com", "c.com"], np.zeros(3, np.uint32), (1, 2))


def test_builder_retries_with_a_new_key(forge_collisions: set) -> None:
    keys = [(1, 1), (2, 2), (3, 3)]
    forge_collisions.update(keys[:2])
    calls: list[tuple[int, int]] = []

    def new_key() -> tuple[int, int]:
        calls.append(keys[len(calls)])
        return calls[-1]

    b = sample_builder()
    t, classes = b.build(SOURCE_MASKS, SOURCE_ALLOW, new_key)
    assert calls == keys
    assert t.key == (3, 3)
    # the table built under the third key works
    assert DomainMatcher(t, classes, CATALOG).match("www.example.com", ALL).blocked


def test_builder_gives_up_after_repeated_collisions(forge_collisions: set) -> None:
    forge_collisions.add((5, 5))
    calls = []
    with pytest.raises(KeyCollision):
        sample_builder().build(SOURCE_MASKS, SOURCE_ALLOW, lambda: calls.append(1) or (5, 5))
    assert 1 < len(calls) <= 16


def test_same_fingerprint_other_bucket_is_not_a_collision(monkeypatch) -> None:
    real = K.hash_names

    def hash_names(buf, starts, stops, k0, k1, h0, h1, depth):
        real(buf, starts, stops, k0, k1, h0, h1, depth)
        h0[1] = h0[0]
        h1[1] = h1[0] ^ np.uint64(1 << 63)  # top bit differs: another bucket

    monkeypatch.setattr(K, "hash_names", hash_names)
    t = build_domain_table(["a.com", "b.com"], np.array([0, 1], np.uint32), KEY)
    assert len(t) == 2 and t.fps[0] == t.fps[1]


# --- the layout's size and occupancy -------------------------------------------------------


@pytest.mark.parametrize("n", [100_000, 1_000_000])
def test_bytes_per_entry(n: int) -> None:
    if PURE_PYTHON and n > 100_000:
        pytest.skip("pure-Python kernels: the 1M build is for the JIT run")
    names = random_names(n, seed=n)
    t = build_domain_table(names, np.zeros(n, np.uint32), KEY)
    bits = int(t.params[2])
    assert t.nbytes == 5 * 8 + 4 * ((1 << bits) + 1) + 8 * n + 2 * n  # what the layout says
    assert t.nbytes / n <= 12.0, t.nbytes / n


def test_bucket_occupancy() -> None:
    n = 100_000
    t = build_domain_table(random_names(n, seed=7), np.zeros(n, np.uint32), KEY)
    sizes = np.diff(t.offsets.astype(np.int64))
    assert sizes.sum() == n
    assert 2 <= sizes.mean() < 4
    assert sizes.max() < 32, sizes.max()
