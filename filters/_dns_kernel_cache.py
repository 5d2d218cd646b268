"""DNS fast path kernels: the wire cache (appliance/dns/cache.py ArrayCache owns the arrays;
the batch kernel reads hits straight from them). Private.

Entries live in a ring in insertion order; their bytes (key, records, TTL fields, CNAME
targets) in an arena written as a ring; an open-addressing index keyed by a keyed SipHash
of the lower-cased QNAME + QTYPE + QCLASS + the DO/CD flags byte finds them.
"""

from __future__ import annotations

import numpy as np

from filters._dns_kernel_hash import _slot_delete, key_hash
from filters._jit import njit

__all__ = ["cache_find", "cache_unlink", "cache_put", "cache_lookup_key", "render_body", "TTL_FIELD",
           "CS_WIDTH", "EI_WIDTH", "EF_WIDTH"]

_U = np.uint64

# -- the wire cache's arrays (appliance/dns/cache.py ArrayCache has the design) ----------
# cache state (int64): ring of entries in insertion order, byte arena written as a ring.
CS_HEAD, CS_TAIL, CS_COUNT, CS_LIVE, CS_CAP, CS_ARENA, CS_SMASK = range(7)
CS_WIDTH = 8
# per-entry integers
(EI_OFF, EI_SIZE, EI_KLEN, EI_BLEN, EI_NTTL, EI_NCN, EI_FLAGS, EI_AN, EI_NS, EI_AR, EI_LIVE, EI_BODYOFF,
 EI_TTL) = range(13)
EI_WIDTH = 13
# per-entry times
EF_STORED, EF_EXPIRES, EF_STALE = 0, 1, 2
EF_WIDTH = 3
TTL_FIELD = 6  # a TTL field in a record: 2-byte offset in the body, 4-byte original TTL


@njit(cache=True)
def _key_equal(arena, off, klen, src, qs, qlen, tsrc, ts, dobyte):
    if klen != qlen + 5:
        return False
    for j in range(qlen):
        c = np.int64(src[qs + j])
        if c >= 65 and c <= 90:
            c += 32
        if np.int64(arena[off + j]) != c:
            return False
    for j in range(4):
        if arena[off + qlen + j] != tsrc[ts + j]:
            return False
    return np.int64(arena[off + qlen + 4]) == dobyte


@njit(cache=True)
def cache_find(cache, h, src, qs, qlen, tsrc, ts, dobyte):
    """Entry id of the live entry with this key, or -1."""
    cst, _ckey, slots, ehash, eint, _ef, arena = cache
    mask = cst[CS_SMASK]
    i = np.int64(h & _U(mask))
    while slots[i] != 0:
        e = slots[i] - 1
        if ehash[e] == h and _key_equal(arena, eint[e, EI_OFF], eint[e, EI_KLEN], src, qs, qlen, tsrc, ts, dobyte):
            return e
        i = (i + 1) & mask
    return -1


@njit(cache=True)
def cache_unlink(cache, e):
    """Remove live entry ``e`` from the index (its arena bytes stay until the ring passes)."""
    cst, _ckey, slots, ehash, eint, _ef, _arena = cache
    if eint[e, EI_LIVE] == 0:
        return
    mask = cst[CS_SMASK]
    i = np.int64(ehash[e] & _U(mask))
    while slots[i] != e + 1:
        i = (i + 1) & mask
    _slot_delete(slots, mask, i, ehash)
    eint[e, EI_LIVE] = 0
    cst[CS_LIVE] -= 1


@njit(cache=True)
def _cache_pop(cache):
    cst = cache[0]
    t = cst[CS_TAIL]
    cache_unlink(cache, t)
    cst[CS_TAIL] = (t + 1) % cst[CS_CAP]
    cst[CS_COUNT] -= 1


@njit(cache=True)
def cache_put(cache, key, body, ttl_offsets, ttls, cnames, meta, stored, expires, stale):
    """Store an entry: ``key`` (lower-case QNAME wire, QTYPE, QCLASS, DO/CD byte), ``body`` (the
    records after the question), TTL fields (offsets in the body, original TTLs), the CNAME
    targets (each a length byte then the wire name), and ``meta`` (flags, an, ns, ar,
    body offset, ttl). Replaces an entry with the same key. Returns False when the record is
    larger than the arena allows."""
    cst, ckey, slots, ehash, eint, ef, arena = cache
    qlen = key.shape[0] - 5
    nttl = ttl_offsets.shape[0]
    size = key.shape[0] + body.shape[0] + TTL_FIELD * nttl + cnames.shape[0]
    cap, asize = cst[CS_CAP], cst[CS_ARENA]
    if cap <= 0 or qlen < 1 or size > asize // 4:
        return False
    h = key_hash(ckey[0], ckey[1], key, 0, qlen, key, qlen, np.int64(key[qlen + 4]))
    old = cache_find(cache, h, key, 0, qlen, key, qlen, np.int64(key[qlen + 4]))
    if old >= 0:
        cache_unlink(cache, old)
    if cst[CS_COUNT] == cap:
        _cache_pop(cache)
    head = cst[CS_HEAD]
    # The ring's oldest entries lie at or after the head; everything newer lies before it.
    if head + size > asize:
        while cst[CS_COUNT] > 0 and eint[cst[CS_TAIL], EI_OFF] >= head:
            _cache_pop(cache)
        head = 0
    while cst[CS_COUNT] > 0 and eint[cst[CS_TAIL], EI_OFF] >= head and eint[cst[CS_TAIL], EI_OFF] < head + size:
        _cache_pop(cache)
    e = (cst[CS_TAIL] + cst[CS_COUNT]) % cap
    p = head
    arena[p:p + key.shape[0]] = key
    p += key.shape[0]
    arena[p:p + body.shape[0]] = body
    p += body.shape[0]
    for j in range(nttl):
        off, ttl = ttl_offsets[j], ttls[j]
        arena[p] = (off >> 8) & 0xFF
        arena[p + 1] = off & 0xFF
        arena[p + 2] = (ttl >> 24) & 0xFF
        arena[p + 3] = (ttl >> 16) & 0xFF
        arena[p + 4] = (ttl >> 8) & 0xFF
        arena[p + 5] = ttl & 0xFF
        p += TTL_FIELD
    arena[p:p + cnames.shape[0]] = cnames
    ncn = 0
    q = np.int64(0)
    while q < cnames.shape[0]:
        ncn += 1
        q += 1 + np.int64(cnames[q])
    eint[e, EI_OFF] = head
    eint[e, EI_SIZE] = size
    eint[e, EI_KLEN] = key.shape[0]
    eint[e, EI_BLEN] = body.shape[0]
    eint[e, EI_NTTL] = nttl
    eint[e, EI_NCN] = ncn
    eint[e, EI_FLAGS] = meta[0]
    eint[e, EI_AN] = meta[1]
    eint[e, EI_NS] = meta[2]
    eint[e, EI_AR] = meta[3]
    eint[e, EI_BODYOFF] = meta[4]
    eint[e, EI_TTL] = meta[5]
    eint[e, EI_LIVE] = 1
    ef[e, EF_STORED] = stored
    ef[e, EF_EXPIRES] = expires
    ef[e, EF_STALE] = stale
    ehash[e] = h
    mask = cst[CS_SMASK]
    i = np.int64(h & _U(mask))
    while slots[i] != 0:
        i = (i + 1) & mask
    slots[i] = e + 1
    cst[CS_COUNT] += 1
    cst[CS_LIVE] += 1
    cst[CS_HEAD] = head + size
    return True


@njit(cache=True)
def cache_lookup_key(cache, key):
    """Entry id for a whole key (as built by the pipeline), or -1."""
    qlen = key.shape[0] - 5
    if qlen < 1:
        return -1
    ckey = cache[1]
    h = key_hash(ckey[0], ckey[1], key, 0, qlen, key, qlen, np.int64(key[qlen + 4]))
    return cache_find(cache, h, key, 0, qlen, key, qlen, np.int64(key[qlen + 4]))


@njit(cache=True)
def render_body(cache, e, age, out, o):
    """Copy entry e's body to out[o:], each TTL lowered by ``age`` seconds, not below 0
    (filters.dns_response.render_body). Returns the offset after it."""
    eint, arena = cache[4], cache[6]
    off = eint[e, EI_OFF]
    b0 = off + eint[e, EI_KLEN]
    blen = eint[e, EI_BLEN]
    out[o:o + blen] = arena[b0:b0 + blen]
    if age > 0:
        t = b0 + blen
        for _ in range(eint[e, EI_NTTL]):
            fo = (np.int64(arena[t]) << 8) | np.int64(arena[t + 1])
            ttl = ((np.int64(arena[t + 2]) << 24) | (np.int64(arena[t + 3]) << 16)
                   | (np.int64(arena[t + 4]) << 8) | np.int64(arena[t + 5]))
            v = ttl - age if ttl > age else 0
            p = o + fo
            out[p] = (v >> 24) & 0xFF
            out[p + 1] = (v >> 16) & 0xFF
            out[p + 2] = (v >> 8) & 0xFF
            out[p + 3] = v & 0xFF
            t += TTL_FIELD
    return o + blen

