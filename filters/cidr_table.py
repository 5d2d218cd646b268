"""The compiled CIDR table: flat numpy arrays the CIDR kernels search directly.

Built on the publisher's machine (:func:`build_cidr_table`), shipped in the bundle as
``.npy`` files (:meth:`CidrTable.arrays`), mapped read-only on the device
(:meth:`CidrTable.from_arrays`). The layout is explained in ``filters/_cidr_kernels.py``: one
entry index space (v4 entries first, then v6), each family sorted by (network, prefix), a
parent pointer per entry to the nearest enclosing CIDR, and a bucket index over the v4
networks' top bits. Nothing but integers is stored: the rule text of an entry is rebuilt
from its network address and prefix length.

Bytes per entry: v4 4 (network) + 1 (prefix) + 4 (class) + 4 (parent) = 13, plus the index
(at most one uint32 per v4 entry, at most 256 KiB); v6 16 + 1 + 4 + 4 = 25.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from filters.errors import BundleError

__all__ = ["CidrTable", "build_cidr_table", "ARRAY_NAMES", "MAX_ENTRIES", "MAX_INDEX_BITS"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Entry indices and parent pointers are int32 (half the size of int64, and -1 is "none").
MAX_ENTRIES = 2**31 - 1
_MAX_CLASS = 2**32 - 1
# The v4 index has 2**k + 1 buckets, k <= log2(v4 entries) so it never costs more than one
# uint32 per entry. 16 bits (256 KiB) already leave ~1 entry per bucket at 100k entries and
# ~16 (4 search steps) at 1M; more would only grow the bundle.
MAX_INDEX_BITS = 16
_W64 = (1 << 64) - 1

# Field name -> (.npy stem, dtype). The stems are what the bundle writer puts on disk.
_FIELDS: dict[str, tuple[str, np.dtype]] = {
    "v4_net": ("cidr_v4_net", np.dtype(np.uint32)),
    "v4_index": ("cidr_v4_index", np.dtype(np.uint32)),
    "v6_net_hi": ("cidr_v6_net_hi", np.dtype(np.uint64)),
    "v6_net_lo": ("cidr_v6_net_lo", np.dtype(np.uint64)),
    "prefix": ("cidr_prefix", np.dtype(np.uint8)),
    "cls": ("cidr_class", np.dtype(np.uint32)),
    "parent": ("cidr_parent", np.dtype(np.int32)),
}
ARRAY_NAMES: tuple[str, ...] = tuple(stem for stem, _ in _FIELDS.values())


@dataclass(frozen=True)
class CidrTable:
    """The CIDR entries of a bundle as flat arrays (all may be read-only memory maps).

    Entry ``i`` is IPv4 when ``i < n_v4`` (network ``v4_net[i]``), else IPv6 (network
    ``(v6_net_hi[j] << 64) | v6_net_lo[j]`` with ``j = i - n_v4``).
    """

    v4_net: np.ndarray  # uint32, n4: network addresses, sorted with prefix as tie-break
    v4_index: np.ndarray  # uint32, 2**k + 1: first entry whose top k bits are >= bucket
    v6_net_hi: np.ndarray  # uint64, n6: high 64 bits of the v6 network addresses
    v6_net_lo: np.ndarray  # uint64, n6: low 64 bits
    prefix: np.ndarray  # uint8, n4 + n6: prefix lengths
    cls: np.ndarray  # uint32, n4 + n6: class ids into a ClassTable
    parent: np.ndarray  # int32, n4 + n6: nearest enclosing entry, -1 for none

    def __len__(self) -> int:
        return len(self.prefix)

    @property
    def n_v4(self) -> int:
        return len(self.v4_net)

    @property
    def n_v6(self) -> int:
        return len(self.v6_net_hi)

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f).nbytes for f in _FIELDS)

    def network(self, entry: int) -> Network:
        """The CIDR of entry ``entry`` (IndexError when out of range).

        Negative indices are refused rather than counted from the end: -1 means "no rule"
        in the matcher's batch results and must not name the last entry.
        """
        n = len(self)
        if not 0 <= entry < n:
            raise IndexError(f"CIDR entry {entry} out of range (table has {n})")
        p = int(self.prefix[entry])
        if entry < self.n_v4:
            return ipaddress.IPv4Network((int(self.v4_net[entry]), p))
        j = entry - self.n_v4
        addr = (int(self.v6_net_hi[j]) << 64) | int(self.v6_net_lo[j])
        return ipaddress.IPv6Network((addr, p))

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays by .npy file stem (``cidr_*``), for the bundle writer."""
        return {stem: getattr(self, f) for f, (stem, _) in _FIELDS.items()}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> CidrTable:
        """Rebuild a table from :meth:`arrays` output (typically ``np.load(mmap_mode="r")``).

        Arrays are used as they are, never copied. Checks dtypes, shapes, lengths, prefix
        ranges, order, host bits, the v4 index and parent pointers (precede their entry,
        same family) — what the kernels rely on not to read out of bounds, loop or miss a
        rule — in a few vectorised passes (~2 ms per 100k entries); raises
        :class:`BundleError`. Not checked: that each parent is the *nearest* enclosing CIDR
        (the bundle signature vouches for that).
        Other keys in ``arrays`` are ignored, so a whole bundle's arrays can be passed.
        """
        got: dict[str, np.ndarray] = {}
        for field, (stem, dtype) in _FIELDS.items():
            if stem not in arrays:
                raise BundleError(f"CIDR table: missing array {stem}")
            a = arrays[stem]
            if not isinstance(a, np.ndarray):
                raise BundleError(f"CIDR table: {stem} is not an array")
            if a.dtype != dtype or a.ndim != 1 or not a.flags.c_contiguous:
                raise BundleError(
                    f"CIDR table: {stem} must be a contiguous 1-D {dtype} array, got "
                    f"{a.ndim}-D {a.dtype}"
                )
            got[field] = a
        table = cls(**got)
        table._validate()
        return table

    def _validate(self) -> None:
        n4, n6, n = self.n_v4, self.n_v6, len(self.prefix)
        if len(self.v6_net_lo) != n6:
            raise BundleError("CIDR table: cidr_v6_net_hi and cidr_v6_net_lo differ in length")
        if len(self.cls) != n or len(self.parent) != n or n != n4 + n6:
            raise BundleError(
                "CIDR table: cidr_prefix, cidr_class and cidr_parent must each have one "
                "element per v4 and v6 network"
            )
        if n > MAX_ENTRIES:
            raise BundleError(f"CIDR table: {n} entries, at most {MAX_ENTRIES}")
        p4, p6 = self.prefix[:n4], self.prefix[n4:]
        if (n4 and int(p4.max()) > 32) or (n6 and int(p6.max()) > 128):
            raise BundleError("CIDR table: prefix length out of range")
        # Strict (network, prefix) order: the binary search needs it, and it rules out
        # duplicate entries.
        if n4 > 1:
            a, b = self.v4_net[:-1], self.v4_net[1:]
            if not np.all((a < b) | ((a == b) & (p4[:-1] < p4[1:]))):
                raise BundleError("CIDR table: v4 networks are not sorted")
        if n6 > 1:
            ha, hb = self.v6_net_hi[:-1], self.v6_net_hi[1:]
            la, lb = self.v6_net_lo[:-1], self.v6_net_lo[1:]
            same = (ha == hb) & (la == lb)
            if not np.all((ha < hb) | ((ha == hb) & (la < lb)) | (same & (p6[:-1] < p6[1:]))):
                raise BundleError("CIDR table: v6 networks are not sorted")
        if not (_v4_host_bits_clear(self.v4_net, p4)
                and _v6_host_bits_clear(self.v6_net_hi, self.v6_net_lo, p6)):
            raise BundleError("CIDR table: a network address has host bits set")
        _check_index(self.v4_index, self.v4_net)
        # Parents precede their children (so every climb terminates and stays in bounds) and
        # belong to the same family.
        idx = np.arange(n, dtype=np.int64)
        par = self.parent
        if n and not np.all((par >= -1) & (par < idx)):
            raise BundleError("CIDR table: a parent pointer does not precede its entry")
        if n6 and not np.all((par[n4:] == -1) | (par[n4:] >= n4)):
            raise BundleError("CIDR table: a v6 entry has a v4 parent")


def _index_for(net: np.ndarray, bits: int) -> np.ndarray:
    starts = np.arange(2**bits + 1, dtype=np.uint64) << np.uint64(32 - bits)
    return np.searchsorted(net, starts, side="left").astype(np.uint32)


def _check_index(index: np.ndarray, net: np.ndarray) -> None:
    m = len(index) - 1
    if m < 1 or m & (m - 1) or m > 2**MAX_INDEX_BITS:
        raise BundleError(f"CIDR table: cidr_v4_index has {m + 1} elements, not 2**k + 1")
    # Rebuilding it costs ~1 ms and is the only way to know the index agrees with the
    # networks (a wrong bucket silently misses rules).
    if not np.array_equal(index, _index_for(net, m.bit_length() - 1)):
        raise BundleError("CIDR table: cidr_v4_index does not match cidr_v4_net")


def _v4_host_bits_clear(net: np.ndarray, prefix: np.ndarray) -> bool:
    host = (np.uint64(1) << (32 - prefix.astype(np.uint64))) - np.uint64(1)
    return bool(np.all((net.astype(np.uint64) & host) == 0))


def _v6_host_bits_clear(hi: np.ndarray, lo: np.ndarray, prefix: np.ndarray) -> bool:
    # numpy shifts by 64 are undefined, so the all-ones host masks are chosen with where().
    p = prefix.astype(np.int64)
    ones, one, zero = np.uint64(_W64), np.uint64(1), np.uint64(0)
    sh_hi = np.clip(64 - p, 0, 63).astype(np.uint64)
    host_hi = np.where(p == 0, ones, np.where(p >= 64, zero, (one << sh_hi) - one))
    sh_lo = np.clip(128 - p, 0, 63).astype(np.uint64)
    host_lo = np.where(p <= 64, ones, (one << sh_lo) - one)
    return bool(np.all(((hi & host_hi) | (lo & host_lo)) == 0))


def build_cidr_table(entries: Sequence[tuple[Network, int]]) -> CidrTable:
    """Compile ``(network, class_id)`` pairs into a :class:`CidrTable`.

    Each network must appear once: when several sources list the same CIDR, the caller
    merges them into one class first (that is what a class is, see filters/classes.py).
    A duplicate raises ValueError, as do non-network values and class ids outside uint32 —
    these are bugs in the compiler, not bad list input (list parsers reject bad lines).
    Entries are reordered; :meth:`CidrTable.network` gives each entry's CIDR back.
    """
    v4: list[tuple[int, int, int]] = []
    v6: list[tuple[int, int, int]] = []
    for net, class_id in entries:
        if not isinstance(net, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            raise ValueError(f"not an IPv4Network or IPv6Network: {net!r}")
        if not isinstance(class_id, (int, np.integer)) or not 0 <= class_id <= _MAX_CLASS:
            raise ValueError(f"class id {class_id!r} of {net} is not a uint32")
        row = (int(net.network_address), net.prefixlen, int(class_id))
        (v4 if net.version == 4 else v6).append(row)
    n = len(v4) + len(v6)
    if n > MAX_ENTRIES:
        raise ValueError(f"{n} CIDR entries, at most {MAX_ENTRIES}")
    # Sorting by (address, prefix) puts every CIDR before the CIDRs inside it (pre-order).
    v4.sort()
    v6.sort()
    parent = np.empty(n, dtype=np.int32)
    _link(v4, 32, 0, parent)
    _link(v6, 128, len(v4), parent)
    rows = v4 + v6
    net4 = np.array([r[0] for r in v4], dtype=np.uint32)
    return CidrTable(
        v4_net=net4,
        v4_index=_index_for(net4, min(MAX_INDEX_BITS, max(0, len(v4).bit_length() - 1))),
        v6_net_hi=np.array([r[0] >> 64 for r in v6], dtype=np.uint64),
        v6_net_lo=np.array([r[0] & _W64 for r in v6], dtype=np.uint64),
        prefix=np.array([r[1] for r in rows], dtype=np.uint8),
        cls=np.array([r[2] for r in rows], dtype=np.uint32),
        parent=parent,
    )


def _link(rows: list[tuple[int, int, int]], bits: int, base: int, parent: np.ndarray) -> None:
    """Fill ``parent[base + i]`` for sorted ``rows`` of one family; reject duplicates.

    A stack of open CIDRs: in pre-order, an entry's parent is the innermost open CIDR that
    has not ended before the entry starts.
    """
    stack: list[tuple[int, int]] = []  # (global index, last address)
    prev: tuple[int, int] | None = None
    for i, (start, plen, _) in enumerate(rows):
        if prev == (start, plen):
            kind = ipaddress.IPv4Network if bits == 32 else ipaddress.IPv6Network
            net = kind((start, plen))
            raise ValueError(f"duplicate CIDR {net}: merge its sources into one class first")
        prev = (start, plen)
        while stack and stack[-1][1] < start:
            stack.pop()
        parent[base + i] = stack[-1][0] if stack else -1
        stack.append((base + i, start | ((1 << (bits - plen)) - 1)))
