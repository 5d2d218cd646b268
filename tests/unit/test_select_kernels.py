"""filters._select_kernels.dns_question: the kernel's DNS question reader against the pure
extractor (extract_dns.message_names), which stays the reference."""

from __future__ import annotations

import random
import struct

import numpy as np

from filters import _select_kernels as SK
from filters.extract_dns import message_names
from filters.extraction import Status
from tests.dnsdata import fuzz_seeds, malformed, query


def kernel(msg: bytes, room: int = SK.NAME_ROOM, at: int = 0) -> bytes | None:
    """The name dns_question reads from ``msg`` (placed after ``at`` octets of junk in a
    larger buffer, as in a frame), or None when it leaves the message to Python."""
    buf = np.frombuffer(b"\xee" * 7 + msg + b"\xff" * 9, np.uint8)
    names = np.zeros(room, np.uint8)
    n = SK.dns_question(buf, 7, 7 + len(msg), names, at)
    return None if n < 0 else names[at:at + n].tobytes()


def plain_case(msg: bytes) -> bytes | None:
    """The name message_names reports when the message is the kernel's case (exactly one
    name, DONE, nothing to count), else None."""
    res = message_names(msg)
    if res.status == Status.DONE and not res.reason and len(res.names) == 1:
        return res.names[0]
    return None


def hdr(qdcount: int = 1) -> bytes:
    return struct.pack(">HHHHHH", 0x1234, 0x0100, qdcount, 0, 0, 0)


def test_common_queries_are_read_like_message_names() -> None:
    for name in ("example.org", "WWW.Example.ORG", "a", "x" * 63 + ".test", "_dmarc.mail.example"):
        msg = query(name)
        assert kernel(msg) == plain_case(msg) == name.lower().encode()
    resp = bytearray(query("answered.example"))
    resp[2] |= 0x80
    resp += b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x7f\x00\x00\x01"  # an answer after it
    assert kernel(bytes(resp)) == b"answered.example"


def test_odd_octets_are_kept_and_only_ascii_letters_lowered() -> None:
    msg = hdr() + b"\x05A=B/c\x03\xc4.Z\x03com\x00\x00\x10\x00\x01"
    assert kernel(msg) == plain_case(msg) == b"a=b/c.\xc4.z.com"


def test_everything_else_is_left_to_python() -> None:
    cases = {
        "compression pointer": hdr() + b"\x03foo\xc0\x0c\x00\x01\x00\x01",
        "two questions": hdr(2) + b"\x01a\x00\x00\x01\x00\x01\x01b\x00\x00\x01\x00\x01",
        "no question": hdr(0),
        "root name": hdr() + b"\x00\x00\x02\x00\x01",
        "no QTYPE/QCLASS": hdr() + b"\x01a\x00\x00\x01\x00",
        "label past the end": hdr() + b"\x3fabc",
        "no terminator": hdr() + b"\x01a\x01b",
        "qdcount 257": struct.pack(">HHHHHH", 1, 0, 257, 0, 0, 0) + b"\x01a\x00\x00\x01\x00\x01",
        **malformed(),
    }
    for label, msg in cases.items():
        if plain_case(msg) is None:
            assert kernel(msg) is None, label


def test_name_length_limit_is_the_same() -> None:
    # 255 octets of wire name is the limit (RFC 1035 §2.3.4): 4 x (1 + 62) + 2 + 1 is 255.
    at_limit = b"".join(b"\x3e" + b"a" * 62 for _ in range(4)) + b"\x01b\x00"
    over = b"".join(b"\x3e" + b"a" * 62 for _ in range(4)) + b"\x02bb\x00"
    assert len(at_limit) == 255 and len(over) == 256
    assert kernel(hdr() + at_limit + b"\x00\x01\x00\x01") == plain_case(hdr() + at_limit + b"\x00\x01\x00\x01")
    assert kernel(hdr() + at_limit + b"\x00\x01\x00\x01") is not None
    # Past the limit the kernel steps aside; Python's reader decides (and counts) it.
    assert kernel(hdr() + over + b"\x00\x01\x00\x01") is None


def test_names_buffer_without_room_leaves_it_to_python() -> None:
    msg = query("roomy.example")
    assert kernel(msg, room=20, at=6) == b"roomy.example"
    assert kernel(msg, room=18, at=6) is None


def test_mutated_messages_agree_with_message_names() -> None:
    """Random mutations of real queries: whenever the kernel reads a name, message_names
    reads the same single name with nothing to count."""
    rng = random.Random(5)
    seeds = [query(n, edns=e) for n in ("example.org", "Mixed.Case.test", "a.b.c.d.e") for e in (False, True)]
    seeds += fuzz_seeds()[:50]
    read = 0
    for seed in seeds:
        for _ in range(200):
            msg = bytearray(seed)
            for _ in range(rng.randint(1, 4)):
                op = rng.random()
                if op < 0.5 and msg:
                    msg[rng.randrange(len(msg))] = rng.randrange(256)
                elif op < 0.75:
                    del msg[rng.randrange(len(msg) + 1):]
                else:
                    msg[12:12] = bytes([rng.randrange(64)]) + bytes(rng.randrange(256) for _ in range(rng.randrange(8)))
            msg = bytes(msg)
            got = kernel(msg)
            if got is not None:
                read += 1
                assert got == plain_case(msg), msg
    assert read > 100  # the plain case is exercised, not only the fallbacks
