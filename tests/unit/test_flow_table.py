"""filters.flow_table: frames in, names out; per-direction state, bounds, DNS dedup."""

from __future__ import annotations

import struct

from filters.extract_dns import message_names
from filters.flow_table import FlowTable
from filters.packet import LINKTYPE_ETHERNET
from tests.dnsdata import query
from tests.wire import client_hello, crypto_frame, quic_initial, records, tcp_frame, udp_frame


def names(table: FlowTable, frames: list[bytes]) -> list[tuple[str, bytes, bool, bool]]:
    out = []
    for i, f in enumerate(frames):
        out += [(x.proto, x.name, x.ech, x.dot) for x in table.frame(float(i), LINKTYPE_ETHERNET, f)]
    return out


def test_tls_split_reordered_and_retransmitted_reported_once() -> None:
    wire = records(client_hello(b"flow.example", pad_to=2000))
    a, b = wire[:1000], wire[1000:]
    frames = [tcp_frame(b"", seq=999, flags="S"), tcp_frame(b, seq=2000), tcp_frame(a, seq=1000),
              tcp_frame(a, seq=1000), tcp_frame(wire, seq=1000)]
    assert names(FlowTable(), frames) == [("tls", b"flow.example", False, False)]


def test_new_connection_on_same_ports_is_read_again() -> None:
    hello = records(client_hello(b"again.example"))
    one = [tcp_frame(b"", seq=1, flags="S"), tcp_frame(hello, seq=2)]
    assert len(names(FlowTable(), one + one)) == 2


def test_dot_flag_and_quic() -> None:
    t = FlowTable()
    dot = names(t, [tcp_frame(records(client_hello(b"dns.example")), dport=853)])
    assert dot == [("tls", b"dns.example", False, True)]
    q = quic_initial(b"\x11" * 8, crypto_frame(0, client_hello(b"q.example")))
    assert names(t, [udp_frame(q, dport=443)]) == [("quic", b"q.example", False, False)]


def test_dns_response_to_a_seen_query_is_not_reported_again() -> None:
    q = query("seen.example")
    r = bytearray(q)
    r[2] |= 0x80
    frames = [udp_frame(q, sport=5000, dport=53), udp_frame(bytes(r), src="10.0.0.1", dst="10.0.0.2",
                                                           sport=53, dport=5000)]
    assert names(FlowTable(), frames) == [("dns", b"seen.example", False, False)]
    assert names(FlowTable(), frames[1:]) == [("dns", b"seen.example", False, False)]  # only the response
    tcp = struct.pack(">H", len(q)) + q
    assert names(FlowTable(), [tcp_frame(tcp, dport=53)]) == [("dns", b"seen.example", False, False)]


def test_bounded_table_and_counted_drops() -> None:
    t = FlowTable(max_flows=4)
    frames = [tcp_frame(records(client_hello(b"x.example"))[:50], sport=1000 + i) for i in range(10)]
    names(t, frames)
    assert len(t._flows) == 4 and t.stats["handshakes evicted before complete (flow table full)"] == 6
    t.frame(0.0, LINKTYPE_ETHERNET, b"\x00" * 10)
    assert t.stats["malformed: link header truncated"] == 1


def test_udp_dns_name_reports_as_packet_does() -> None:
    """The inspect fast path hands over names its kernel read; the table reports (and
    deduplicates) them exactly as when it reads the datagram itself."""
    from filters.packet import decode

    q = query("seen.example")
    r = bytearray(q)
    r[2] |= 0x80
    frames = [udp_frame(q, sport=5000, dport=53), udp_frame(bytes(r), src="10.0.0.1", dst="10.0.0.2",
                                                           sport=53, dport=5000),
              udp_frame(query("other.example"), sport=5000, dport=53)]
    by_packet, by_name = FlowTable(), FlowTable()
    for i, f in enumerate(frames):
        pkt = decode(f, LINKTYPE_ETHERNET)
        want = by_packet.packet(float(i), pkt)
        got = by_name.udp_dns_name(float(i), pkt.src, pkt.sport, pkt.dst, pkt.dport,
                                   message_names(pkt.payload).names[0])
        assert ([got] if got else []) == want
    # Shared memory of questions: a response the flow table read after the name was
    # handed over is not reported again, and the other way round.
    mixed = FlowTable()
    pkt = decode(frames[0], LINKTYPE_ETHERNET)
    assert mixed.udp_dns_name(0.0, pkt.src, pkt.sport, pkt.dst, pkt.dport, b"seen.example")
    assert mixed.packet(1.0, decode(frames[1], LINKTYPE_ETHERNET)) == []
