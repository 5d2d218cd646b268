"""nfnetlink_log messages (appliance/flows/nflog.py): the pure parser and request builder against
hand-made bytes laid out as include/uapi/linux/netfilter/nfnetlink_log.h says, and one round
trip through the real kernel in a network namespace."""

from __future__ import annotations

import json
import socket
import struct
import sys
import textwrap
from pathlib import Path

import pytest

from appliance.flows.nflog import CFG_CMD, CMD_BIND, Logged, bind_attrs, config_message, parse
from filters.packet import UDP, decode_ip

ROOT = Path(__file__).resolve().parents[2]
NLA_F_NET_BYTEORDER = 0x4000


def _attr(t: int, v: bytes, flags: int = 0) -> bytes:
    raw = struct.pack("=HH", 4 + len(v), t | flags) + v
    return raw + bytes(-len(raw) % 4)


def _msg(mtype: int, body: bytes, seq: int = 0) -> bytes:
    raw = struct.pack("=IHHII", 16 + len(body), mtype, 0, seq, 0) + body
    return raw + bytes(-len(raw) % 4)


def _packet_msg(payload: bytes, *, family: int = 2, group: int = 7, prefix: bytes | None = b"sg\0",
                mac: bytes = bytes.fromhex("020000000002")) -> bytes:
    body = struct.pack(">BBH", family, 0, group)
    body += _attr(1, struct.pack(">HBB", 0x0800, 2, 0))  # NFULA_PACKET_HDR: ETH_P_IP, forward hook
    body += _attr(3, struct.pack(">QQ", 1700000000, 250000))  # NFULA_TIMESTAMP
    body += _attr(4, struct.pack(">I", 3), NLA_F_NET_BYTEORDER)  # NFULA_IFINDEX_INDEV
    body += _attr(8, struct.pack(">HH", len(mac), 0) + mac + bytes(8 - len(mac)))  # NFULA_HWADDR
    if prefix is not None:
        body += _attr(10, prefix)  # NFULA_PREFIX
    body += _attr(9, payload)  # NFULA_PAYLOAD
    return _msg(0x0400, body)  # NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_PACKET


def _ipv4_udp(payload: bytes) -> bytes:
    udp = struct.pack(">HHHH", 40000, 53, 8 + len(payload), 0) + payload
    return struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, bytes([10, 0, 0, 2]),
                       bytes([10, 0, 0, 1])) + udp


def test_parse_packets_and_acks() -> None:
    ip = _ipv4_udp(b"\x12\x34" + bytes(10))
    buf = (_packet_msg(ip) + _msg(2, struct.pack("=i", 0) + bytes(16))  # NLMSG_ERROR 0: an ACK
           + _msg(2, struct.pack("=i", -16) + bytes(16))  # -EBUSY
           + _msg(0x0401, struct.pack(">BBH", 0, 0, 7))  # a config message: skipped
           + _packet_msg(ip[:30], family=10, group=9, prefix=None, mac=b""))
    got, errors = parse(buf)
    assert errors == [0, 16]
    assert len(got) == 2
    p = got[0]
    assert p == Logged(2, 7, ip, b"sg", 0x0800, 2, 3, 0, bytes.fromhex("020000000002"), 1700000000.25, 0)
    assert p.version == 4
    pkt = decode_ip(p.payload, 0, p.version)
    assert pkt.proto == UDP and pkt.dport == 53
    assert (got[1].family, got[1].group, got[1].prefix, got[1].hwaddr, got[1].version) == (10, 9, b"", b"", 6)


def test_parse_never_raises_on_lies() -> None:
    good = _packet_msg(_ipv4_udp(b"x"))
    # a message length past the buffer, a length below the header, an attribute running
    # past its message, a packet message without a payload, random bytes
    cases = [good[:-8], struct.pack("=IHHII", 8, 0x0400, 0, 0, 0) + good, good[:20] + b"\xff\xff\x09\x00" + good[24:],
             _msg(0x0400, struct.pack(">BBH", 2, 0, 7) + _attr(10, b"p\0")), bytes(range(256)) * 3, b""]
    for c in cases:
        got, _ = parse(c)
        assert all(isinstance(p, Logged) for p in got)
    assert parse(cases[0])[0] == [] and parse(cases[3])[0] == []
    assert len(parse(good + good[:-8])[0]) == 1  # the complete first message still counts


def test_config_message_layout() -> None:
    m = config_message(2375, [(CFG_CMD, bytes([CMD_BIND]))], seq=5)
    length, mtype, flags, seq, pid = struct.unpack_from("=IHHII", m)
    assert (length, mtype, flags, seq, pid) == (len(m), 0x0401, 0x1 | 0x4, 5, 0)
    assert struct.unpack_from(">BBH", m, 16) == (0, 0, 2375)  # res_id: the group, big-endian
    assert m[20:] == struct.pack("=HH", 5, CFG_CMD) + bytes([CMD_BIND]) + bytes(3)
    mode = bind_attrs(copy_range=1000)[1][0]
    assert mode == (2, struct.pack(">IBB", 1000, 2, 0))  # NFULA_CFG_MODE: copy_range, NFULNL_COPY_PACKET
    with pytest.raises(ValueError):
        config_message(70000, [])


KERNEL_SCRIPT = textwrap.dedent("""
    import json, socket, subprocess, sys
    sys.path.insert(0, sys.argv[1])
    from appliance.flows.nflog import NflogError, NflogSocket
    group = 2399
    s = NflogSocket(group, timeout=2.0)
    try:
        NflogSocket(group)
        busy = None
    except NflogError as exc:
        busy = exc.errno
    rules = ["table inet sgtest {", "chain o {", "type filter hook output priority 0;",
             "udp dport 9 log prefix " + json.dumps("probe") + f" group {group}", "}", "}", ""]
    subprocess.run(["nft", "-f", "-"], check=True, text=True, input="\\n".join(rules))
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"hello nflog", ("127.0.0.1", 9))
    got = s.recv()
    s.close()
    print(json.dumps({"busy": busy, "got": [[p.family, p.group, p.prefix.decode(), p.hook, p.payload.hex()]
                                            for p in got]}))
""")


def test_kernel_round_trip_in_a_namespace(tmp_path) -> None:
    from tests.integration.netns import DEADLINE, namespaces, require_netns

    require_netns("nft")
    (tmp_path / "k.py").write_text(KERNEL_SCRIPT)
    with namespaces("nflog") as (ns,):
        out = ns.run(sys.executable, str(tmp_path / "k.py"), str(ROOT), timeout=DEADLINE).stdout
    res = json.loads(out)
    # EPERM: one socket per group and namespace (nfulnl_recv_config: the instance belongs to
    # another netlink port); auto capture then falls back to bpf
    assert res["busy"] == 1
    assert len(res["got"]) == 1
    family, group, prefix, hook, payload = res["got"][0]
    assert (family, group, prefix, hook) == (socket.AF_INET, 2399, "probe", 3)  # NF_INET_LOCAL_OUT
    pkt = decode_ip(bytes.fromhex(payload), 0, 4)
    assert pkt.proto == UDP and pkt.dport == 9 and pkt.payload == b"hello nflog"
