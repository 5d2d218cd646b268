"""Read pcap and pcapng capture files: frames with their time and link type.

Both formats are walked directly over a memory map (no scapy: its reader alone manages
~92 k packets/s here). The classic format is a 24-byte header and 16-byte record headers
(https://www.tcpdump.org/manpages/pcap-savefile.5.html; draft-ietf-opsawg-pcap); pcapng
is a sequence of blocks (draft-ietf-opsawg-pcapng): Section Header (byte order), Interface
Description (link type, timestamp resolution and offset), Enhanced, Simple and obsolete
Packet blocks. Other blocks (statistics, name resolution, custom) are skipped.

A file that is neither format raises CaptureFileError. Damage inside a readable file — a
record cut short by a full disk, a corrupt block length — ends the walk there and is
counted in ``stats``, so a capture from a failing sensor still yields what it holds.
"""

from __future__ import annotations

import mmap
import struct
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from filters.errors import CaptureFileError, Where

__all__ = ["MAX_SNAPLEN", "MAX_BLOCK", "MAX_INTERFACES", "CaptureFile", "open_capture",
           "pcapng_tick"]

# libpcap's MAXIMUM_SNAPLEN (262,144) bounds every record it writes; a larger captured
# length is a corrupt record, not a packet (the reader would otherwise take the rest of
# the file as one frame).
MAX_SNAPLEN = 262144
# pcapng blocks other than packets (options, name resolution) stay small; 16 MiB is far
# beyond any real one and stops a corrupt length from swallowing the file.
MAX_BLOCK = 16 << 20
# Interfaces per pcapng section: a capture on every port of a big switch has dozens; the
# bound keeps the fast walker's state a fixed array. Packets on further ones are counted.
MAX_INTERFACES = 1024

_PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
_PCAPNG_SHB = 0x0A0D0D0A
_BOM = 0x1A2B3C4D
_IDB, _PB, _SPB, _EPB = 1, 2, 3, 6
_OPT_TSRESOL, _OPT_TSOFFSET = 9, 14


class CaptureFile:
    """An open capture; iterate :meth:`frames` once. Use as a context manager."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.stats: Counter[str] = Counter()
        try:
            self._file = open(self.path, "rb")
        except OSError as exc:
            raise CaptureFileError(f"cannot open: {exc.strerror or exc}", Where(str(path))) from exc
        try:
            self._map: mmap.mmap | bytes = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError):  # an empty file cannot be mapped
            self._map = b""
        head = bytes(self._map[:4])
        if head in _PCAP_MAGIC:
            self.format = "pcap"
        elif len(head) == 4 and struct.unpack("<I", head)[0] == _PCAPNG_SHB:
            self.format = "pcapng"
        else:
            self.close()
            raise CaptureFileError("not a pcap or pcapng file" if head else "empty file", Where(str(path)))

    def __enter__(self) -> CaptureFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if isinstance(self._map, mmap.mmap):
            try:
                self._map.close()
            except BufferError:
                pass  # a numpy view still uses it: unmapped when the last view goes
            self._map = b""
        self._file.close()

    @property
    def buffer(self) -> mmap.mmap | bytes:
        return self._map

    def frames(self) -> Iterator[tuple[float, int, bytes]]:
        """(timestamp in seconds, pcap link type, frame bytes) for every packet."""
        return self._pcap() if self.format == "pcap" else self._pcapng()

    def _pcap(self) -> Iterator[tuple[float, int, bytes]]:
        m = self._map
        endian, unit = _PCAP_MAGIC[bytes(m[:4])]
        if len(m) < 24:
            self.stats["truncated file header"] += 1
            return
        # The link type field's upper bits carry FCS information (pcap-savefile(5)).
        linktype = struct.unpack_from(endian + "I", m, 20)[0] & 0xFFFF
        rec = struct.Struct(endian + "IIII")
        pos, n = 24, len(m)
        while pos + 16 <= n:
            sec, frac, caplen, _orig = rec.unpack_from(m, pos)
            if caplen > MAX_SNAPLEN:
                self.stats["corrupt record length"] += 1
                return
            pos += 16
            if pos + caplen > n:
                self.stats["truncated last record"] += 1
                return
            yield sec + frac * unit, linktype, m[pos:pos + caplen]
            pos += caplen
        if pos != n:
            self.stats["truncated last record"] += 1

    def _pcapng(self) -> Iterator[tuple[float, int, bytes]]:
        m = self._map
        n = len(m)
        pos = 0
        e = "<"
        ifaces: list[tuple[int, float, int]] = []  # (link type, seconds per tick, offset)
        while pos + 12 <= n:
            btype = struct.unpack_from(e + "I", m, pos)[0]
            if btype == _PCAPNG_SHB:  # a new section: its own byte order and interfaces
                bom = bytes(m[pos + 8:pos + 12])
                e = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">" if bom == b"\x1a\x2b\x3c\x4d" else ""
                if not e:
                    self.stats["corrupt section header"] += 1
                    return
                ifaces = []
            blen = struct.unpack_from(e + "I", m, pos + 4)[0]
            if blen < 12 or blen % 4 or blen > MAX_BLOCK + MAX_SNAPLEN or pos + blen > n:
                self.stats["corrupt or truncated block"] += 1
                return
            body, end = pos + 8, pos + blen - 4
            if btype == _EPB or btype == _PB:
                if btype == _EPB:
                    if body + 20 > end:
                        self.stats["corrupt packet block"] += 1
                    else:
                        iface, hi, lo, caplen, _ = struct.unpack_from(e + "IIIII", m, body)
                        yield from self._packet(m, ifaces, iface, hi, lo, body + 20, caplen, end)
                elif body + 20 <= end:
                    iface, _drops, hi, lo, caplen, _ = struct.unpack_from(e + "HHIIII", m, body)
                    yield from self._packet(m, ifaces, iface, hi, lo, body + 20, caplen, end)
            elif btype == _SPB:
                if ifaces and body + 4 <= end:
                    orig = struct.unpack_from(e + "I", m, body)[0]
                    caplen = min(orig, end - body - 4)
                    yield 0.0, ifaces[0][0], m[body + 4:body + 4 + caplen]
                else:
                    self.stats["simple packet block without an interface"] += 1
            elif btype == _IDB:
                if len(ifaces) < MAX_INTERFACES:
                    ifaces.append(self._interface(m, e, body, end))
            pos += blen
        if pos != n:
            self.stats["truncated last block"] += 1

    def _packet(self, m, ifaces, iface, hi, lo, start, caplen, end):
        if iface >= len(ifaces) or start + caplen > end:
            self.stats["corrupt packet block"] += 1
            return
        linktype, tick, offset = ifaces[iface]
        yield offset + ((hi << 32) | lo) * tick, linktype, m[start:start + caplen]

    def _interface(self, m, e: str, body: int, end: int) -> tuple[int, float, int]:
        """(link type, seconds per timestamp unit, offset in seconds) of an IDB."""
        if body + 8 > end:
            self.stats["corrupt interface block"] += 1
            return (-1, 1e-6, 0)
        linktype = struct.unpack_from(e + "H", m, body)[0]
        tick, offset = 1e-6, 0  # default resolution: microseconds
        p = body + 8
        while p + 4 <= end:
            code, ln = struct.unpack_from(e + "HH", m, p)
            p += 4
            if code == 0 or p + ln > end:
                break
            if code == _OPT_TSRESOL and ln >= 1:
                tick = pcapng_tick(m[p])
            elif code == _OPT_TSOFFSET and ln >= 8:
                offset = struct.unpack_from(e + "q", m, p)[0]
            p += (ln + 3) & ~3
        return (linktype, tick, offset)


def pcapng_tick(tsresol: int) -> float:
    """Seconds per timestamp unit for an if_tsresol byte: 10^-n, or 2^-n with the top bit."""
    return 2.0 ** -(tsresol & 0x7F) if tsresol & 0x80 else 10.0 ** -tsresol


def open_capture(path: str | Path) -> CaptureFile:
    return CaptureFile(path)
