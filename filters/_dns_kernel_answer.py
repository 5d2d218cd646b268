"""DNS fast path kernels: answers written into an output row — from per-policy templates
(blocked names, encrypted-DNS bypass names, ANY, BADVERS), FORMERR, and cached answers
with their TTLs counted down. Each is byte for byte what filters/dns_answer.py builds for
the Python pipeline (tested in tests/unit/test_dns_fast.py). Private.
"""

from __future__ import annotations

import numpy as np

from filters._dns_kernel_cache import EF_STORED, EI_AN, EI_AR, EI_BLEN, EI_FLAGS, EI_NS, render_body
from filters._dns_kernel_parse import HEADER, MAX_UDP_PAYLOAD, OPT_LEN, RCODE_FORMERR, TYPE_OPT
from filters._jit import njit

__all__ = ["T_QTYPE", "T_RCODE", "T_AN", "T_NS", "T_AR", "T_OFF", "T_LEN", "T_WIDTH", "T_DEFAULT",
           "T_NEGATIVE", "T_ANY", "T_TYPED", "T_ROWS", "B_OFF", "B_LEN", "B_RCODE"]

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

