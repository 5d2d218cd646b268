"""filters.cidr_table: building the sorted CIDR arrays, and loading them back from a bundle."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import numpy as np
import pytest

from filters.cidr_table import ARRAY_NAMES, CidrTable, build_cidr_table
from filters.errors import BundleError


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


SAMPLE = [
    (net("10.1.2.0/24"), 3),
    (net("2001:db8::/32"), 4),
    (net("10.0.0.0/8"), 1),
    (net("192.168.0.0/16"), 0),
    (net("10.1.0.0/16"), 2),
    (net("2001:db8:1::/48"), 5),
    (net("10.2.0.0/16"), 6),
]


def save_and_map(table: CidrTable, tmp_path: Path) -> dict[str, np.ndarray]:
    for stem, a in table.arrays().items():
        np.save(tmp_path / f"{stem}.npy", a)
    return {stem: np.load(tmp_path / f"{stem}.npy", mmap_mode="r") for stem in ARRAY_NAMES}


def test_entries_are_sorted_v4_first_with_parents() -> None:
    t = build_cidr_table(SAMPLE)
    assert (t.n_v4, t.n_v6, len(t)) == (5, 2, 7)
    assert [str(t.network(i)) for i in range(len(t))] == [
        "10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.2.0.0/16", "192.168.0.0/16",
        "2001:db8::/32", "2001:db8:1::/48",
    ]
    assert t.cls.tolist() == [1, 2, 3, 6, 0, 4, 5]
    # Parents are global indices; siblings share a parent; a v6 root has none.
    assert t.parent.tolist() == [-1, 0, 1, 0, -1, -1, 5]
    assert t.prefix.tolist() == [8, 16, 24, 16, 16, 32, 48]


def test_same_start_nested_networks_order_by_prefix() -> None:
    t = build_cidr_table([(net("0.0.0.0/32"), 0), (net("0.0.0.0/0"), 0), (net("0.0.0.0/1"), 0)])
    assert t.prefix.tolist() == [0, 1, 32]
    assert t.parent.tolist() == [-1, 0, 1]


def test_v6_words_split_at_64_bits() -> None:
    t = build_cidr_table([(net("ffff:ffff:ffff:ffff:8000::/65"), 0), (net("::1/128"), 0)])
    assert t.v6_net_hi.tolist() == [0, 2**64 - 1]
    assert t.v6_net_lo.tolist() == [1, 2**63]
    assert str(t.network(1)) == "ffff:ffff:ffff:ffff:8000::/65"


def test_empty_table() -> None:
    t = build_cidr_table([])
    assert len(t) == 0 and t.nbytes == 8  # the index's two zeros
    assert {a.dtype for a in t.arrays().values()} == {
        np.dtype(x) for x in ("uint32", "uint64", "uint8", "int32")
    }


def test_duplicate_networks_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate CIDR 10.0.0.0/8"):
        build_cidr_table([(net("10.0.0.0/8"), 1), (net("10.0.0.0/8"), 2)])
    with pytest.raises(ValueError, match="duplicate CIDR 2001:db8::/32"):
        build_cidr_table([(net("2001:db8::/32"), 1), (net("2001:db8::/32"), 1)])
    # Same address, different family or prefix: not duplicates.
    build_cidr_table([(net("0.0.0.0/0"), 0), (net("::/0"), 0), (net("0.0.0.0/1"), 0)])


@pytest.mark.parametrize("bad", [-1, 2**32, 1.0, "1", None])
def test_bad_class_id(bad: object) -> None:
    with pytest.raises(ValueError, match="class id"):
        build_cidr_table([(net("10.0.0.0/8"), bad)])  # type: ignore[list-item]


def test_not_a_network() -> None:
    with pytest.raises(ValueError, match="not an IPv4Network"):
        build_cidr_table([("10.0.0.0/8", 1)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="not an IPv4Network"):
        build_cidr_table([(ipaddress.ip_address("10.0.0.1"), 1)])  # type: ignore[list-item]


def test_bytes_per_entry() -> None:
    v4 = build_cidr_table([(net(f"10.{i}.0.0/16"), 0) for i in range(100)])
    v6 = build_cidr_table([(net(f"2001:db8:{i:x}::/48"), 0) for i in range(100)])
    assert len(v4.v4_index) == 65  # 2**6 buckets for 100 entries
    assert v4.nbytes == 13 * 100 + 4 * 65
    assert v6.nbytes == 25 * 100 + 4 * 2


@pytest.mark.parametrize(("n", "buckets"), [(0, 1), (1, 1), (3, 2), (1000, 512), (2**17, 2**16)])
def test_v4_index_size_follows_entry_count(n: int, buckets: int) -> None:
    t = build_cidr_table([(ipaddress.IPv4Network((i << 15, 17)), 0) for i in range(n)])
    assert len(t.v4_index) == buckets + 1
    assert t.v4_index[0] == 0 and t.v4_index[-1] == n
    # Bucket b starts at the first network whose top bits are >= b.
    shift = 32 - (buckets.bit_length() - 1)
    for b in range(0, buckets, max(1, buckets // 64)):
        first = int(t.v4_index[b])
        assert first == n or int(t.v4_net[first]) >> shift >= b
        assert first == 0 or int(t.v4_net[first - 1]) >> shift < b


def test_network_index_bounds() -> None:
    t = build_cidr_table(SAMPLE)
    with pytest.raises(IndexError):
        t.network(len(t))
    with pytest.raises(IndexError):
        t.network(-1)  # -1 means "no rule", never "the last entry"


def test_any_index_size_is_accepted() -> None:
    # The kernels read the bucket count from the array, so a publisher may choose it.
    arrays = dict(build_cidr_table(SAMPLE).arrays())
    for index in ([0, 5], [0, 4, 5], [0, 4, 4, 4, 5]):
        arrays["cidr_v4_index"] = np.array(index, np.uint32)
        assert CidrTable.from_arrays(arrays).v4_index.tolist() == index


@pytest.mark.parametrize("entries", [SAMPLE, []], ids=["sample", "empty"])
def test_round_trip_through_mmap_without_copy(entries: list, tmp_path: Path) -> None:
    t = build_cidr_table(entries)
    arrays = save_and_map(t, tmp_path)
    u = CidrTable.from_arrays({**arrays, "domain_other": np.zeros(3)})
    for stem, a in u.arrays().items():
        assert a is arrays[stem]  # used as mapped, not copied
        assert np.array_equal(a, t.arrays()[stem])
        assert not a.flags.writeable
    assert [u.network(i) for i in range(len(u))] == [t.network(i) for i in range(len(t))]


def _broken(**changes: np.ndarray) -> dict[str, np.ndarray]:
    arrays = dict(build_cidr_table(SAMPLE).arrays())
    arrays.update(changes)
    return arrays


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({k: v for k, v in _broken().items() if k != "cidr_parent"}, "missing array cidr_parent"),
        (_broken(cidr_class=[1, 2, 3, 6, 0, 4, 5]), "not an array"),
        (_broken(cidr_v4_net=np.zeros(5, np.int64)), "cidr_v4_net must be"),
        (_broken(cidr_prefix=np.zeros((7, 1), np.uint8)), "cidr_prefix must be"),
        (_broken(cidr_parent=np.zeros(14, np.int32)[::2]), "cidr_parent must be"),
        (_broken(cidr_v6_net_lo=np.zeros(3, np.uint64)), "differ in length"),
        (_broken(cidr_class=np.zeros(6, np.uint32)), "one element per"),
        (_broken(cidr_prefix=np.array([8, 16, 33, 16, 16, 32, 48], np.uint8)), "prefix length"),
        (_broken(cidr_prefix=np.array([8, 16, 24, 16, 16, 32, 129], np.uint8)), "prefix length"),
        (_broken(cidr_v4_net=np.array([1, 0, 2, 3, 4], np.uint32)), "v4 networks are not sorted"),
        (
            _broken(cidr_v4_net=np.array([0, 0, 2, 3, 4], np.uint32),
                    cidr_prefix=np.array([32, 32, 32, 32, 32, 32, 48], np.uint8)),
            "v4 networks are not sorted",
        ),
        (_broken(cidr_prefix=np.array([5, 16, 24, 16, 16, 32, 48], np.uint8)), "host bits"),
        (_broken(cidr_prefix=np.array([8, 16, 24, 16, 16, 20, 48], np.uint8)), "host bits"),
        (_broken(cidr_prefix=np.array([8, 16, 24, 16, 16, 32, 47], np.uint8)), "host bits"),
        (_broken(cidr_v6_net_lo=np.array([0, 1], np.uint64)), "host bits"),
        (_broken(cidr_v6_net_hi=np.array([5, 4], np.uint64)), "v6 networks are not sorted"),
        (
            _broken(cidr_v6_net_hi=np.array([7, 7], np.uint64),
                    cidr_v6_net_lo=np.array([5, 4], np.uint64)),
            "v6 networks are not sorted",
        ),
        (_broken(cidr_parent=np.array([-1, 0, 2, 0, -1, -1, 5], np.int32)), "does not precede"),
        (_broken(cidr_parent=np.array([-2, 0, 1, 0, -1, -1, 5], np.int32)), "does not precede"),
        (_broken(cidr_parent=np.array([-1, 0, 1, 0, -1, 4, 5], np.int32)), "v4 parent"),
        (_broken(cidr_v4_index=np.array([0, 4, 4, 5], np.uint32)), "not 2\\*\\*k"),
        (_broken(cidr_v4_index=np.array([0], np.uint32)), "not 2\\*\\*k"),
        (_broken(cidr_v4_index=np.zeros(2**17 + 1, np.uint32)), "not 2\\*\\*k"),
        (_broken(cidr_v4_index=np.array([1, 5], np.uint32)), "does not match"),
        (_broken(cidr_v4_index=np.array([0, 4, 4, 5, 5], np.uint32)), "does not match"),
        (_broken(cidr_v4_index=np.array([0, 6], np.uint32)), "does not match"),
    ],
)
def test_from_arrays_rejects_inconsistent_tables(arrays: dict, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        CidrTable.from_arrays(arrays)
