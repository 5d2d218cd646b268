"""numba kernels of the DNS fast path: a batch of UDP queries in, answers out. Private: use
filters.dns_fast (tables, the batch call), appliance/dns/cache.py (the wire cache) and
appliance/dns/ratelimit.py (the rate limiter).

The kernels live in one module per job; this one holds the batch (``process_batch``) and
re-exports what the rest of the code imports as ``_dns_kernels.X``:

- ``_dns_kernel_hash.py``: keyed SipHash of cache keys and client addresses, and the
  open-addressing index deletion both tables use;
- ``_dns_kernel_ratelimit.py``: per-client token buckets;
- ``_dns_kernel_cache.py``: the wire cache (ring of entries, byte arena, index);
- ``_dns_kernel_parse.py``: the query parsed in place, the client's policy;
- ``_dns_kernel_answer.py``: answers from templates and from the cache.

numba's on-disk cache (``cache=True``) checks the source file of the function it loads
(numba 0.68: a hash of its contents, so touching a file changes nothing), not the files of
the functions it calls: after editing one of these modules, clear the callers' entries —
``filters/__pycache__/_dns_kernels.*`` and ``appliance/dns/__pycache__/fastpath._serve-*``
(whose cached code holds process_batch) — so that no caller keeps an old copy.

One call handles a whole batch of datagrams (what one recvmmsg returned): for each, the
per-client rate limit, the header and question parsed in place, the client's policy from a
small CIDR table, the matcher kernels (filters/_domain_kernels.py) on the QNAME, and the
answer written into an output slot — from answer templates (blocked names, encrypted-DNS
bypass names, ANY without DO, BADVERS, FORMERR) or from the wire cache (TTLs counted down while
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

from filters import _domain_kernels as D
from filters._dns_kernel_answer import (
    B_LEN,
    B_OFF,
    B_RCODE,
    T_AN,
    T_ANY,
    T_AR,
    T_DEFAULT,
    T_LEN,
    T_NEGATIVE,
    T_NS,
    T_OFF,
    T_QTYPE,
    T_RCODE,
    T_ROWS,
    T_TYPED,
    T_WIDTH,
    _assemble,
    _block_answer,
    _bypass_row,
    _formerr,
    _render_cached,
    _template,
)
from filters._dns_kernel_cache import (
    CS_ARENA,
    CS_CAP,
    CS_COUNT,
    CS_HEAD,
    CS_LIVE,
    CS_SMASK,
    CS_TAIL,
    CS_WIDTH,
    EF_EXPIRES,
    EF_STALE,
    EF_STORED,
    EF_WIDTH,
    EI_AN,
    EI_AR,
    EI_BLEN,
    EI_BODYOFF,
    EI_FLAGS,
    EI_KLEN,
    EI_LIVE,
    EI_NCN,
    EI_NS,
    EI_NTTL,
    EI_OFF,
    EI_SIZE,
    EI_TTL,
    EI_WIDTH,
    TTL_FIELD,
    cache_find,
    cache_lookup_key,
    cache_put,
    cache_unlink,
    render_body,
)
from filters._dns_kernel_hash import key_hash, words_hash
from filters._dns_kernel_parse import (
    ADDR_WIDTH,
    HEADER,
    MAX_QUERY_ADDITIONAL,
    MAX_UDP_PAYLOAD,
    MIN_UDP_PAYLOAD,
    OPT_LEN,
    P_DROP,
    P_FORMERR,
    P_OK,
    P_PYTHON,
    RCODE_FORMERR,
    RCODE_NXDOMAIN,
    TYPE_ANY,
    TYPE_OPT,
    parse_question,
    policy_for,
)
from filters._dns_kernel_ratelimit import (
    LF_BURST,
    LF_RATE,
    LS_CAP,
    LS_COUNT,
    LS_ENABLED,
    LS_SMASK,
    LS_TAIL,
    LS_WIDTH,
    addr_words,
    lim_allow,
    lim_allow_client,
)
from filters._jit import njit

__all__ = [  # the batch, and what other modules import from here
    "process_batch", "new_scratch", "ACT_SEND", "ACT_DROP", "ACT_PYTHON", "COUNTER_NAMES", "N_COUNTERS",
    "C_CATEGORY",
    "B_LEN", "B_OFF", "B_RCODE", "T_ANY", "T_AN", "T_AR", "T_DEFAULT", "T_LEN", "T_NEGATIVE", "T_NS", "T_OFF",
    "T_QTYPE", "T_RCODE", "T_ROWS", "T_TYPED", "T_WIDTH", "CS_ARENA", "CS_CAP", "CS_COUNT", "CS_HEAD",
    "CS_LIVE", "CS_SMASK", "CS_TAIL", "CS_WIDTH", "EF_EXPIRES", "EF_STALE", "EF_STORED", "EF_WIDTH", "EI_AN",
    "EI_AR", "EI_BLEN", "EI_BODYOFF", "EI_FLAGS", "EI_KLEN", "EI_LIVE", "EI_NCN", "EI_NS", "EI_NTTL",
    "EI_OFF", "EI_SIZE", "EI_TTL", "EI_WIDTH", "TTL_FIELD", "cache_find", "cache_lookup_key", "cache_put",
    "cache_unlink", "render_body", "key_hash", "words_hash", "ADDR_WIDTH", "HEADER", "MAX_QUERY_ADDITIONAL",
    "MAX_UDP_PAYLOAD", "MIN_UDP_PAYLOAD", "OPT_LEN", "P_DROP", "P_FORMERR", "P_OK", "P_PYTHON",
    "RCODE_FORMERR", "RCODE_NXDOMAIN", "TYPE_ANY", "TYPE_OPT", "parse_question", "policy_for", "LF_BURST",
    "LF_RATE", "LS_CAP", "LS_COUNT", "LS_ENABLED", "LS_SMASK", "LS_TAIL", "LS_WIDTH", "addr_words",
    "lim_allow", "lim_allow_client",
]

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



# ---------------------------------------------------------------------------------------------
# the batch

# Per-packet state between the passes of process_batch (int64[batch, M_WIDTH]).
M_FIRST, M_NL, M_QTYPE, M_QEND, M_EDNS, M_DO, M_UDP, M_POL = range(8)
M_WIDTH = 8
_PENDING = -1  # act[i] while packet i waits for its probes
_DIVERT_ALL = np.uint64((1 << 64) - 1)  # filters.policy.DIVERT_ALL


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
def process_batch(count, rx, rxlen, addrs, tx, txlen, txsrc, act, blocked_mask, tables, match, cache, limiter,
                  counters, scratch, now):
    """Handle packets 0..count-1 of ``rx`` (lengths ``rxlen``, clients ``addrs``).

    Answers go to consecutive rows of ``tx`` (``txlen``: their lengths, ``txsrc``: the packet
    each answers); ``act[i]`` says what happened to packet i; ``blocked_mask[i]`` is the
    category mask of a blocked answer to packet i (the union of the matching entries'
    categories, divert bits removed; the blocked CNAME target's for a cached answer), 0 for
    every other packet — so that a query log can name what the kernel blocked without
    parsing the packet again. Returns the number of answers.

    Three passes, as the matcher's batch lookups do: parse every packet and hash the
    suffixes of every name that needs the matcher; probe the tables for all of them at once
    (the loads are independent, so the CPU overlaps their cache misses — the tables are
    megabytes, a lookup is bound by memory latency); then decide and answer each packet.

    tables  = (v4 nets, v6 nets, v6 policies, default policy, policy masks, template table,
               template bytes, bypass table, bypass bytes, divert masks per policy,
               category bits (every bit but the divert bits))

    A name whose category union meets its policy's divert mask (SafeSearch, a temporary
    allow: filters/policy.py) is handed to Python, as is a cached answer with such a CNAME
    target; a policy whose divert mask is all ones hands over every looked-up name.
    match   = (k0, k1, main table tuple, local table tuple) as in the domain kernels
    cache   = (state, key, slots, hashes, entry ints, entry times, arena); capacity 0: off
    limiter = (state, rates, key, slots, keys, buckets); state[LS_ENABLED] 0: off
    scratch = new_scratch(batch size)"""
    v4, v6, v6pol, default, pmask, tt, tb, bt, bb, dmask, cats = tables
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
        blocked_mask[i] = 0
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
            elif dmask[pol] == _DIVERT_ALL:
                continue  # no divert bit was free: Python looks every name of this policy up
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
        st = D._decide(m[M_NL], m[M_FIRST], hscratch, pmask[pol], row, main, local, has_local)
        if row[D.R_UNION] & dmask[pol] != _U(0):
            continue  # SafeSearch or a temporary allow: Python answers it
        if st == D.ST_BLOCK:
            size = _block_answer(buf, qend, out, tt, tb, pol, qtype, edns, do)
            _count_blocked(counters, row[D.R_UNION])
            blocked_mask[i] = row[D.R_UNION] & cats
        elif qtype == TYPE_ANY and not do:  # RFC 8482; with DO=1 forwarded (Pipeline._fast)
            size = _template(buf, qend, out, tt, tb, pol, T_ANY, edns, do, -1)
        else:
            if cst[CS_CAP] <= 0:
                continue
            end = qend - 4
            # The key's flags byte, as appliance.dns.pipeline.key_flags builds it: 1 DO, 2 CD.
            dobyte = (1 if do else 0) | (2 if buf[3] & 0x10 else 0)
            h = key_hash(ckey[0], ckey[1], buf, HEADER, end - HEADER, buf, end, dobyte)
            e = cache_find(cache, h, buf, HEADER, end - HEADER, buf, end, dobyte)
            if e < 0 or now >= ef[e, EF_EXPIRES]:
                continue  # a miss: the pipeline forwards it
            # A CNAME/DNAME target the policy blocks blocks the answer (Pipeline._cname_blocked);
            # the targets follow the TTL fields in the entry's record. A target under a
            # divert bit (temporarily allowed) sends the packet to Python before anything
            # is counted.
            blocked = False
            divert = False
            t = eint[e, EI_OFF] + eint[e, EI_SIZE]
            c = eint[e, EI_OFF] + eint[e, EI_KLEN] + eint[e, EI_BLEN] + TTL_FIELD * eint[e, EI_NTTL]
            for _ in range(eint[e, EI_NCN]):
                if c >= t:
                    break
                ln = np.int64(arena[c])
                target = arena[c + 1:c + 1 + ln]
                tn, _tend = D.wire_labels(target, 0, labels)
                if tn >= 0:
                    tst = D._probe_and_decide(target, labels, tn, k0, k1, pmask[pol], row, cscratch, main, local)
                    if row[D.R_UNION] & dmask[pol] != _U(0):
                        divert = True
                        break
                    if tst == D.ST_BLOCK:
                        blocked = True
                        break
                c += 1 + ln
            if divert:
                continue
            counters[C_CACHE_HITS] += 1
            if blocked:
                counters[C_CNAME_BLOCKED] += 1
                _count_blocked(counters, row[D.R_UNION])
                blocked_mask[i] = row[D.R_UNION] & cats
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
