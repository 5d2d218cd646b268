"""DNS fast path kernels: the query parsed in place (header, question, additional records)
and the client's policy from a small CIDR table. Private.

Every read is bounds-checked against the received length; every loop is bounded by a
length or a count checked first (see filters/_dns_kernels.py).
"""

from __future__ import annotations

import numpy as np

from filters._dns_kernel_ratelimit import addr_words
from filters._jit import njit

__all__ = ["parse_question", "policy_for", "P_OK", "P_PYTHON", "P_FORMERR", "P_DROP", "HEADER", "ADDR_WIDTH"]

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


# Client addresses of a batch: uint8[batch, ADDR_WIDTH], byte 0 the family (4 or 6, 0 for
# unknown), bytes 1..16 the address (v4 in the first four).
ADDR_WIDTH = 17


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
    version = np.int64(0)
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
        ip = ((np.int64(addr[b]) << 24) | (np.int64(addr[b + 1]) << 16) | (np.int64(addr[b + 2]) << 8)
              | np.int64(addr[b + 3]))
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

