"""DNS fast path kernels: the per-client rate limiter (token buckets in an open-addressing
table, clients in insertion order). The arrays are owned by appliance/dns/ratelimit.py
(ArrayRateLimiter), which the Python pipeline and the batch kernel share. Private.
"""

from __future__ import annotations

import numpy as np

from filters._dns_kernel_hash import _slot_delete, words_hash
from filters._jit import njit

__all__ = ["LS_ENABLED", "LS_CAP", "LS_TAIL", "LS_COUNT", "LS_SMASK", "LS_WIDTH", "LF_RATE", "LF_BURST",
           "addr_words", "lim_allow", "lim_allow_client"]

_U = np.uint64

# -- the rate limiter's arrays ---------------------------------------------------------------
LS_ENABLED, LS_CAP, LS_TAIL, LS_COUNT, LS_SMASK = range(5)
LS_WIDTH = 5
LF_RATE, LF_BURST = 0, 1


@njit(cache=True)
def addr_words(addr):
    """The limiter key of a client address row: (family, high 8 bytes, low 8 bytes)."""
    hi = _U(0)
    lo = _U(0)
    for j in range(8):
        hi = (hi << _U(8)) | _U(addr[1 + j])
        lo = (lo << _U(8)) | _U(addr[9 + j])
    return _U(addr[0]), hi, lo


@njit(cache=True)
def _lim_find(lst, slots, keys, h, w0, w1, w2):
    mask = lst[LS_SMASK]
    i = np.int64(h & _U(mask))
    while slots[i] != 0:
        e = slots[i] - 1
        if keys[e, 0] == h and keys[e, 1] == w0 and keys[e, 2] == w1 and keys[e, 3] == w2:
            return e, i
        i = (i + 1) & mask
    return -1, i



@njit(cache=True)
def lim_allow(lst, lf, lkey, slots, keys, vals, w0, w1, w2, now):
    """RateLimiter.allow (appliance/dns/ratelimit.py) on arrays: a bucket of ``burst``
    tokens per client refilled at ``rate`` per second; when the table is full the oldest
    half of the clients is forgotten. keys: uint64[cap, 4] (hash, w0, w1, w2)."""
    h = words_hash(lkey[0], lkey[1], w0, w1, w2)
    e, i = _lim_find(lst, slots, keys, h, w0, w1, w2)
    rate, burst = lf[LF_RATE], lf[LF_BURST]
    if e >= 0:
        tokens = vals[e, 0] + (now - vals[e, 1]) * rate
        if tokens > burst:
            tokens = burst
        vals[e, 1] = now
        if tokens < 1.0:
            vals[e, 0] = tokens
            return False
        vals[e, 0] = tokens - 1.0
        return True
    cap = lst[LS_CAP]
    if lst[LS_COUNT] >= cap:
        mask = lst[LS_SMASK]
        hashes = keys[:, 0]
        for _ in range(cap // 2):
            t = lst[LS_TAIL]
            _, ti = _lim_find(lst, slots, keys, keys[t, 0], keys[t, 1], keys[t, 2], keys[t, 3])
            _slot_delete(slots, mask, ti, hashes)
            lst[LS_TAIL] = (t + 1) % cap
            lst[LS_COUNT] -= 1
        e, i = _lim_find(lst, slots, keys, h, w0, w1, w2)
    e = (lst[LS_TAIL] + lst[LS_COUNT]) % cap
    keys[e, 0], keys[e, 1], keys[e, 2], keys[e, 3] = h, w0, w1, w2
    vals[e, 0] = burst - 1.0
    vals[e, 1] = now
    slots[i] = e + 1
    lst[LS_COUNT] += 1
    return True


@njit(cache=True)
def lim_allow_client(limiter, addr, now):
    """lim_allow for a client row (family, address bytes), the limiter's arrays as a tuple."""
    w0, w1, w2 = addr_words(addr)
    lst, lf, lkey, slots, keys, vals = limiter
    return lim_allow(lst, lf, lkey, slots, keys, vals, w0, w1, w2, now)

