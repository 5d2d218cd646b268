"""filters.keyword_scanner against the naive reference in tests/reference_scan.py."""

from __future__ import annotations

import random

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from filters import _scan_kernels, keyword_scanner
from filters.errors import BundleError, InputError
from filters.keyword_scanner import (
    KeywordScanner,
    KeywordTable,
    build_keyword_table,
)
from tests.reference_scan import ReferenceScanner

# With NUMBA_DISABLE_JIT=1 (the coverage run) the kernels are plain Python: keep sizes small.
PURE_PYTHON = bool(numba.config.DISABLE_JIT)
MANY_PATTERNS = 1_000 if PURE_PYTHON else 10_000
BIG_TEXT = 20_000 if PURE_PYTHON else 1_000_000


def check_all(patterns, texts):
    """Assert scan, scan_batch and find_all agree with the reference on every text."""
    ref = ReferenceScanner(patterns)
    sc = KeywordScanner.from_patterns(patterns)
    assert len(sc) == len(ref.folded)
    for i, key in enumerate(ref.folded):
        assert sc.pattern(i).lower() == key
        assert sc.pattern_mask(i) == ref.masks[i]
    want = [ref.scan(t) for t in texts]
    for t, w in zip(texts, want):
        assert sc.find_all(t) == ref.find_all(t), t
        assert sc.scan(t) == w, t
    masks, first = sc.scan_batch(texts)
    assert masks.dtype == np.uint64 and first.dtype == np.int64
    assert [(int(m), int(f)) for m, f in zip(masks, first)] == want
    return sc


# --------------------------------------------------------------------------- properties

# A tiny alphabet makes overlaps (prefix, suffix, substring patterns) the common case;
# upper-case letters and bytes >= 0x80 exercise folding and the non-ASCII path.
ALPHABET = b"abAB\x80\xff-"
tokens = st.binary(min_size=0, max_size=12).map(
    lambda b: bytes(ALPHABET[x % len(ALPHABET)] for x in b))
masks = st.one_of(st.integers(0, 7), st.integers(0, 2**64 - 1))  # small: early-exit paths


@st.composite
def pattern_sets(draw):
    texts = draw(st.lists(tokens, min_size=1, max_size=12))  # >= 4: the lane scheduler
    pats = []
    for _ in range(draw(st.integers(1, 12))):
        if draw(st.booleans()) and any(texts):
            # A substring of a text (case-flipped sometimes) so that matches do happen.
            t = draw(st.sampled_from([t for t in texts if t]))
            i = draw(st.integers(0, len(t) - 1))
            j = draw(st.integers(i + 1, len(t)))
            p = t[i:j]
            if draw(st.booleans()):
                p = p.swapcase()
        else:
            p = draw(tokens.filter(bool))
        pats.append((p, draw(masks)))
    return pats, texts


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern_sets())
def test_matches_reference(case):
    pats, texts = case
    check_all(pats, texts + [b""])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_long_texts_match_reference(data):
    """Texts long enough to be scanned as LANES overlapping segments."""
    rnd = random.Random(data.draw(st.integers(0, 2**32)))  # the text itself is not shrunk
    n = data.draw(st.integers(_scan_kernels.SPLIT_MIN, 3 * _scan_kernels.SPLIT_MIN))
    text = bytes(rnd.choice(b"aAb\x80") for _ in range(n))
    pats = []
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, n - 1))
        pats.append((text[i : i + data.draw(st.integers(1, 40))], data.draw(masks)))
    check_all(pats, [text, text[: n // 2], b"", text[1:]])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.text(alphabet="aAbBéÉ\u20ac", min_size=1, max_size=4),
                          st.integers(0, 3)), min_size=1, max_size=6),
       st.lists(st.text(alphabet="aAbBéÉ\u20ac", max_size=20), max_size=4))
def test_str_patterns_and_texts(pats, texts):
    check_all(pats, texts)


# --------------------------------------------------------------------------- examples


def test_classic_example_and_order():
    sc = check_all([("he", 1), ("she", 2), ("his", 4), ("hers", 8)], [b"ushers", b"USHERS"])
    # "she" and "he" both end at 4: the longer one is reported first.
    assert sc.find_all(b"ushers") == [(1, 4), (0, 4), (3, 6)]
    assert sc.scan(b"ushers") == (1 | 2 | 8, 1)


def test_single_byte_patterns():
    pats = [(bytes([b]), 1 << (b % 64)) for b in (0x00, 0x41, 0x7A, 0x80, 0xFF)]
    texts = [bytes(range(256)), b"A", b"a", b"Z", b"\x00", b"\xff\xfe", b""]
    sc = check_all(pats, texts)
    assert sc.scan(b"a") == (1 << (0x41 % 64), 1)  # 'A' pattern matches 'a'


def test_pattern_is_whole_text():
    check_all([(b"CasinoRoyale", 5)], [b"casinoroyale", b"casinoroyal", b"asinoroyale"])


def test_case_variants_merge():
    sc = KeywordScanner.from_patterns([("Casino", 1), ("CASINO", 2), ("casino", 4), ("poker", 8)])
    assert len(sc) == 2
    assert sc.pattern(0) == b"Casino"  # the spelling first given
    assert sc.scan("My cAsInO") == (7, 0)
    assert sc.scan(b"\xc3\x89") == (0, -1)


def test_non_ascii_is_not_folded():
    sc = KeywordScanner.from_patterns([("é", 1)])
    assert sc.scan("É") == (0, -1)
    assert sc.scan("café") == (1, 0)


def test_int32_transitions(monkeypatch):
    """Automata over 65536 states store int32 transitions; force that path on a small set."""
    monkeypatch.setattr(keyword_scanner, "_U16_STATES", 0)
    rng = random.Random(7)
    pats = [(bytes(rng.choice(b"abcAB") for _ in range(rng.randint(1, 6))), rng.randrange(8))
            for _ in range(40)]
    texts = [bytes(rng.choice(b"abcABx") for _ in range(rng.randint(0, 60))) for _ in range(30)]
    texts.append(bytes(rng.choice(b"abcAB") for _ in range(_scan_kernels.SPLIT_MIN + 17)))
    sc = check_all(pats, texts)
    assert sc.table.delta.dtype == np.int32
    KeywordTable.from_arrays(sc.table.arrays()).check_values()


def test_no_patterns():
    sc = KeywordScanner.from_patterns([])
    assert sc.scan(b"anything") == (0, -1)
    assert sc.find_all(b"anything") == []
    m, f = sc.scan_batch([b"a", b""])
    assert m.tolist() == [0, 0] and f.tolist() == [-1, -1]


def test_many_patterns():
    rng = random.Random(1234)
    words = {"".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(3, 9)))
             for _ in range(MANY_PATTERNS)}
    pats = [(w, 1 << rng.randrange(64)) for w in sorted(words)]
    texts = ["/".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUV/?=.-") + w for w in
                      rng.sample(sorted(words), 5)) for _ in range(20)]
    texts += ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(200))
              for _ in range(20)]
    check_all(pats, [t.encode() for t in texts])


def test_one_megabyte_text():
    rng = random.Random(99)
    alphabet = b"abcdXYZ/\x80 "
    text = bytes(rng.choice(alphabet) for _ in range(BIG_TEXT))
    pats = [(text[i : i + rng.randint(1, 8)], 1 << (n % 64))
            for n, i in enumerate(rng.sample(range(BIG_TEXT - 8), 50))]
    pats += [(b"zzzzz", 1), (b"abcdabcd", 2)]
    sc = check_all(pats, [text])
    # The same text split into a batch of 4 KiB pieces agrees with per-piece scans.
    pieces = [text[i : i + 4096] for i in range(0, len(text), 4096)]
    masks, first = sc.scan_batch(pieces)
    assert [(int(m), int(f)) for m, f in zip(masks, first)] == [sc.scan(p) for p in pieces]


@pytest.mark.parametrize("extra", [0, 1, 3, 4095])
def test_long_text_segments(extra):
    """Texts long enough to be split into four segments: matches straddling the segment
    borders (and the longest pattern ending exactly at one) must be found once, in order."""
    rng = random.Random(extra)
    n = _scan_kernels.SPLIT_MIN * 2 + extra
    text = bytes(rng.choice(b"abAB") for _ in range(n))
    seg = n // 4
    long_pat = text[seg - 100 : seg]  # max_len 100: the warm-up is 99 bytes
    pats = [(long_pat, 1)]
    for border in (seg, 2 * seg, 3 * seg):
        for width in (1, 2, 7, 30):
            pats.append((text[border - width : border + width], 2))
            pats.append((text[border - width : border], 4))
            pats.append((text[border : border + width], 8))
    pats.append((text[-5:], 16))
    sc = check_all(pats, [text, text[:-1], b"x" + text])
    masks, first = sc.scan_batch([b"ab", text, b"", b"BA", text[::-1], b"b", text])
    assert [(int(m), int(f)) for m, f in zip(masks, first)] == [
        sc.scan(t) for t in (b"ab", text, b"", b"BA", text[::-1], b"b", text)]


# --------------------------------------------------------------------------- input errors


@pytest.mark.parametrize(
    "bad",
    [[("", 1)], [(b"", 1)], [("ok", -1)], [("ok", 2**64)], [("ok", 1.0)], [("ok", True)],
     [(3, 1)], ["single"], [("a", 1, 2)]],
)
def test_bad_patterns_rejected(bad):
    with pytest.raises(InputError):
        build_keyword_table(bad)


def test_scan_batch_input_kinds():
    """str items, bytearrays and buffers whose len() is not their byte size all work, on
    both the joined path (short texts) and the per-text path (long ones)."""
    import array

    sc = KeywordScanner.from_patterns([("bet", 1), ("\x00\x00", 2)])
    wide = memoryview(array.array("I", [0x00746562, 7]))  # b"bet\x00\x07\x00\x00\x00"
    assert len(wide) == 2 and wide.nbytes == 8
    texts = ["BET", bytearray(b"xbet"), wide, b""]
    m, f = sc.scan_batch(texts)
    assert m.tolist() == [1, 1, 3, 0] and f.tolist() == [0, 0, 0, -1]
    long_texts = [t * _scan_kernels.SPLIT_MIN for t in (b"a", b"abet")] + ["x" * 9000]
    m, f = sc.scan_batch(long_texts)
    assert m.tolist() == [0, 1, 0] and f.tolist() == [-1, 0, -1]


def test_scan_flat_and_its_validation():
    sc = KeywordScanner.from_patterns([("bet", 1)])
    buf = np.frombuffer(b"xbetyBET", dtype=np.uint8)
    m, f = sc.scan_flat(buf, np.array([0, 4, 4, 8], dtype=np.int32))
    assert m.tolist() == [1, 0, 1] and f.tolist() == [0, -1, 0]
    for offsets in ([0, 9], [4, 2], [-1, 2], []):
        with pytest.raises(InputError):
            sc.scan_flat(buf, np.array(offsets, dtype=np.int64))
    with pytest.raises(InputError):
        sc.scan_flat(np.zeros(3, dtype=np.int32), np.array([0, 3]))
    with pytest.raises(InputError):
        sc.scan(12)  # type: ignore[arg-type]


def test_pattern_index_errors():
    sc = KeywordScanner.from_patterns([("a", 1)])
    with pytest.raises(IndexError):
        sc.pattern(1)
    with pytest.raises(IndexError):
        sc.pattern_mask(-1)


# --------------------------------------------------------------------------- arrays / bundle


def test_mmap_roundtrip_without_copies(tmp_path):
    pats = [("casino", 1), ("poker", 2), ("sino", 4), ("xxx", 8), ("/porn/", 16)]
    table = build_keyword_table(pats)
    names = table.arrays()
    assert all(n.startswith("kw_") for n in names)
    for name, arr in names.items():
        np.save(tmp_path / f"{name}.npy", arr)
    loaded = {n: np.load(tmp_path / f"{n}.npy", mmap_mode="r") for n in names}
    t2 = KeywordTable.from_arrays(loaded)
    t2.check_values()
    assert all(getattr(t2, n[3:]) is loaded[n] for n in names)  # no copies
    sc = KeywordScanner(t2)
    assert sc.scan(b"/PORN/casino") == (16 | 1 | 4, 4)
    assert sc.find_all(b"casino") == [(0, 6), (2, 6)]
    assert sc.pattern(4) == b"/porn/"
    texts = [b"pokercasino", b"", b"xxxx"]
    assert sc.scan_batch(texts)[0].tolist() == [7, 0, 8]


def _arrays():
    return build_keyword_table([("casino", 1), ("sino", 2)]).arrays()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda a: a.pop("kw_delta"),
        lambda a: a.__setitem__("kw_delta", a["kw_delta"].astype(np.int64)),
        lambda a: a.__setitem__("kw_delta", a["kw_delta"][:-1]),
        lambda a: a.__setitem__("kw_cmap", a["kw_cmap"].reshape(16, 16)),
        lambda a: a.__setitem__("kw_acc_own", a["kw_acc_own"][:-1]),
        lambda a: a.__setitem__("kw_pat_offsets", a["kw_pat_offsets"] + 1),
        lambda a: a.__setitem__("kw_header", np.array([99, 1, 1, 1, 0, 0], dtype=np.int64)),
        lambda a: a.__setitem__("kw_header", a["kw_header"][:3]),
        lambda a: a.__setitem__("kw_cmap", np.full(256, 200, dtype=np.int32)),
        # same length and dtype, but a strided view: the kernels need contiguous memory
        lambda a: a.__setitem__("kw_delta", np.repeat(a["kw_delta"], 2)[::2]),
    ],
)
def test_from_arrays_rejects(mutate):
    arrays = _arrays()
    mutate(arrays)
    with pytest.raises(BundleError):
        KeywordTable.from_arrays(arrays)


def _fake(n_states, n_classes, acc0, delta_dtype=np.uint16, n_patterns=0):
    """Arrays with consistent sizes for a made-up header (for the header checks)."""
    n_acc = n_states - acc0
    return {
        "kw_header": np.array([1, n_classes, n_states, acc0, n_patterns, 0], dtype=np.int64),
        "kw_cmap": np.zeros(256, dtype=np.int32),
        "kw_delta": np.zeros(n_states * n_classes, dtype=delta_dtype),
        "kw_acc_mask": np.zeros(max(n_acc, 0), dtype=np.uint64),
        "kw_acc_own": np.zeros(max(n_acc, 0), dtype=np.int32),
        "kw_acc_dict": np.zeros(max(n_acc, 0), dtype=np.int32),
        "kw_pat_bytes": np.zeros(0, dtype=np.uint8),
        "kw_pat_offsets": np.zeros(n_patterns + 1, dtype=np.int64),
        "kw_pat_mask": np.zeros(n_patterns, dtype=np.uint64),
    }


@pytest.mark.parametrize(
    "arrays",
    [
        _fake(4, 0, 1),  # no byte classes
        _fake(4, 2, 5),  # first accepting state beyond the states
        _fake(4, 2, 0),  # the root accepting
        _fake(2**16 + 1, 1, 2**16 + 1),  # too many states for uint16 transitions
    ],
)
def test_from_arrays_rejects_bad_headers(arrays):
    with pytest.raises(BundleError):
        KeywordTable.from_arrays(arrays)


def test_from_arrays_enforces_the_cell_limit(monkeypatch):
    arrays = _arrays()
    monkeypatch.setattr(keyword_scanner, "MAX_DFA_CELLS", 10)
    with pytest.raises(BundleError, match="MAX_DFA_CELLS"):
        KeywordTable.from_arrays(arrays)


def test_fake_header_baseline_is_accepted():
    table = KeywordTable.from_arrays(_fake(2**16 + 1, 1, 2**16 + 1, np.int32))
    assert len(table) == 0 and table.nbytes > 4 * 2**16
    table.check_values()


def test_build_refuses_oversized_sets(monkeypatch):
    monkeypatch.setattr(keyword_scanner, "MAX_DFA_CELLS", 100)
    with pytest.raises(InputError, match="too large"):
        build_keyword_table([("abcdefghijklmnopqrstuvwxyz", 1)])


def _corrupt_links(a):
    own = a["kw_acc_own"]
    own[own >= 0] = -1  # every accepting state loses its own pattern


def _corrupt_chain(a):
    a["kw_acc_own"][:] = -1
    a["kw_acc_dict"][:] = -1


def _corrupt_offsets(a):
    a["kw_pat_offsets"][1] = 0  # an empty pattern


@pytest.mark.parametrize("corrupt", [_corrupt_links, _corrupt_chain, _corrupt_offsets])
def test_check_values_catches_broken_structure(corrupt):
    arrays = {k: v.copy() for k, v in
              build_keyword_table([("casino", 1), ("sino", 2), ("no", 4)]).arrays().items()}
    corrupt(arrays)
    with pytest.raises(BundleError):
        KeywordTable.from_arrays(arrays).check_values()


@pytest.mark.parametrize("name,value", [("kw_delta", 1000), ("kw_acc_own", 99),
                                        ("kw_acc_dict", 50), ("kw_header", 1)])
def test_check_values_catches_corruption(name, value):
    arrays = {k: v.copy() for k, v in _arrays().items()}
    arrays[name][-1 if name == "kw_header" else 0] = value  # header[-1]: longest pattern
    table = KeywordTable.from_arrays(arrays)
    with pytest.raises(BundleError):
        table.check_values()


def test_kernel_callable_from_njit():
    sc = KeywordScanner.from_patterns([("bet", 3), ("poker", 4)])
    tables = sc.kernel_tables

    @numba.njit
    def count_hits(tables, buf, offsets):
        hits = 0
        for j in range(len(offsets) - 1):
            m, f = _scan_kernels.scan_range(*tables, buf, offsets[j], offsets[j + 1])
            if f >= 0:
                hits += 1
        return hits

    buf = np.frombuffer(b"BETxxpokerzz", dtype=np.uint8)
    assert count_hits(tables, buf, np.array([0, 3, 5, 10, 12], dtype=np.int64)) == 2
