"""schoolgate inspect: crafted captures through the CLI; the fast path equals the reference."""

from __future__ import annotations

import io
import json
import struct
from collections import Counter
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.pcap.inspect import inspect_capture
from tests.bundles import make_bundle
from tests.dnsdata import query
from tests.wire import (
    client_hello,
    crypto_frame,
    ext,
    quic_initial,
    records,
    tcp_frame,
    udp_frame,
    write_pcap,
    write_pcapng,
)


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("inspect") / "bundle", 1, extra=("blocked.quic.test",))


def crafted_frames() -> list[bytes]:
    """One of everything, with the awkward cases: a ClientHello split over segments that
    arrive out of order and twice, ECH, DoT, QUIC split over packets, pipelined HTTP,
    DNS over UDP and TCP, IPv6, and some garbage."""
    big = records(client_hello(b"www.casino.test", pad_to=1800))
    s1, s2 = big[:900], big[900:]
    dcid = b"\x42" * 8
    ch = client_hello(b"blocked.quic.test", pad_to=1400)
    q1 = quic_initial(dcid, crypto_frame(700, ch[700:]))
    q2 = quic_initial(dcid, crypto_frame(0, ch[:700]), pn=1)
    dns_tcp = query("tcp.dns.test")
    return [
        tcp_frame(b"", seq=99, flags="S"),
        tcp_frame(s2, seq=1000), tcp_frame(s1, seq=100), tcp_frame(s2, seq=1000), tcp_frame(s1, seq=100),
        tcp_frame(b"\x17\x03\x03\x00\x10" + bytes(16), seq=100 + len(big)),
        tcp_frame(records(client_hello(b"ech.example.org", extra=[ext(0xFE0D, b"\x00" * 8)])), sport=40001),
        tcp_frame(records(client_hello(b"dns.example.net")), sport=40002, dport=853),
        udp_frame(q1, sport=50000), udp_frame(q2, sport=50000),
        tcp_frame(b"GET / HTTP/1.1\r\nHost: fine.casino.test\r\n\r\nGET /2 HTTP/1.1\r\nHost: h2.example\r\n\r\n",
                  sport=40003, dport=80),
        udp_frame(query("www.casino.test"), sport=5353 + 1000, dport=53),
        tcp_frame(struct.pack(">H", len(dns_tcp)) + dns_tcp, sport=40004, dport=53),
        tcp_frame(records(client_hello(b"v6.example")), src="2001:db8::2", dst="2001:db8::1", sport=40005),
        b"\x00" * 9,  # a runt frame
        udp_frame(b"\xc3\x00\x00\x00\x01" + bytes(30), sport=50001),  # a broken "Initial"
    ]


EXPECTED = [
    ("tls", "www.casino.test", "block"), ("tls", "ech.example.org", "allow"),
    ("tls", "dns.example.net", "allow"), ("quic", "blocked.quic.test", "block"),
    ("http", "fine.casino.test", "allow"), ("http", "h2.example", "allow"),
    ("dns", "www.casino.test", "block"), ("dns", "tcp.dns.test", "allow"), ("tls", "v6.example", "allow"),
]


def test_json_rows(tmp_path: Path, bundle: Path) -> None:
    pcap = write_pcap(tmp_path / "c.pcap", crafted_frames())
    code, out, err = run("inspect", str(pcap), "--bundle", str(bundle), "--json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["proto"], r["name"], r["verdict"]) for r in rows] == EXPECTED
    first = rows[0]
    assert set(first) == {"ts", "src", "sport", "dst", "dport", "proto", "name", "verdict", "categories", "rule"}
    assert first["categories"] == ["gambling"] and first["rule"] == "casino.test"
    assert first["src"] == "10.0.0.2" and first["dport"] == 443 and first["ts"].endswith("Z")
    assert rows[1]["ech"] is True and rows[2]["dot"] is True
    assert "ech" not in first and "dot" not in first
    assert rows[8]["src"] == "2001:db8::2"
    assert "1 malformed: link header truncated" in err


def test_human_text_and_pcapng(tmp_path: Path, bundle: Path) -> None:
    pcap = write_pcapng(tmp_path / "c.pcapng", [(0, f) for f in crafted_frames()])
    code, out, _ = run("inspect", str(pcap), "--bundle", str(bundle))
    assert code == 0
    lines = out.splitlines()
    assert "tls www.casino.test: BLOCK [gambling] rule casino.test" in lines[0]
    assert "[ECH]" in lines[1] and "[DoT]" in lines[2]
    assert f"{len(crafted_frames())} frames, 9 names (3 blocked)" in out


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_fast_path_equals_reference(tmp_path: Path, fmt: str) -> None:
    frames = crafted_frames() * 3
    if fmt == "pcap":
        pcap = write_pcap(tmp_path / "c.pcap", frames)
    else:  # two interfaces, nanosecond timestamps
        pcap = write_pcapng(tmp_path / "c.pcapng", [(i % 2, f) for i, f in enumerate(frames)], (1, 1), tsresol=9)
    stats_fast, stats_ref = Counter(), Counter()
    fast = list(inspect_capture(str(pcap), True, stats=stats_fast))
    ref = list(inspect_capture(str(pcap), False, stats=stats_ref))
    assert fast == ref and len(fast) >= len(EXPECTED)  # timestamps included
    assert stats_fast["frames"] == stats_ref["frames"] == len(frames)
    assert stats_fast["malformed: link header truncated"] == stats_ref["malformed: link header truncated"] == 3


def test_kernel_decodes_like_packet_decode(tmp_path: Path) -> None:
    """Every frame select_frames reads itself yields the Packet packet.decode makes."""
    import numpy as np

    from appliance.pcap import _kernels as PK
    from appliance.pcap.inspect import packet_from_fields
    from filters import _select_kernels as SK
    from filters.packet import decode
    from tests.conftest import SHARED_DATA

    pcaps = [write_pcap(tmp_path / "c.pcap", crafted_frames())]
    pcaps += sorted((SHARED_DATA / "pcaps").rglob("*.pcap"))
    checked = 0
    for p in pcaps:
        raw = p.read_bytes()
        if raw[:4] != b"\xd4\xc3\xb2\xa1":
            continue  # little-endian microsecond pcaps are enough here
        buf = np.frombuffer(raw, np.uint8)
        n = 1 << 14
        off, caplen, tsec, tfrac = (np.zeros(n, np.int64) for _ in range(4))
        k, _, _ = PK.frame_pcap(buf, 24, False, off, caplen, tsec, tfrac)
        link = np.full(n, int.from_bytes(raw[20:24], "little") & 0xFFFF, np.int64)
        out, fields = np.zeros(n, np.uint8), np.zeros((n, SK.N_FIELDS), np.int64)
        SK.select_frames(buf, off, caplen, link, k, np.uint64(1), *SK.new_table(12), out,
                         np.zeros(SK.N_COUNTS, np.int64), fields, np.zeros(n * SK.NAME_ROOM, np.uint8))
        for i in np.flatnonzero(out[:k]):
            if fields[i, SK.F_L3] >= 0:
                want = decode(raw[off[i]:off[i] + caplen[i]], int(link[i]))
                assert packet_from_fields(raw, *fields[i, :SK.F_END + 1].tolist()) == want, (p, i)
                checked += 1
    assert checked > 10


def test_bad_input_exits_2(tmp_path: Path, bundle: Path) -> None:
    junk = tmp_path / "junk.pcap"
    junk.write_text("not a capture\n")
    code, _, err = run("inspect", str(junk), "--bundle", str(bundle))
    assert code == 2 and "not a pcap or pcapng file" in err
    code, _, err = run("inspect", str(junk), "--bundle", str(bundle), "--policy", "x")
    assert code == 2


@pytest.mark.slow
def test_capture_kernels_pass_without_jit() -> None:
    """The capture kernels' tests (kernels against a naive reference) once more as plain
    Python (numba reads NUMBA_DISABLE_JIT at import, hence the subprocess)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
         "-W", "ignore:overflow encountered:RuntimeWarning",  # FNV's uint64 wrap-around
         "tests/unit/test_pcapfile.py", "tests/unit/test_inspect.py"],
        cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
