"""``schoolgate inspect PCAP``: the names a capture's flows asked for, with their verdicts.

An admin's answer to "why did this site break?": every DNS question, TLS and QUIC server
name and HTTP host in a capture, each with the verdict the bundle gives it under a policy.

The capture is memory-mapped and walked by numba kernels (appliance/pcap/_kernels.py)
that hand Python only the frames that can reveal a name (filters/_select_kernels.py): the
same selection the live capture makes in the kernel. Those frames go through the pure flow
table (filters/flow_table.py), whose extractors never raise on bad packets; malformed and
skipped frames are counted and summarised. A DNS message over UDP whose single question is
plainly written (most of them) has its name read by the selection kernel too, and only the
table's duplicate check runs in Python. ``prefilter=False`` feeds every frame to the flow
table instead (the reference path the tests compare the fast one with).
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TextIO

import numpy as np

from appliance.pcap import _kernels as PK
from appliance.pcap.reader import CaptureFile, pcapng_tick
from filters import _select_kernels as SK
from filters.flow_table import FlowTable, Found
from filters.packet import Packet
from filters.verdicts import Verdicts

__all__ = ["CHUNK", "packet_from_fields", "inspect_capture", "write_inspection"]

# Frames walked per kernel call. 4 Ki frames (~2 MB of a typical capture) are still in the
# CPU cache when the selection kernel and then Python read them after the walk; with 64 Ki
# (~30 MB) each pass fetched every frame from memory again: 0.27 s of kernel time per 1 M
# frames against 0.12 s (benchmarks/bench_inspect.py's capture). The ~20 µs per call of
# overhead stays below 5 ms per million frames.
CHUNK = 1 << 12
_SKIP_REASONS = {  # kernel drop counters, named like the pure path's (filters/packet.py)
    0: "skipped: not IPv4 or IPv6", 1: "skipped: neither TCP nor UDP",
    2: "skipped: IPsec ESP: payload encrypted",
}


def _selected(cap: CaptureFile, stats: Counter) -> Iterator[tuple[list, list, list, list, list, bytes]]:
    """Per kernel call, the frames that can reveal a name: their timestamps, offsets,
    captured lengths, link types and ``fields`` rows (filters/_select_kernels.py), and the
    DNS names the kernel read; ``stats`` gets the frame count and what was dropped."""

    buf = np.frombuffer(cap.buffer, dtype=np.uint8) if len(cap.buffer) else np.zeros(0, np.uint8)
    off = np.zeros(CHUNK, np.int64)
    caplen = np.zeros(CHUNK, np.int64)
    tsec = np.zeros(CHUNK, np.int64)
    tfrac = np.zeros(CHUNK, np.int64)
    iface = np.zeros(CHUNK, np.int64)
    link = np.zeros(CHUNK, np.int64)
    out = np.zeros(CHUNK, np.uint8)
    fields = np.zeros((CHUNK, SK.N_FIELDS), np.int64)
    names = np.zeros(CHUNK * SK.NAME_ROOM, np.uint8)
    counts = np.zeros(SK.N_COUNTS, np.int64)
    bad = np.zeros(1, np.int64)
    keys, state, base, limit = SK.new_table()
    seed = np.uint64(int.from_bytes(np.random.bytes(8), "little") | 1)
    mm = cap.buffer
    if cap.format == "pcap":
        head = bytes(mm[:4])
        big = head in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d")
        unit = 1e-9 if head in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1e-6
        if len(mm) < 24:
            stats["truncated file header"] += 1
            return
        link[:] = int.from_bytes(bytes(mm[20:24]), "big" if big else "little") & 0xFFFF
        pos = 24
    else:
        pstate = PK.new_pcapng_state()
        pos = 0
    status = PK.ST_MORE
    while status == PK.ST_MORE:
        if cap.format == "pcap":
            k, pos, status = PK.frame_pcap(buf, pos, big, off, caplen, tsec, tfrac)
        else:
            k, pos, status = PK.frame_pcapng(buf, pos, pstate, off, caplen, tfrac, iface, link, bad)
        stats["frames"] += k
        _, used = SK.select_frames(buf, off, caplen, link, k, seed, keys, state, base, limit, out, counts,
                                   fields, names)
        sel = np.flatnonzero(out[:k])
        if cap.format == "pcap":
            ts = tsec[sel] + tfrac[sel] * unit
        else:  # per interface: if_tsoffset + ticks x if_tsresol; no timestamp (SPB): 0
            nif = max(int(iface[sel].max()) + 1, 1) if len(sel) else 1
            ifs = [PK.interface(pstate, j) for j in range(nif)]
            tick = np.array([pcapng_tick(r) for _, r, _ in ifs])[iface[sel]]
            tsoff = np.array([o for _, _, o in ifs], dtype=np.int64)[iface[sel]]
            ts = np.where(tfrac[sel] < 0, 0.0, tsoff + tfrac[sel] * tick)
        yield (ts.tolist(), off[sel].tolist(), caplen[sel].tolist(), link[sel].tolist(), fields[sel].tolist(),
               names[:used].tobytes())
    if status == PK.ST_TRUNCATED:
        stats["truncated last record" if cap.format == "pcap" else "truncated last block"] += 1
    elif status == PK.ST_CORRUPT:
        stats["corrupt record length" if cap.format == "pcap" else "corrupt or truncated block"] += 1
    if bad[0]:
        stats["corrupt packet block"] += int(bad[0])
    for code, reason in _SKIP_REASONS.items():
        if counts[code]:
            stats[reason] += int(counts[code])
    stats["frames not read (no extractor needs them)"] += int(counts[3:].sum())


def packet_from_fields(mm, l3: int, ver: int, proto: int, sport: int, dport: int, flags: int,
                       seq: int, pay: int, end: int) -> Packet:
    """The Packet for a frame whose headers select_frames read (a row of its ``fields``)."""
    if ver == 4:
        return Packet(mm[l3 + 12:l3 + 16], mm[l3 + 16:l3 + 20], proto, sport, dport, mm[pay:end], flags, seq)
    return Packet(mm[l3 + 8:l3 + 24], mm[l3 + 24:l3 + 40], proto, sport, dport, mm[pay:end], flags, seq)


def _fast(cap: CaptureFile, table: FlowTable, stats: Counter) -> Iterator[Found]:
    """The names of the frames the kernels select, fed to ``table`` as decoded Packets (or
    as frames where the kernel left decoding to Python); a DNS question the kernel read
    skips the Packet and the extractor and goes straight to the table's DNS reporting."""
    mm = cap.buffer
    dns = table.udp_dns_name
    for ts, offs, lens, links, rows, names in _selected(cap, stats):
        for t, o, n, lt, (l3, ver, proto, sport, dport, flags, seq, pay, end, qname, qlen) in zip(
                ts, offs, lens, links, rows):
            if l3 < 0:  # not read by the kernel: Python decodes it
                yield from table.frame(t, lt, mm[o:o + n])
            elif qname >= 0:
                if ver == 4:
                    f = dns(t, mm[l3 + 12:l3 + 16], sport, mm[l3 + 16:l3 + 20], dport, names[qname:qname + qlen])
                else:
                    f = dns(t, mm[l3 + 8:l3 + 24], sport, mm[l3 + 24:l3 + 40], dport, names[qname:qname + qlen])
                if f is not None:
                    yield f
            else:
                yield from table.packet(t, packet_from_fields(mm, l3, ver, proto, sport, dport, flags, seq, pay, end))


def inspect_capture(path: str, prefilter: bool = True, table: FlowTable | None = None,
                    stats: Counter | None = None) -> Iterator[Found]:
    """Every name found in the capture at ``path``, in capture order. ``prefilter=False``
    feeds every frame to the flow table (the reference the fast path is tested against)."""
    table = table or FlowTable()
    stats = stats if stats is not None else Counter()
    with CaptureFile(path) as cap:
        if prefilter:
            yield from _fast(cap, table, stats)
        else:
            for ts, lt, frame in cap.frames():
                stats["frames"] += 1
                yield from table.frame(ts, lt, frame)
            stats.update(cap.stats)
    frames = stats.get("frames", 0)
    stats.update({k: v for k, v in table.stats.items() if k != "frames"})
    stats["frames"] = frames


# Text forms memoised: a capture has few distinct addresses and many rows per second,
# and formatting them is a visible share of the run. Bounded like every cache here.
_MEMO_MAX = 65536
_ip_memo: dict[bytes, str] = {}
_BATCH = 4096  # output lines per write
_second_memo: dict[int, str] = {}


def _ip(packed: bytes) -> str:
    text = _ip_memo.get(packed)
    if text is None:
        if len(_ip_memo) >= _MEMO_MAX:
            _ip_memo.clear()
        text = _ip_memo[packed] = str(ipaddress.ip_address(packed))
    return text


def _iso(ts: float) -> str:
    """RFC 3339 UTC with microseconds, e.g. 2026-11-24T12:00:00.123456Z."""
    us = round(ts * 1_000_000)
    sec, frac = divmod(us, 1_000_000)
    head = _second_memo.get(sec)
    if head is None:
        if len(_second_memo) >= _MEMO_MAX:
            _second_memo.clear()
        head = _second_memo[sec] = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{head}.{frac:06d}Z"


def write_inspection(pcap: str, verdicts: Verdicts, out: TextIO, err: TextIO, as_json: bool = False,
                     all_frames: bool = False) -> int:
    """``schoolgate inspect``'s output: one line (text, or JSON with ``as_json``) per name
    found in ``pcap``, judged by ``verdicts``; then a summary (frames, names, what was
    skipped or malformed) on ``out``, or on ``err`` with JSON. ``all_frames``: the reference
    path (every frame through the flow table). Returns the exit status."""
    t0 = time.perf_counter()
    stats: Counter = Counter()
    names = blocked = 0
    # The JSON after "proto" depends only on the name: made once per distinct name (a
    # capture repeats names a lot, and json.dumps per row was a tenth of the run).
    tails: dict[bytes, tuple[str, bool]] = {}
    # Lines are written in batches: one write per row was a visible share of the run.
    lines: list[str] = []
    try:
        for f in inspect_capture(pcap, prefilter=not all_frames, stats=stats):
            names += 1
            if as_json:
                hit = tails.get(f.name)
                if hit is None:
                    if len(tails) >= _MEMO_MAX:
                        tails.clear()
                    verdict, cats, rule = verdicts(f.name)
                    hit = tails[f.name] = (json.dumps({
                        "name": f.name.decode("ascii", "backslashreplace"), "verdict": verdict,
                        "categories": cats, "rule": rule})[1:-1], verdict == "block")
                tail, is_blocked = hit
                blocked += is_blocked
                flags = (', "ech": true' if f.ech else "") + (', "dot": true' if f.dot else "")
                lines.append(f'{{"ts": "{_iso(f.ts)}", "src": "{_ip(f.src)}", "sport": {f.sport}, '
                             f'"dst": "{_ip(f.dst)}", "dport": {f.dport}, "proto": "{f.proto}", {tail}{flags}}}\n')
            else:
                verdict, cats, rule = verdicts(f.name)
                blocked += verdict == "block"
                name = f.name.decode("ascii", "backslashreplace")
                flags = "".join(f" [{x}]" for x, on in (("ECH", f.ech), ("DoT", f.dot)) if on)
                why = f" [{', '.join(cats)}] rule {rule}" if verdict == "block" else ""
                lines.append(f"{_iso(f.ts)} {_ip(f.src)}:{f.sport} -> {_ip(f.dst)}:{f.dport} {f.proto} {name}: "
                             f"{verdict.upper() if verdict == 'block' else verdict}{why}{flags}\n")
            if len(lines) >= _BATCH:
                out.write("".join(lines))
                lines.clear()
    finally:  # what was found before an error is still written
        out.write("".join(lines))
    secs = time.perf_counter() - t0
    frames = stats.pop("frames", 0)
    problems = {k: v for k, v in sorted(stats.items()) if not k.startswith("frames not read")}
    summary = (f"{pcap}: {frames:,} frames, {names:,} names ({blocked:,} blocked) in {secs:.2f} s"
               + "".join(f"\n  {v:,} {k}" for k, v in problems.items()))
    print(summary, file=err if as_json else out)
    return 0

