"""The table of extractors: which one reads a flow, chosen by port or by its first bytes.

One row per extractor module (extract_dns, extract_tls, extract_quic, extract_http), in the
order they are tried. Port rows come first: a DNS port decides whatever the payload looks
like. Content rows then sniff the first payload of a flow direction, so TLS on 8443 or
HTTP on 8080 are read too. The flow inspector (appliance/pcap/inspect.py) and the live capture
drive every row the same way: ``datagram`` for stateless per-datagram parsing, else a
``session`` per flow direction, fed in sequence order when ``ordered``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from filters import extract_dns, extract_http, extract_quic, extract_tls
from filters.extraction import Extraction, Session
from filters.packet import TCP, UDP

__all__ = ["ExtractorSpec", "EXTRACTORS", "DOT_PORT", "DOT_ALPN", "select", "is_dot"]

# RFC 7858 (DNS over TLS) and RFC 9250 (DNS over QUIC) both use port 853; their ALPN
# identifiers are "dot" and "doq" (IANA TLS ALPN registry).
DOT_PORT = 853
DOT_ALPN = frozenset({b"dot", b"doq"})


@dataclass(frozen=True)
class ExtractorSpec:
    proto: str  # the "proto" of a report: dns, tls, quic, http
    transport: int  # TCP or UDP
    ports: frozenset[int]  # chosen on these ports (either end) whatever the payload is
    sniff: Callable[[bytes], bool] | None  # chosen on any port when the first payload matches
    session: Callable[[], Session] | None = None  # state per flow direction
    datagram: Callable[[bytes], Extraction] | None = None  # stateless, one datagram at a time
    ordered: bool = False  # feed the session TCP bytes in sequence order (tcp_stream.py)


EXTRACTORS: tuple[ExtractorSpec, ...] = (
    ExtractorSpec("dns", UDP, extract_dns.UDP_PORTS, None, datagram=extract_dns.message_names),
    ExtractorSpec("dns", TCP, extract_dns.TCP_PORTS, None, session=extract_dns.DnsTcpSession, ordered=True),
    ExtractorSpec("tls", TCP, frozenset(), extract_tls.looks_like_tls,
                  session=extract_tls.ClientHelloReassembler, ordered=True),
    ExtractorSpec("quic", UDP, frozenset(), extract_quic.looks_like_initial,
                  session=extract_quic.QuicInitialSession),
    # Arrival order, not sequence order: request heads are read where segments open them,
    # so the body segments in between need not be captured at all (extract_http.py).
    ExtractorSpec("http", TCP, frozenset(), extract_http.looks_like_http, session=extract_http.HttpSession),
)

_BY_PORT: dict[tuple[int, int], ExtractorSpec] = {
    (spec.transport, port): spec for spec in EXTRACTORS for port in spec.ports
}
_SNIFFERS: dict[int, tuple[ExtractorSpec, ...]] = {
    t: tuple(s for s in EXTRACTORS if s.transport == t and s.sniff is not None) for t in (TCP, UDP)
}


def select(transport: int, sport: int, dport: int, payload: bytes) -> ExtractorSpec | None:
    """The extractor for a flow direction whose first payload is ``payload``, or None."""
    spec = _BY_PORT.get((transport, dport)) or _BY_PORT.get((transport, sport))
    if spec is not None:
        return spec
    for spec in _SNIFFERS.get(transport, ()):
        if spec.sniff(payload):  # type: ignore[misc]
            return spec
    return None


def is_dot(sport: int, dport: int, alpn: tuple[bytes, ...]) -> bool:
    """DNS over TLS or QUIC: port 853 at either end, or a DoT/DoQ ALPN offered."""
    return sport == DOT_PORT or dport == DOT_PORT or any(a in DOT_ALPN for a in alpn)
