"""HTTP/1.1 requests and responses as bytes (sans-IO: no sockets, tested on its own).

Deliberately a small subset of RFC 9112: one request per connection (every response says
``Connection: close``), origin-form targets only, bodies only with ``Content-Length`` (a
``Transfer-Encoding`` is refused: with no chunked decoder there is no CL/TE smuggling), no
obsolete line folding, no HTTP/0.9, no HTTP/2. An HTTP/2 connection preface (``PRI *
HTTP/2.0``) gets 505; ``Upgrade: h2c`` and ``HTTP2-Settings`` are ignored — the request is
answered as HTTP/1.1 through the same routes and the same auth checks (CVE-2026-32136 was
an auth bypass through exactly that upgrade in another product's web UI).

Every limit is a named constant; a request over one is answered 400/413/414/431 and closed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

__all__ = ["HttpError", "Request", "Response", "parse_head", "parse_form", "parse_cookies",
           "MAX_REQUEST_LINE", "MAX_HEAD", "MAX_HEADERS", "MAX_BODY", "METHODS"]

# nginx's default large_client_header_buffers is 8 kB per line; our URLs are short.
MAX_REQUEST_LINE = 8192
# The whole head (request line + headers): 16 kB holds any browser's cookies for this host.
MAX_HEAD = 16384
MAX_HEADERS = 64
# Bodies are small forms (a name, a reason of at most 500 characters, a token).
MAX_BODY = 16384
METHODS = ("GET", "HEAD", "POST")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
_TARGET = re.compile(rb"/[\x21-\x7e]*")
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

    def encode(self, head_only: bool = False, extra: list[tuple[str, str]] = ()) -> bytes:
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


def parse_head(head: bytes) -> Request:
    """Parse the request line and headers (``head`` ends before the blank line).

    Raises HttpError with the status to answer."""
    if len(head) > MAX_HEAD:
        raise HttpError(431, "request head too large")
    lines = head.split(b"\r\n")
    line = lines[0]
    if len(line) > MAX_REQUEST_LINE:
        raise HttpError(414, "request line too long")
    if line.startswith(b"PRI * HTTP/2"):
        raise HttpError(505, "HTTP/2 is not served here; use HTTP/1.1")
    parts = line.split(b" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method_b, target_b, version_b = parts
    m = _VERSION.fullmatch(version_b)
    if not m:
        raise HttpError(400, "malformed HTTP version")
    if m.group(1) != b"1":
        raise HttpError(505, "only HTTP/1.x is served here")
    if not _TOKEN.fullmatch(method_b):
        raise HttpError(400, "malformed method")
    method = method_b.decode()
    if method not in METHODS:
        raise HttpError(405 if method in ("PUT", "DELETE", "PATCH", "OPTIONS") else 501,
                        f"method {method} not allowed")
    if not _TARGET.fullmatch(target_b):
        raise HttpError(400, "only origin-form targets (/path?query) are accepted")
    path, query = _check_path(target_b)
    headers: dict[str, str] = {}
    if len(lines) - 1 > MAX_HEADERS:
        raise HttpError(431, "too many header fields")
    for raw in lines[1:]:
        if not raw:
            continue
        if raw[:1] in (b" ", b"\t"):
            raise HttpError(400, "obsolete line folding is refused")
        name_b, sep, value_b = raw.partition(b":")
        if not sep or not _TOKEN.fullmatch(name_b):
            raise HttpError(400, "malformed header field")
        if any(c < 0x20 and c != 0x09 or c == 0x7f for c in value_b):
            raise HttpError(400, "control characters in a header value")
        name = name_b.decode().lower()
        value = value_b.strip(b" \t").decode("latin-1")
        if name in ("content-length", "host") and name in headers:
            raise HttpError(400, f"repeated {name} header")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if m.group(2) != b"0" and "host" not in headers:
        raise HttpError(400, "HTTP/1.1 needs a Host header")
    if "transfer-encoding" in headers:
        raise HttpError(501, "Transfer-Encoding is not accepted; send Content-Length")
    length = 0
    if "content-length" in headers:
        cl = headers["content-length"]
        if not cl.isdigit() or len(cl) > 12:
            raise HttpError(400, "malformed Content-Length")
        length = int(cl)
        if length > MAX_BODY:
            raise HttpError(413, f"request body over {MAX_BODY} bytes")
    elif method == "POST":
        raise HttpError(411, "POST needs a Content-Length")
    return Request(method, target_b.decode("ascii"), path, query, headers, content_length=length)


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
