"""Live flow inspection without sockets (appliance/flows/capture.py and the modules it re-exports from:
capture_sources.py, flow_inspector.py): the kernel selection filter run
by libpcap on crafted packets, and the inspector's decisions, counters and expiry."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import pytest

from appliance.flows.inspector import FlowInspector
from appliance.flows.sources import compile_bpf, selection_filter
from tests.bundles import BLOCKED, make_bundle
from tests.wire import client_hello, crypto_frame, quic_initial, records, tcp_frame, udp_frame

HTTP_REQ = b"GET / HTTP/1.1\r\nHost: " + BLOCKED.encode() + b"\r\n\r\n"


def _ip(frame: bytes) -> bytes:
    return frame[14:]  # tests.wire frames are Ethernet


def _selected(packets: list[bytes]) -> list[bool]:
    """Run the compiled selection program over raw IP packets with libpcap."""
    from scapy.arch.common import compile_filter
    from scapy.libs.winpcapy import _lib

    # libpcap's own interpreter of the program (u_int bpf_filter(insns, pkt, wirelen, buflen))
    run = _lib.bpf_filter
    run.restype = ctypes.c_uint
    run.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint]
    prog = compile_filter(selection_filter(), linktype=12)
    insns = ctypes.cast(prog.bf_insns, ctypes.c_void_p)
    return [bool(run(insns, p, len(p), len(p))) for p in packets]


def test_selection_filter_passes_only_flow_openers() -> None:
    hello = records(client_hello(b"a.example"))
    quic = quic_initial(os.urandom(8), crypto_frame(0, client_hello(b"q.example")))
    yes = [tcp_frame(hello), tcp_frame(hello, src="fd00::2", dst="fd00::1"),
           tcp_frame(HTTP_REQ, dport=80), tcp_frame(HTTP_REQ, dport=80, src="fd00::2", dst="fd00::1"),
           udp_frame(quic), udp_frame(quic, src="fd00::2", dst="fd00::1"),
           udp_frame(b"\x12\x34" + bytes(10), dport=53), tcp_frame(b"", dport=853, flags="S"),
           tcp_frame(b"", dport=853, flags="S", src="fd00::2", dst="fd00::1")]
    no = [tcp_frame(b"\x17\x03\x03\x00\x10" + bytes(16)),  # TLS application data
          tcp_frame(b"\x16\x03\x03\x00\x10\x02" + bytes(16)),  # a ServerHello record
          tcp_frame(bytes(1400)), tcp_frame(b"", flags="S"), tcp_frame(b"", flags="A"),
          tcp_frame(b"HTTP/1.1 200 OK\r\n\r\n"[1:].lower(), dport=80),
          udp_frame(b"\x40" + bytes(1250)),  # QUIC short header
          udp_frame(quic[:600]),  # too small for a client Initial
          udp_frame(b"\xc0" + bytes(1250), dport=4433),
          tcp_frame(b"", dport=853, flags="SA")]
    assert _selected([_ip(f) for f in yes]) == [True] * len(yes)
    assert _selected([_ip(f) for f in no]) == [False] * len(no)
    assert len(compile_bpf(selection_filter())) % 8 == 0


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from appliance.config.load import load_config
    from appliance.compose import build

    tmp: Path = tmp_path_factory.mktemp("flows")
    bundle = make_bundle(tmp / "bundle", 1)
    cfg = tmp / "c.yaml"
    cfg.write_text(f"state_dir: {tmp / 'state'}\nbundle: {bundle}\n"
                   "policies: {staff: {block: []}, pupils: {block: [gambling]}}\n"
                   "networks: {staff: {cidrs: [10.0.5.0/24], policy: staff}}\n")
    return build(load_config(cfg))


def test_decisions_by_the_clients_policy(built) -> None:
    insp = FlowInspector(built, "enforce")
    d = insp.packet(1.0, _ip(tcp_frame(records(client_hello(BLOCKED.encode())), seq=1000)), 4)
    assert [(x.verdict, x.action, x.policy, x.categories) for x in d] == [("block", "reset", "default",
                                                                          ("gambling",))]
    assert d[0].seq_end == 1000 + len(records(client_hello(BLOCKED.encode())))
    staff = insp.packet(1.0, _ip(tcp_frame(records(client_hello(BLOCKED.encode())), src="10.0.5.9")), 4)
    assert [(x.verdict, x.action, x.policy) for x in staff] == [("allow", None, "staff")]
    q = insp.packet(2.0, _ip(udp_frame(quic_initial(os.urandom(8), crypto_frame(0, client_hello(b"www." + BLOCKED.encode()))))), 4)
    assert [(x.found.proto, x.action) for x in q] == [("quic", "block")]  # UDP: dropped, no reset
    h = insp.packet(3.0, _ip(tcp_frame(HTTP_REQ, dport=80, sport=40100)), 4)
    assert [(x.found.proto, x.action) for x in h] == [("http", "reset")]
    c = insp.counters.as_dict()
    assert (c["seen"], c["blocked"], c["reset"]) == (4, 3, 2) and c["by_category"] == {"gambling": 3}
    assert [e["kind"] for e in insp.events] == ["http", "quic", "tls"]


def test_monitor_mode_only_counts(built) -> None:
    insp = FlowInspector(built, "monitor")
    d = insp.packet(1.0, _ip(tcp_frame(records(client_hello(BLOCKED.encode())))), 4)
    assert [x.action for x in d] == ["monitor"]
    assert insp.counters.blocked == 0 and insp.counters.monitor == 1


def test_idle_flows_expire(built) -> None:
    insp = FlowInspector(built, "enforce", flow_timeout=10)
    hello = records(client_hello(BLOCKED.encode()))
    assert insp.packet(1.0, _ip(tcp_frame(hello[:50], seq=1)), 4) == []  # half a hello: waits
    assert insp.expire(5.0) == 0
    assert insp.expire(20.0) == 1  # forgotten: the rest alone no longer completes it
    assert insp.packet(21.0, _ip(tcp_frame(hello[50:], seq=51)), 4) == []


def test_bad_packets_never_raise(built) -> None:
    insp = FlowInspector(built, "enforce")
    for junk in (b"", b"\x45", bytes(20), b"\x60" + bytes(39), os.urandom(60)):
        assert isinstance(insp.packet(1.0, junk, 4), list)


def test_split_hello_as_nflog_delivers_it(built) -> None:
    """SYN, the handshake's ACK, then the ClientHello in three segments, the middle one
    first (as the capture chain logs them): judged when the hello is complete."""
    insp = FlowInspector(built, "enforce")
    hello = records(client_hello(BLOCKED.encode(), alpn=(b"x" * 200,) * 8))  # 1.7 kB, like Chrome's
    ip = lambda payload, seq, flags="PA": _ip(tcp_frame(payload, seq=seq, flags=flags, sport=40200))  # noqa: E731
    assert insp.packet(1.0, ip(b"", 999, "S"), 4) == []
    assert insp.packet(1.0, ip(b"", 1000, "A"), 4) == []
    a, b, c = hello[:500], hello[500:1000], hello[1000:]
    assert insp.packet(1.0, ip(b, 1500), 4) == []
    assert insp.packet(1.0, ip(a, 1000), 4) == []
    d = insp.packet(1.0, ip(c, 2000), 4)
    assert [(x.found.name, x.action) for x in d] == [(BLOCKED.encode(), "reset")]
    assert d[0].seq_end == 2000 + len(c)


def test_warm_up_judges_nothing_and_the_name_cache_is_bounded(built, monkeypatch) -> None:
    insp = FlowInspector(built, "enforce", max_names=2)
    insp.warm_up()
    assert set(insp._verdicts) == set(built.policies.rules) and insp.counters.seen == 0 and not insp.events
    for i in range(6):
        insp.packet(1.0, _ip(tcp_frame(records(client_hello(b"n%d.example" % i)), sport=41000 + i)), 4)
    assert insp.counters.seen == 6
    assert all(len(v) <= 2 for v in insp._verdicts.values())
