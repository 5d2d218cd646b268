"""numba kernels of the domain matcher. Private: use filters.domain_matcher.

Every suffix of a name is looked up by a keyed hash: SipHash-1-3 with 64-bit output
(Aumasson & Bernstein, https://131002.net/siphash/) of the suffix's labels written in wire
form from the right: ``example.com`` hashes the bytes ``\\x03com\\x07example``. Because the
message of a longer suffix extends the message of the shorter one, one pass over a name from
its last label to its first yields the hash of every suffix; each suffix costs only a
finalisation on a copy of the state.

The 64-bit output is the fingerprint stored in the table; the high bits of a mix of the
state pick the bucket (see _finish, and domain_table.py for the layout and the false-
positive bound). The key is random per compiled table, so nobody who lacks it can steer a
name onto an entry (SipHash is a PRF; this is what it was designed for).

Labels are lower-cased (ASCII) while hashing: DNS compares names case-insensitively
(RFC 4343) and resolvers randomise query case (0x20 encoding), so wire QNAMEs from clients
need no copy before the lookup.
"""

from __future__ import annotations

import numpy as np

from filters._jit import njit

_U = np.uint64

# SipHash-1-3, the parameters CPython (PEP 456 successor, 3.11+) and Rust's HashMap use
# against hash flooding: no attack is known on them, and they cost ~20 % less per name
# than 2-4 here (measured on 3-label names). The reference in tests/ is checked against
# the published SipHash-2-4 vectors and then compared with these kernels at 1-3.
C_ROUNDS = 1
D_ROUNDS = 3

# RFC 1035 §2.3.4 limits, repeated here as kernel constants.
MAX_LABELS = 127
MAX_WIRE_LENGTH = 255

# Result layout of one lookup (a row of a uint64 array). Class fields hold class id + 1,
# 0 meaning none; both tables are recorded because a name in the bundle and in the local
# lists at the same depth decides through both, and "why" names both.
R_STATUS = 0  # one of the ST_* codes
R_UNION = 1  # OR of the category masks of every matching entry
R_BLOCK_DEPTH = 2  # labels in the longest matching suffix whose categories meet the policy
R_BLOCK_CLS = 3  # bundle class + 1 of the entry at that depth, if it blocks
R_BLOCK_LCLS = 4  # local-overlay class + 1 of the entry at that depth, if it blocks
R_ALLOW_DEPTH = 5  # labels in the longest matching allow suffix
R_ALLOW_CLS = 6  # bundle class + 1 of the allow entry at that depth
R_ALLOW_LCLS = 7  # local-overlay class + 1 of the allow entry at that depth
R_END = 8  # offset just after the name (wire: after the root label)
RESULT_WIDTH = 9

ST_ALLOW = 0  # looked up: not blocked
ST_BLOCK = 1  # looked up: blocked under the policy
ST_MALFORMED = 2  # not a name we can look up (bad label length, too long, truncated)
ST_NEEDS_PYTHON = 3  # text with bytes outside letters, digits, '-', '_' and '.': Python decides


@njit(cache=True)
def _rotl(x, b):
    return (x << _U(b)) | (x >> _U(64 - b))


@njit(cache=True)
def _rounds(v0, v1, v2, v3, n):
    for _ in range(n):
        v0 += v1
        v1 = _rotl(v1, 13)
        v1 ^= v0
        v0 = _rotl(v0, 32)
        v2 += v3
        v3 = _rotl(v3, 16)
        v3 ^= v2
        v0 += v3
        v3 = _rotl(v3, 21)
        v3 ^= v0
        v2 += v1
        v1 = _rotl(v1, 17)
        v1 ^= v2
        v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


@njit(cache=True)
def _init(k0, k1):
    # SipHash initial state: the key XORed with "somepseudorandomlygeneratedbytes".
    return (
        k0 ^ _U(0x736F6D6570736575),
        k1 ^ _U(0x646F72616E646F6D),
        k0 ^ _U(0x6C7967656E657261),
        k1 ^ _U(0x7465646279746573),
    )


@njit(cache=True)
def _absorb_label(buf, off, ln, v0, v1, v2, v3, m, length):
    """Absorb one label (its length byte, then its bytes lower-cased) into the state."""
    for j in range(-1, ln):
        if j < 0:
            c = _U(ln)
        else:
            c = _U(buf[off + j])
            if c >= 65 and c <= 90:
                c += _U(32)
        m |= c << _U(8 * (length & 7))
        length += 1
        if length & 7 == 0:
            v3 ^= m
            v0, v1, v2, v3 = _rounds(v0, v1, v2, v3, C_ROUNDS)
            v0 ^= m
            m = _U(0)
    return v0, v1, v2, v3, m, length


@njit(cache=True)
def _finish(v0, v1, v2, v3, tail, length):
    """Finalise a state holding ``length`` bytes (``tail`` not yet absorbed).

    Returns (fingerprint, bucket word). The fingerprint is standard SipHash-1-3-64 of the
    message. The bucket word is a multiplicative mix of the state once the last block is
    absorbed: it only spreads entries over buckets, while the false-positive bound rests on
    the 64-bit PRF fingerprint alone (domain_table.py). One 64-bit output instead of the
    128-bit mode saves 3 of 7 rounds per suffix: 225 -> 185 ns per 4-label name."""
    b = tail | (_U(length & 0xFF) << _U(56))
    v3 ^= b
    v0, v1, v2, v3 = _rounds(v0, v1, v2, v3, C_ROUNDS)
    v0 ^= b
    mix = (v1 ^ v3) * _U(0x9E3779B97F4A7C15)  # 2**64 / golden ratio, odd
    v2 ^= _U(0xFF)
    v0, v1, v2, v3 = _rounds(v0, v1, v2, v3, D_ROUNDS)
    return v0 ^ v1 ^ v2 ^ v3, mix


@njit(cache=True)
def sip_words(k0, k1, data):
    """(SipHash-c-d-64, bucket word) of a uint8 array, for tests against the reference."""
    v0, v1, v2, v3 = _init(k0, k1)
    m = _U(0)
    n = 0
    for i in range(data.shape[0]):
        m |= _U(data[i]) << _U(8 * (n & 7))
        n += 1
        if n & 7 == 0:
            v3 ^= m
            v0, v1, v2, v3 = _rounds(v0, v1, v2, v3, C_ROUNDS)
            v0 ^= m
            m = _U(0)
    return _finish(v0, v1, v2, v3, m, n)


@njit(cache=True)
def wire_labels(buf, start, labels):
    """Record the labels of the uncompressed wire name at ``buf[start]`` in ``labels``
    (pairs of offset, length). Returns (count, end offset); count -1 if malformed."""
    pos = start
    n = 0
    limit = len(buf)
    if start < 0:  # negative indexes would wrap around to the end of the buffer
        return -1, 0  # len(), not .shape: buf may be a bytes object
    while True:
        if pos >= limit:
            return -1, pos
        ln = np.int64(buf[pos])
        if ln == 0:
            break
        # 0xC0 marks a compression pointer, 0x40/0x80 reserved label types (RFC 6891 §5):
        # none appear in a client's question name; the general path handles the rest.
        if ln > 63 or n >= MAX_LABELS or pos + 1 + ln > limit:
            return -1, pos
        labels[2 * n] = pos + 1
        labels[2 * n + 1] = ln
        n += 1
        pos += 1 + ln
    end = pos + 1
    if end - start > MAX_WIRE_LENGTH:
        return -1, end
    return n, end


@njit(cache=True)
def text_labels(buf, start, stop, labels):
    """Like wire_labels for dotted text in ``buf[start:stop]`` (one trailing dot allowed).
    Count -1 if malformed, -2 if a byte is not a letter, digit, '-', '_' or '.' (the
    Python normaliser then maps Unicode, strips spaces or rejects the name)."""
    if stop > start and buf[stop - 1] == 46:  # '.'
        stop -= 1
    n = 0
    label_start = start
    for pos in range(start, stop + 1):
        if pos < stop:
            c = buf[pos]
            if c == 46:  # '.'
                pass
            elif (c >= 97 and c <= 122) or (c >= 48 and c <= 57) or c == 45 or c == 95 or (c >= 65 and c <= 90):
                continue
            else:
                # Not letter/digit/-/_ : Unicode to map, or spaces, '*', '/' ... that
                # normalise_domain strips, maps or rejects; Python gives the verdict.
                return -2, stop
        ln = pos - label_start
        if ln == 0 or ln > 63 or n >= MAX_LABELS:
            return -1, stop
        labels[2 * n] = label_start
        labels[2 * n + 1] = ln
        n += 1
        label_start = pos + 1
    # text length + 2 = wire length (a length byte per label replaces the dots, plus root)
    if n == 0 or stop - start + 2 > MAX_WIRE_LENGTH:
        return -1, stop
    return n, stop


# Rows of the scratch array a lookup works in (uint64[SCRATCH_ROWS, probes]): per suffix
# its fingerprint (H0), bucket word (H1), depth, bucket bounds and probe results.
S_H0, S_H1, S_DEPTH, S_LO, S_HI, S_MAIN, S_LOCAL = 0, 1, 2, 3, 4, 5, 6
SCRATCH_ROWS = 7
# Names hashed before their probes are issued, in a batch. Probing is bound by cache
# misses (a 1 M-entry table is ~11 MB); issuing the loads of many names in tight loops
# lets the CPU keep many misses in flight instead of waiting for each in turn. Measured
# on 4-label names against 1 M entries: 490 ns/name one name at a time, 220 chunked.
# (Absorbing whole words from a byte buffer was tried and is slower, 272 ns: the byte
# stores and overlapping word loads defeat store-to-load forwarding.)
CHUNK = 64


def new_scratch(names: int = 1) -> np.ndarray:
    return np.zeros((SCRATCH_ROWS, names * MAX_LABELS), dtype=np.uint64)


@njit(cache=True, inline="always")
def _hash_suffixes(buf, labels, n, k0, k1, depths, scratch, p):
    """Hash every suffix of the name into scratch columns p .. p+n-1 (depth 1 first);
    depths no table holds are not finalised (their depth is stored as 0)."""
    v0, v1, v2, v3 = _init(k0, k1)
    m = _U(0)
    length = 0
    for depth in range(1, n + 1):
        li = n - depth
        v0, v1, v2, v3, m, length = _absorb_label(
            buf, labels[2 * li], labels[2 * li + 1], v0, v1, v2, v3, m, length
        )
        j = p + depth - 1
        if (depths >> _U(min(depth - 1, 63))) & _U(1):
            scratch[S_H0, j], scratch[S_H1, j] = _finish(v0, v1, v2, v3, m, length)
            scratch[S_DEPTH, j] = depth
        else:
            scratch[S_DEPTH, j] = 0


@njit(cache=True, inline="always")
def _probe_all(scratch, count, table, row):
    """Look up scratch columns 0..count-1 in one table; class id + 1 (0 = none) to ``row``.
    Two passes of independent loads: bucket bounds, then fingerprints."""
    shift, depths, offsets, fps, cls, _m, _a, _l = table
    for j in range(count):
        d = scratch[S_DEPTH, j]
        if d != 0 and (depths >> min(d - _U(1), _U(63))) & _U(1):
            b = scratch[S_H1, j] >> shift
            scratch[S_LO, j] = offsets[b]
            scratch[S_HI, j] = offsets[b + _U(1)]
        else:
            scratch[S_LO, j] = 0
            scratch[S_HI, j] = 0
    for j in range(count):
        lo = np.int64(scratch[S_LO, j])
        hi = np.int64(scratch[S_HI, j])
        h0 = scratch[S_H0, j]
        found = _U(0)
        while lo < hi:
            f = fps[lo]
            if f >= h0:  # fingerprints are sorted within a bucket
                if f == h0:
                    found = _U(cls[lo]) + _U(1)
                break
            lo += 1
        scratch[row, j] = found


@njit(cache=True, inline="always")
def _decide(n, p, scratch, policy, out, main, local, has_local):
    """Apply the matching rule (docs/matching.md) to one name's probe results (columns p .. p+n-1); fill ``out``.

    The two tables' bookkeeping is written out twice on purpose: a helper taking the class
    arrays measured 2.5x slower (reference counting of array arguments on every probe)."""
    c_mask, c_apex, c_allow = main[5], main[6], main[7]
    l_mask, l_apex, l_allow = local[5], local[6], local[7]
    union = _U(0)
    block_depth = 0
    block_main = _U(0)
    block_local = _U(0)
    allow_depth = 0
    allow_main = _U(0)
    allow_local = _U(0)
    for depth in range(1, n + 1):
        j = p + depth - 1
        apex = depth == n
        allow_bit = 2 if apex else 1
        fm = scratch[S_MAIN, j]
        fl = scratch[S_LOCAL, j] if has_local else _U(0)
        if fm == 0 and fl == 0:
            continue
        mb = ma = lb = la = False
        if fm:
            c_id = np.int64(fm) - 1
            cm = c_apex[c_id] if apex else c_mask[c_id]
            union |= cm
            mb = (cm & policy) != _U(0)
            ma = (c_allow[c_id] & allow_bit) != 0
        if fl:
            c_id = np.int64(fl) - 1
            cm = l_apex[c_id] if apex else l_mask[c_id]
            union |= cm
            lb = (cm & policy) != _U(0)
            la = (l_allow[c_id] & allow_bit) != 0
        if mb or lb:
            block_depth = depth
            block_main = fm if mb else _U(0)
            block_local = fl if lb else _U(0)
        if ma or la:
            allow_depth = depth
            allow_main = fm if ma else _U(0)
            allow_local = fl if la else _U(0)
    blocked = block_depth > 0 and allow_depth < block_depth
    status = ST_BLOCK if blocked else ST_ALLOW
    out[R_STATUS] = status
    out[R_UNION] = union
    out[R_BLOCK_DEPTH] = block_depth
    out[R_BLOCK_CLS] = block_main
    out[R_BLOCK_LCLS] = block_local
    out[R_ALLOW_DEPTH] = allow_depth
    out[R_ALLOW_CLS] = allow_main
    out[R_ALLOW_LCLS] = allow_local
    return status


@njit(cache=True, inline="always")
def _probe_and_decide(buf, labels, n, k0, k1, policy, out, scratch, main, local):
    """One name, labels already recorded: hash, probe both tables, decide."""
    has_local = local[3].shape[0] > 0
    _hash_suffixes(buf, labels, n, k0, k1, main[1] | local[1], scratch, 0)
    _probe_all(scratch, n, main, S_MAIN)
    if has_local:
        _probe_all(scratch, n, local, S_LOCAL)
    return _decide(n, 0, scratch, policy, out, main, local, has_local)


@njit(cache=True)
def hash_names(buf, starts, stops, k0, k1, h0_out, h1_out, depth_out):
    """Hash whole names (text form, already canonical) for building a table.
    depth_out gets the label count, 0 for a malformed name."""
    labels = np.empty(2 * MAX_LABELS, dtype=np.int64)
    for i in range(starts.shape[0]):
        n, _ = text_labels(buf, starts[i], stops[i], labels)
        if n <= 0:
            depth_out[i] = 0
            continue
        v0, v1, v2, v3 = _init(k0, k1)
        m = _U(0)
        length = 0
        for li in range(n - 1, -1, -1):
            v0, v1, v2, v3, m, length = _absorb_label(
                buf, labels[2 * li], labels[2 * li + 1], v0, v1, v2, v3, m, length
            )
        h0_out[i], h1_out[i] = _finish(v0, v1, v2, v3, m, length)
        depth_out[i] = n


@njit(cache=True)
def match_wire(buf, start, labels, scratch, k0, k1, policy, out, main, local):
    """Look up the wire-format name at ``buf[start]`` (e.g. a DNS question's QNAME).
    ``labels`` (int64[2 * MAX_LABELS]) and ``scratch`` (new_scratch()) are caller-owned
    so that a lookup allocates nothing."""
    n, end = wire_labels(buf, start, labels)
    out[R_END] = end
    if n < 0:
        out[R_STATUS] = ST_MALFORMED
        return ST_MALFORMED
    return _probe_and_decide(buf, labels, n, k0, k1, policy, out, scratch, main, local)


@njit(cache=True, inline="always")
def _batch(buf, starts, stops, wire, k0, k1, policy, out, main, local):
    """Chunked batch lookup: hash a chunk of names, then probe all of it, then decide."""
    has_local = local[3].shape[0] > 0
    depths = main[1] | local[1]
    labels = np.empty(2 * MAX_LABELS, dtype=np.int64)
    scratch = np.zeros((SCRATCH_ROWS, CHUNK * MAX_LABELS), dtype=np.uint64)
    first = np.empty(CHUNK, dtype=np.int64)
    count = np.empty(CHUNK, dtype=np.int64)
    total = starts.shape[0]
    for c0 in range(0, total, CHUNK):
        c1 = min(c0 + CHUNK, total)
        p = 0
        for i in range(c0, c1):
            if wire:
                n, end = wire_labels(buf, starts[i], labels)
            else:
                n, end = text_labels(buf, starts[i], stops[i], labels)
            out[i, R_END] = end
            count[i - c0] = n
            first[i - c0] = p
            if n < 0:
                out[i, R_STATUS] = ST_MALFORMED if n == -1 else ST_NEEDS_PYTHON
                continue
            _hash_suffixes(buf, labels, n, k0, k1, depths, scratch, p)
            p += n
        _probe_all(scratch, p, main, S_MAIN)
        if has_local:
            _probe_all(scratch, p, local, S_LOCAL)
        for i in range(c0, c1):
            n = count[i - c0]
            if n >= 0:
                _decide(n, first[i - c0], scratch, policy, out[i], main, local, has_local)


@njit(cache=True)
def match_text_batch(buf, starts, stops, k0, k1, policy, out, main, local):
    """Look up many dotted names held in one byte buffer; one result row each."""
    _batch(buf, starts, stops, False, k0, k1, policy, out, main, local)


@njit(cache=True)
def match_wire_batch(buf, starts, k0, k1, policy, out, main, local):
    """Look up many wire-format names (e.g. the QNAMEs of a batch of DNS packets)."""
    _batch(buf, starts, starts, True, k0, k1, policy, out, main, local)
