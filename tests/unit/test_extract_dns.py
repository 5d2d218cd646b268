"""filters.extract_dns: question names from queries and responses, over UDP and TCP."""

from __future__ import annotations

import random
import struct

from filters.extract_dns import DnsTcpSession, message_names
from filters.extraction import Status
from tests.dnsdata import fuzz_seeds, malformed, query


def test_query_and_response_names() -> None:
    assert message_names(query("WWW.Example.org")).names == (b"www.example.org",)
    resp = bytearray(query("example.org"))
    resp[2] |= 0x80
    assert message_names(bytes(resp)).names == (b"example.org",)


def test_several_questions_with_compression_and_root() -> None:
    # mDNS asks several questions at once, the later ones compressed (RFC 6762 §18.14).
    hdr = struct.pack(">HHHHHH", 0, 0, 3, 0, 0, 0)
    q1 = b"\x05_http\x04_tcp\x05local\x00" + b"\x00\x0c\x00\x01"
    q2 = b"\x03foo\xc0\x12" + b"\x00\x01\x00\x01"  # foo + pointer to "_tcp.local"
    root = b"\x00\x00\x02\x00\x01"
    assert message_names(hdr + q1 + q2 + root).names == (b"_http._tcp.local", b"foo._tcp.local")


def test_odd_bytes_are_kept() -> None:
    hdr = struct.pack(">HHHHHH", 1, 0x0100, 1, 0, 0, 0)
    res = message_names(hdr + b"\x05a=b/c\x06tunnel\x03com\x00\x00\x10\x00\x01")
    assert res.names == (b"a=b/c.tunnel.com",)


def test_malformed_messages_are_errors_not_exceptions() -> None:
    for label, buf in malformed().items():
        res = message_names(buf)
        assert res.status in (Status.ERROR, Status.DONE), label
    assert message_names(b"\x00" * 5).status == Status.ERROR
    lying = struct.pack(">HHHHHH", 1, 0, 60000, 0, 0, 0) + b"\x00\x00\x01\x00\x01"
    assert message_names(lying).status == Status.ERROR


def test_tcp_stream_split_and_pipelined() -> None:
    msgs = [query(f"n{i}.example") for i in range(3)]
    stream = b"".join(struct.pack(">H", len(m)) + m for m in msgs)
    s = DnsTcpSession()
    got = []
    for i in range(0, len(stream), 7):
        res = s.feed(stream[i:i + 7])
        assert res.status == Status.MORE
        got += res.names
    assert got == [b"n0.example", b"n1.example", b"n2.example"]


def test_fuzz_seeds_and_mutations_never_raise() -> None:
    rng = random.Random(3)
    seeds = fuzz_seeds() or [query("example.org", edns=True)]
    for seed in seeds:
        for _ in range(20):
            b = bytearray(seed)
            for _ in range(rng.randint(0, 4)):
                if b:
                    b[rng.randrange(len(b))] = rng.randrange(256)
            message_names(bytes(b[:rng.randint(0, len(b))]))
            DnsTcpSession().feed(struct.pack(">H", len(b) & 0xFFFF) + bytes(b))
