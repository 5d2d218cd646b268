"""HTTP/1.x requests: the host each one asks for (sans-IO).

A request names its host in the Host header (RFC 9112 §3.2) or, when sent to a proxy, in
an absolute-form request-target (``GET http://host/ HTTP/1.1``, RFC 9112 §3.2.2, which
then wins over Host) or CONNECT's authority-form (``CONNECT host:443``, §3.2.3). The port,
IPv6 brackets and a trailing dot are removed; the name is lower-cased.

:class:`HttpSession` is fed the client's segments as they arrive. A request is recognised
where a segment starts with a method token, or right after the previous request's header
block and declared body in the same buffer (pipelining, RFC 9112 §9.3.2). Bodies are not
followed across segments (a segment that merely continues a body does not start with a
method and is skipped), so inspecting a connection needs only the segments that open
requests — the same selection the live capture makes.
"""

from __future__ import annotations

from filters.extraction import MORE, Extraction, Status

__all__ = ["METHODS", "MAX_HEAD", "MAX_PIPELINED", "looks_like_http", "request_host", "HttpSession"]

# RFC 9110 §9 methods, WebDAV's (RFC 4918 §9, RFC 3253, RFC 5323) and PATCH (RFC 5789).
# The HTTP/2 preface "PRI * HTTP/2.0" (RFC 9113 §3.4) is deliberately absent: no Host.
METHODS = frozenset({
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
    b"PROPFIND", b"PROPPATCH", b"MKCOL", b"COPY", b"MOVE", b"LOCK", b"UNLOCK", b"SEARCH",
    b"REPORT", b"MKACTIVITY", b"CHECKOUT", b"MERGE", b"NOTIFY", b"SUBSCRIBE", b"UNSUBSCRIBE",
})
_MAX_METHOD = max(len(m) for m in METHODS)
# The request line and header fields we buffer for one request: Apache's default
# LimitRequestFieldSize is 8,190 octets per field, nginx's large_client_header_buffers
# 4 x 8 KiB in all; a head larger than 16 KiB is refused by common servers anyway.
MAX_HEAD = 16 * 1024
# Requests read from one buffer (pipelining); bounds the work per segment.
MAX_PIPELINED = 64


def looks_like_http(payload: bytes) -> bool:
    """Does this payload start with ``METHOD SP``?"""
    sp = payload.find(b" ", 0, _MAX_METHOD + 1)
    return sp > 0 and payload[:sp] in METHODS


def _strip_host(value: bytes) -> bytes:
    """host[:port] or [v6]:port -> host, lower-cased, without a trailing dot."""
    v = value.strip(b" \t")
    if v.startswith(b"["):
        end = v.find(b"]")
        v = v[1:end] if end > 0 else v[1:]
    else:
        colon = v.rfind(b":")
        if colon >= 0 and (v[colon + 1:].isdigit() or colon == len(v) - 1):
            v = v[:colon]
    v = v.lower()
    return v[:-1] if v.endswith(b".") else v


def _authority(target: bytes) -> bytes | None:
    """The host of an absolute-form request-target ``scheme://[userinfo@]host[:port]/...``."""
    sep = target.find(b"://")
    if sep <= 0:
        return None
    rest = target[sep + 3:]
    for stop in (b"/", b"?", b"#"):
        i = rest.find(stop)
        if i >= 0:
            rest = rest[:i]
    at = rest.rfind(b"@")
    return rest[at + 1:] if at >= 0 else rest


def request_host(head: bytes) -> Extraction:
    """The host of one complete request head (request line and fields, without the empty
    line that ends it). ``alpn`` is unused; DONE with no name when there is none."""
    lines = head.split(b"\n")
    parts = lines[0].rstrip(b"\r").split(b" ")
    if len(parts) != 3 or parts[0] not in METHODS or not parts[2].startswith(b"HTTP/1."):
        return Extraction(Status.ERROR, reason="not an HTTP/1.x request line")
    method, target = parts[0], parts[1]
    from_target = None
    if method == b"CONNECT":
        from_target = target  # authority-form
    elif not target.startswith(b"/") and target != b"*":
        from_target = _authority(target)
    host_field = None
    for line in lines[1:]:
        colon = line.find(b":")
        # RFC 9112 §5.1: no whitespace between a field name and the colon; such a line is
        # not a Host field (servers must reject the request).
        if colon == 4 and line[:4].lower() == b"host":
            host_field = line[5:].strip(b" \t\r")
            break
    raw = from_target if from_target else host_field
    if not raw:
        return Extraction(Status.DONE, reason="no Host")
    name = _strip_host(raw)
    return Extraction(Status.DONE, (name,) if name else (), "" if name else "empty Host")


def _content_length(head: bytes) -> int:
    """The declared body length: 0 without Content-Length; -1 when it cannot be known here
    (chunked or another transfer coding, or a malformed length)."""
    length = 0
    for line in head.split(b"\n")[1:]:
        colon = line.find(b":")
        if colon <= 0:
            continue
        name = line[:colon].lower()
        if name == b"transfer-encoding":
            return -1
        if name == b"content-length":
            v = line[colon + 1:].strip(b" \t\r")
            if not v.isdigit():
                return -1
            length = int(v)
    return length


class HttpSession:
    """The client side of one HTTP/1.x connection."""

    def __init__(self) -> None:
        self._head = bytearray()  # an incomplete request head
        self._active = False

    def feed(self, data: bytes) -> Extraction:
        if not self._active:
            if not looks_like_http(data):
                # A body segment, or the start of something else (TLS via CONNECT, h2c):
                # only a segment that opens a request is read.
                return MORE
            self._active = True
        self._head += data
        names: list[bytes] = []
        reasons: list[str] = []
        for _ in range(MAX_PIPELINED):
            end, sep = self._head.find(b"\r\n\r\n"), 4
            lf = self._head.find(b"\n\n")
            if lf >= 0 and (end < 0 or lf < end):  # bare LF line ends (RFC 9112 §2.2)
                end, sep = lf, 2
            if end < 0:
                if len(self._head) > MAX_HEAD:
                    # Read what we have: the Host line is usually early in the head.
                    res = request_host(bytes(self._head[:MAX_HEAD]))
                    self._reset()
                    return Extraction(Status.MORE, res.names, f"request head longer than {MAX_HEAD} octets")
                break
            head = bytes(self._head[:end])
            res = request_host(head)
            names += res.names
            if res.reason:
                reasons.append(res.reason)
            body = _content_length(head)
            rest = self._head[end + sep:]
            if body < 0 or body >= len(rest):
                self._reset()  # the body continues in later segments (or cannot be sized)
                break
            rest = rest[body:]
            if not looks_like_http(bytes(rest[:_MAX_METHOD + 1])):
                self._reset()
                break
            self._head = bytearray(rest)
        return Extraction(Status.MORE, tuple(names), "; ".join(reasons))

    def _reset(self) -> None:
        self._head = bytearray()
        self._active = False
