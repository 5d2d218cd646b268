"""numba kernels of the keyword scanner (private; the typed front is filters.keyword_scanner).

The automaton is an Aho-Corasick machine compiled into a full DFA: failure links are
resolved at build time, so scanning costs exactly one table load per input byte and never
walks a failure chain. Everything here takes flat numpy arrays and scalars so the tables can
be memory-mapped straight out of a bundle and shared by every worker.

Layout (n = number of states, k = number of byte classes):

- ``cmap`` int32[256]: byte -> class. ASCII letters are case-folded here (``A`` and ``a``
  share a class), which is all the case-insensitivity the kernels need. Bytes that occur in
  no pattern share class 0. (int32 rather than uint8: 1 KiB either way, and it keeps
  ``row + cmap[b]`` in a wide type when the kernels run as plain Python under numpy's
  NEP 50 promotion rules.)
- ``delta`` int32[n*k]: ``delta[s*k + c]`` is the *row offset* ``t*k`` of the next state t,
  pre-multiplied so the hot loop never multiplies (the load -> add -> load chain is the
  whole cost of a byte).
- States are numbered so that every accepting state (one with at least one pattern ending
  there, directly or through its failure chain) has an id >= ``acc0``: "did something
  match?" is one compare against ``acc_row0 = acc0*k``. Non-accepting states come first in
  BFS order, so the shallow, hot states sit together at the front of ``delta``.
- Per accepting state a = s - acc0: ``acc_mask[a]`` is the OR of the category masks of
  every pattern that ends there; ``acc_own[a]`` is the pattern whose last byte leads to s
  (the longest one ending there) or -1; ``acc_dict[a]`` is the next accepting state (again
  as a - index) on the failure chain that has an own pattern, or -1. ``own`` then ``dict``
  chain lists the matches at a position longest first.

Every kernel is ``cache=True`` (the Pi boots cold) and runs unchanged as pure Python under
``NUMBA_DISABLE_JIT=1``, which the tests use as a coverage run.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# --------------------------------------------------------------------------- scanning

# The walk is one dependent chain of loads per byte, so a single stream is bound by memory
# latency, not bandwidth. Interleaving LANES independent streams (four texts of a batch, or
# four segments of one long text) lets the CPU overlap their cache misses. Below SPLIT_MIN
# bytes a text is scanned as one stream: splitting costs a warm-up per segment.
SPLIT_MIN = 4096


@njit(cache=True, nogil=True)
def walk(cmap, delta, acc_row0, n_classes, acc_mask, full_mask, buf, start, end, row, mask,
         first_acc):
    """Continue one stream over ``buf[start:end]`` from ``row`` with the results so far.

    Returns the new ``(row, mask, first_acc)``; ``first_acc`` is an accepting-state index
    (see :func:`first_pattern`). Stops early when ``mask`` reaches ``full_mask`` with a
    first match known: nothing later can change the answer.
    """
    for i in range(start, end):
        row = delta[row + cmap[buf[i]]]
        if row >= acc_row0:
            a = (row - acc_row0) // n_classes
            mask |= acc_mask[a]
            if first_acc < 0:
                first_acc = a
            if mask == full_mask:
                break
    return row, mask, first_acc


@njit(cache=True, nogil=True)
def first_pattern(acc_own, acc_dict, first_acc):
    """Pattern id of the longest pattern ending in accepting state ``first_acc`` (or -1)."""
    if first_acc < 0:
        return np.int64(-1)
    own = acc_own[first_acc]
    if own >= 0:
        return np.int64(own)
    return np.int64(acc_own[acc_dict[first_acc]])


@njit(cache=True, nogil=True)
def scan_range(cmap, delta, acc_row0, n_classes, acc_mask, acc_own, acc_dict, full_mask,
               max_len, buf, start, end):
    """Scan ``buf[start:end]`` from the root state.

    Returns ``(mask, first)``: the OR of the categories of every pattern occurring in the
    range, and the id of the first match (smallest end offset; among patterns ending there
    the longest), or -1. Callable from other njit code (``max_len`` is the longest
    pattern's length, needed to split long texts into overlapping segments).
    """
    mask = np.uint64(0)
    length = end - start
    if length < SPLIT_MIN or length < 16 * max_len:
        row, mask, fa = walk(cmap, delta, acc_row0, n_classes, acc_mask, full_mask, buf,
                             start, end, 0, mask, -1)
        return mask, first_pattern(acc_own, acc_dict, fa)
    # Four segments [p_c, p_c + seg). Each later segment first re-reads the max_len - 1
    # bytes before it without recording: after that the DFA state equals the state of a
    # scan from the text's start (it depends on at most the last max_len bytes).
    seg = length // 4
    p1 = start + seg
    p2 = p1 + seg
    p3 = p2 + seg
    warm = max_len - 1
    r0 = 0
    r1 = 0
    r2 = 0
    r3 = 0
    for i in range(p1 - warm, p1):
        r1 = delta[r1 + cmap[buf[i]]]
    for i in range(p2 - warm, p2):
        r2 = delta[r2 + cmap[buf[i]]]
    for i in range(p3 - warm, p3):
        r3 = delta[r3 + cmap[buf[i]]]
    m0 = mask
    m1 = mask
    m2 = mask
    m3 = mask
    f0 = -1
    f1 = -1
    f2 = -1
    f3 = -1
    for t in range(seg):
        r0 = delta[r0 + cmap[buf[start + t]]]
        r1 = delta[r1 + cmap[buf[p1 + t]]]
        r2 = delta[r2 + cmap[buf[p2 + t]]]
        r3 = delta[r3 + cmap[buf[p3 + t]]]
        if r0 >= acc_row0:
            a = (r0 - acc_row0) // n_classes
            m0 |= acc_mask[a]
            if f0 < 0:
                f0 = a
        if r1 >= acc_row0:
            a = (r1 - acc_row0) // n_classes
            m1 |= acc_mask[a]
            if f1 < 0:
                f1 = a
        if r2 >= acc_row0:
            a = (r2 - acc_row0) // n_classes
            m2 |= acc_mask[a]
            if f2 < 0:
                f2 = a
        if r3 >= acc_row0:
            a = (r3 - acc_row0) // n_classes
            m3 |= acc_mask[a]
            if f3 < 0:
                f3 = a
    r3, m3, f3 = walk(cmap, delta, acc_row0, n_classes, acc_mask, full_mask, buf,
                      p3 + seg, end, r3, m3, f3)
    fa = f0
    if fa < 0:
        fa = f1
    if fa < 0:
        fa = f2
    if fa < 0:
        fa = f3
    return m0 | m1 | m2 | m3, first_pattern(acc_own, acc_dict, fa)


@njit(cache=True, nogil=True)
def scan_batch(cmap, delta, acc_row0, n_classes, acc_mask, acc_own, acc_dict, full_mask,
               max_len, buf, offsets, out_mask, out_first):
    """Scan every text ``buf[offsets[j]:offsets[j+1]]`` independently into the outputs.

    Four lanes each hold one text; they advance in lock-step for as many bytes as the
    shortest has left, then finished lanes write their result and take the next text.
    When fewer than four texts remain, the rest run one at a time (long ones split).
    """
    n = len(offsets) - 1
    for j in range(n):
        out_mask[j] = 0
        out_first[j] = -1
    tid = np.full(4, -1, dtype=np.int64)
    pos = np.zeros(4, dtype=np.int64)
    end = np.zeros(4, dtype=np.int64)
    row = np.zeros(4, dtype=np.int64)
    msk = np.zeros(4, dtype=np.uint64)
    fst = np.full(4, -1, dtype=np.int64)
    nxt = 0
    while True:
        # Retire finished lanes and refill every lane from the texts not yet started.
        for lane in range(4):
            if tid[lane] >= 0 and (pos[lane] == end[lane]
                                   or (fst[lane] >= 0 and msk[lane] == full_mask)):
                out_mask[tid[lane]] = msk[lane]
                out_first[tid[lane]] = first_pattern(acc_own, acc_dict, fst[lane])
                tid[lane] = -1
            while tid[lane] < 0 and nxt < n:
                if offsets[nxt + 1] > offsets[nxt]:  # empty texts keep (0, -1)
                    tid[lane] = nxt
                    pos[lane] = offsets[nxt]
                    end[lane] = offsets[nxt + 1]
                    row[lane] = 0
                    msk[lane] = 0
                    fst[lane] = -1
                nxt += 1
        if tid[0] < 0 or tid[1] < 0 or tid[2] < 0 or tid[3] < 0:
            break
        steps = min(end[0] - pos[0], end[1] - pos[1], end[2] - pos[2], end[3] - pos[3])
        i0, i1, i2, i3 = pos[0], pos[1], pos[2], pos[3]
        r0, r1, r2, r3 = row[0], row[1], row[2], row[3]
        m0, m1, m2, m3 = msk[0], msk[1], msk[2], msk[3]
        f0, f1, f2, f3 = fst[0], fst[1], fst[2], fst[3]
        for t in range(steps):
            r0 = delta[r0 + cmap[buf[i0 + t]]]
            r1 = delta[r1 + cmap[buf[i1 + t]]]
            r2 = delta[r2 + cmap[buf[i2 + t]]]
            r3 = delta[r3 + cmap[buf[i3 + t]]]
            if r0 >= acc_row0:
                a = (r0 - acc_row0) // n_classes
                m0 |= acc_mask[a]
                if f0 < 0:
                    f0 = a
            if r1 >= acc_row0:
                a = (r1 - acc_row0) // n_classes
                m1 |= acc_mask[a]
                if f1 < 0:
                    f1 = a
            if r2 >= acc_row0:
                a = (r2 - acc_row0) // n_classes
                m2 |= acc_mask[a]
                if f2 < 0:
                    f2 = a
            if r3 >= acc_row0:
                a = (r3 - acc_row0) // n_classes
                m3 |= acc_mask[a]
                if f3 < 0:
                    f3 = a
        pos[0], pos[1], pos[2], pos[3] = i0 + steps, i1 + steps, i2 + steps, i3 + steps
        row[0], row[1], row[2], row[3] = r0, r1, r2, r3
        msk[0], msk[1], msk[2], msk[3] = m0, m1, m2, m3
        fst[0], fst[1], fst[2], fst[3] = f0, f1, f2, f3
    # Fewer than four texts left: finish the lanes still running, one at a time.
    for lane in range(4):
        j = tid[lane]
        if j >= 0:
            if pos[lane] == offsets[j]:  # not started: may be long enough to split
                m, f = scan_range(cmap, delta, acc_row0, n_classes, acc_mask, acc_own,
                                  acc_dict, full_mask, max_len, buf, pos[lane], end[lane])
            else:
                _, m, fa = walk(cmap, delta, acc_row0, n_classes, acc_mask, full_mask, buf,
                                pos[lane], end[lane], row[lane], msk[lane], fst[lane])
                f = first_pattern(acc_own, acc_dict, fa)
            out_mask[j] = m
            out_first[j] = f


@njit(cache=True, nogil=True)
def find_all(cmap, delta, acc_row0, n_classes, acc_own, acc_dict, buf, start, end):
    """Every match in ``buf[start:end]`` as two int64 arrays (pattern ids, end offsets).

    End offsets are exclusive and relative to ``start``; matches are ordered by end offset,
    then longest pattern first. Two passes (count, then fill) keep it to plain arrays.
    """
    count = 0
    row = 0
    for i in range(start, end):
        row = delta[row + cmap[buf[i]]]
        if row >= acc_row0:
            a = (row - acc_row0) // n_classes
            if acc_own[a] < 0:
                a = acc_dict[a]
            while a >= 0:
                count += 1
                a = acc_dict[a]
    ids = np.empty(count, dtype=np.int64)
    ends = np.empty(count, dtype=np.int64)
    k = 0
    row = 0
    for i in range(start, end):
        row = delta[row + cmap[buf[i]]]
        if row >= acc_row0:
            a = (row - acc_row0) // n_classes
            if acc_own[a] < 0:
                a = acc_dict[a]
            while a >= 0:
                ids[k] = acc_own[a]
                ends[k] = i + 1 - start
                k += 1
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
            delta[ns * k + c] = new_id[goto[s * k + c]] * k
        if accepting[s]:
            a = ns - acc0
            acc_mask[a] = omask[s]
            acc_own[a] = term[s]
            if dict_link[s] >= 0:
                acc_dict[a] = new_id[dict_link[s]] - acc0
    return delta, acc0, acc_mask, acc_own, acc_dict
