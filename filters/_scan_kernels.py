"""numba kernels of the keyword scanner (private; the typed front is filters.keyword_scanner).

The automaton is an Aho-Corasick machine compiled into a full DFA: failure links are
resolved at build time, so scanning costs exactly one table load per input byte and never
walks a failure chain. Everything here takes flat numpy arrays and scalars so the tables can
be memory-mapped straight out of a bundle and shared by every worker.

Layout (n = number of states, k = number of byte classes):

- ``cmap`` int32[256]: byte -> class. ASCII letters are case-folded here (``A`` and ``a``
  share a class), which is all the case-insensitivity the kernels need. Bytes that occur in
  no pattern share class 0. (int32 rather than uint8: 1 KiB either way, and it keeps
  ``s * k + cmap[b]`` in a wide type when the kernels run as plain Python under numpy's
  NEP 50 promotion rules.)
- ``delta`` uint16 or int32 [n*k]: ``delta[s*k + c]`` is the next state. uint16 whenever
  n <= 65536 (10k keywords build ~60k states): half the cache footprint, which measured
  faster than pre-multiplied int32 row offsets despite the multiply on the critical path.
- States are numbered so that every accepting state (one with at least one pattern ending
  there, directly or through its failure chain) has an id >= ``acc0``: "did something
  match?" is one compare. Non-accepting states come first in BFS order, so the shallow, hot
  states sit together at the front of ``delta``.
- Per accepting state a = s - acc0: ``acc_mask[a]`` is the OR of the category masks of
  every pattern that ends there; ``acc_own[a]`` is the pattern whose last byte leads to s
  (the longest one ending there) or -1; ``acc_dict[a]`` is the next accepting state (again
  as an index a) on the failure chain that has an own pattern, or -1. ``own`` then the
  ``dict`` chain lists the matches at a position longest first.

Scalars ``k`` and ``acc0`` are passed as np.int64 so that arithmetic on uint16 states stays
64-bit in plain Python too. Every kernel is ``cache=True`` (the Pi boots cold) and runs
unchanged as pure Python under ``NUMBA_DISABLE_JIT=1``, which the tests use for coverage.
"""

from __future__ import annotations

import numpy as np

from filters._jit import njit

# --------------------------------------------------------------------------- scanning

# The walk is one chain of dependent loads per byte, so a single stream is bound by memory
# latency, not bandwidth. The engine below interleaves LANES independent streams ("tasks":
# the texts of a batch, or segments of a long text) so the CPU overlaps their cache misses.
# Measured on benchmarks/bench_keywords.py's corpus (x86, 5k patterns, 2.6 MiB table): one
# stream ~275 MB/s, 4 lanes ~840, 8 lanes ~900-1070; more lanes would only spill registers.
LANES = 8
# A text is split into LANES segments when it is at least this long (and at least
# 2 * LANES * longest pattern, so a segment's warm-up is small next to the segment).
SPLIT_MIN = 4096


@njit(cache=True, nogil=True)
def walk(cmap, delta, acc0, k, acc_mask, full_mask, buf, start, end, s, mask, fa):
    """Continue one stream over ``buf[start:end]`` from state ``s`` with the results so far.
    Returns the new ``(s, mask, fa)``, ``fa`` being the first accepting-state index seen or
    -1. Stops early once ``fa`` is known and ``mask`` equals ``full_mask`` (the OR of all
    patterns): nothing later could change the answer.
    """
    for i in range(start, end):
        s = delta[s * k + cmap[buf[i]]]
        if s >= acc0:
            a = s - acc0
            mask |= acc_mask[a]
            if fa < 0:
                fa = a
            if mask == full_mask:
                break
    return s, mask, fa


@njit(cache=True, nogil=True)
def first_pattern(acc_own, acc_dict, fa):
    """Pattern id of the longest pattern ending in accepting state ``fa`` (or -1)."""
    if fa < 0:
        return np.int64(-1)
    own = acc_own[fa]
    if own >= 0:
        return np.int64(own)
    return np.int64(acc_own[acc_dict[fa]])


@njit(cache=True, nogil=True)
def run_tasks(cmap, delta, acc0, k, acc_mask, full_mask, buf, t_start, t_rec, t_end,
              t_mask, t_fa):
    """Scan every task ``buf[t_start[j]:t_end[j]]`` (from the root, recording matches
    ending at or after ``t_rec[j]``) into ``t_mask[j]``, ``t_fa[j]``. Requires
    ``t_start <= t_rec < t_end``.

    LANES tasks advance in lock-step for as many bytes as the shortest has left; finished
    lanes then store their result and take the next task (running its warm-up, the bytes
    before ``t_rec``, on its own first: that keeps a "record?" test out of the hot loop).
    When the queue is empty, the lanes still running finish one at a time.
    """
    nt = len(t_start)
    lt = np.full(LANES, -1, dtype=np.int64)  # task per lane
    lp = np.zeros(LANES, dtype=np.int64)  # position
    le = np.zeros(LANES, dtype=np.int64)  # end
    ls = np.zeros(LANES, dtype=np.int64)  # state
    lm = np.zeros(LANES, dtype=np.uint64)  # mask
    lf = np.full(LANES, -1, dtype=np.int64)  # first accepting index
    nxt = 0
    while True:
        idle = False
        for ln in range(LANES):
            j = lt[ln]
            if j >= 0 and (lp[ln] == le[ln] or (lf[ln] >= 0 and lm[ln] == full_mask)):
                t_mask[j] = lm[ln]
                t_fa[j] = lf[ln]
                lt[ln] = -1
                j = -1
            if j < 0:
                if nxt < nt:
                    lt[ln] = nxt
                    s = 0
                    for i in range(t_start[nxt], t_rec[nxt]):
                        s = delta[s * k + cmap[buf[i]]]
                    lp[ln] = t_rec[nxt]
                    le[ln] = t_end[nxt]
                    ls[ln] = s
                    lm[ln] = 0
                    lf[ln] = -1
                    nxt += 1
                else:
                    idle = True
        if idle:
            break
        steps = le[0] - lp[0]
        for ln in range(1, LANES):
            steps = min(steps, le[ln] - lp[ln])
        # One burst. Written out per lane (no helper, no arrays): numba keeps the states in
        # registers only this way, and a helper returning a tuple measured 10x slower.
        p0, p1, p2, p3, p4, p5, p6, p7 = lp[0], lp[1], lp[2], lp[3], lp[4], lp[5], lp[6], lp[7]
        s0, s1, s2, s3, s4, s5, s6, s7 = ls[0], ls[1], ls[2], ls[3], ls[4], ls[5], ls[6], ls[7]
        m0, m1, m2, m3, m4, m5, m6, m7 = lm[0], lm[1], lm[2], lm[3], lm[4], lm[5], lm[6], lm[7]
        f0, f1, f2, f3, f4, f5, f6, f7 = lf[0], lf[1], lf[2], lf[3], lf[4], lf[5], lf[6], lf[7]
        for t in range(steps):
            s0 = delta[s0 * k + cmap[buf[p0 + t]]]
            s1 = delta[s1 * k + cmap[buf[p1 + t]]]
            s2 = delta[s2 * k + cmap[buf[p2 + t]]]
            s3 = delta[s3 * k + cmap[buf[p3 + t]]]
            s4 = delta[s4 * k + cmap[buf[p4 + t]]]
            s5 = delta[s5 * k + cmap[buf[p5 + t]]]
            s6 = delta[s6 * k + cmap[buf[p6 + t]]]
            s7 = delta[s7 * k + cmap[buf[p7 + t]]]
            if s0 >= acc0:
                m0 |= acc_mask[s0 - acc0]
                f0 = s0 - acc0 if f0 < 0 else f0
            if s1 >= acc0:
                m1 |= acc_mask[s1 - acc0]
                f1 = s1 - acc0 if f1 < 0 else f1
            if s2 >= acc0:
                m2 |= acc_mask[s2 - acc0]
                f2 = s2 - acc0 if f2 < 0 else f2
            if s3 >= acc0:
                m3 |= acc_mask[s3 - acc0]
                f3 = s3 - acc0 if f3 < 0 else f3
            if s4 >= acc0:
                m4 |= acc_mask[s4 - acc0]
                f4 = s4 - acc0 if f4 < 0 else f4
            if s5 >= acc0:
                m5 |= acc_mask[s5 - acc0]
                f5 = s5 - acc0 if f5 < 0 else f5
            if s6 >= acc0:
                m6 |= acc_mask[s6 - acc0]
                f6 = s6 - acc0 if f6 < 0 else f6
            if s7 >= acc0:
                m7 |= acc_mask[s7 - acc0]
                f7 = s7 - acc0 if f7 < 0 else f7
        lp[0], lp[1], lp[2], lp[3] = p0 + steps, p1 + steps, p2 + steps, p3 + steps
        lp[4], lp[5], lp[6], lp[7] = p4 + steps, p5 + steps, p6 + steps, p7 + steps
        ls[0], ls[1], ls[2], ls[3], ls[4], ls[5], ls[6], ls[7] = s0, s1, s2, s3, s4, s5, s6, s7
        lm[0], lm[1], lm[2], lm[3], lm[4], lm[5], lm[6], lm[7] = m0, m1, m2, m3, m4, m5, m6, m7
        lf[0], lf[1], lf[2], lf[3], lf[4], lf[5], lf[6], lf[7] = f0, f1, f2, f3, f4, f5, f6, f7
    for ln in range(LANES):
        j = lt[ln]
        if j >= 0:
            _, m, f = walk(cmap, delta, acc0, k, acc_mask, full_mask, buf, lp[ln], le[ln],
                           ls[ln], lm[ln], lf[ln])
            t_mask[j] = m
            t_fa[j] = f


@njit(cache=True, nogil=True)
def n_segments(length, max_len):
    """How many tasks a text of ``length`` bytes becomes (1 or LANES)."""
    if length >= SPLIT_MIN and length >= 2 * LANES * max_len:
        return LANES
    return 1


@njit(cache=True, nogil=True)
def scan_batch(cmap, delta, acc0, k, acc_mask, acc_own, acc_dict, full_mask, max_len,
               buf, offsets, out_mask, out_first):
    """Scan every text ``buf[offsets[j]:offsets[j+1]]`` independently into the outputs:
    ``out_mask[j]`` the OR of the categories of every pattern occurring in it,
    ``out_first[j]`` the first match (smallest end offset; among patterns ending there the
    longest) or -1.

    Long texts become LANES segments; each segment but the first starts ``max_len - 1``
    bytes early without recording, after which its DFA state equals that of a scan from the
    text's start (the state depends on at most the last ``max_len`` bytes).
    """
    n = len(offsets) - 1
    nt = 0
    for j in range(n):
        length = offsets[j + 1] - offsets[j]
        if length > 0:
            nt += n_segments(length, max_len)
    t_start = np.empty(nt, dtype=np.int64)
    t_rec = np.empty(nt, dtype=np.int64)
    t_end = np.empty(nt, dtype=np.int64)
    t_text = np.empty(nt, dtype=np.int64)
    i = 0
    for j in range(n):
        a, b = offsets[j], offsets[j + 1]
        if b <= a:
            continue
        parts = n_segments(b - a, max_len)
        seg = (b - a) // parts
        for c in range(parts):
            rec = a + c * seg
            t_start[i] = rec if c == 0 else rec - (max_len - 1)
            t_rec[i] = rec
            t_end[i] = b if c == parts - 1 else rec + seg
            t_text[i] = j
            i += 1
    t_mask = np.zeros(nt, dtype=np.uint64)
    t_fa = np.full(nt, -1, dtype=np.int64)
    run_tasks(cmap, delta, acc0, k, acc_mask, full_mask, buf, t_start, t_rec, t_end,
              t_mask, t_fa)
    fa = np.full(n, -1, dtype=np.int64)
    for j in range(n):
        out_mask[j] = 0
    for i in range(nt):  # tasks of one text are consecutive and in text order
        j = t_text[i]
        out_mask[j] |= t_mask[i]
        if fa[j] < 0:
            fa[j] = t_fa[i]
    for j in range(n):
        out_first[j] = first_pattern(acc_own, acc_dict, fa[j])


@njit(cache=True, nogil=True)
def scan_range(cmap, delta, acc0, k, acc_mask, acc_own, acc_dict, full_mask, max_len,
               buf, start, end):
    """``(mask, first)`` for ``buf[start:end]``, as one text of :func:`scan_batch`.
    Callable from other njit code with ``KeywordScanner.kernel_tables`` as the first nine
    arguments."""
    if n_segments(end - start, max_len) == 1:
        _, mask, fa = walk(cmap, delta, acc0, k, acc_mask, full_mask, buf, start, end, 0,
                           np.uint64(0), -1)
        return mask, first_pattern(acc_own, acc_dict, fa)
    offsets = np.array([start, end], dtype=np.int64)
    out_mask = np.zeros(1, dtype=np.uint64)
    out_first = np.full(1, -1, dtype=np.int64)
    scan_batch(cmap, delta, acc0, k, acc_mask, acc_own, acc_dict, full_mask, max_len, buf,
               offsets, out_mask, out_first)
    return out_mask[0], out_first[0]


@njit(cache=True, nogil=True)
def find_all(cmap, delta, acc0, k, acc_own, acc_dict, buf, start, end):
    """Every match in ``buf[start:end]`` as two int64 arrays (pattern ids, end offsets).

    End offsets are exclusive and relative to ``start``; matches are ordered by end offset,
    then longest pattern first. Two passes (count, then fill) keep it to plain arrays.
    """
    count = 0
    s = 0
    for i in range(start, end):
        s = delta[s * k + cmap[buf[i]]]
        if s >= acc0:
            a = s - acc0
            if acc_own[a] < 0:
                a = acc_dict[a]
            while a >= 0:
                count += 1
                a = acc_dict[a]
    ids = np.empty(count, dtype=np.int64)
    ends = np.empty(count, dtype=np.int64)
    n = 0
    s = 0
    for i in range(start, end):
        s = delta[s * k + cmap[buf[i]]]
        if s >= acc0:
            a = s - acc0
            if acc_own[a] < 0:
                a = acc_dict[a]
            while a >= 0:
                ids[n] = acc_own[a]
                ends[n] = i + 1 - start
                n += 1
                a = acc_dict[a]
    return ids, ends


# --------------------------------------------------------------------------- building


@njit(cache=True)
def build_trie(pbuf, poff, cmap, n_classes):
    """Insert the (already case-folded, de-duplicated, non-empty) patterns into a trie.

    Returns ``(goto, term, n_states)``: ``goto[s*k + c]`` is the child state or -1,
    ``term[s]`` the pattern ending at s or -1. Arrays are sized for the worst case (one
    state per pattern byte plus the root); only the first ``n_states`` rows are used.
    """
    max_states = len(pbuf) + 1
    goto = np.full(max_states * n_classes, -1, dtype=np.int32)
    term = np.full(max_states, -1, dtype=np.int32)
    n_states = 1
    for p in range(len(poff) - 1):
        s = 0
        for i in range(poff[p], poff[p + 1]):
            cell = s * n_classes + cmap[pbuf[i]]
            nxt = goto[cell]
            if nxt < 0:
                nxt = n_states
                goto[cell] = nxt
                n_states += 1
            s = nxt
        term[s] = p
    return goto, term, n_states


@njit(cache=True)
def build_dfa(goto, term, n_states, n_classes, pmask):
    """Turn the trie into the scanning DFA described in the module docstring.

    Breadth-first: when state s is reached its failure state is shallower and therefore
    complete, so missing transitions are copied from the failure state's row in place.
    Returns ``(delta, acc0, acc_mask, acc_own, acc_dict)``.
    """
    k = n_classes
    fail = np.zeros(n_states, dtype=np.int32)
    order = np.empty(n_states, dtype=np.int32)  # BFS order
    accepting = np.zeros(n_states, dtype=np.bool_)
    omask = np.zeros(n_states, dtype=np.uint64)
    dict_link = np.full(n_states, -1, dtype=np.int32)  # nearest terminal on failure chain
    order[0] = 0
    head = 0
    tail = 1
    while head < tail:
        s = order[head]
        head += 1
        f = fail[s]
        for c in range(k):
            cell = s * k + c
            u = goto[cell]
            if u < 0:
                goto[cell] = goto[f * k + c] if s != 0 else 0
            else:
                fu = goto[f * k + c] if s != 0 else 0
                fail[u] = fu
                if term[fu] >= 0:
                    dict_link[u] = fu
                else:
                    dict_link[u] = dict_link[fu]
                accepting[u] = term[u] >= 0 or accepting[fu]
                omask[u] = omask[fu]
                if term[u] >= 0:
                    omask[u] |= pmask[term[u]]
                order[tail] = u
                tail += 1
    # Renumber: non-accepting states first, then accepting ones, each in BFS order.
    new_id = np.empty(n_states, dtype=np.int32)
    nid = 0
    for j in range(n_states):
        s = order[j]
        if not accepting[s]:
            new_id[s] = nid
            nid += 1
    acc0 = nid
    for j in range(n_states):
        s = order[j]
        if accepting[s]:
            new_id[s] = nid
            nid += 1
    n_acc = n_states - acc0
    delta = np.empty(n_states * k, dtype=np.int32)
    acc_mask = np.zeros(n_acc, dtype=np.uint64)
    acc_own = np.full(n_acc, -1, dtype=np.int32)
    acc_dict = np.full(n_acc, -1, dtype=np.int32)
    for s in range(n_states):
        ns = new_id[s]
        for c in range(k):
            delta[ns * k + c] = new_id[goto[s * k + c]]
        if accepting[s]:
            a = ns - acc0
            acc_mask[a] = omask[s]
            acc_own[a] = term[s]
            if dict_link[s] >= 0:
                acc_dict[a] = new_id[dict_link[s]] - acc0
    return delta, acc0, acc_mask, acc_own, acc_dict
