"""appliance.pcap.reader and its numba walkers: pcap and pcapng, both byte orders, damage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appliance.pcap import _kernels as PK
from appliance.pcap.reader import CaptureFile, pcapng_tick
from filters.errors import CaptureFileError
from tests.conftest import SHARED_DATA
from tests.wire import tcp_frame, udp_frame, write_pcap, write_pcapng

FRAMES = [tcp_frame(b"a" * i) for i in range(1, 6)] + [udp_frame(b"\x00" * 30)]


def kernel_frames(path: Path, chunk: int = 3) -> tuple[list[tuple[float, int, bytes]], int]:
    """What the numba walkers find, converted like appliance/pcap/inspect.py does."""
    with CaptureFile(path) as cap:
        buf = np.frombuffer(cap.buffer, np.uint8)
        off, caplen, tsec, tfrac, iface, link = (np.zeros(chunk, np.int64) for _ in range(6))
        bad = np.zeros(1, np.int64)
        out = []
        status = PK.ST_MORE
        if cap.format == "pcap":
            head = bytes(buf[:4])
            big = head in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d")
            unit = 1e-9 if head in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1e-6
            lt = int.from_bytes(bytes(buf[20:24]), "big" if big else "little") & 0xFFFF
            pos = 24
            while status == PK.ST_MORE:
                k, pos, status = PK.frame_pcap(buf, pos, big, off, caplen, tsec, tfrac)
                out += [(int(tsec[i]) + int(tfrac[i]) * unit, lt, bytes(buf[off[i]:off[i] + caplen[i]]))
                        for i in range(k)]
        else:
            state, pos = PK.new_pcapng_state(), 0
            while status == PK.ST_MORE:
                k, pos, status = PK.frame_pcapng(buf, pos, state, off, caplen, tfrac, iface, link, bad)
                for i in range(k):
                    _, res, tsoff = PK.interface(state, int(iface[i]))
                    ts = 0.0 if tfrac[i] < 0 else tsoff + int(tfrac[i]) * pcapng_tick(res)
                    out.append((ts, int(link[i]), bytes(buf[off[i]:off[i] + caplen[i]])))
        return out, status


def reference(path: Path) -> list[tuple[float, int, bytes]]:
    with CaptureFile(path) as cap:
        return [(ts, lt, bytes(fr)) for ts, lt, fr in cap.frames()]


@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("nano", [False, True])
def test_pcap_both_orders_and_resolutions(tmp_path: Path, big: bool, nano: bool) -> None:
    p = write_pcap(tmp_path / "a.pcap", FRAMES, big=big, nano=nano)
    ref = reference(p)
    assert [f for _, _, f in ref] == FRAMES and {lt for _, lt, _ in ref} == {1}
    assert ref[0][0] == pytest.approx(1700000000.0005)
    got, status = kernel_frames(p)
    assert got == ref and status == PK.ST_END


@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("tsresol", [None, 9])
def test_pcapng(tmp_path: Path, big: bool, tsresol: int | None) -> None:
    frames = [(i % 2, f) for i, f in enumerate(FRAMES)]
    p = write_pcapng(tmp_path / "a.pcapng", frames, linktypes=(1, 101), big=big, tsresol=tsresol)
    ref = reference(p)
    assert [f for _, _, f in ref] == FRAMES
    assert [lt for _, lt, _ in ref] == [1, 101] * 3
    assert ref[1][0] == pytest.approx(1700000001.0)
    got, status = kernel_frames(p)
    assert got == ref and status == PK.ST_END


def test_pcapng_simple_packet_blocks_and_binary_resolution(tmp_path: Path) -> None:
    p = write_pcapng(tmp_path / "s.pcapng", [(0, f) for f in FRAMES], simple=True)
    assert [f for _, _, f in reference(p)] == FRAMES
    assert kernel_frames(p)[0] == reference(p)
    assert pcapng_tick(0x80 | 10) == 2.0 ** -10 and pcapng_tick(3) == pytest.approx(1e-3)


def test_damage_is_counted_not_raised(tmp_path: Path) -> None:
    p = write_pcap(tmp_path / "t.pcap", FRAMES)
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(p.read_bytes()[:-5])
    with CaptureFile(cut) as cap:
        assert len(list(cap.frames())) == len(FRAMES) - 1
        assert cap.stats["truncated last record"] == 1
    assert kernel_frames(cut)[1] == PK.ST_TRUNCATED
    huge = bytearray(p.read_bytes())
    huge[24 + 8:24 + 12] = (1 << 30).to_bytes(4, "little")  # a 1 GiB caplen
    (tmp_path / "huge.pcap").write_bytes(huge)
    with CaptureFile(tmp_path / "huge.pcap") as cap:
        assert list(cap.frames()) == [] and cap.stats["corrupt record length"] == 1
    assert kernel_frames(tmp_path / "huge.pcap")[1] == PK.ST_CORRUPT
    ng = write_pcapng(tmp_path / "n.pcapng", [(0, f) for f in FRAMES])
    (tmp_path / "ncut.pcapng").write_bytes(ng.read_bytes()[:-7])
    assert len(reference(tmp_path / "ncut.pcapng")) == len(FRAMES) - 1
    assert kernel_frames(tmp_path / "ncut.pcapng")[1] == PK.ST_TRUNCATED


@pytest.mark.parametrize("content", [b"", b"hello world, not a capture", b"\x0a\x0d"])
def test_not_a_capture(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "x.pcap"
    p.write_bytes(content)
    with pytest.raises(CaptureFileError):
        CaptureFile(p)
    with pytest.raises(CaptureFileError):
        CaptureFile(tmp_path / "missing.pcap")


def test_kernels_agree_with_reference_on_shared_pcaps() -> None:
    pcaps = sorted((SHARED_DATA / "pcaps").rglob("*.pcap"))
    if not pcaps:
        pytest.skip(f"no pcaps under {SHARED_DATA / 'pcaps'} (set SCHOOLGATE_SHARED_DATA to a copy of the "
                    "public lists and pcaps)")
    for p in pcaps:
        try:
            ref = reference(p)
        except CaptureFileError:
            continue
        assert kernel_frames(p, chunk=7)[0] == ref, p
