"""TLS ClientHello: server name (SNI), ALPN and ECH, from the client's first flight (sans-IO).

The name a TLS client asks for travels in clear in the ClientHello's server_name extension
(RFC 6066 §3) — in TLS 1.3 too (RFC 8446 §4.1.2) — unless Encrypted Client Hello hides it;
then the outer hello still carries a public name and an encrypted_client_hello extension
(type 0xfe0d, draft-ietf-tls-esni), which is reported as ``ech``.

The hello may span TCP segments (Chrome's post-quantum key share pushes it past one MSS)
and TLS records (a handshake message may be fragmented over records, RFC 8446 §5.1, which
DPI-evasion tools exploit). :class:`ClientHelloReassembler` is fed the client's stream in
order and buffers up to MAX_FIRST_FLIGHT bytes. :func:`parse_client_hello` reads a complete
hello's body and is shared with QUIC, whose CRYPTO frames carry the same message without
the record layer (RFC 9001 §4).

Nothing here raises on bad input: every outcome is an Extraction (extraction.py).
"""

from __future__ import annotations

from filters.extraction import MORE, Extraction, Status

__all__ = [
    "MAX_RECORD", "MAX_CLIENT_HELLO", "MAX_FIRST_FLIGHT", "MAX_ALPN", "EXT_SERVER_NAME",
    "EXT_ALPN", "EXT_ECH", "looks_like_tls", "parse_client_hello", "client_hello_from_handshake",
    "ClientHelloReassembler",
]

CONTENT_HANDSHAKE = 22  # RFC 8446 §5.1 ContentType.handshake
HS_CLIENT_HELLO = 1  # RFC 8446 §4 HandshakeType.client_hello
EXT_SERVER_NAME = 0  # RFC 6066 §3
EXT_ALPN = 16  # RFC 7301 §3.1
EXT_ECH = 0xFE0D  # draft-ietf-tls-esni: encrypted_client_hello
_NAME_TYPE_HOST = 0  # RFC 6066 §3 NameType.host_name

# RFC 8446 §5.1: a TLSPlaintext record's length MUST NOT exceed 2^14 octets.
MAX_RECORD = 1 << 14
# A ClientHello we read whole. Browsers' hellos are 0.5-2.5 KiB (Chrome's X25519MLKEM768 key
# share is 1,216 octets of it); one full record (2^14) leaves room for large PSK tickets.
# A larger hello is legal (up to 2^24) but is not one a real client sends.
MAX_CLIENT_HELLO = MAX_RECORD
# Bytes of the client's stream buffered while the hello is incomplete: the hello plus the
# headers of the records it is split into (5 octets each; an evasion tool splitting it into
# ~800 tiny records still fits). Bounds per-flow memory in the flow table.
MAX_FIRST_FLIGHT = MAX_CLIENT_HELLO + 4096
# Offered ALPN protocols kept for the report (browsers offer 2-3).
MAX_ALPN = 16


def looks_like_tls(payload: bytes) -> bool:
    """Does this stream start with a TLS handshake record (SSL 3.0 to TLS 1.3 framing)?"""
    return len(payload) >= 3 and payload[0] == CONTENT_HANDSHAKE and payload[1] == 3 and payload[2] <= 4


def _u16(b: bytes, p: int) -> int:
    return (b[p] << 8) | b[p + 1]


def parse_client_hello(body: bytes) -> Extraction:
    """Read a complete ClientHello body (after its 4-byte handshake header)."""
    n = len(body)
    p = 2 + 32  # legacy_version, random
    if p + 1 > n:
        return Extraction(Status.ERROR, reason="ClientHello truncated before session id")
    p += 1 + body[p]  # legacy_session_id <0..32>
    if p + 2 > n:
        return Extraction(Status.ERROR, reason="ClientHello truncated before cipher suites")
    p += 2 + _u16(body, p)  # cipher_suites <2..2^16-2>
    if p + 1 > n:
        return Extraction(Status.ERROR, reason="ClientHello truncated before compression methods")
    p += 1 + body[p]  # legacy_compression_methods <1..2^8-1>
    if p > n:
        return Extraction(Status.ERROR, reason="ClientHello truncated in compression methods")
    if p == n:
        # SSL 3.0 / early TLS 1.0 hellos may end here (RFC 5246 §7.4.1.2): no extensions.
        return Extraction(Status.DONE, reason="no extensions")
    if p + 2 > n:
        return Extraction(Status.ERROR, reason="ClientHello truncated in the extensions length")
    end = p + 2 + _u16(body, p)
    p += 2
    if end > n:
        return Extraction(Status.ERROR, reason="extensions run past the end of the ClientHello")
    sni: bytes | None = None
    alpn: list[bytes] = []
    ech = False
    while p + 4 <= end:
        etype = _u16(body, p)
        elen = _u16(body, p + 2)
        p += 4
        eend = p + elen
        if eend > end:
            return Extraction(Status.ERROR, (sni,) if sni else (), "extension runs past the extensions",
                              tuple(alpn), ech)
        if etype == EXT_SERVER_NAME and sni is None:
            sni = _server_name(body, p, eend)
        elif etype == EXT_ALPN and not alpn:
            alpn = _alpn(body, p, eend)
        elif etype == EXT_ECH:
            ech = True
        p = eend
    reason = "" if p == end else "trailing bytes after the last extension"
    if sni is None and not reason:
        reason = "no server_name"
    return Extraction(Status.DONE, (sni,) if sni else (), reason, tuple(alpn), ech)


def _server_name(b: bytes, p: int, end: int) -> bytes | None:
    """The first host_name in a ServerNameList (RFC 6066 §3 allows one per type)."""
    if p + 2 > end:
        return None
    lend = min(end, p + 2 + _u16(b, p))
    p += 2
    while p + 3 <= lend:
        ntype = b[p]
        ln = _u16(b, p + 1)
        p += 3
        if p + ln > lend:
            return None
        if ntype == _NAME_TYPE_HOST and ln:
            # RFC 6066: no trailing dot; strip one anyway, names are compared without it.
            name = b[p:p + ln].lower()
            return name[:-1] if name.endswith(b".") else name or None
        p += ln
    return None


def _alpn(b: bytes, p: int, end: int) -> list[bytes]:
    if p + 2 > end:
        return []
    lend = min(end, p + 2 + _u16(b, p))
    p += 2
    out: list[bytes] = []
    while p < lend and len(out) < MAX_ALPN:
        ln = b[p]
        if p + 1 + ln > lend:
            break
        out.append(b[p + 1:p + 1 + ln])
        p += 1 + ln
    return out


def client_hello_from_handshake(hs: bytes | bytearray) -> Extraction:
    """``hs`` is the start of a handshake byte stream (record layer removed: TLS records'
    payloads, or QUIC's CRYPTO stream). MORE until the whole ClientHello is there."""
    if len(hs) < 4:
        return MORE
    if hs[0] != HS_CLIENT_HELLO:
        return Extraction(Status.NONE, reason=f"handshake type {hs[0]}, not a ClientHello")
    ln = (hs[1] << 16) | (hs[2] << 8) | hs[3]
    if ln > MAX_CLIENT_HELLO:
        return Extraction(Status.ERROR, reason=f"ClientHello of {ln} octets: larger than {MAX_CLIENT_HELLO}")
    if len(hs) < 4 + ln:
        return MORE
    return parse_client_hello(bytes(hs[4:4 + ln]))


class ClientHelloReassembler:
    """The client side of one TCP connection, fed its segments' payloads in order (the
    flow layer orders them by sequence number, filters/tcp_stream.py). Answers MORE until
    the ClientHello is complete, then DONE once; NONE when the stream is not TLS."""

    def __init__(self, cap: int = MAX_FIRST_FLIGHT) -> None:
        self._buf = bytearray()
        self._cap = cap
        self._result: Extraction | None = None

    def feed(self, data: bytes) -> Extraction:
        if self._result is not None:
            return Extraction(Status.NONE, reason="ClientHello already read")
        if not self._buf and not looks_like_tls(data[:3]) and len(data) >= 3:
            self._result = Extraction(Status.NONE, reason="not a TLS handshake record")
            return self._result
        room = self._cap - len(self._buf)
        self._buf += data[:room]
        res = self._parse()
        if res.status == Status.MORE:
            if len(self._buf) >= self._cap:
                res = Extraction(Status.ERROR, reason=f"first flight larger than {self._cap} octets")
            else:
                return res
        self._result = res
        self._buf = bytearray()  # done with it: the flow keeps no bytes
        return res

    def _parse(self) -> Extraction:
        buf = self._buf
        n = len(buf)
        hs = bytearray()
        p = 0
        while p + 5 <= n:
            ctype, major, ln = buf[p], buf[p + 1], (buf[p + 3] << 8) | buf[p + 4]
            if ctype != CONTENT_HANDSHAKE or major != 3:
                what = "not a TLS handshake record" if p == 0 else "a non-handshake record interrupts the ClientHello"
                return Extraction(Status.NONE if p == 0 else Status.ERROR, reason=what)
            if ln > MAX_RECORD:
                return Extraction(Status.ERROR, reason=f"record of {ln} octets: longer than 2^14 (RFC 8446 §5.1)")
            if p + 5 + ln > n:
                break  # the rest of this record is in a later segment
            hs += buf[p + 5:p + 5 + ln]
            p += 5 + ln
            res = client_hello_from_handshake(hs)
            if res.status != Status.MORE:
                return res
        return MORE
