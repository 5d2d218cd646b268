"""Live flow inspection without sockets (appliance/flows/): the kernel selection filter run
by libpcap on crafted packets, the inspector's decisions, counters and expiry, and the
capture process's loop driven step by step over a replay source."""

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
    from appliance.compose import build
    from appliance.config.load import load_config

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
    hello = client_hello(b"www." + BLOCKED.encode())
    q = insp.packet(2.0, _ip(udp_frame(quic_initial(os.urandom(8), crypto_frame(0, hello)))), 4)
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


# -- the capture process's loop, step by step (appliance/flows/capture.py CaptureLoop) ---------

def _loop(tmp_path: Path, packets, policy_block: str = "[gambling]"):
    from appliance.compose import Assembly, build
    from appliance.config.load import load_config
    from appliance.flows.capture import CaptureLoop
    from appliance.flows.sources import ReplaySource

    bundle = make_bundle(tmp_path / "bundle", 1)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\nbundle: {bundle}\n"
                   f"policies: {{default: {{block: {policy_block}}}}}\n")
    built = build(load_config(cfg))
    source = ReplaySource([(_ip(f), 4, None) for f in packets], per_read=2)
    return cfg, CaptureLoop(Assembly(str(cfg)), built, source, None, False, FlowInspector(built, "monitor"))


def _hello(name: bytes, sport: int) -> bytes:
    return tcp_frame(records(client_hello(name)), sport=sport)


def test_capture_loop_reads_judges_and_reports(tmp_path: Path) -> None:
    from appliance.flows.inspector import read_flows_state

    _cfg, loop = _loop(tmp_path,
                       [_hello(BLOCKED.encode(), 41000 + i) for i in range(3)] + [_hello(b"ok.example", 42000)])
    assert loop.read() == 4  # every read of the batch, two packets a read
    assert loop.inspector.counters.seen == 4 and loop.inspector.counters.monitor == 3 and loop.dirty
    loop.housekeeping(loop.next_state)
    state = read_flows_state(tmp_path / "state")
    assert not loop.dirty and state["counters"]["seen"] == 4 and state["capture"] == "replay"
    assert loop.read() == 0  # nothing left: the loop goes on to housekeeping


def test_capture_loop_follows_a_reload_and_keeps_its_rules_on_a_bad_one(tmp_path: Path) -> None:
    import signal

    cfg, loop = _loop(tmp_path, [_hello(BLOCKED.encode(), 41000), _hello(BLOCKED.encode(), 41001)])
    first = loop.built
    cfg.write_text(cfg.read_text().replace("block: [gambling]", "block: []"))
    loop.flags.add(signal.SIGHUP)
    loop.housekeeping(0.0)
    assert loop.built is not first and signal.SIGHUP not in loop.flags
    loop.read()
    assert loop.inspector.counters.monitor == 0 and loop.inspector.counters.seen == 2  # allowed now
    cfg.write_text(cfg.read_text().replace("block: []", "block: [no-such-category]"))
    assert loop.follow(True, 0.0) is False and loop.built.cfg.policies["default"].block == ()


def test_capture_loop_stops_on_sigterm_and_cleans_up(tmp_path: Path) -> None:
    import signal

    from appliance.flows.inspector import read_flows_state

    _cfg, loop = _loop(tmp_path, [_hello(BLOCKED.encode(), 41000)])
    loop.flags.add(signal.SIGTERM)
    loop.run()  # returns at once: SIGTERM was seen
    loop.close()
    assert loop.source.closed and read_flows_state(tmp_path / "state")["running"] is False
