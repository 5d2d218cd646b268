"""filters.extract_http: Host from request heads; absolute-form and CONNECT; pipelining."""

from __future__ import annotations

import random

import pytest

from filters.extract_http import MAX_HEAD, HttpSession, looks_like_http, request_host
from filters.extraction import Status


@pytest.mark.parametrize("head, name", [
    (b"GET / HTTP/1.1\r\nHost: WWW.Example.org\r\nAccept: */*", b"www.example.org"),
    (b"GET / HTTP/1.1\r\nhost:example.org:8080", b"example.org"),
    (b"GET / HTTP/1.1\r\nHost: [::1]:8000", b"::1"),
    (b"GET / HTTP/1.1\r\nHost: example.org.", b"example.org"),
    # RFC 9112 §3.2.2: an absolute-form target wins over Host.
    (b"GET http://user@Proxy.Example:81/x?y HTTP/1.1\r\nHost: other.example", b"proxy.example"),
    (b"CONNECT tunnel.example:443 HTTP/1.1\r\nHost: tunnel.example:443", b"tunnel.example"),
    (b"OPTIONS * HTTP/1.1\r\nHost: star.example", b"star.example"),
])
def test_host(head: bytes, name: bytes) -> None:
    assert request_host(head).names == (name,)


def test_no_host_and_bad_request_lines() -> None:
    assert request_host(b"GET / HTTP/1.0").names == ()
    assert request_host(b"GET / HTTP/1.1\r\nHost : spaced.example").names == ()  # RFC 9112 §5.1
    assert request_host(b"GET /").status == Status.ERROR
    assert request_host(b"PRI * HTTP/2.0").status == Status.ERROR
    assert not looks_like_http(b"PRI * HTTP/2.0\r\n") and looks_like_http(b"PROPFIND /x HTTP/1.1")


def test_session_split_head_pipelining_and_bodies() -> None:
    s = HttpSession()
    assert s.feed(b"POST /a HTTP/1.1\r\nHo").names == ()
    body = b"x" * 10
    res = s.feed(b"st: one.example\r\nContent-Length: 10\r\n\r\n" + body
                 + b"GET /b HTTP/1.1\r\nHost: two.example\r\n\r\n")
    assert res.names == (b"one.example", b"two.example")
    # A body segment that does not open a request is skipped.
    assert s.feed(b"more body bytes Host: nope.example\r\n\r\n").names == ()
    assert s.feed(b"GET /c HTTP/1.1\r\nHost: three.example\n\n").names == (b"three.example",)


def test_oversized_head_is_cut_at_the_cap() -> None:
    s = HttpSession()
    res = s.feed(b"GET / HTTP/1.1\r\nHost: big.example\r\nX: " + b"a" * (MAX_HEAD + 10))
    assert res.names == (b"big.example",) and "longer than" in res.reason


def test_garbage_never_raises() -> None:
    rng = random.Random(7)
    base = b"GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n"
    for _ in range(3000):
        b = bytearray(base)
        for _ in range(rng.randint(1, 5)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        s = HttpSession()
        cut = rng.randint(0, len(b))
        s.feed(bytes(b[:cut]))
        assert s.feed(bytes(b[cut:])).status == Status.MORE
