"""appliance/web/http.py: request parsing and its limits (sans-IO)."""

from __future__ import annotations

import pytest

from appliance.web.http import (MAX_BODY, MAX_HEAD, MAX_HEADERS, MAX_REQUEST_LINE, HttpError, Response,
                                parse_cookies, parse_form, parse_head)


def head(line: str, *headers: str) -> bytes:
    return "\r\n".join([line, *headers]).encode("latin-1")


def status_of(raw: bytes) -> int:
    with pytest.raises(HttpError) as exc:
        parse_head(raw)
    return exc.value.status


def test_simple_get() -> None:
    r = parse_head(head("GET /api/status?x=1&y=%3Cb%3E HTTP/1.1", "Host: 127.0.0.1:8080", "Cookie: a=1; b=2"))
    assert (r.method, r.path, r.query) == ("GET", "/api/status", {"x": "1", "y": "<b>"})
    assert r.header("host") == "127.0.0.1:8080"
    assert r.cookies == {"a": "1", "b": "2"}


def test_post_needs_length_and_body_is_capped() -> None:
    assert status_of(head("POST /login HTTP/1.1", "Host: h")) == 411
    assert status_of(head("POST /login HTTP/1.1", "Host: h", f"Content-Length: {MAX_BODY + 1}")) == 413
    assert parse_head(head("POST /login HTTP/1.1", "Host: h", "Content-Length: 12")).content_length == 12


@pytest.mark.parametrize("raw,status", [
    (head("GET /" + "a" * MAX_REQUEST_LINE + " HTTP/1.1", "Host: h"), 414),
    (head("GET / HTTP/1.1", "Host: h", *[f"X-{i}: v" for i in range(MAX_HEADERS + 1)]), 431),
    (head("GET / HTTP/1.1", "Host: h", "X: " + "v" * MAX_HEAD), 431),
    (head("PRI * HTTP/2.0"), 505),
    (head("GET / HTTP/2.0", "Host: h"), 505),
    (head("GET / HTTP/1.1"), 400),  # no Host
    (head("GET http://evil/ HTTP/1.1", "Host: h"), 400),  # absolute form
    (head("GET /../../etc/passwd HTTP/1.1", "Host: h"), 400),
    (head("GET /static/..%2f..%2fetc/passwd HTTP/1.1", "Host: h"), 400),
    (head("GET /%2e%2e/etc/passwd HTTP/1.1", "Host: h"), 400),
    (head("GET /a%00b HTTP/1.1", "Host: h"), 400),
    (head("GET /a%5c..%5cb HTTP/1.1", "Host: h"), 400),
    (head("GET / HTTP/1.1", "Host: h", " folded"), 400),
    (head("GET / HTTP/1.1", "Host: h", "Host: i"), 400),
    (head("POST / HTTP/1.1", "Host: h", "Content-Length: 1", "Content-Length: 2"), 400),
    (head("POST / HTTP/1.1", "Host: h", "Transfer-Encoding: chunked"), 501),
    (head("POST / HTTP/1.1", "Host: h", "Content-Length: -1"), 400),
    (head("DELETE / HTTP/1.1", "Host: h"), 405),
    (head("BREW / HTTP/1.1", "Host: h"), 501),
    (head("GET / HTTP/1.1", "Host: h", "Bad Name: v"), 400),
    (head("GET / HTTP/1.1", "Host: h", "X: a\x01b"), 400),
    (head("GET  / HTTP/1.1", "Host: h"), 400),
])
def test_refused(raw: bytes, status: int) -> None:
    assert status_of(raw) == status


def test_h2c_upgrade_headers_are_just_headers() -> None:
    r = parse_head(head("GET / HTTP/1.1", "Host: h", "Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c",
                        "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"))
    assert r.method == "GET" and r.header("upgrade") == "h2c"  # parsed; nothing acts on it


def test_form_and_cookies() -> None:
    assert parse_form(b"a=1&b=%3Cx%3E&a=2") == {"a": "1", "b": "<x>"}
    with pytest.raises(HttpError):
        parse_form("é=1".encode())
    assert parse_cookies('x=1; y="2"; bad; =z') == {"x": "1", "y": "2"}


def test_response_refuses_header_injection() -> None:
    assert Response(200, b"hi", "text/plain").encode().startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Connection: close" in Response().encode()
    with pytest.raises(ValueError):
        Response(303, headers=[("Location", "/\r\nSet-Cookie: x=1")]).encode()
    assert Response(200, b"body").encode(head_only=True).endswith(b"\r\n\r\n")
