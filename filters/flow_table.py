"""Flows keyed by 5-tuple, each with its extractor's state: packets in, names out (sans-IO).

Driven the same way by ``schoolgate inspect`` (frames from a pcap file) and by tests (and
later by live capture): :meth:`FlowTable.frame` takes one captured frame and returns what
it revealed. Per flow *direction* (source → destination) the table keeps the extractor the
first payload selected (filters/extractors.py), its session and, for TCP extractors that
need sequence order, a :class:`TcpStream`. A direction whose extractor is finished keeps a
small marker, so a retransmitted ClientHello is not reported twice. A client's SYN starts
a connection afresh (both directions) and fixes where its stream starts.

Memory is bounded: at most ``max_flows`` directions, least recently used evicted first,
each holding at most MAX_FIRST_FLIGHT + MAX_PENDING_BYTES of buffered payload. TCP FIN and
RST end a direction's state.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from filters.extraction import Extraction, Session, Status
from filters.extractors import ExtractorSpec, is_dot, select
from filters.packet import TCP, UDP, Drop, Packet, decode
from filters.tcp_stream import TcpStream

__all__ = ["MAX_FLOWS", "MAX_DNS_REMEMBERED", "Found", "FlowTable"]

# Flow directions tracked at once. Each costs ~1 KiB idle and at most ~50 KiB while a
# ClientHello is being reassembled, so 16,384 bound the worst case below 1 GiB; a school's
# capture of a few minutes opens far fewer flows that are mid-handshake at any instant.
MAX_FLOWS = 16384
# DNS questions remembered to recognise their responses: responses follow queries within
# seconds, and a busy capture asks well under 65,536 questions in that time.
MAX_DNS_REMEMBERED = 65536
_FIN_RST = 0x01 | 0x04
_SYN = 0x02
_ACK = 0x10


class Found(NamedTuple):
    """One name seen in a flow (a NamedTuple: cheap to make, one per name)."""

    ts: float
    src: bytes  # packed address
    dst: bytes
    sport: int
    dport: int
    proto: str
    name: bytes
    ech: bool = False
    dot: bool = False


class _Direction:
    __slots__ = ("spec", "session", "stream", "finished")

    def __init__(self, spec: ExtractorSpec | None, stream: TcpStream | None = None) -> None:
        self.spec: ExtractorSpec | None = None
        self.session: Session | None = None
        self.stream = stream  # a TCP direction is ordered until its extractor is known
        self.finished = False
        if spec is not None:
            self.start(spec)

    def start(self, spec: ExtractorSpec) -> None:
        self.spec = spec
        self.session = spec.session() if spec.session else None
        if not spec.ordered:
            self.stream = None
        elif self.stream is None:
            self.stream = TcpStream()


_IGNORED = _Direction(None)  # shared marker: a direction no extractor reads
_IGNORED.finished = True


class FlowTable:
    def __init__(self, max_flows: int = MAX_FLOWS) -> None:
        self.max_flows = max_flows
        self._flows: OrderedDict[tuple, _Direction] = OrderedDict()
        self._syn: dict[tuple, int] = {}  # SYN sequence numbers awaiting the first data
        self.stats: Counter[str] = Counter()  # packets, drops by reason, extractor errors
        # (direction, name) of DNS questions reported: a response repeating its query's
        # name is not reported again.
        self._dns_seen: OrderedDict[tuple, None] = OrderedDict()

    def forget(self, key: tuple) -> None:
        """Drop one direction's state, keyed (src, sport, dst, dport, proto): the live
        capture (appliance/flows/capture.py) expires idle flows by time, which this table has no
        clock for."""
        self._flows.pop(key, None)
        self._syn.pop(key, None)

    def frame(self, ts: float, linktype: int, frame: bytes) -> list[Found]:
        """Decode one captured frame and feed it to its flow."""
        self.stats["frames"] += 1
        pkt = decode(frame, linktype)
        if isinstance(pkt, Drop):
            self.stats[("malformed: " if pkt.malformed else "skipped: ") + pkt.reason] += 1
            return []
        return self.packet(ts, pkt)

    def packet(self, ts: float, pkt: Packet) -> list[Found]:
        key = (pkt.src, pkt.sport, pkt.dst, pkt.dport, pkt.proto)
        if pkt.proto == TCP:
            if pkt.tcp_flags & _SYN:
                if pkt.tcp_flags & _ACK:
                    # A SYN-ACK adds nothing the client's SYN did not (the server side's
                    # stream starts at its first data), and skipping it keeps the fast
                    # path's frame selection small (filters/_select_kernels.py).
                    return []
                # A new connection: forget both directions of any earlier one.
                self._flows.pop(key, None)
                self._flows.pop((pkt.dst, pkt.dport, pkt.src, pkt.sport, TCP), None)
                self._syn[key] = pkt.seq
                if len(self._syn) > self.max_flows:
                    self._syn.pop(next(iter(self._syn)))
            elif pkt.tcp_flags & _FIN_RST and not pkt.payload:
                self._flows.pop(key, None)
                return []
        if not pkt.payload:
            return []
        flow = self._flows.get(key)
        if flow is None:
            if pkt.proto == TCP:
                # Undecided until its first in-order bytes: the first segment captured may
                # be the second one sent (the extractor is chosen on what comes first).
                stream = TcpStream()
                syn = self._syn.pop(key, None)
                if syn is not None:
                    stream.syn(syn)
                flow = _Direction(None, stream)
            else:
                spec = select(pkt.proto, pkt.sport, pkt.dport, pkt.payload)
                if spec is None:
                    # UDP keeps no marker: each datagram is looked at afresh (a QUIC Initial
                    # may follow datagrams of an earlier connection on the same ports).
                    return []
                if spec.datagram is not None:
                    return self._report(ts, pkt, spec, spec.datagram(pkt.payload))
                flow = _Direction(spec)
            self._flows[key] = flow
            if len(self._flows) > self.max_flows:
                _, old = self._flows.popitem(last=False)
                # Only a hello half read is a loss; finished markers and idle HTTP or
                # DNS-over-TCP sessions hold nothing.
                if not old.finished and (old.spec is None or old.spec.proto in ("tls", "quic")):
                    self.stats["handshakes evicted before complete (flow table full)"] += 1
        else:
            self._flows.move_to_end(key)
        if flow.finished:
            return []
        data = pkt.payload
        if flow.stream is not None:
            data = flow.stream.push(pkt.seq, data)
            if not data:
                return []
        if flow.spec is None:
            spec = select(pkt.proto, pkt.sport, pkt.dport, data)
            if spec is None:
                self._flows[key] = _IGNORED
                return []
            flow.start(spec)
        assert flow.session is not None and flow.spec is not None
        res = flow.session.feed(data)
        if res.finished:
            flow.finished = True
            flow.session = None  # drop its buffers; the marker stays
            flow.stream = None
        return self._report(ts, pkt, flow.spec, res)

    def udp_dns_name(self, ts: float, src: bytes, sport: int, dst: bytes, dport: int, name: bytes) -> Found | None:
        """What :meth:`packet` reports for a UDP datagram on a DNS port whose message has
        the single question ``name`` (non-empty, as extract_dns.message_names reads it),
        for a caller that has read the name already (the inspect fast path's kernel)."""
        seen = self._dns_seen
        if (dst, dport, src, sport, UDP, name) in seen:
            return None
        seen[(src, sport, dst, dport, UDP, name)] = None
        if len(seen) > MAX_DNS_REMEMBERED:
            seen.popitem(last=False)
        return Found(ts, src, dst, sport, dport, "dns", name)

    def _report(self, ts: float, pkt: Packet, spec: ExtractorSpec, res: Extraction) -> list[Found]:
        # Reasons are counted (malformed messages, hellos without SNI); NONE only says a
        # flow is not this protocol, which is no news.
        if res.status != Status.NONE and (res.reason or res.status == Status.ERROR):
            self.stats[f"{spec.proto}: {res.reason or 'error'}"] += 1
        if not res.names:
            return []
        names: Sequence[bytes] = res.names
        if spec.proto == "dns":
            names = self._new_dns_names(pkt, names)
        dot = spec.proto in ("tls", "quic") and is_dot(pkt.sport, pkt.dport, res.alpn)
        return [Found(ts, pkt.src, pkt.dst, pkt.sport, pkt.dport, spec.proto, n, res.ech, dot)
                for n in names]

    def _new_dns_names(self, pkt: Packet, names: Iterable[bytes]) -> list[bytes]:
        """Drop names the reverse direction already reported (a response to a query seen)."""
        seen = self._dns_seen
        out = []
        for n in names:
            if (pkt.dst, pkt.dport, pkt.src, pkt.sport, pkt.proto, n) in seen:
                continue
            out.append(n)
            seen[(pkt.src, pkt.sport, pkt.dst, pkt.dport, pkt.proto, n)] = None
        while len(seen) > MAX_DNS_REMEMBERED:
            seen.popitem(last=False)
        return out
