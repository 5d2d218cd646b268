"""appliance/web/http.py: request parsing (h11 underneath) and its limits (sans-IO)."""

from __future__ import annotations

import pytest

from appliance.web.http import (
    MAX_BODY,
    MAX_HEAD,
    MAX_HEADERS,
    MAX_REQUEST_LINE,
    HttpError,
    RequestParser,
    Response,
    parse_cookies,
    parse_form,
    parse_head,
)


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


# --- RequestParser: h11 fed the bytes as they arrive, our limits on top ---------------------

def feed(data: bytes, step: int = 0):
    """Feed ``data`` whole (step 0) or ``step`` bytes at a time: (the Request or None, parser)."""
    p = RequestParser()
    step = step or len(data)
    for i in range(0, len(data), step):
        r = p.feed(data[i:i + step])
        if r is not None:
            return r, p
    return None, p


def refused(data: bytes, step: int = 0) -> HttpError:
    with pytest.raises(HttpError) as exc:
        feed(data, step)
    return exc.value


def post(*headers: str | bytes, body: bytes = b"") -> bytes:
    lines = [b"POST /login HTTP/1.1", b"Host: h"]
    lines += [h if isinstance(h, bytes) else h.encode("latin-1") for h in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@pytest.mark.parametrize("value", [
    b"\xb2",  # '²' in Latin-1: str.isdigit() is True and int() raises
    "²".encode(), "١".encode(), "１".encode(), b"1\xb2", b"\xb9\xb2",
])
@pytest.mark.parametrize("step", [0, 1])
def test_unicode_digit_content_length_is_400(value: bytes, step: int) -> None:
    assert refused(post(b"Content-Length: " + value, body=b"x"), step).status == 400
    with pytest.raises(HttpError) as exc:
        parse_head(b"POST /login HTTP/1.1\r\nHost: h\r\nContent-Length: " + value)
    assert exc.value.status == 400


@pytest.mark.parametrize("value", ["", "1.0", "+1", "-0", "0x10", "1 2", "12abc", " ", "1e3", "9" * 21, "9" * 5000])
def test_malformed_content_length_is_400(value: str) -> None:
    assert refused(post(f"Content-Length: {value}")).status == 400


def test_content_length_over_the_body_cap_is_413_before_any_body() -> None:
    assert refused(post(f"Content-Length: {MAX_BODY + 1}")).status == 413  # head only: no body sent
    assert refused(post("Content-Length: " + "9" * 20)).status == 413  # 20 digits: h11's longest
    r, _ = feed(post(f"Content-Length: {MAX_BODY}", body=b"a" * MAX_BODY), step=1000)
    assert r is not None and len(r.body) == MAX_BODY == r.content_length


@pytest.mark.parametrize("headers", [
    ("Content-Length: 1", "Content-Length: 2"), ("Content-Length: 1, 2",),
    ("Content-Length: 2", "Content-Length: 1, 2"),
])
def test_conflicting_content_lengths_are_400(headers: tuple[str, ...]) -> None:
    assert refused(post(*headers, body=b"xx")).status == 400


def test_repeated_identical_content_length_is_one_length() -> None:
    # h11 keeps one value when every copy agrees; the body is framed by that one length
    for headers in (("Content-Length: 2", "Content-Length: 2"), ("Content-Length: 2, 2",)):
        r, _ = feed(post(*headers, body=b"ab" + b"GET /x HTTP/1.1\r\n\r\n"))
        assert r is not None and r.body == b"ab" and r.header("content-length") == "2"


@pytest.mark.parametrize("headers,body", [
    (("Transfer-Encoding: chunked",), b"5\r\nhello\r\n0\r\n\r\n"),
    (("Transfer-Encoding: chunked", "Content-Length: 5"), b"5\r\nhello\r\n0\r\n\r\n"),
    (("Content-Length: 5", "Transfer-Encoding: chunked"), b"hello"),
    (("Transfer-Encoding: gzip",), b""),
    (("Transfer-Encoding: gzip, chunked",), b""),
    (("Transfer-Encoding: chunked", "Transfer-Encoding: chunked"), b""),
    (("Transfer-Encoding: identity",), b""),
])
def test_transfer_encoding_refused(headers: tuple[str, ...], body: bytes) -> None:
    assert refused(post(*headers, body=body)).status == 501
    assert refused(post(*headers, body=body), step=3).status == 501


def _head_of(size: int) -> bytes:
    base, end = b"GET / HTTP/1.1\r\nHost: h\r\nX: ", b"\r\n\r\n"
    return base + b"v" * (size - len(base) - len(end)) + end


@pytest.mark.parametrize("step", [0, 1000, 4096])
def test_head_cap_is_exact_whatever_the_pieces(step: int) -> None:
    r, _ = feed(_head_of(MAX_HEAD), step)
    assert r is not None and len(r.header("x")) > MAX_HEAD - 100
    assert refused(_head_of(MAX_HEAD + 1), step).status == 431
    # a head that never ends: h11's max_incomplete_event_size stops it
    assert refused(b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"v" * (2 * MAX_HEAD), step).status == 431
    assert refused(b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: y\r\n" * MAX_HEAD, step).status == 431


@pytest.mark.parametrize("step", [0, 512])
def test_request_line_cap_tells_414_from_431(step: int) -> None:
    def line(n: int) -> bytes:  # a request line of n octets, CRLF not counted
        return b"GET /" + b"a" * (n - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"
    r, _ = feed(line(MAX_REQUEST_LINE) + b"\r\nHost: h\r\n\r\n", step)
    assert r is not None and len(r.target) == MAX_REQUEST_LINE - 13
    assert refused(line(MAX_REQUEST_LINE + 1) + b"\r\nHost: h\r\n\r\n", step).status == 414
    assert refused(line(MAX_REQUEST_LINE + 1) + b"\nHost: h\n\n", step).status == 414
    # a request line that never ends: h11 says 431 (buffer too long), the line makes it 414
    assert refused(b"GET /" + b"a" * (2 * MAX_HEAD), step).status == 414
    # a long header line after a short request line stays 431
    assert refused(b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"v" * (2 * MAX_HEAD), step).status == 431


@pytest.mark.parametrize("data", [
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
    b"GET / HTTP/3.0\r\nHost: h\r\n\r\n",
    b"GET / HTTP/0.9\r\nHost: h\r\n\r\n",
])
def test_other_http_versions_are_505(data: bytes) -> None:
    assert refused(data).status == 505
    assert refused(data, step=1).status == 505


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n\tb\r\n\r\n",
    b"GET / HTTP/1.1\r\n folded\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1\nHost: h\nX: a\n b\n\n",
])
def test_obsolete_line_folding_refused(data: bytes) -> None:
    assert refused(data).status == 400
    assert refused(data, step=1).status == 400


@pytest.mark.parametrize("data", [
    b"GET /\r\n\r\n",  # HTTP/0.9
    b"GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n",  # bare CR
    b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x1bb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX : v\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\n: v\r\n\r\n",
    b"GET / http/1.1\r\nHost: h\r\n\r\n",
    b" GET / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nHost: h\r\n\r\n",
    b"GET * HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64) + b"\r\n\r\n",  # a TLS ClientHello
])
def test_malformed_heads_are_400(data: bytes) -> None:
    assert refused(data).status == 400
    assert refused(data, step=1).status == 400


def test_refusals_do_not_echo_the_request() -> None:
    e = refused(b"GET  /<script>alert(1)</script> HTTP/1.1\r\nHost: h\r\n\r\n")
    assert e.status == 400 and "<script>" not in e.message and e.message


def test_body_read_in_pieces_and_pipelined_bytes_ignored() -> None:
    data = post("Content-Length: 7", "Content-Type: application/x-www-form-urlencoded",
                body=b"a=1&b=2" + b"POST /api/update HTTP/1.1\r\nHost: h\r\n\r\n")
    for step in (0, 1, 5):
        r, p = feed(data, step)
        assert r is not None and r.body == b"a=1&b=2" and r.form() == {"a": "1", "b": "2"}
        assert p.request is r and r.path == "/login"


def test_incomplete_request_is_not_a_request() -> None:
    p = RequestParser()
    assert p.feed(b"GET / HTTP/1.1\r\nHost: h\r\n") is None and p.request is None
    assert p.feed(b"\r\n") is not None
    q = RequestParser()
    assert q.feed(post("Content-Length: 4", body=b"ab")) is None and q.request is not None
    assert q.feed(b"cd").body == b"abcd"
    with pytest.raises(ValueError):
        RequestParser().feed(b"")  # the end of the stream is the caller's
