"""numba kernel: pick the frames that can reveal a name, so Python never sees the rest.

Python decodes ~300 k frames/s (filters/packet.py plus the flow table); a capture is mostly
bulk data that no extractor reads. This kernel decodes every frame's headers the way
packet.decode does and keeps (``out[i] = 1``):

- anything it does not fully understand — an unknown link type, a malformed or fragmented
  packet — so that Python counts it exactly as it would have;
- UDP on a DNS port, and UDP datagrams that start with a QUIC Initial of a known version;
  a DNS message with one plainly written question (most of them) has its name read here
  (``dns_question``), so Python only looks the name up;
- TCP SYNs (the flow table starts a connection's state there; SYN-ACKs it ignores) and
  TCP payload on a DNS port;
- per TCP flow direction, decided by its first payload and by sequence number relative to
  its first payload octet (so retransmissions are kept too): a TLS ClientHello direction
  for the hello's octets (MAX_FIRST_FLIGHT of them when the hello is split over records
  or its first segment was not the first seen), an HTTP request direction for segments
  that open a request and the 2 x MAX_HEAD octets after each.

Everything else is counted by reason in ``counts`` and dropped. Flow directions live in an
open-addressing table of 64-bit keyed hashes (``new_table``); when its probe window is
full the oldest slot is overwritten, which only makes that direction look new again.
The equivalence with the pure-Python path is what the tests check: the same names from
every test capture with and without this kernel.
"""

from __future__ import annotations

import numpy as np

from filters._jit import njit
from filters.dns_wire import HEADER_LEN, MAX_LABEL, MAX_NAME_WIRE
from filters.extract_http import MAX_HEAD, METHODS
from filters.extract_tls import MAX_FIRST_FLIGHT
from filters.packet import MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS

__all__ = ["TABLE_BITS", "C_NOT_IP", "C_NOT_L4", "C_ESP", "C_NO_PAYLOAD", "C_UDP_OTHER",
           "C_TCP_OTHER", "C_TCP_LATER", "N_COUNTS", "F_L3", "F_VER", "F_PROTO", "F_SPORT",
           "F_DPORT", "F_FLAGS", "F_SEQ", "F_PAY", "F_END", "F_QNAME", "F_QLEN", "N_FIELDS", "NAME_ROOM",
           "new_table", "dns_question", "select_frames"]

# Flow directions remembered: 2^20 slots (8 + 1 + 16 octets each, ~26 MB) hold a busy
# school link's concurrent flows many times over.
TABLE_BITS = 20
_PROBES = 8

# Reasons a frame is dropped here (indexes into ``counts``).
C_NOT_IP, C_NOT_L4, C_ESP, C_NO_PAYLOAD, C_UDP_OTHER, C_TCP_OTHER, C_TCP_LATER = range(7)
N_COUNTS = 7

# Per direction: its state, ``base`` (the sequence number of its first payload octet, -1
# unknown) and ``limit`` (segments starting below base + limit are kept).
_NEW, _TLS, _HTTP, _IGNORE, _UNSURE = 0, 1, 2, 3, 4
_HTTP_WINDOW = 2 * MAX_HEAD

# Port numbers and QUIC versions the extractors use (extract_dns, extract_quic).
_DNS_UDP = (53, 5353, 5355)
_DNS_TCP = (53, 5353, 5355)


def new_table(bits: int = TABLE_BITS) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(keys, state, base, limit) arrays for select_frames."""
    size = 1 << bits
    return (np.zeros(size, np.uint64), np.zeros(size, np.int8), np.full(size, -1, np.int64),
            np.zeros(size, np.int64))


@njit(cache=True, inline="always")
def _is_dns_port(p):
    return p == 53 or p == 5353 or p == 5355


@njit(cache=True)
def _quic_initial(buf, p, n):
    """Long header, fixed bit, a version we decrypt (v1, v2, drafts 29-32), Initial type."""
    if n - p < 7 or buf[p] & 0xC0 != 0xC0:
        return False
    v = ((np.uint32(buf[p + 1]) << 24) | (np.uint32(buf[p + 2]) << 16) | (np.uint32(buf[p + 3]) << 8)
         | np.uint32(buf[p + 4]))
    t = (buf[p] >> 4) & 3
    if v == 1 or (v >= 0xFF00001D and v <= 0xFF000020):
        return t == 0
    if v == 0x6B3343CF:
        return t == 1
    return False


# extract_http.METHODS as a padded table the kernel compares tokens with.
_METHODS = sorted(METHODS)
_METHOD_LEN = np.array([len(m) for m in _METHODS], dtype=np.int64)
_METHOD_TAB = np.zeros((len(_METHODS), max(len(m) for m in _METHODS)), dtype=np.uint8)
for _i, _m in enumerate(_METHODS):
    _METHOD_TAB[_i, :len(_m)] = np.frombuffer(_m, dtype=np.uint8)


@njit(cache=True)
def _http_method(buf, p, n):
    """Starts with one of extract_http.METHODS and a space, as looks_like_http checks."""
    m = 0
    while m < 12 and p + m < n and buf[p + m] >= 65 and buf[p + m] <= 90:
        m += 1
    if m < 3 or p + m >= n or buf[p + m] != 32:
        return False
    for i in range(_METHOD_LEN.shape[0]):
        if _METHOD_LEN[i] == m:
            same = True
            for j in range(m):
                if _METHOD_TAB[i, j] != buf[p + j]:
                    same = False
                    break
            if same:
                return True
    return False


# Columns of ``fields``: IP header offset (-1: not read here), IP version, transport
# protocol, ports, TCP flags and sequence number, payload start and end offsets; for a UDP
# DNS message read here, where its question name is in ``names`` and its length (else -1).
F_L3, F_VER, F_PROTO, F_SPORT, F_DPORT, F_FLAGS, F_SEQ, F_PAY, F_END, F_QNAME, F_QLEN = range(11)
N_FIELDS = 11
# Octets of ``names`` per frame that guarantee room for every name: a dotted name is at
# most MAX_NAME_WIRE - 1 octets.
NAME_ROOM = MAX_NAME_WIRE


@njit(cache=True)
def dns_question(buf, p, n, names, at):
    """The question name of the DNS message buf[p:n] when it has exactly one question and
    that name is written without compression, non-empty and within limits — read as
    extract_dns.message_names reads it (labels joined by dots, A-Z lower-cased, every
    other octet kept) into names[at:]. Returns its length, or -1 for any other message:
    Python reads those (with their reasons), and when ``names`` has no room left."""
    if n - p < HEADER_LEN or buf[p + 4] != 0 or buf[p + 5] != 1:
        return -1
    start = p + HEADER_LEN
    q = start
    w = at
    room = names.shape[0]
    while q < n:
        ln = np.int64(buf[q])
        if ln == 0:
            # The root, or no room for QTYPE and QCLASS: not the plain case.
            if w == at or q + 5 > n:
                return -1
            return w - at
        if ln > MAX_LABEL or q + 1 + ln > n or q + 2 + ln - start > MAX_NAME_WIRE or w + 1 + ln > room:
            return -1  # a compression pointer, past the message or the name limit, no room
        if w > at:
            names[w] = 46  # "."
            w += 1
        for j in range(q + 1, q + 1 + ln):
            c = buf[j]
            names[w] = c + 32 if c >= 65 and c <= 90 else c
            w += 1
        q += 1 + ln
    return -1


@njit(cache=True, inline="always")
def _fill(fields, i, l3, version, proto, sport, dport, flags, seq, pay, end):
    fields[i, F_L3] = l3
    fields[i, F_VER] = version
    fields[i, F_PROTO] = proto
    fields[i, F_SPORT] = sport
    fields[i, F_DPORT] = dport
    fields[i, F_FLAGS] = flags
    fields[i, F_SEQ] = seq
    fields[i, F_PAY] = pay
    fields[i, F_END] = end
    fields[i, F_QNAME] = -1


@njit(cache=True, inline="always")
def _mix(h, b):
    # FNV-1a over bytes, 64-bit
    return (h ^ np.uint64(b)) * np.uint64(0x100000001B3)


@njit(cache=True)
def _slot(keys, h):
    mask = keys.shape[0] - 1
    i = np.int64(h & np.uint64(mask))
    for j in range(_PROBES):
        s = (i + j) & mask
        if keys[s] == h:
            return s, True
        if keys[s] == 0:
            keys[s] = h
            return s, False
    keys[i] = h  # window full: take over the home slot
    return i, False


@njit(cache=True)
def select_frames(buf, off, caplen, link, count, seed, keys, state, base, limit, out, counts, fields, names):
    """Set out[i] for frames 0..count-1 that Python must see; returns how many, and how
    many octets of ``names`` hold names. For a kept frame whose headers were all read,
    ``fields[i]`` holds them (F_L3 >= 0): Python builds the packet from them instead of
    decoding it again. A UDP DNS message whose question dns_question reads gets its name
    in ``names`` (F_QNAME >= 0; NAME_ROOM octets per frame make room for all)."""
    picked = 0
    at = 0
    for i in range(count):
        p = off[i]
        n = p + caplen[i]
        lt = link[i]
        out[i] = 1  # the default: when in doubt, Python decides
        fields[i, F_L3] = -1
        fields[i, F_QNAME] = -1
        version = 0
        if lt == 1:  # Ethernet and VLAN tags
            if n - p < 14:
                picked += 1
                continue
            et = (np.int64(buf[p + 12]) << 8) | buf[p + 13]
            p += 14
            tags = 0
            bad = False
            while et == 0x8100 or et == 0x88A8 or et == 0x9100:
                tags += 1
                if tags > MAX_VLAN_TAGS or p + 4 > n:
                    bad = True
                    break
                et = (np.int64(buf[p + 2]) << 8) | buf[p + 3]
                p += 4
            if bad:
                picked += 1
                continue
            version = 4 if et == 0x0800 else 6 if et == 0x86DD else 0
        elif lt == 101 or lt == 12 or lt == 14 or lt == 228 or lt == 229:
            if n - p < 1:
                picked += 1
                continue
            version = buf[p] >> 4
        elif lt == 113:  # Linux SLL
            if n - p < 16:
                picked += 1
                continue
            et = (np.int64(buf[p + 14]) << 8) | buf[p + 15]
            p += 16
            version = 4 if et == 0x0800 else 6 if et == 0x86DD else 0
        elif lt == 276:  # Linux SLL2
            if n - p < 20:
                picked += 1
                continue
            et = (np.int64(buf[p]) << 8) | buf[p + 1]
            p += 20
            version = 4 if et == 0x0800 else 6 if et == 0x86DD else 0
        elif lt == 0 or lt == 108:  # BSD loopback: a 4-byte address family
            if n - p < 4:
                picked += 1
                continue
            be = (np.int64(buf[p]) << 24) | (np.int64(buf[p + 1]) << 16) | (np.int64(buf[p + 2]) << 8) | buf[p + 3]
            le = (np.int64(buf[p + 3]) << 24) | (np.int64(buf[p + 2]) << 16) | (np.int64(buf[p + 1]) << 8) | buf[p]
            # NULL: the capturing host's byte order, told apart as packet.decode does.
            af = be if lt == 108 or le > 0xFFFF else le
            p += 4
            version = 4 if af == 2 else 6 if af == 10 or af == 24 or af == 28 or af == 30 else 0
        else:  # PPP and anything else: rare on bulk captures, Python reads them
            picked += 1
            continue
        if version != 4 and version != 6:
            if lt == 1 or lt == 113 or lt == 276 or lt == 0 or lt == 108:
                out[i] = 0
                counts[C_NOT_IP] += 1
            else:
                picked += 1
            continue
        if p >= n or buf[p] >> 4 != version:
            picked += 1
            continue
        # -- IP --------------------------------------------------------------------------
        l3 = p
        h = np.uint64(seed)
        if version == 4:
            if p + 20 > n:
                picked += 1
                continue
            ihl = np.int64(buf[p] & 0x0F) * 4
            total = (np.int64(buf[p + 2]) << 8) | buf[p + 3]
            if total == 0:
                total = n - p
            if ihl < 20 or total < ihl:
                picked += 1
                continue
            end = min(n, p + total)
            if p + ihl > end or ((np.int64(buf[p + 6]) << 8) | buf[p + 7]) & 0x3FFF:
                picked += 1  # truncated, or a fragment: Python counts it
                continue
            l4 = buf[p + 9]
            for k in range(12, 20):
                h = _mix(h, buf[p + k])
            p += ihl
        else:
            if p + 40 > n:
                picked += 1
                continue
            plen = (np.int64(buf[p + 4]) << 8) | buf[p + 5]
            l4 = buf[p + 6]
            if plen == 0:
                picked += 1
                continue
            end = min(n, p + 40 + plen)
            for k in range(8, 40):
                h = _mix(h, buf[p + k])
            p += 40
            hops = 0
            bad = False
            while l4 == 0 or l4 == 43 or l4 == 60 or l4 == 135 or l4 == 139 or l4 == 140 or l4 == 44 or l4 == 51:
                hops += 1
                if hops > MAX_IPV6_EXT_HEADERS or p + 8 > end:
                    bad = True
                    break
                nxt = buf[p]
                if l4 == 44:
                    if ((np.int64(buf[p + 2]) << 8) | buf[p + 3]) & 0xFFF9:
                        bad = True  # a fragment: Python counts it
                        break
                    size = np.int64(8)
                elif l4 == 51:
                    size = (np.int64(buf[p + 1]) + 2) * 4
                else:
                    size = (np.int64(buf[p + 1]) + 1) * 8
                p += size
                l4 = nxt
            if bad:
                picked += 1
                continue
            if l4 == 50:
                out[i] = 0
                counts[C_ESP] += 1
                continue
        # -- transport ---------------------------------------------------------------------
        if l4 == 17:
            if p + 8 > end:
                picked += 1
                continue
            sport = (np.int64(buf[p]) << 8) | buf[p + 1]
            dport = (np.int64(buf[p + 2]) << 8) | buf[p + 3]
            ulen = (np.int64(buf[p + 4]) << 8) | buf[p + 5]
            if ulen < 8:
                picked += 1
                continue
            pay = p + 8
            pend = min(end, p + ulen)
            if pend <= pay:
                out[i] = 0
                counts[C_NO_PAYLOAD] += 1
            elif _is_dns_port(sport) or _is_dns_port(dport):
                picked += 1
                _fill(fields, i, l3, version, 17, sport, dport, 0, 0, pay, pend)
                ln = dns_question(buf, pay, pend, names, at)
                if ln > 0:
                    fields[i, F_QNAME] = at
                    fields[i, F_QLEN] = ln
                    at += ln
            elif _quic_initial(buf, pay, pend):
                picked += 1
                _fill(fields, i, l3, version, 17, sport, dport, 0, 0, pay, pend)
            else:
                out[i] = 0
                counts[C_UDP_OTHER] += 1
            continue
        if l4 != 6:
            out[i] = 0
            counts[C_NOT_L4] += 1
            continue
        if p + 20 > end:
            picked += 1
            continue
        hlen = np.int64(buf[p + 12] >> 4) * 4
        if hlen < 20 or p + hlen > end:
            picked += 1
            continue
        flags = buf[p + 13]
        sport = (np.int64(buf[p]) << 8) | buf[p + 1]
        dport = (np.int64(buf[p + 2]) << 8) | buf[p + 3]
        seq = (np.int64(buf[p + 4]) << 24) | (np.int64(buf[p + 5]) << 16) | (np.int64(buf[p + 6]) << 8) | buf[p + 7]
        for k in range(4):
            h = _mix(h, buf[p + k])
        if h == 0:
            h = np.uint64(1)
        pay = p + hlen
        plen = end - pay
        if flags & 0x02:  # SYN: a new connection; its data starts at seq + 1
            s, _ = _slot(keys, h)
            state[s] = _NEW
            base[s] = (seq + 1) & 0xFFFFFFFF
            if flags & 0x10:  # SYN-ACK: the flow table does not use it (flow_table.py)
                out[i] = 0
                counts[C_NO_PAYLOAD] += 1
            else:
                picked += 1
                _fill(fields, i, l3, version, 6, sport, dport, flags, seq, pay, end)
            continue
        if plen <= 0:
            out[i] = 0
            counts[C_NO_PAYLOAD] += 1
            continue
        if _is_dns_port(sport) or _is_dns_port(dport):
            picked += 1
            _fill(fields, i, l3, version, 6, sport, dport, flags, seq, pay, end)
            continue
        s, found = _slot(keys, h)
        if not found:
            state[s] = _NEW
            base[s] = -1
        st = state[s]
        if st == _NEW:
            if base[s] >= 0 and seq != base[s]:
                # The first data seen is not the first sent (reordered, or lost from the
                # capture): take everything near the start and let Python order it.
                st = _UNSURE
                limit[s] = 2 * MAX_FIRST_FLIGHT
            else:
                base[s] = seq
                if plen >= 3 and buf[pay] == 22 and buf[pay + 1] == 3 and buf[pay + 2] <= 4:
                    rec = (np.int64(buf[pay + 3]) << 8) | buf[pay + 4] if plen >= 5 else 0
                    if rec >= 1 and plen >= 6 and buf[pay + 5] != 1:
                        st = _IGNORE  # a handshake, but not a ClientHello (a server's flight)
                    else:
                        st = _TLS
                        limit[s] = MAX_FIRST_FLIGHT
                        if rec >= 4 and plen >= 9:
                            hello = 4 + ((np.int64(buf[pay + 6]) << 16) | (np.int64(buf[pay + 7]) << 8) | buf[pay + 8])
                            if rec >= hello:  # the whole hello is in its first record
                                limit[s] = 5 + hello
                elif _http_method(buf, pay, end):
                    st = _HTTP
                    limit[s] = _HTTP_WINDOW
                else:
                    st = _IGNORE
            state[s] = st
        rel = (seq - base[s]) & 0xFFFFFFFF
        if rel >= 0x80000000:
            rel -= 0x100000000  # before the start: a retransmission from further back
        if st == _TLS or st == _UNSURE:
            keep = rel < limit[s]
        elif st == _HTTP:
            if _http_method(buf, pay, end):
                limit[s] = rel + _HTTP_WINDOW  # a request starts: its head is near
                keep = True
            else:
                keep = rel < limit[s]
        else:
            keep = False
        if keep:
            picked += 1
            _fill(fields, i, l3, version, 6, sport, dport, flags, seq, pay, end)
        else:
            out[i] = 0
            counts[C_TCP_LATER if st != _IGNORE else C_TCP_OTHER] += 1
    return picked, at
