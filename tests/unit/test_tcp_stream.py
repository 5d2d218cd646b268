"""filters.tcp_stream: in-order delivery across reordering, retransmission, wrap-around."""

from __future__ import annotations

import random

from filters.tcp_stream import MAX_PENDING_SEGMENTS, TcpStream


def test_in_order_reordered_and_retransmitted() -> None:
    s = TcpStream()
    s.syn(99)
    assert s.push(103, b"defg") == b""  # ahead of the hole at 100..102
    assert s.push(100, b"abc") == b"abcdefg"
    assert s.push(100, b"abcdefg") == b"" and s.duplicates == 1
    assert s.push(105, b"fghij") == b"hij"  # overlap: the first copy wins, the rest is new


def test_sequence_wrap_around() -> None:
    s = TcpStream()
    s.syn(2**32 - 3)
    assert s.push(2**32 - 2, b"ab") == b"ab"
    assert s.push(0, b"cd") == b"cd"


def test_a_hole_nobody_fills_is_given_up() -> None:
    s = TcpStream()
    s.push(0, b"x")
    out = b""
    for i in range(MAX_PENDING_SEGMENTS + 1):
        out += s.push(10 + i, b"y")
    assert s.gaps == 1 and out == b"y" * (MAX_PENDING_SEGMENTS + 1)


def test_random_segmentation_reassembles() -> None:
    rng = random.Random(2)
    data = bytes(rng.randrange(256) for _ in range(5000))
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(data)), 20))
        segs = [(a, data[a:b]) for a, b in zip([0] + cuts, cuts + [len(data)])]
        segs += rng.sample(segs, 5)  # retransmissions
        rng.shuffle(segs)
        s = TcpStream()
        s.syn(1000 - 1)
        out = b"".join(s.push(1000 + a, d) for a, d in segs)
        first = min(a for a, _ in segs)
        assert out == data[first:] or s.gaps
