"""numba kernels that walk a memory-mapped pcap or pcapng file into per-packet arrays.

The pure-Python walk in pcapfile.py (CaptureFile.frames) is the reference these are tested
against; it manages ~2 M records/s, these ~100 M. Each call fills at most ``len(off)``
packets and returns where to resume, so memory stays one chunk's worth whatever the file.

Per packet: ``off`` and ``caplen`` locate the frame in the buffer, ``tsec``/``tfrac`` hold
the timestamp as the file stores it (pcap: seconds and fraction; pcapng: the 64-bit tick
count in ``tfrac`` and the interface in ``iface``), ``link`` the link type.
"""

from __future__ import annotations

import numpy as np

from appliance.pcap.reader import MAX_BLOCK, MAX_INTERFACES, MAX_SNAPLEN
from filters._jit import njit

__all__ = ["ST_MORE", "ST_END", "ST_TRUNCATED", "ST_CORRUPT", "frame_pcap", "frame_pcapng",
           "new_pcapng_state", "interface"]

ST_MORE = 0  # the chunk is full: call again from the returned position
ST_END = 1  # the file ended cleanly
ST_TRUNCATED = 2  # the last record or block is cut short
ST_CORRUPT = 3  # a record or block length that cannot be right; the walk stops

# pcapng walk state carried between calls (int64 array): byte order, interface count, then
# per interface its link type, if_tsresol byte and if_tsoffset seconds (new_pcapng_state).
_S_BIG, _S_NIF, _S_IF0, _IFW = 0, 1, 2, 3


@njit(cache=True, inline="always")
def _u32(buf, p, big):
    if big:
        return ((np.uint32(buf[p]) << 24) | (np.uint32(buf[p + 1]) << 16) | (np.uint32(buf[p + 2]) << 8)
                | np.uint32(buf[p + 3]))
    return ((np.uint32(buf[p + 3]) << 24) | (np.uint32(buf[p + 2]) << 16) | (np.uint32(buf[p + 1]) << 8)
            | np.uint32(buf[p]))


@njit(cache=True, inline="always")
def _u16(buf, p, big):
    if big:
        return (np.int64(buf[p]) << 8) | np.int64(buf[p + 1])
    return (np.int64(buf[p + 1]) << 8) | np.int64(buf[p])


@njit(cache=True)
def frame_pcap(buf, pos, big, off, caplen, tsec, tfrac):
    """Walk classic pcap records from ``pos`` (after the 24-byte file header).
    Returns (packets filled, next position, status)."""
    n = buf.shape[0]
    cap = off.shape[0]
    k = 0
    while k < cap:
        if pos == n:
            return k, pos, ST_END
        if pos + 16 > n:
            return k, pos, ST_TRUNCATED
        cl = np.int64(_u32(buf, pos + 8, big))
        if cl > MAX_SNAPLEN:
            return k, pos, ST_CORRUPT
        if pos + 16 + cl > n:
            return k, pos, ST_TRUNCATED
        tsec[k] = np.int64(_u32(buf, pos, big))
        tfrac[k] = np.int64(_u32(buf, pos + 4, big))
        off[k] = pos + 16
        caplen[k] = cl
        k += 1
        pos += 16 + cl
    return k, pos, ST_MORE


def new_pcapng_state() -> np.ndarray:
    """Walk state: [big-endian, interface count, (link type, tsresol, tsoffset) per interface]."""
    return np.zeros(_S_IF0 + _IFW * MAX_INTERFACES, dtype=np.int64)


def interface(state: np.ndarray, i: int) -> tuple[int, int, int]:
    """(link type, if_tsresol byte, if_tsoffset) of interface ``i``."""
    b = _S_IF0 + _IFW * i
    return int(state[b]), int(state[b + 1]), int(state[b + 2])


@njit(cache=True)
def frame_pcapng(buf, pos, state, off, caplen, tfrac, iface, link, bad):
    """Walk pcapng blocks from ``pos``. ``bad[0]`` counts packet blocks that could not be
    used (no such interface, lengths inconsistent). Returns (packets, next position, status)."""
    n = buf.shape[0]
    cap = off.shape[0]
    k = 0
    while k < cap:
        if pos == n:
            return k, pos, ST_END
        if pos + 12 > n:
            return k, pos, ST_TRUNCATED
        big = state[_S_BIG] != 0
        if buf[pos] == 0x0A and buf[pos + 1] == 0x0D and buf[pos + 2] == 0x0D and buf[pos + 3] == 0x0A:
            # Section Header Block: its byte-order magic sets the order of what follows.
            if buf[pos + 8] == 0x4D and buf[pos + 9] == 0x3C and buf[pos + 10] == 0x2B and buf[pos + 11] == 0x1A:
                big = False
            elif buf[pos + 8] == 0x1A and buf[pos + 9] == 0x2B and buf[pos + 10] == 0x3C and buf[pos + 11] == 0x4D:
                big = True
            else:
                return k, pos, ST_CORRUPT
            state[_S_BIG] = 1 if big else 0
            state[_S_NIF] = 0
        btype = _u32(buf, pos, big)
        blen = np.int64(_u32(buf, pos + 4, big))
        if blen < 12 or blen % 4 != 0 or blen > MAX_BLOCK + MAX_SNAPLEN:
            return k, pos, ST_CORRUPT
        if pos + blen > n:
            return k, pos, ST_TRUNCATED
        body = pos + 8
        end = pos + blen - 4
        if btype == 6 or btype == 2:  # Enhanced Packet Block, obsolete Packet Block
            if body + 20 > end:
                bad[0] += 1
            else:
                if btype == 6:
                    ifc = np.int64(_u32(buf, body, big))
                else:
                    ifc = _u16(buf, body, big)
                hi = np.int64(_u32(buf, body + 4, big))
                lo = np.int64(_u32(buf, body + 8, big))
                cl = np.int64(_u32(buf, body + 12, big))
                if ifc >= state[_S_NIF] or body + 20 + cl > end:
                    bad[0] += 1
                else:
                    off[k] = body + 20
                    caplen[k] = cl
                    tfrac[k] = (hi << 32) | lo
                    iface[k] = ifc
                    link[k] = state[_S_IF0 + _IFW * ifc]
                    k += 1
        elif btype == 3:  # Simple Packet Block: interface 0, no timestamp
            if state[_S_NIF] == 0 or body + 4 > end:
                bad[0] += 1
            else:
                cl = min(np.int64(_u32(buf, body, big)), end - body - 4)
                off[k] = body + 4
                caplen[k] = cl
                tfrac[k] = -1  # no timestamp
                iface[k] = 0
                link[k] = state[_S_IF0]
                k += 1
        elif btype == 1:  # Interface Description Block
            nif = state[_S_NIF]
            if nif < MAX_INTERFACES:
                lt = -1
                res = np.int64(6)  # if_tsresol default: 10^-6
                tsoff = np.int64(0)
                if body + 8 <= end:
                    lt = _u16(buf, body, big)
                    p = body + 8
                    while p + 4 <= end:
                        code = _u16(buf, p, big)
                        ln = _u16(buf, p + 2, big)
                        p += 4
                        if code == 0 or p + ln > end:
                            break
                        if code == 9 and ln >= 1:
                            res = np.int64(buf[p])
                        elif code == 14 and ln >= 8:
                            lo32 = np.int64(_u32(buf, p + 4 if big else p, big))
                            hi32 = np.int64(_u32(buf, p if big else p + 4, big))
                            tsoff = (hi32 << 32) | lo32
                        p += (ln + 3) & ~3
                state[_S_IF0 + _IFW * nif] = lt
                state[_S_IF0 + _IFW * nif + 1] = res
                state[_S_IF0 + _IFW * nif + 2] = tsoff
                state[_S_NIF] = nif + 1
        pos += blen
    return k, pos, ST_MORE
