"""DNS fast path kernels: keyed hashing and the open-addressing index that the wire cache
(_dns_kernel_cache.py) and the rate limiter (_dns_kernel_ratelimit.py) share. Private: see
filters/_dns_kernels.py for the batch and the rules every kernel here follows.

SipHash-1-3 comes from the domain kernels (keyed per table, so nobody can aim keys at one
probe chain); the index is linear probing with backward-shift deletion (no tombstones, so
a long-running table never degrades).
"""

from __future__ import annotations

import numpy as np

from filters import _domain_kernels as D
from filters._jit import njit

__all__ = ["key_hash", "words_hash"]

_U = np.uint64


@njit(cache=True, inline="always")
def _absorb(c, v0, v1, v2, v3, m, length):
    m |= _U(c) << _U(8 * (length & 7))
    length += 1
    if length & 7 == 0:
        v3 ^= m
        v0, v1, v2, v3 = D._rounds(v0, v1, v2, v3, D.C_ROUNDS)
        v0 ^= m
        m = _U(0)
    return v0, v1, v2, v3, m, length


@njit(cache=True)
def key_hash(k0, k1, src, qs, qlen, tsrc, ts, dobyte):
    """Hash of a cache key: the QNAME at src[qs:qs+qlen] lower-cased, the 4 bytes of QTYPE
    and QCLASS at tsrc[ts:ts+4], and the flags byte (1 DO, 2 CD: appliance.dns.pipeline.key_flags)."""
    v0, v1, v2, v3 = D._init(k0, k1)
    m = _U(0)
    length = 0
    for j in range(qlen):
        c = np.int64(src[qs + j])
        if c >= 65 and c <= 90:
            c += 32
        v0, v1, v2, v3, m, length = _absorb(c, v0, v1, v2, v3, m, length)
    for j in range(4):
        v0, v1, v2, v3, m, length = _absorb(np.int64(tsrc[ts + j]), v0, v1, v2, v3, m, length)
    v0, v1, v2, v3, m, length = _absorb(dobyte, v0, v1, v2, v3, m, length)
    return D._finish(v0, v1, v2, v3, m, length)[0]


@njit(cache=True)
def words_hash(k0, k1, w0, w1, w2):
    """SipHash-1-3 of three 64-bit words (a client address key)."""
    v0, v1, v2, v3 = D._init(k0, k1)
    for w in (_U(w0), _U(w1), _U(w2)):
        v3 ^= w
        v0, v1, v2, v3 = D._rounds(v0, v1, v2, v3, D.C_ROUNDS)
        v0 ^= w
    return D._finish(v0, v1, v2, v3, _U(0), 24)[0]



@njit(cache=True)
def _slot_delete(slots, mask, i, home_of):
    """Backward-shift deletion from a linear-probing table (no tombstones): entries after
    the hole that could live in it move up. ``home_of`` holds each entry's hash."""
    j = i
    while True:
        j = (j + 1) & mask
        if slots[j] == 0:
            break
        k = np.int64(home_of[slots[j] - 1] & _U(mask))
        # Leave the entry at j when its home lies cyclically in (i, j].
        if i <= j:
            if i < k and k <= j:
                continue
        elif k > i or k <= j:
            continue
        slots[i] = slots[j]
        i = j
    slots[i] = 0

