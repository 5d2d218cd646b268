"""The compiled domain table: keyed fingerprints in buckets, a few bytes per entry.

Layout (all flat arrays, mmap-able):

- ``domain_params`` uint64[5]: SipHash key (k0, k1), bucket bits, hash scheme id, and a
  mask of the label counts entries have (bit d-1 for d labels, bit 63 for 64 or more).
- ``domain_offsets`` uint32[2**bits + 1]: entries of bucket b are ``[off[b], off[b+1])``.
- ``domain_fps`` uint64[N]: 64-bit fingerprints, sorted within each bucket.
- ``domain_cls`` uint16[N] (uint32 past 65,535 classes): each entry's class id.

An entry is found by hashing the name (see _domain_kernels.py) to a 64-bit fingerprint
(keyed SipHash-1-3) and a bucket word: the top ``bits`` of the bucket word select the
bucket and the fingerprint must equal a stored one. Buckets hold 2.5-5 entries on average
(bits = bit length of N/5), so a probe reads one or two cache lines.

**False positives.** A name that is not in the table matches only if its bucket holds an
entry with an equal fingerprint. The fingerprint is a keyed PRF output, so for any bucket
the chance that one of its entries has the query's fingerprint is (entries in the bucket)
x 2**-64. Averaged over queries that is N / 2**bits <= 5 entries: <= 5 * 2**-64 ~= 2.7e-19
per suffix probe, whatever N is; even a bucket 4x fuller than average stays ~1e-18. A
lookup probes one suffix per label (at most 127): < 3.5e-17 per lookup, far below 1e-12 at
10 M entries. Without the key an adversary cannot aim a chosen name at an entry; with the
key (it ships in the bundle) a targeted collision still costs ~2**(64+bits) hash
evaluations (bucket and fingerprint must both match). Collisions between entries are
detected at build time and the table is rebuilt with another key.

**Size.** 8 (fingerprint) + 2 (class) + 4 * 2**bits / N (offsets, 0.8-1.6 B) ≈ 10.8-11.6 B
per entry, against ~9 B for Blocky's hash set and 99 B/domain measured for dnsmasq.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from filters import _domain_kernels as K
from filters.errors import BundleError, InputError

__all__ = [
    "HASH_SCHEME",
    "DomainTable",
    "KeyCollision",
    "build_domain_table",
    "bucket_bits_for",
    "pack_names",
]

# Identifies the hashing: fingerprint = SipHash-1-3-64 over reversed wire labels, bucket =
# top bits of the state mix (_domain_kernels._finish). A bundle with another id is refused.
# (Scheme 1, SipHash-1-3-128 with the bucket from the second word, was never released.)
HASH_SCHEME = 2


class KeyCollision(Exception):
    """Two distinct names hashed alike under this key: build again with a fresh key."""


def bucket_bits_for(n: int) -> int:
    # At least one bit: the kernel shifts by 64 - bits, and a 64-bit shift is undefined.
    # 2**bits lies in (N/5, 2N/5]: 2.5-5 entries a bucket, offsets <= 1.6 B per entry.
    return max(1, (n // 5).bit_length())


@dataclass(frozen=True)
class DomainTable:
    params: np.ndarray
    offsets: np.ndarray
    fps: np.ndarray
    cls: np.ndarray

    @property
    def key(self) -> tuple[int, int]:
        return int(self.params[0]), int(self.params[1])

    @property
    def shift(self) -> np.uint64:
        return np.uint64(64 - int(self.params[2]))

    def __len__(self) -> int:
        return int(self.fps.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays().values())

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "domain_params": self.params,
            "domain_offsets": self.offsets,
            "domain_fps": self.fps,
            "domain_cls": self.cls,
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], n_classes: int) -> DomainTable:
        """Adopt arrays (e.g. read-only memory maps) after cheap consistency checks."""
        try:
            params = arrays["domain_params"]
            offsets = arrays["domain_offsets"]
            fps = arrays["domain_fps"]
            ids = arrays["domain_cls"]
        except KeyError as exc:
            raise BundleError(f"bundle lacks the array {exc.args[0]}") from None
        _expect(params, np.uint64, "domain_params")
        _expect(offsets, np.uint32, "domain_offsets")
        _expect(fps, np.uint64, "domain_fps")
        if ids.dtype not in (np.uint16, np.uint32) or ids.ndim != 1:
            raise BundleError(f"domain_cls has dtype {ids.dtype}, expected uint16 or uint32")
        if params.shape != (5,) or int(params[3]) != HASH_SCHEME:
            raise BundleError("domain_params: unknown hash scheme or shape")
        bits = int(params[2])
        if not 1 <= bits <= 40 or offsets.shape[0] != (1 << bits) + 1:
            raise BundleError("domain_offsets does not match the bucket bits")
        n = fps.shape[0]
        if ids.shape[0] != n or int(offsets[0]) != 0 or int(offsets[-1]) != n:
            raise BundleError("domain arrays disagree on the entry count")
        # The kernels index without bounds checks, so everything they index with is
        # checked once here (vectorised: ~1 ms per million entries): a bucket running
        # past N would read past fps, a class id past the class arrays.
        if bool((offsets[1:] < offsets[:-1]).any()):
            raise BundleError("domain_offsets is not sorted")
        if n and int(ids.max()) >= n_classes:
            raise BundleError("domain_cls refers to a class the bundle does not define")
        return cls(params, offsets, fps, ids)

    def kernel_tuple(self, classes) -> tuple:
        """The kernels' table tuple: (shift, depths, offsets, fps, cls, mask, apex, allow)."""
        return (
            self.shift, self.params[4], self.offsets, self.fps, self.cls,
            classes.mask, classes.apex_mask, classes.allow,
        )


def _expect(a: np.ndarray, dtype, name: str) -> None:
    if a.dtype != dtype or a.ndim != 1:
        raise BundleError(f"{name} has dtype {a.dtype} and {a.ndim} dims, expected 1-d {np.dtype(dtype)}")


def pack_names(names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate names into one uint8 buffer with start/stop offsets: one join and one
    encode for the whole batch instead of a bytes object per name."""
    blob = "\n".join(names).encode("utf-8", "surrogateescape")
    if len(blob) == sum(map(len, names)) + max(len(names) - 1, 0):
        lengths = np.fromiter(map(len, names), dtype=np.int64, count=len(names))
    else:  # some name is not ASCII: count bytes, not characters
        lengths = np.fromiter((len(n.encode("utf-8", "surrogateescape")) for n in names),
                              dtype=np.int64, count=len(names))
    starts = np.zeros(len(names), dtype=np.int64)
    if len(names) > 1:
        np.cumsum(lengths[:-1] + 1, out=starts[1:])
    return np.frombuffer(blob, dtype=np.uint8), starts, starts + lengths


def build_domain_table(
    names: Sequence[str], class_ids: np.ndarray, key: tuple[int, int]
) -> DomainTable:
    """Compile distinct canonical names with their class ids under a 128-bit SipHash ``key``.

    Raises :class:`KeyCollision` (rebuild with another key) when two names collide,
    :class:`ValueError` when a name is given twice (merge sources first: DomainSetBuilder)
    and :class:`InputError` for a name with an empty or over-long label."""
    n = len(names)
    class_ids = np.asarray(class_ids)
    if class_ids.shape != (n,):
        raise ValueError("one class id per name")
    buf, starts, stops = pack_names(names)
    fp = np.empty(n, dtype=np.uint64)  # fingerprints
    mix = np.empty(n, dtype=np.uint64)  # bucket words
    depth = np.empty(n, dtype=np.int64)
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    K.hash_names(buf, starts, stops, k0, k1, fp, mix, depth)
    if n and depth.min() == 0:
        bad = names[int(np.argmin(depth))]
        raise InputError(f"not a domain name (empty or over-long label): {bad!r}")
    bits = bucket_bits_for(n)
    bucket = mix >> np.uint64(64 - bits)
    order = np.lexsort((fp, bucket))
    bucket = bucket[order]
    fps = fp[order]
    if n > 1:
        same = (bucket[1:] == bucket[:-1]) & (fps[1:] == fps[:-1])
        if same.any():
            i = int(np.argmax(same))
            a, b = names[int(order[i])], names[int(order[i + 1])]
            if a.lower().rstrip(".") == b.lower().rstrip("."):
                raise ValueError(f"name given twice: {a!r} and {b!r}")
            raise KeyCollision("two names share a bucket and fingerprint")
    counts = np.bincount(bucket.astype(np.int64), minlength=1 << bits)
    offsets = np.zeros((1 << bits) + 1, dtype=np.uint32)
    np.cumsum(counts, out=offsets[1:])
    cls_dtype = np.uint16 if (n == 0 or int(class_ids.max()) < 1 << 16) else np.uint32
    depths = 0
    for d in np.unique(np.minimum(depth, 64)).tolist():
        depths |= 1 << (int(d) - 1)
    params = np.array([key[0], key[1], bits, HASH_SCHEME, depths], dtype=np.uint64)
    return DomainTable(params, offsets, fps, class_ids[order].astype(cls_dtype))
