"""The SipHash of filters/_domain_kernels.py, checked in two steps (against a naive reference).

1. The pure-Python reference (tests/reference.py) reproduces the published SipHash-2-4
   vectors, 64- and 128-bit (veorq/SipHash ``vectors.h``: key 00..0f, message 00..(n-1)).
2. The kernels equal the reference at the kernels' own rounds (C_ROUNDS, D_ROUNDS = 1, 3):
   ``sip_words`` (fingerprint = SipHash-64, plus the bucket word), the per-name
   ``hash_names`` used to build tables, and the incremental suffix hashing of the lookup
   path. The kernels' code is also instantiated at 2-4 and its fingerprint checked against
   the published 64-bit vectors directly.
"""

from __future__ import annotations

import os
import types

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from filters import _domain_kernels as K
from filters.catalog import Catalog
from filters.classes import ClassTable
from filters.domain_matcher import DomainMatcher
from filters.domain_table import (
    HASH_SCHEME,
    DomainTable,
    bucket_bits_for,
    build_domain_table,
    pack_names,
)
from tests.reference import sip_words, siphash, suffix_message

# Pure-Python kernels (NUMBA_DISABLE_JIT=1, tests/unit/test_nojit.py) are ~1000x slower.
PURE_PYTHON = bool(numba.config.DISABLE_JIT)
EXAMPLES = int(os.environ.get("SCHOOLGATE_HYPOTHESIS_EXAMPLES", 100 if PURE_PYTHON else 500))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

CATALOG = Catalog(tuple(f"c{i}" for i in range(63)), ())
KEY = bytes(range(16))
K0 = int.from_bytes(KEY[:8], "little")
K1 = int.from_bytes(KEY[8:], "little")

# veorq/SipHash vectors.h, vectors_sip64[n] and vectors_sip128[n]: the output bytes for the
# message bytes(range(n)) under the key bytes(range(16)), n = 0..63 (all 64 of each).
VECTORS_SIP64 = """
310e0edd47db6f72 fd67dc93c539f874 5a4fa9d909806c0d 2d7efbd796666785
b7877127e09427cf 8da699cd64557618 cee3fe586e46c9cb 37d1018bf50002ab
6224939a79f5f593 b0e4a90bdf82009e f3b9dd94c5bb5d7a a7ad6b22462fb3f4
fbe50e86bc8f1e75 903d84c02756ea14 eef27a8e90ca23f7 e545be4961ca29a1
db9bc2577fcc2a3f 9447be2cf5e99a69 9cd38d96f0b3c14b bd6179a71dc96dbb
98eea21af25cd6be c7673b2eb0cbf2d0 883ea3e395675393 c8ce5ccd8c030ca8
94af49f6c650adb8 eab8858ade92e1bc f315bb5bb835d817 adcf6b0763612e2f
a5c91da7acaa4dde 716595876650a2a6 28ef495c53a387ad 42c341d8fa92d832
ce7cf2722f512771 e37859f94623f3a7 381205bb1ab0e012 ae97a10fd434e015
b4a31508beff4d31 81396229f0907902 4d0cf49ee5d4dcca 5c73336a76d8bf9a
d0a704536ba93e0e 925958fcd6420cad a915c29bc8067318 952b79f3bc0aa6d4
f21df2e41d4535f9 87577519048f53a9 10a56cf5dfcd9adb eb75095ccd986cd0
51a9cb9ecba312e6 96afadfc2ce666c7 72fe52975a4364ee 5a1645b276d592a1
b274cb8ebf87870a 6f9bb4203de7b381 eaecb2a30b22a87f 9924a43cc1315724
bd838d3aafbf8db7 0b1a2a3265d51aea 135079a3231ce660 932b2846e4d70666
e1915f5cb1eca46c f325965ca16d629f 575ff28e60381be5 724506eb4c328a95
""".split()

VECTORS_SIP128 = """
a3817f04ba25a8e66df67214c7550293 da87c1d86b99af44347659119b22fc45
8177228da4a45dc7fca38bdef60affe4 9c70b60c5267a94e5f33b6b02985ed51
f88164c12d9c8faf7d0f6e7c7bcd5579 1368875980776f8854527a07690e9627
14eeca338b208613485ea0308fd7a15e a1f1ebbed8dbc153c0b84aa61ff08239
3b62a9ba6258f5610f83e264f31497b4 264499060ad9baabc47f8b02bb6d71ed
00110dc378146956c95447d3f3d0fbba 0151c568386b6677a2b4dc6f81e5dc18
d626b266905ef35882634df68532c125 9869e247e9c08b10d029934fc4b952f7
31fcefac66d7de9c7ec7485fe4494902 5493e99933b0a8117e08ec0f97cfc3d9
6ee2a4ca67b054bbfd3315bf85230577 473d06e8738db89854c066c47ae47740
a426e5e423bf4885294da481feaef723 78017731cf65fab074d5208952512eb1
9e25fc833f2290733e9344a5e83839eb 568e495abe525a218a2214cd3e071d12
4a29b54552d16b9a469c10528eff0aae c9d184ddd5a9f5e0cf8ce29a9abf691c
2db479ae78bd50d8882a8a178a6132ad 8ece5f042d5e447b5051b9eacb8d8f6f
9c0b53b4b3c307e87eaee08678141f66 abf248af69a6eae4bfd3eb2f129eeb94
0664da1668574b88b935f3027358aef4 aa4b9dc4bf337de90cd4fd3c467c6ab7
ea5c7f471faf6bde2b1ad7d4686d2287 2939b0183223fafc1723de4f52c43d35
7c3956ca5eeafc3e363e9d556546eb68 77c6077146f01c32b6b69d5f4ea9ffcf
37a6986cb8847edf0925f0f1309b54de a705f0e69da9a8f907241a2e923c8cc8
3dc47d1f29c448461e9e76ed904f6711 0d62bf01e6fc0e1a0d3c4751c5d3692b
8c03468bca7c669ee4fd5e084bbee7b5 528a5bb93baf2c9c4473cce5d0d22bd9
df6a301e95c95dad97ae0cc8c6913bd8 801189902c857f39e73591285e70b6db
e617346ac9c231bb3650ae34ccca0c5b 27d93437efb721aa401821dcec5adf89
89237d9ded9c5e78d8b1c9b166cc7342 4a6d8091bf5e7d651189fa94a250b14c
0e33f96055e7ae893ffc0e3dcf492902 e61c432b720b19d18ec8d84bdc63151b
f7e5aef549f782cf379055a608269b16 438d030fd0b7a54fa837f2ad201a6403
a590d3ee4fbf04e3247e0d27f286423f 5fe2c1a172fe93c4b15cd37caef9f538
2c97325cbd06b36eb2133dd08b3a017c 92c814227a6bca949ff0659f002ad39e
dce850110bd8328cfbd50841d6911d87 67f14984c7da791248e32bb5922583da
1938f2cf72d54ee97e94166fa91d2a36 74481e9646ed49fe0f6224301604698e
57fca5de98a9d6d8006438d0583d8a1d 9fecde1cefdc1cbed4763674d9575359
e3040c00eb28f15366ca73cbd872e740 7697009a6a831dfecca91c5993670f7a
5853542321f567a005d547a4f04759bd 5150d1772f50834a503e069a973fbd7c
""".split()


def test_vector_tables_are_complete() -> None:
    assert len(VECTORS_SIP64) == 64 and len(VECTORS_SIP128) == 64
    assert VECTORS_SIP64[0] == "310e0edd47db6f72"
    assert VECTORS_SIP128[0] == "a3817f04ba25a8e66df67214c7550293"


# --- 1. the reference against the published vectors ------------------------------------


@pytest.mark.parametrize("n", range(64))
def test_reference_sip64_vectors(n: int) -> None:
    assert siphash(KEY, bytes(range(n)), 2, 4, 8).hex() == VECTORS_SIP64[n]


@pytest.mark.parametrize("n", range(64))
def test_reference_sip128_vectors(n: int) -> None:
    assert siphash(KEY, bytes(range(n)), 2, 4, 16).hex() == VECTORS_SIP128[n]


def test_reference_defaults_are_2_4_64() -> None:
    assert siphash(KEY, b"") == bytes.fromhex(VECTORS_SIP64[0])


def test_reference_rounds_matter() -> None:
    # c and d really are parameters: 1-3 differs from 2-4, and c and d are not swapped.
    msg = bytes(range(20))
    outs = {siphash(KEY, msg, c, d, 16) for c, d in [(2, 4), (1, 3), (3, 1), (4, 2), (2, 3)]}
    assert len(outs) == 5


def test_reference_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        siphash(KEY[:15], b"")
    with pytest.raises(ValueError):
        siphash(KEY, b"", outlen=4)


def test_suffix_message_is_reversed_wire_labels() -> None:
    assert suffix_message("example.com") == b"\x03com\x07example"
    assert suffix_message("WWW.Example.COM") == b"\x03com\x07example\x03www"
    assert suffix_message("a") == b"\x01a"


# --- 2. the kernels against the reference ------------------------------------------------


def kernel_sip(k0: int, k1: int, data: bytes) -> tuple[int, int]:
    fp, mix = K.sip_words(np.uint64(k0), np.uint64(k1), np.frombuffer(data, dtype=np.uint8))
    return int(fp), int(mix)


def kernels_at(c: int, d: int):
    """``sip_words`` rebuilt from the kernels' own code with other round counts. numba
    freezes module globals at compile time, so the functions reading C_ROUNDS/D_ROUNDS
    are re-created over a copy of the module namespace and compiled afresh."""
    g = dict(vars(K))
    g["C_ROUNDS"], g["D_ROUNDS"] = c, d
    for name in ("_finish", "sip_words"):
        py = getattr(K, name)
        py = getattr(py, "py_func", py)
        g[name] = numba.njit(types.FunctionType(py.__code__, g, name, py.__defaults__))
    return g["sip_words"]


def test_kernel_rounds_are_1_3() -> None:
    # The module's stated parameters; the table format (HASH_SCHEME) depends on them.
    assert (K.C_ROUNDS, K.D_ROUNDS) == (1, 3)


def test_kernel_code_at_2_4_reproduces_published_vectors() -> None:
    sip = kernels_at(2, 4)
    for n in range(64):
        fp, _ = sip(np.uint64(K0), np.uint64(K1), np.frombuffer(bytes(range(n)), np.uint8))
        assert int(fp).to_bytes(8, "little").hex() == VECTORS_SIP64[n], n


def test_reference_sip_words_fingerprint_is_plain_siphash64() -> None:
    key = K0.to_bytes(8, "little") + K1.to_bytes(8, "little")
    for n in range(64):
        fp, _ = sip_words(K0, K1, bytes(range(n)), 2, 4)
        assert fp.to_bytes(8, "little") == siphash(key, bytes(range(n)), 2, 4, 8), n


@pytest.mark.parametrize("n", range(0, 64, 7))
def test_kernel_equals_reference_on_vector_inputs(n: int) -> None:
    msg = bytes(range(n))
    assert kernel_sip(K0, K1, msg) == sip_words(K0, K1, msg, K.C_ROUNDS, K.D_ROUNDS)


keys = st.integers(0, 2**64 - 1)


@SETTINGS
@given(k0=keys, k1=keys, msg=st.binary(max_size=80))
def test_kernel_sip_words_equal_reference(k0: int, k1: int, msg: bytes) -> None:
    assert kernel_sip(k0, k1, msg) == sip_words(k0, k1, msg, K.C_ROUNDS, K.D_ROUNDS)


# Labels of every length class that matters for block alignment (1..63 bytes), with the
# characters the kernels treat specially: upper case (folded) and the rest (kept).
label_text = st.text(alphabet="abcXYZ019-_", min_size=1, max_size=63)
names = st.lists(label_text, min_size=1, max_size=8).map(".".join)


def hash_names(names_: list[str], k0: int, k1: int):
    buf, starts, stops = pack_names(names_)
    n = len(names_)
    h0 = np.empty(n, np.uint64)
    h1 = np.empty(n, np.uint64)
    depth = np.empty(n, np.int64)
    K.hash_names(buf, starts, stops, np.uint64(k0), np.uint64(k1), h0, h1, depth)
    return [(int(a), int(b)) for a, b in zip(h0, h1)], depth.tolist()


@SETTINGS
@given(k0=keys, k1=keys, names_=st.lists(names, min_size=1, max_size=6))
def test_hash_names_is_siphash_of_reversed_wire_labels(k0: int, k1: int,
                                                       names_: list[str]) -> None:
    got, depth = hash_names(names_, k0, k1)
    for name, h, dep in zip(names_, got, depth):
        assert dep == name.count(".") + 1
        assert h == sip_words(k0, k1, suffix_message(name), K.C_ROUNDS, K.D_ROUNDS)
        # also as plain SipHash of the message bytes, case folded by the caller
        assert h == kernel_sip(k0, k1, suffix_message(name.lower()))


def test_hash_names_trailing_dot_and_malformed() -> None:
    got, depth = hash_names(["example.com.", "example.com", "a..b", "", "."], 5, 6)
    assert got[0] == got[1]
    assert depth == [2, 2, 0, 0, 0]


def forged_table(names_: list[str], k0: int, k1: int) -> DomainTable:
    """A table laid out by hand from *reference* hashes (class id = index), so the lookup
    path is checked against the reference without going through hash_names."""
    n = len(names_)
    bits = bucket_bits_for(n)
    rows = []
    for i, name in enumerate(names_):
        fp, mix = sip_words(k0, k1, suffix_message(name), K.C_ROUNDS, K.D_ROUNDS)
        rows.append((mix >> (64 - bits), fp, i))
    rows.sort()
    offsets = np.zeros((1 << bits) + 1, np.uint32)
    for b, _, _ in rows:
        offsets[b + 1] += 1
    offsets = np.cumsum(offsets, dtype=np.uint32)
    depths = 0
    for name in names_:
        depths |= 1 << min(name.count("."), 63)
    params = np.array([k0, k1, bits, HASH_SCHEME, depths], np.uint64)
    return DomainTable(params, offsets, np.array([r[1] for r in rows], np.uint64),
                       np.array([r[2] for r in rows], np.uint16))


def test_forged_table_equals_built_table() -> None:
    names_ = ["example.com", "a.b.c", "x", "ads.example.net"]
    built = build_domain_table(names_, np.arange(4, dtype=np.uint32), (11, 22))
    forged = forged_table(names_, 11, 22)
    for a, b in zip(built.arrays().values(), forged.arrays().values()):
        np.testing.assert_array_equal(a, b)


def lookup_depths(table: DomainTable, wire: bytes) -> tuple[int, int, int]:
    """Look ``wire`` up in ``table`` through the matcher, every entry blocking (entry i's
    class has mask bit i): returns (status, union of matched entry bits, deepest depth)."""
    n = len(table)
    masks = np.array([1 << i for i in range(n)], np.uint64)
    classes = ClassTable(masks, masks, np.zeros(n, np.uint8), np.zeros(n + 1, np.uint32),
                         np.zeros(0, np.uint32))
    m = DomainMatcher(table, classes, CATALOG)
    status = m.match_wire(wire, 0, m.policy_mask(2**63 - 1))
    row = m.last_row
    return int(status), int(row[K.R_UNION]), int(row[K.R_BLOCK_DEPTH])


def to_wire(name: str) -> bytes:
    return b"".join(bytes([len(lab)]) + lab.encode() for lab in name.split(".")) + b"\x00"


@SETTINGS
@given(k0=keys, k1=keys, query=st.lists(label_text, min_size=1, max_size=6), data=st.data())
def test_lookup_path_hashes_every_suffix_like_the_reference(k0: int, k1: int,
                                                            query: list[str],
                                                            data: st.DataObject) -> None:
    # Entries: some suffixes of the query (reference hashes) and decoys; the incremental
    # hashing of the lookup must find exactly the suffixes.
    suffixes = [".".join(query[i:]) for i in range(len(query))]
    chosen = data.draw(st.lists(st.sampled_from(suffixes), unique=True, max_size=len(query)))
    decoys = data.draw(st.lists(names, max_size=3))
    entries = list(dict.fromkeys([s.lower() for s in chosen] +
                                 [d.lower() for d in decoys]))
    if not entries:
        entries = ["decoy"]
    table = forged_table(entries, k0, k1)
    status, union, depth = lookup_depths(table, to_wire(".".join(query)))
    qname = ".".join(query).lower()
    want = {i for i, e in enumerate(entries) if qname == e or qname.endswith("." + e)}
    assert union == sum(1 << i for i in want)
    assert status == (K.ST_BLOCK if want else K.ST_ALLOW)
    assert depth == max((entries[i].count(".") + 1 for i in want), default=0)
