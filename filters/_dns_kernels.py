"""numba kernels of the DNS fast path: a batch of UDP queries in, answers out. Private: use
filters.dns_fast (tables, the batch call) and filters.dns_cache (the wire cache).

One call handles a whole batch of datagrams (what one recvmmsg returned): for each, the
per-client rate limit, the header and question parsed in place, the client's policy from a
small CIDR table, the matcher kernels (filters/_domain_kernels.py) on the QNAME, and the
answer written into an output slot — from answer templates (blocked names, encrypted-DNS
bypass names, ANY, BADVERS, FORMERR) or from the wire cache (TTLs counted down while
copying). What it cannot answer by itself — a cache miss that must go upstream, and every
unusual packet (several questions, another opcode or class, a compressed or odd QNAME,
records in a query's answer or authority section) — is marked ``ACT_PYTHON`` and handed
unchanged to the Python pipeline (appliance/dns/pipeline.py), which is the reference:
every answer written here is byte for byte the answer the pipeline would give (tested in
tests/unit/test_dns_fast.py), and the counters are the pipeline's, kept in an array.

Every read of a packet is bounds-checked against its received length; nothing a client
sends can make these kernels index outside their arrays or loop without bound (each loop
is bounded by a length or a count checked first). Arrays only, no I/O, no clock: time is
the ``now`` argument (the pipeline's clock, monotonic seconds).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from filters import _domain_kernels as D

_U = np.uint64

# What to do with each packet of a batch.
ACT_SEND = 0  # an answer was written to the next output slot
ACT_DROP = 1  # no answer (rate-limited, a runt, a response)
ACT_PYTHON = 2  # hand the packet to the Python pipeline (rate limit already applied)

# Counter slots (int64 array). Names match appliance.dns.pipeline.Counters fields.
C_QUERIES = 0
C_BLOCKED = 1
C_BYPASS = 2
C_CACHE_HITS = 3
C_CNAME_BLOCKED = 4
C_FORMERR = 5
C_DROPPED = 6
C_RATE_LIMITED = 7
C_FAST_PATH = 8  # answered (or dropped) here, without Python
C_CATEGORY = 16  # + bit: blocked queries whose matching categories include the bit
COUNTER_NAMES = ("queries", "blocked", "bypass", "cache_hits", "cname_blocked", "formerr",
                 "dropped", "rate_limited", "fast_path")
N_COUNTERS = C_CATEGORY + 64

HEADER = 12
MAX_UDP_PAYLOAD = 1232  # filters.dns_wire.MAX_UDP_PAYLOAD
MIN_UDP_PAYLOAD = 512
MAX_QUERY_ADDITIONAL = 4  # filters.dns_wire.MAX_QUERY_ADDITIONAL
TYPE_OPT = 41
TYPE_ANY = 255
RCODE_FORMERR = 1
RCODE_NXDOMAIN = 3
OPT_LEN = 11  # an OPT record without options

# Parse outcomes.
P_OK, P_PYTHON, P_FORMERR, P_DROP = 0, 1, 2, 3

# Template table: per policy, rows of (qtype, rcode, an, ns, ar, offset, length) into the
# template bytes. Row 0: the block answer for other query types; row 1: the negative-answer
# SOA (bypass names: NXDOMAIN or NODATA); row 2: the RFC 8482 HINFO for ANY; rows 3..: block
# answers for particular query types (qtype -1 marks an unused row).
T_QTYPE, T_RCODE, T_AN, T_NS, T_AR, T_OFF, T_LEN = range(7)
T_WIDTH = 7
T_DEFAULT, T_NEGATIVE, T_ANY, T_TYPED = 0, 1, 2, 3
T_ROWS = 8

# Bypass table rows: (offset, length, rcode) of each lower-case wire name in the bypass bytes.
B_OFF, B_LEN, B_RCODE = 0, 1, 2

# Client addresses of a batch: uint8[batch, ADDR_WIDTH], byte 0 the family (4 or 6, 0 for
# unknown), bytes 1..16 the address (v4 in the first four).
ADDR_WIDTH = 17

# -- the wire cache's arrays (see filters/dns_cache.py for the design) ---------------------
# cache state (int64): ring of entries in insertion order, byte arena written as a ring.
CS_HEAD, CS_TAIL, CS_COUNT, CS_LIVE, CS_CAP, CS_ARENA, CS_SMASK = range(7)
CS_WIDTH = 8
# per-entry integers
EI_OFF, EI_SIZE, EI_KLEN, EI_BLEN, EI_NTTL, EI_NCN, EI_FLAGS, EI_AN, EI_NS, EI_AR, EI_LIVE, EI_BODYOFF, EI_TTL = range(13)
EI_WIDTH = 13
# per-entry times
EF_STORED, EF_EXPIRES, EF_STALE = 0, 1, 2
EF_WIDTH = 3
TTL_FIELD = 6  # a TTL field in a record: 2-byte offset in the body, 4-byte original TTL

# -- the rate limiter's arrays ---------------------------------------------------------------
LS_ENABLED, LS_CAP, LS_TAIL, LS_COUNT, LS_SMASK = range(5)
LS_WIDTH = 5
LF_RATE, LF_BURST = 0, 1


# ---------------------------------------------------------------------------------------------
# hashing (SipHash-1-3 from the domain kernels, keyed per table)

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
    and QCLASS at tsrc[ts:ts+4], and the DO byte."""
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


# ---------------------------------------------------------------------------------------------
# the rate limiter: token buckets in an open-addressing table, clients in insertion order

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


# ---------------------------------------------------------------------------------------------
# the wire cache

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
    """Store an entry: ``key`` (lower-case QNAME wire, QTYPE, QCLASS, DO byte), ``body`` (the
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
    q = 0
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


# ---------------------------------------------------------------------------------------------
# parsing

@njit(cache=True, inline="always")
def _u16(buf, p):
    return (np.int64(buf[p]) << 8) | np.int64(buf[p + 1])


@njit(cache=True)
def _skip_name(buf, n, pos):
    """filters.dns_wire._skip_name: offset after a possibly compressed name, -1 if bad."""
    start = pos
    while pos < n and pos - start <= 255:
        ln = np.int64(buf[pos])
        if ln == 0:
            return pos + 1
        if ln & 0xC0 == 0xC0:
            if pos + 2 > n:
                return -1
            return pos + 2
        if ln > 63:
            return -1
        pos += 1 + ln
    return -1


@njit(cache=True)
def parse_question(buf, n, end):
    """filters.dns_wire.parse_query for a QNAME known to end at ``end`` (well formed):
    (outcome, qtype, qclass, edns, udp_size, do, edns_version). P_PYTHON for what only the
    slow path handles, P_FORMERR / P_DROP as the pipeline's failure policy says."""
    if n > 65535:
        return P_FORMERR, 0, 0, False, 0, False, 0
    flags = _u16(buf, 2)
    if flags & 0x8000:
        return P_DROP, 0, 0, False, 0, False, 0
    qd, an, ns, ar = _u16(buf, 4), _u16(buf, 6), _u16(buf, 8), _u16(buf, 10)
    if qd != 1:
        return P_PYTHON, 0, 0, False, 0, False, 0
    if end + 4 > n:
        return P_FORMERR, 0, 0, False, 0, False, 0
    qtype, qclass = _u16(buf, end), _u16(buf, end + 2)
    pos = end + 4
    if an or ns:
        return P_PYTHON, 0, 0, False, 0, False, 0
    if ar > MAX_QUERY_ADDITIONAL:
        return P_FORMERR, 0, 0, False, 0, False, 0
    edns = False
    udp = MIN_UDP_PAYLOAD
    do = False
    version = 0
    for _ in range(ar):
        owner = pos
        pos = _skip_name(buf, n, pos)
        if pos < 0 or pos + 10 > n:
            return P_FORMERR, 0, 0, False, 0, False, 0
        rtype, rclass = _u16(buf, pos), _u16(buf, pos + 2)
        rdata_end = pos + 10 + _u16(buf, pos + 8)
        if rdata_end > n:
            return P_FORMERR, 0, 0, False, 0, False, 0
        if rtype == TYPE_OPT:
            if edns or buf[owner] != 0 or pos != owner + 1:
                return P_FORMERR, 0, 0, False, 0, False, 0
            edns = True
            udp = min(max(rclass, MIN_UDP_PAYLOAD), 65535)
            version = np.int64(buf[pos + 5])
            do = (buf[pos + 6] & 0x80) != 0
        pos = rdata_end
    if pos != n:
        return P_FORMERR, 0, 0, False, 0, False, 0
    if qclass != 1 or (flags >> 11) & 0xF != 0:
        return P_PYTHON, 0, 0, False, 0, False, 0
    return P_OK, qtype, qclass, edns, udp, do, version


@njit(cache=True)
def policy_for(addr, v4, v6, v6pol, default):
    """NetworkTable.policy_name on arrays: the first (most specific) network containing the
    address; v4-mapped v6 addresses as v4. v4: int64[n, 3] (net, mask, policy); v6:
    uint64[n, 4] (net hi, net lo, mask hi, mask lo) with v6pol[n]."""
    fam = addr[0]
    mapped = False
    if fam == 6:
        mapped = addr[11] == 0xFF and addr[12] == 0xFF
        for j in range(1, 11):
            if addr[j] != 0:
                mapped = False
    if fam == 4 or mapped:
        b = 1 if fam == 4 else 13
        ip = (np.int64(addr[b]) << 24) | (np.int64(addr[b + 1]) << 16) | (np.int64(addr[b + 2]) << 8) | np.int64(addr[b + 3])
        for r in range(v4.shape[0]):
            if ip & v4[r, 1] == v4[r, 0]:
                return v4[r, 2]
        return default
    if fam == 6:
        _f, hi, lo = addr_words(addr)
        for r in range(v6.shape[0]):
            if hi & v6[r, 2] == v6[r, 0] and lo & v6[r, 3] == v6[r, 1]:
                return v6pol[r]
    return default


# ---------------------------------------------------------------------------------------------
# answers

@njit(cache=True, inline="always")
def _opt(out, o, do, ext_rcode):
    """filters.dns_answer.opt_record(do=do, ext_rcode=...): root, OPT, payload 1232."""
    out[o] = 0
    out[o + 1] = 0
    out[o + 2] = TYPE_OPT
    out[o + 3] = MAX_UDP_PAYLOAD >> 8
    out[o + 4] = MAX_UDP_PAYLOAD & 0xFF
    out[o + 5] = ext_rcode
    out[o + 6] = 0
    out[o + 7] = 0x80 if do else 0
    out[o + 8] = 0
    out[o + 9] = 0
    out[o + 10] = 0
    return o + OPT_LEN


@njit(cache=True, inline="always")
def _put16(out, o, v):
    out[o] = (v >> 8) & 0xFF
    out[o + 1] = v & 0xFF


@njit(cache=True)
def _assemble(buf, qend, out, rcode, an, ns, ar, tb, toff, tlen, edns, do, ext_rcode):
    """filters.dns_answer._assemble: header (ID, flags from the query, counts), the
    question as sent, the records tb[toff:toff+tlen], our OPT when the query had one.
    ``qend`` is the offset after QTYPE/QCLASS. Returns the length, -1 if it does not fit."""
    size = qend + tlen + (OPT_LEN if edns else 0)
    if size > out.shape[0]:
        return -1
    out[0] = buf[0]
    out[1] = buf[1]
    out[2] = 0x80 | (buf[2] & 0x79)
    out[3] = 0x80 | (buf[3] & 0x10) | (rcode & 0xF)
    _put16(out, 4, 1)
    _put16(out, 6, an)
    _put16(out, 8, ns)
    _put16(out, 10, ar + 1 if edns else ar)
    out[HEADER:qend] = buf[HEADER:qend]
    out[qend:qend + tlen] = tb[toff:toff + tlen]
    if edns:
        _opt(out, qend + tlen, do, ext_rcode)
    return size


@njit(cache=True)
def _template(buf, qend, out, tt, tb, pol, row, edns, do, rcode):
    """The answer from template row ``row`` of policy ``pol`` (rcode -1: the row's)."""
    r = tt[pol, row]
    rc = r[T_RCODE] if rcode < 0 else rcode
    return _assemble(buf, qend, out, rc, r[T_AN], r[T_NS], r[T_AR], tb, r[T_OFF], r[T_LEN], edns, do, 0)


@njit(cache=True)
def _block_answer(buf, qend, out, tt, tb, pol, qtype, edns, do):
    """BlockAnswers.answer: the row for this QTYPE, else the default row."""
    row = T_DEFAULT
    for r in range(T_TYPED, tt.shape[1]):
        if tt[pol, r, T_QTYPE] == qtype:
            row = r
            break
    return _template(buf, qend, out, tt, tb, pol, row, edns, do, -1)


@njit(cache=True)
def _formerr(buf, out):
    """error_response(buf, FORMERR) with no parsed question: the header alone, counts zero."""
    out[0] = buf[0]
    out[1] = buf[1]
    out[2] = 0x80 | (buf[2] & 0x79)
    out[3] = 0x80 | (buf[3] & 0x10) | RCODE_FORMERR
    for j in range(4, HEADER):
        out[j] = 0
    return HEADER


@njit(cache=True)
def _render_cached(buf, qend, out, cache, e, edns, do, limit, now):
    """filters.dns_answer.render_cached with the entry's body at its age; TC and no
    records when larger than ``limit``."""
    eint, ef = cache[4], cache[5]
    f = eint[e, EI_FLAGS]
    ad = f & 0x20 if (do or (buf[3] & 0x20) != 0) else 0
    b2 = 0x80 | (buf[2] & 0x01)
    b3 = 0x80 | ad | (buf[3] & 0x10) | (f & 0xF)
    opt = OPT_LEN if edns else 0
    blen = eint[e, EI_BLEN]
    size = qend + blen + opt
    out[0] = buf[0]
    out[1] = buf[1]
    _put16(out, 4, 1)
    out[HEADER:qend] = buf[HEADER:qend]
    if size > limit or size > out.shape[0]:
        out[2] = b2 | 0x02
        out[3] = b3
        _put16(out, 6, 0)
        _put16(out, 8, 0)
        _put16(out, 10, 1 if edns else 0)
        if edns:
            _opt(out, qend, do, 0)
        return qend + opt
    out[2] = b2
    out[3] = b3
    _put16(out, 6, eint[e, EI_AN])
    _put16(out, 8, eint[e, EI_NS])
    _put16(out, 10, eint[e, EI_AR] + (1 if edns else 0))
    age = np.int64(now - ef[e, EF_STORED])
    o = render_body(cache, e, age, out, qend)
    if edns:
        _opt(out, o, do, 0)
    return size


@njit(cache=True, inline="always")
def _count_blocked(counters, union):
    counters[C_BLOCKED] += 1
    m = union
    bit = 0
    while m != _U(0) and bit < 64:
        if m & _U(1):
            counters[C_CATEGORY + bit] += 1
        m >>= _U(1)
        bit += 1


@njit(cache=True)
def _bypass_row(buf, qstart, qlen, bt, bb):
    for r in range(bt.shape[0]):
        if bt[r, B_LEN] != qlen:
            continue
        o = bt[r, B_OFF]
        same = True
        for j in range(qlen):
            c = np.int64(buf[qstart + j])
            if c >= 65 and c <= 90:
                c += 32
            if c != np.int64(bb[o + j]):
                same = False
                break
        if same:
            return r
    return -1


# ---------------------------------------------------------------------------------------------
# the batch

# Per-packet state between the passes of process_batch (int64[batch, M_WIDTH]).
M_FIRST, M_NL, M_QTYPE, M_QEND, M_EDNS, M_DO, M_UDP, M_POL = range(8)
M_WIDTH = 8
_PENDING = -1  # act[i] while packet i waits for its probes


def new_scratch(batch: int) -> tuple:
    """process_batch's scratch for batches of up to ``batch`` datagrams: labels, the
    suffix-hash scratch of every name of a batch, a result row, the per-packet state, and a
    one-name hash scratch for CNAME targets."""
    return (np.zeros(2 * D.MAX_LABELS, dtype=np.int64), D.new_scratch(batch),
            np.zeros(D.RESULT_WIDTH, dtype=np.uint64), np.zeros((batch, M_WIDTH), dtype=np.int64),
            D.new_scratch(1))


@njit(cache=True)
def _done(counters, act, i, what):
    counters[C_QUERIES] += 1
    counters[C_FAST_PATH] += 1
    if what >= 0:
        counters[what] += 1
    act[i] = ACT_DROP


@njit(cache=True)
def process_batch(count, rx, rxlen, addrs, tx, txlen, txsrc, act, tables, match, cache, limiter,
                  counters, scratch, now):
    """Handle packets 0..count-1 of ``rx`` (lengths ``rxlen``, clients ``addrs``).

    Answers go to consecutive rows of ``tx`` (``txlen``: their lengths, ``txsrc``: the packet
    each answers); ``act[i]`` says what happened to packet i. Returns the number of answers.

    Three passes, as the matcher's batch lookups do: parse every packet and hash the
    suffixes of every name that needs the matcher; probe the tables for all of them at once
    (the loads are independent, so the CPU overlaps their cache misses — the tables are
    megabytes, a lookup is bound by memory latency); then decide and answer each packet.

    tables  = (v4 nets, v6 nets, v6 policies, default policy, policy masks, template table,
               template bytes, bypass table, bypass bytes)
    match   = (k0, k1, main table tuple, local table tuple) as in the domain kernels
    cache   = (state, key, slots, hashes, entry ints, entry times, arena); capacity 0: off
    limiter = (state, rates, key, slots, keys, buckets); state[LS_ENABLED] 0: off
    scratch = new_scratch(batch size)"""
    v4, v6, v6pol, default, pmask, tt, tb, bt, bb = tables
    k0, k1, main, local = match
    lst = limiter[0]
    labels, hscratch, row, meta, cscratch = scratch
    cst, ckey = cache[0], cache[1]
    eint, ef, arena = cache[4], cache[5], cache[6]
    width = rx.shape[1]
    has_local = local[3].shape[0] > 0
    depths = main[1] | local[1]
    count = min(count, rx.shape[0], tx.shape[0], meta.shape[0], hscratch.shape[1] // D.MAX_LABELS)
    nsend = 0
    col = 0
    # -- pass 1: limit, parse, answer what needs no lookup, hash the rest ----------------------
    for i in range(count):
        act[i] = ACT_PYTHON
        n = min(max(rxlen[i], 0), width)
        buf = rx[i, :n]
        if lst[LS_ENABLED] != 0 and not lim_allow_client(limiter, addrs[i], now):
            _done(counters, act, i, C_RATE_LIMITED)
            continue
        if n < HEADER:
            _done(counters, act, i, C_DROPPED)
            continue
        nl, end = D.wire_labels(buf, HEADER, labels)
        if nl < 0:
            if buf[2] & 0x80:
                _done(counters, act, i, C_DROPPED)
            continue  # a QNAME the slow path may still read (compression, odd labels)
        outcome, qtype, _qclass, edns, udp, do, version = parse_question(buf, n, end)
        if outcome == P_PYTHON:
            continue
        if outcome == P_DROP:
            _done(counters, act, i, C_DROPPED)
            continue
        qend = end + 4
        out = tx[nsend]
        size = -1
        if outcome == P_FORMERR:
            size = _formerr(buf, out)
            counters[C_FORMERR] += 1
        elif edns and version != 0:
            size = _assemble(buf, qend, out, 0, 0, 0, 0, tb, 0, 0, True, do, 1)  # BADVERS
        else:
            pol = policy_for(addrs[i], v4, v6, v6pol, default)
            b = _bypass_row(buf, HEADER, end - HEADER, bt, bb)
            if b >= 0:
                size = _template(buf, qend, out, tt, tb, pol, T_NEGATIVE, edns, do, bt[b, B_RCODE])
                counters[C_BYPASS] += 1
            else:
                D._hash_suffixes(buf, labels, nl, k0, k1, depths, hscratch, col)
                m = meta[i]
                m[M_FIRST], m[M_NL], m[M_QTYPE], m[M_QEND] = col, nl, qtype, qend
                m[M_EDNS], m[M_DO], m[M_UDP], m[M_POL] = edns, do, udp, pol
                col += nl
                act[i] = _PENDING
                continue
        if size >= 0:
            counters[C_QUERIES] += 1
            counters[C_FAST_PATH] += 1
            act[i] = ACT_SEND
            txlen[nsend] = size
            txsrc[nsend] = i
            nsend += 1
    # -- pass 2: every probe of the batch ----------------------------------------------------
    D._probe_all(hscratch, col, main, D.S_MAIN)
    if has_local:
        D._probe_all(hscratch, col, local, D.S_LOCAL)
    # -- pass 3: decide; blocked names, ANY and cache hits --------------------------------------
    for i in range(count):
        if act[i] != _PENDING:
            continue
        act[i] = ACT_PYTHON
        m = meta[i]
        buf = rx[i, :min(max(rxlen[i], 0), width)]
        qtype, qend, pol = m[M_QTYPE], m[M_QEND], m[M_POL]
        edns, do = m[M_EDNS] != 0, m[M_DO] != 0
        out = tx[nsend]
        size = -1
        if D._decide(m[M_NL], m[M_FIRST], hscratch, pmask[pol], row, main, local, has_local) == D.ST_BLOCK:
            size = _block_answer(buf, qend, out, tt, tb, pol, qtype, edns, do)
            _count_blocked(counters, row[D.R_UNION])
        elif qtype == TYPE_ANY:
            size = _template(buf, qend, out, tt, tb, pol, T_ANY, edns, do, -1)
        else:
            if cst[CS_CAP] <= 0:
                continue
            end = qend - 4
            dobyte = 1 if do else 0
            h = key_hash(ckey[0], ckey[1], buf, HEADER, end - HEADER, buf, end, dobyte)
            e = cache_find(cache, h, buf, HEADER, end - HEADER, buf, end, dobyte)
            if e < 0 or now >= ef[e, EF_EXPIRES]:
                continue  # a miss: the pipeline forwards it
            counters[C_CACHE_HITS] += 1
            # A CNAME/DNAME target the policy blocks blocks the answer (Pipeline._cname_blocked);
            # the targets follow the TTL fields in the entry's record.
            blocked = False
            t = eint[e, EI_OFF] + eint[e, EI_SIZE]
            c = eint[e, EI_OFF] + eint[e, EI_KLEN] + eint[e, EI_BLEN] + TTL_FIELD * eint[e, EI_NTTL]
            for _ in range(eint[e, EI_NCN]):
                if c >= t:
                    break
                ln = np.int64(arena[c])
                target = arena[c + 1:c + 1 + ln]
                tn, _tend = D.wire_labels(target, 0, labels)
                if tn >= 0 and D._probe_and_decide(target, labels, tn, k0, k1, pmask[pol], row, cscratch,
                                                   main, local) == D.ST_BLOCK:
                    counters[C_CNAME_BLOCKED] += 1
                    _count_blocked(counters, row[D.R_UNION])
                    blocked = True
                    break
                c += 1 + ln
            if blocked:
                size = _block_answer(buf, qend, out, tt, tb, pol, qtype, edns, do)
            else:
                limit = min(m[M_UDP], MAX_UDP_PAYLOAD) if edns else MIN_UDP_PAYLOAD
                size = _render_cached(buf, qend, out, cache, e, edns, do, limit, now)
        if size < 0:
            continue  # did not fit an output row (rows hold MAX_UDP_PAYLOAD: cannot happen)
        counters[C_QUERIES] += 1
        counters[C_FAST_PATH] += 1
        act[i] = ACT_SEND
        txlen[nsend] = size
        txsrc[nsend] = i
        nsend += 1
    return nsend
