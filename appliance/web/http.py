"""HTTP/1.1 requests and responses as bytes (sans-IO: no sockets, tested on its own).

The request syntax is parsed by h11 (``RequestParser`` feeds it the bytes as they arrive),
not by code of ours: a hand-written parser is where the classic bugs live — ``str.isdigit()``
accepting ``Content-Length: ²`` and ``int()`` then raising, repeated or conflicting lengths,
bare CRs, header-name whitespace — and h11 is small, pure Python, sans-IO like this module,
and checks the grammar of RFC 9112 (request line, field names and values, a single
Content-Length of at most 20 ASCII digits, Host present once in HTTP/1.1). Its errors become
HttpError with h11's status (400, 431, 501), so no malformed head ever reaches a traceback.

What h11 does not decide stays ours, each limit a named constant:

- the head cap: MAX_HEAD is h11's ``max_incomplete_event_size`` (a head still incomplete past
  it is refused) and is checked again on a complete head, which h11 accepts at any size when
  it arrives in one piece; MAX_REQUEST_LINE tells 414 from 431; MAX_HEADERS fields at most;
- the body cap: MAX_BODY is checked against Content-Length before a byte of body is read (413);
- the subset we serve: one request per connection (every response says ``Connection:
  close``; h11 parses only the first request), GET/HEAD/POST (405/501), origin-form targets
  with a checked path, HTTP/1.x (505 otherwise: an HTTP/2 preface ``PRI * HTTP/2.0`` is a
  well-formed request line to h11), bodies only by Content-Length (any Transfer-Encoding is
  501, so no chunked body is ever decoded and there is no CL/TE smuggling), POST needs a
  length (411), no obsolete line folding (400: h11 would unfold it), no control characters in
  values (400: h11 lets them through);
- ``Upgrade: h2c`` and ``HTTP2-Settings`` are plain headers: the request is answered as
  HTTP/1.1 through the same routes and the same auth checks (CVE-2026-32136 was an auth
  bypass through exactly that upgrade in another product's web UI).

Responses are written by ``Response.encode`` (a fixed head of ours; no header may hold a line
break). A request over a limit is answered 400/411/413/414/431/501/505 and the connection closed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

import h11

__all__ = ["HttpError", "Request", "Response", "RequestParser", "parse_head", "parse_form",
           "parse_cookies", "MAX_REQUEST_LINE", "MAX_HEAD", "MAX_HEADERS", "MAX_BODY", "METHODS"]

# nginx's default large_client_header_buffers is 8 kB per line; our URLs are short.
MAX_REQUEST_LINE = 8192
# The whole head (request line, headers, blank line): 16 kB holds any browser's cookies for
# this host.
MAX_HEAD = 16384
MAX_HEADERS = 64
# Bodies are small forms (a name, a reason of at most 500 characters, a token).
MAX_BODY = 16384
METHODS = ("GET", "HEAD", "POST")
_TARGET = re.compile(rb"/[\x21-\x7e]*")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_FOLD = re.compile(rb"\n[ \t]")
# h11 quotes the offending bytes in some messages; the answer does not echo them back.
_QUOTED = re.compile(r":\s*(?:bytearray\(|b['\"]).*", re.DOTALL)
_NO_TE = "Transfer-Encoding is not accepted; send Content-Length"
_REASONS = {200: "OK", 204: "No Content", 303: "See Other", 400: "Bad Request", 401: "Unauthorized",
            403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
            411: "Length Required", 413: "Content Too Large", 414: "URI Too Long",
            409: "Conflict", 415: "Unsupported Media Type", 429: "Too Many Requests",
            431: "Request Header Fields Too Large", 500: "Internal Server Error",
            501: "Not Implemented", 503: "Service Unavailable", 505: "HTTP Version Not Supported",
            507: "Insufficient Storage"}


class HttpError(Exception):
    """A request we refuse; ``status`` is the answer's status code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    method: str
    target: str  # raw request target
    path: str  # percent-decoded path, checked (no "..", NUL, backslash)
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names; a repeated header's values joined by ", "
    body: bytes = b""
    client: str = ""  # the peer address
    content_length: int = 0

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default)

    @property
    def cookies(self) -> dict[str, str]:
        return parse_cookies(self.headers.get("cookie", ""))

    def form(self) -> dict[str, str]:
        ctype = self.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            raise HttpError(415, "forms must be application/x-www-form-urlencoded")
        return parse_form(self.body)


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)

    def encode(self, head_only: bool = False, extra: Sequence[tuple[str, str]] = ()) -> bytes:
        lines = [f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}",
                 f"Content-Type: {self.content_type}", f"Content-Length: {len(self.body)}",
                 "Connection: close"]
        for k, v in list(extra) + self.headers:
            if "\r" in k + v or "\n" in k + v:  # header injection: never send such a header
                raise ValueError(f"header {k!r} contains a line break")
            lines.append(f"{k}: {v}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only else head + self.body


def _check_path(raw: bytes) -> tuple[str, dict[str, str]]:
    path_b, _, query_b = raw.partition(b"?")
    try:
        path = unquote(path_b.decode("ascii"), errors="strict")
    except UnicodeDecodeError:
        raise HttpError(400, "the path is not valid UTF-8") from None
    if "\x00" in path or "\\" in path:
        raise HttpError(400, "bad characters in the path")
    segs = path.split("/")
    if any(s in ("..", ".") for s in segs):
        raise HttpError(400, "dot segments in the path are refused")
    try:
        query = dict(parse_qsl(query_b.decode("ascii"), keep_blank_values=True, strict_parsing=False,
                               max_num_fields=32))
    except (ValueError, UnicodeDecodeError):
        raise HttpError(400, "bad query string") from None
    return path, query


class RequestParser:
    """One request read from a connection's bytes with h11 (sans-IO).

    ``feed`` each piece as it arrives, of any size; it returns the Request once the head and
    the whole body are in (None while more is needed) and raises HttpError with the status to
    answer. The end of the stream is the caller's to handle: a request cut short is not
    answered. Bytes after the body (a pipelined request) are never parsed."""

    def __init__(self) -> None:
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        # What was fed before the head was complete: the raw head for the checks h11 does not
        # make (its size, folding). Bounded: h11 refuses an incomplete head past MAX_HEAD, so
        # this holds at most MAX_HEAD plus the last piece fed.
        self._raw = bytearray()
        self._body = bytearray()
        self.request: Request | None = None  # set once the head is parsed and accepted

    def feed(self, data: bytes) -> Request | None:
        if not data:
            raise ValueError("feed() needs bytes; the end of the stream is the caller's")
        if self.request is None:
            self._raw += data
        self._h11.receive_data(data)
        try:
            while True:
                event = self._h11.next_event()
                if event is h11.NEED_DATA:
                    return None
                if isinstance(event, h11.Request):
                    self.request = self._accept(event)
                elif isinstance(event, h11.Data):
                    self._body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    assert self.request is not None
                    self.request.body = bytes(self._body)
                    return self.request
                else:  # nothing else comes before EndOfMessage without an end of stream
                    raise HttpError(400, "malformed request")
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431 and self._line_too_long(self._raw):
                raise HttpError(414, "request line too long") from None
            if exc.error_status_hint == 501:  # h11's only 501: a coding other than chunked
                raise HttpError(501, _NO_TE) from None
            raise HttpError(exc.error_status_hint, _QUOTED.sub("", str(exc)) or "malformed request") from None
        except ValueError:  # e.g. an h11 without its 20-digit cap int()ing a 5000-digit length
            raise HttpError(400, "malformed request") from None

    @staticmethod
    def _line_too_long(raw: bytes | bytearray) -> bool:
        end = raw.find(b"\n", 0, MAX_REQUEST_LINE + 2)
        if end < 0:
            return len(raw) > MAX_REQUEST_LINE + 1
        return end - (raw[end - 1:end] == b"\r") > MAX_REQUEST_LINE

    def _accept(self, ev: h11.Request) -> Request:
        """Our checks on a head h11 has parsed: limits, the subset we serve, the path."""
        head = bytes(self._raw[:len(self._raw) - len(self._h11.trailing_data[0])])
        self._raw = bytearray()
        if len(ev.method) + len(ev.target) + 10 > MAX_REQUEST_LINE:  # "M T HTTP/1.1" without CRLF
            raise HttpError(414, "request line too long")
        if len(head) > MAX_HEAD:
            raise HttpError(431, "request head too large")
        if len(ev.headers) > MAX_HEADERS:
            raise HttpError(431, "too many header fields")
        if not ev.http_version.startswith(b"1."):
            raise HttpError(505, "HTTP/2 is not served here; use HTTP/1.1" if ev.method == b"PRI"
                            else "only HTTP/1.x is served here")
        method = ev.method.decode("ascii")
        if method not in METHODS:
            raise HttpError(405 if method in ("PUT", "DELETE", "PATCH", "OPTIONS") else 501,
                            f"method {method} not allowed")
        if not _TARGET.fullmatch(ev.target):
            raise HttpError(400, "only origin-form targets (/path?query) are accepted")
        path, query = _check_path(ev.target)
        if _FOLD.search(head):
            raise HttpError(400, "obsolete line folding is refused")
        headers: dict[str, str] = {}
        for name_b, value_b in ev.headers:  # names lower-cased by h11, values stripped
            if _CONTROL.search(value_b):
                raise HttpError(400, "control characters in a header value")
            name = name_b.decode("ascii")
            value = value_b.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if ev.http_version != b"1.0" and "host" not in headers:
            raise HttpError(400, "HTTP/1.1 needs a Host header")
        if "transfer-encoding" in headers:
            raise HttpError(501, _NO_TE)
        length = 0
        if "content-length" in headers:  # h11 checked it: one value of 1 to 20 ASCII digits
            length = int(headers["content-length"])
            if length > MAX_BODY:
                raise HttpError(413, f"request body over {MAX_BODY} bytes")
        elif method == "POST":
            raise HttpError(411, "POST needs a Content-Length")
        return Request(method, ev.target.decode("ascii"), path, query, headers, content_length=length)


def parse_head(head: bytes) -> Request:
    """Parse a whole head (``head`` ends before the blank line) with RequestParser; the body
    is not read (``content_length`` says how long it is). Raises HttpError with the status."""
    parser = RequestParser()
    parser.feed(head + b"\r\n\r\n")
    if parser.request is None:
        raise HttpError(400, "incomplete request head")
    return parser.request


def parse_form(body: bytes) -> dict[str, str]:
    """application/x-www-form-urlencoded -> {name: value}; the first of repeated names wins."""
    try:
        pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, strict_parsing=False,
                          max_num_fields=32)
    except (ValueError, UnicodeDecodeError):
        raise HttpError(400, "malformed form body") from None
    out: dict[str, str] = {}
    for k, v in pairs:
        out.setdefault(k, v)
    return out


def parse_cookies(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(";")[:64]:
        k, sep, v = part.strip().partition("=")
        if sep and k and k not in out:
            out[k] = v.strip().strip('"')
    return out
