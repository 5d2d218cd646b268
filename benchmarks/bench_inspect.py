"""Offline flow inspection: `schoolgate inspect` against tshark and ndpiReader.

    python -m benchmarks.bench_inspect [--packets N] [--repeat R] [--capture PCAP] [--keep FILE]
                                       [--markdown FILE]

The input is the shared suricata-verify captures (Ethernet ones: browsing with TLS, DNS,
HTTP, QUIC) concatenated and replicated to ~N packets (default 1,000,000); each copy has its
IPv4/IPv6 addresses shifted so that its flows are new flows, not retransmissions. Every
tool reads the same file as a whole process (start-up included), with output to a pipe:

- schoolgate: ``schoolgate inspect FILE --bundle B --json``;
- tshark: ``tshark -n -r FILE -T fields -e tls.handshake.extensions_server_name
  -e dns.qry.name -e http.host`` (the oracle the tests compare names with; it decrypts QUIC Initials too);
- ndpiReader (Debian libndpi-bin) ``-i FILE -q``: flow classification, when installed.

Each tool runs ``--repeat`` times (default 3), the tools taking turns (schoolgate, tshark,
ndpiReader, schoolgate, ...) so that load from elsewhere on a shared machine falls on all of
them alike; the table gives the median time. Before timing, schoolgate's modules are
byte-compiled and numba's cache is warmed by one untimed run, as on an installed system
(pip compiles bytecode at install; a development shell often sets PYTHONDONTWRITEBYTECODE,
which would otherwise make every run compile ~40 modules from source, ~0.05-0.1 s).

Agreement is the share of tshark's (protocol, name) pairs that schoolgate also reports, and
the pairs each finds that the other does not (the known differences are listed in
tests/integration/test_inspect_pcaps.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import ROOT, SHARED_DATA, machine, table

SV = SHARED_DATA / "pcaps" / "suricata-verify"


def _records(path: Path) -> tuple[int, list[tuple[float, bytes]]] | None:
    """(link type, [(timestamp, frame)]) of a little-endian microsecond pcap, else None."""
    b = path.read_bytes()
    if len(b) < 24 or b[:4] != b"\xd4\xc3\xb2\xa1":
        return None
    linktype = struct.unpack_from("<I", b, 20)[0] & 0xFFFF
    out, pos = [], 24
    while pos + 16 <= len(b):
        sec, usec, cap, _ = struct.unpack_from("<IIII", b, pos)
        out.append((sec + usec / 1e6, b[pos + 16:pos + 16 + cap]))
        pos += 16 + cap
    return linktype, out


def _shift(frame: bytes, c: int) -> bytes:
    """The frame with its IP addresses moved by copy number ``c`` (two middle octets)."""
    f = bytearray(frame)
    et = (f[12] << 8) | f[13] if len(f) >= 14 else 0
    pos = 14
    while et in (0x8100, 0x88A8) and len(f) >= pos + 4:
        et = (f[pos + 2] << 8) | f[pos + 3]
        pos += 4
    if et == 0x0800 and len(f) >= pos + 20:
        offs = (pos + 13, pos + 14, pos + 17, pos + 18)
    elif et == 0x86DD and len(f) >= pos + 40:
        offs = (pos + 20, pos + 21, pos + 36, pos + 37)
    else:
        return frame
    for o, v in zip(offs, (c >> 8, c, c >> 8, c)):
        f[o] = (f[o] + v) & 0xFF
    return bytes(f)


def build_input(out: Path, packets: int, capture: Path | None = None) -> int:
    """Write ~``packets`` frames replayed from ``capture`` (default: every Ethernet pcap of
    the suricata-verify manifest) to ``out``; returns the frame count."""
    base = []
    paths = [capture] if capture else [SV / line.split("\t")[0]
                                       for line in (SV / "MANIFEST_tshark_hostnames.tsv").read_text().splitlines()[1:]]
    for path in paths:
        r = _records(path)
        if r and r[0] == 1:
            base += r[1]
    if not base:
        raise SystemExit(f"no little-endian Ethernet pcap in {capture or SV}")
    n = 0
    with open(out, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        c = 0
        t = 1.7e9
        while n < packets:
            for _, frame in base:
                t += 1e-5
                f.write(struct.pack("<IIII", int(t), int((t % 1) * 1e6), len(frame), len(frame)))
                f.write(_shift(frame, c) if c else frame)
                n += 1
            c += 1
    return n


def timed(cmd: list[str]) -> tuple[float, str]:
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    secs = time.perf_counter() - t
    if p.returncode:
        raise RuntimeError(f"{cmd[0]} failed: {p.stderr[-2000:]}")
    return secs, p.stdout + "\x00" + p.stderr


def tshark_pairs(text: str) -> set[tuple[str, str]]:
    from filters.extract_http import _strip_host

    pairs = set()
    for line in text.split("\x00")[0].splitlines():
        protocols, sni, dns, host = (line.split("\t") + ["", "", "", ""])[:4]
        for v in filter(None, sni.split(",")):
            pairs.add(("quic" if ":quic" in protocols else "tls", v.lower()))
        for v in filter(None, dns.split(",")):
            if not v.startswith("<"):
                pairs.add(("dns", v.lower()))
        for v in filter(None, host.split(",")):
            pairs.add(("http", _strip_host(v.encode()).decode()))
    return pairs


def _known_differences() -> set[tuple[str, str]] | None:
    """The (protocol, name) pairs tshark finds and schoolgate by design does not, as the
    oracle test lists them (tests/integration/test_inspect_pcaps.py), or None without it."""
    try:
        from tests.integration.test_inspect_pcaps import DIFFERENCES
    except ImportError:
        return None
    return set().union(*(only_tshark for only_tshark, _, _ in DIFFERENCES.values()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per tool (median reported)")
    ap.add_argument("--capture", type=Path, help="replay only this (little-endian Ethernet) pcap, e.g. "
                    "suricata-verify/tests/tls/tls-subjectaltname/input.pcap for a browsing capture")
    ap.add_argument("--keep", help="write the generated capture here (default: a temp file)")
    ap.add_argument("--markdown", help="also write the table to this file")
    args = ap.parse_args()
    if not SV.is_dir():
        print(f"skipped: {SV} not found (set SCHOOLGATE_SHARED_DATA to a copy of the public lists and pcaps)")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="bench-inspect-"))
    pcap = Path(args.keep) if args.keep else tmp / "replay.pcap"
    n = build_input(pcap, args.packets, args.capture)
    bundle = tmp / "bundle"
    subprocess.run([sys.executable, "-m", "appliance.cli", "signatures", "build",
                    str(ROOT / "config" / "demo" / "sources.yaml"), "-o", str(bundle), "-q"],
                   check=True, capture_output=True, cwd=ROOT)
    subprocess.run([sys.executable, "-m", "compileall", "-q", "appliance", "filters", "signatures"],
                   check=True, capture_output=True, cwd=ROOT)  # as installed: bytecode compiled
    sg = [sys.executable, "-m", "appliance.cli", "inspect", str(pcap), "--bundle", str(bundle), "--json"]
    subprocess.run(sg, capture_output=True, cwd=ROOT)  # warm numba's cache: no run pays for compiling
    tools = {"schoolgate inspect": sg}
    if shutil.which("tshark"):
        tools["tshark -T fields"] = ["tshark", "-n", "-r", str(pcap), "-T", "fields", "-e", "frame.protocols",
                                     "-e", "tls.handshake.extensions_server_name", "-e", "dns.qry.name",
                                     "-e", "http.host"]
    if shutil.which("ndpiReader"):
        tools["ndpiReader -q"] = ["ndpiReader", "-i", str(pcap), "-q"]
    times: dict[str, list[float]] = {t: [] for t in tools}
    outs: dict[str, str] = {}
    for _ in range(max(args.repeat, 1)):
        for tool, cmd in tools.items():
            secs, outs[tool] = timed(cmd)
            times[tool].append(secs)
    med = {t: statistics.median(v) for t, v in times.items()}
    out = outs["schoolgate inspect"]
    ours = {(r["proto"], r["name"]) for r in map(json.loads, out.split("\x00")[0].splitlines())}
    loop = out.split("\x00")[1].split(" in ")[-1].split(" s")[0]
    ours_s = med["schoolgate inspect"]

    def row(tool: str, note: str) -> dict:
        return {"tool": tool, "seconds (median)": f"{med[tool]:.2f}",
                "runs": " ".join(f"{x:.2f}" for x in times[tool]), "frames/s": f"{n / med[tool]:,.0f}",
                "note": note}

    rows = [row("schoolgate inspect", f"in-process time of the last run {loop} s; {len(ours):,} distinct names")]
    theirs: set = set()
    if "tshark -T fields" in tools:
        theirs = tshark_pairs(outs["tshark -T fields"])
        rows.append(row("tshark -T fields", f"{len(theirs):,} distinct names; schoolgate is "
                        f"{med['tshark -T fields'] / ours_s:.1f}x faster"))
    if "ndpiReader -q" in tools:
        rows.append(row("ndpiReader -q", f"schoolgate is {med['ndpiReader -q'] / ours_s:.2f}x its speed"))
    text = f"{n:,} packets ({pcap.stat().st_size / 1e6:.0f} MB), {machine()}\n\n" + table(
        rows, ["tool", "seconds (median)", "runs", "frames/s", "note"])
    if theirs:
        agree = len(theirs & ours) / len(theirs) * 100
        text += (f"\n\nagreement with tshark: {agree:.2f}% of its (protocol, name) pairs; "
                 f"only tshark: {sorted(theirs - ours)[:8]}; only schoolgate: {sorted(ours - theirs)[:8]}")
        known = _known_differences()
        if known is not None:
            rest = theirs - known
            text += (f"\nwithout the differences the oracle test documents (DoH in cleartext HTTP/2, DNS on "
                     f"port 8053): {len(rest & ours) / len(rest) * 100:.2f}% of {len(rest):,} pairs")
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
