"""filters.extract_tls: ClientHello SNI, ALPN and ECH; reassembly over segments and records."""

from __future__ import annotations

import random

import pytest

from filters.extract_tls import (
    EXT_ECH,
    MAX_CLIENT_HELLO,
    MAX_FIRST_FLIGHT,
    ClientHelloReassembler,
    client_hello_from_handshake,
    looks_like_tls,
    parse_client_hello,
)
from filters.extraction import Status
from tests.wire import client_hello, ext, records


def feed_all(chunks: list[bytes]) -> list:
    r = ClientHelloReassembler()
    return [r.feed(c) for c in chunks]


def test_sni_alpn_from_one_record() -> None:
    res = feed_all([records(client_hello(b"WWW.Example.COM."))])[-1]
    assert res.status == Status.DONE
    assert res.names == (b"www.example.com",)  # lower-cased, trailing dot removed
    assert res.alpn == (b"h2", b"http/1.1") and not res.ech


def test_hello_split_over_segments_then_done_once() -> None:
    # A post-quantum key share (over 1 kB) pushes the hello past one MSS.
    wire = records(client_hello(b"split.example", pad_to=1800))
    chunks = [wire[i:i + 700] for i in range(0, len(wire), 700)]
    out = feed_all(chunks + [b"\x17\x03\x03\x00\x01x"])
    assert [o.status for o in out[:-2]] == [Status.MORE] * (len(chunks) - 1)
    assert out[-2].names == (b"split.example",)
    assert out[-1].status == Status.NONE  # after DONE nothing more is read


def test_hello_fragmented_over_records() -> None:
    # RFC 8446 §5.1 lets a handshake message span records; evasion tools use tiny ones.
    wire = records(client_hello(b"records.example"), size=7)
    assert feed_all([wire])[-1].names == (b"records.example",)
    byte_by_byte = feed_all([wire[i:i + 1] for i in range(len(wire))])
    assert byte_by_byte[-1].names == (b"records.example",)


def test_grease_ech_and_no_sni() -> None:
    ech = feed_all([records(client_hello(b"public.example", extra=[ext(EXT_ECH, b"\x00" * 40)]))])[-1]
    assert ech.names == (b"public.example",) and ech.ech  # the outer (public) name
    none = feed_all([records(client_hello(None, alpn=()))])[-1]
    assert none.status == Status.DONE and none.names == () and none.reason == "no server_name"


def test_not_tls_and_server_flight() -> None:
    assert feed_all([b"GET / HTTP/1.1\r\n"])[-1].status == Status.NONE
    server_hello = b"\x02" + client_hello()[1:]
    assert feed_all([records(server_hello)])[-1].status == Status.NONE
    assert not looks_like_tls(b"\x16\x03") and looks_like_tls(b"\x16\x03\x01")


def test_limits() -> None:
    big = b"\x01" + (MAX_CLIENT_HELLO + 1).to_bytes(3, "big")
    assert client_hello_from_handshake(big).status == Status.ERROR
    r = ClientHelloReassembler()
    # A 8 KiB hello in 1-byte records takes 48 KiB of stream: stopped at the cap.
    res = [r.feed(b"\x16\x03\x01\x00\x04\x01\x00\x20\x00")]
    res += [r.feed(b"\x16\x03\x01\x00\x01\x00") for _ in range(MAX_FIRST_FLIGHT // 6 + 2)]
    assert res[-1].status in (Status.ERROR, Status.NONE)
    assert any(x.status == Status.ERROR and "first flight" in x.reason for x in res)
    overflow = b"\x16\x03\x01\x50\x00"  # a 20 KiB record: RFC 8446 §5.1 record_overflow
    assert feed_all([overflow])[-1].status == Status.ERROR


@pytest.mark.parametrize("cut", [0, 10, 34, 35, 40, 60, 80, 90])
def test_truncated_bodies_report_errors(cut: int) -> None:
    body = client_hello(b"example.com")[4:]
    res = parse_client_hello(body[:cut])
    assert res.status in (Status.ERROR, Status.DONE)


def test_lying_lengths_never_raise() -> None:
    rng = random.Random(5)
    base = records(client_hello(b"fuzz.example", extra=[ext(EXT_ECH, b"x")]))
    for _ in range(3000):
        b = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        cut = rng.randint(0, len(b))
        r = ClientHelloReassembler()
        r.feed(bytes(b[:cut]))
        res = r.feed(bytes(b[cut:]))
        assert res.status in tuple(Status)
        for n in res.names:
            assert isinstance(n, bytes)
