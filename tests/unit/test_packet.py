"""filters.packet: link layers down to the 5-tuple; every bad frame a counted Drop."""

from __future__ import annotations

import random
import struct

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether
from scapy.layers.ppp import HDLC, PPP

from filters.packet import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_PPP,
    LINKTYPE_RAW,
    MAX_IPV6_EXT_HEADERS,
    MAX_VLAN_TAGS,
    Drop,
    Packet,
    decode,
)

SEG = TCP(sport=1234, dport=443, seq=77, flags="PA") / b"hello"


def ok(frame: bytes, linktype: int = LINKTYPE_ETHERNET) -> Packet:
    p = decode(frame, linktype)
    assert isinstance(p, Packet), p
    return p


def test_ethernet_ipv4_tcp() -> None:
    p = ok(bytes(Ether() / IP(src="10.1.2.3", dst="10.9.9.9") / SEG))
    assert (p.src, p.dst, p.proto, p.sport, p.dport, p.seq, p.payload) == (
        bytes([10, 1, 2, 3]), bytes([10, 9, 9, 9]), 6, 1234, 443, 77, b"hello")
    assert p.tcp_flags & 0x08


def test_ethernet_padding_is_trimmed_and_vlan_stacks() -> None:
    short = bytes(Ether() / IP() / UDP(sport=53, dport=5353) / b"x")
    assert len(short) < 60
    assert ok(short + bytes(60 - len(short))).payload == b"x"  # Ethernet pads to 60
    qinq = bytes(Ether() / Dot1AD(vlan=10) / Dot1Q(vlan=20) / IP() / SEG)
    assert ok(qinq).payload == b"hello"
    deep = Ether() / IP() / SEG
    for _ in range(MAX_VLAN_TAGS + 1):
        deep = Ether() / Dot1Q() / deep.payload
    assert decode(bytes(deep), LINKTYPE_ETHERNET) == Drop(f"more than {MAX_VLAN_TAGS} VLAN tags", True)


@pytest.mark.parametrize("frame, linktype", [
    (bytes(IP() / SEG), LINKTYPE_RAW),
    (bytes(IPv6() / SEG), LINKTYPE_RAW),
    (struct.pack("<I", 2) + bytes(IP() / SEG), LINKTYPE_NULL),
    (struct.pack(">I", 30) + bytes(IPv6() / SEG), LINKTYPE_NULL),  # macOS AF_INET6, other order
    (struct.pack(">I", 24) + bytes(IPv6() / SEG), LINKTYPE_LOOP),
    (bytes(CookedLinux(proto=0x0800) / IP() / SEG), LINKTYPE_LINUX_SLL),
    (bytes(CookedLinuxV2(proto=0x86DD) / IPv6() / SEG), LINKTYPE_LINUX_SLL2),
    (bytes(HDLC() / PPP(proto=0x0021) / IP() / SEG), LINKTYPE_PPP),
    (bytes(PPP(proto=0x0057) / IPv6() / SEG), LINKTYPE_PPP),
])
def test_link_types(frame: bytes, linktype: int) -> None:
    assert ok(frame, linktype).payload == b"hello"


def test_ipv6_extension_headers_are_skipped() -> None:
    pkt = IPv6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt() / SEG
    assert ok(bytes(Ether() / pkt)).payload == b"hello"
    atomic = IPv6() / IPv6ExtHdrFragment(offset=0, m=0) / SEG  # RFC 6946 atomic fragment
    assert ok(bytes(Ether() / atomic)).payload == b"hello"
    chain = IPv6() / SEG
    for _ in range(MAX_IPV6_EXT_HEADERS + 1):
        chain = IPv6() / IPv6ExtHdrDestOpt() / chain.payload
    assert decode(bytes(Ether() / chain), LINKTYPE_ETHERNET).malformed


def test_fragments_and_non_ip_are_counted_not_malformed() -> None:
    frag = decode(bytes(Ether() / IP(flags="MF") / SEG), LINKTYPE_ETHERNET)
    v6frag = decode(bytes(Ether() / IPv6() / IPv6ExtHdrFragment(offset=0, m=1) / SEG), LINKTYPE_ETHERNET)
    arp = decode(bytes(Ether(type=0x0806) / (b"\x00" * 28)), LINKTYPE_ETHERNET)
    for d in (frag, v6frag, arp):
        assert isinstance(d, Drop) and not d.malformed
    assert decode(b"\x00" * 20, 999) == Drop("link type not supported", False)


def test_tso_capture_with_zero_total_length() -> None:
    raw = bytearray(bytes(Ether() / IP() / SEG))
    raw[16:18] = b"\x00\x00"  # the NIC fills in the length later (TCP segmentation offload)
    assert ok(bytes(raw)).payload == b"hello"


def test_truncated_and_lying_lengths() -> None:
    full = bytes(Ether() / IP() / SEG)
    for cut in range(len(full)):
        d = decode(full[:cut], LINKTYPE_ETHERNET)
        assert isinstance(d, Drop) or d.payload == full[54:cut]  # snaplen: what was captured
    lying = bytearray(bytes(Ether() / IP() / UDP() / b"abc"))
    lying[38:40] = b"\x00\x04"  # UDP length 4 < its own header
    assert decode(bytes(lying), LINKTYPE_ETHERNET).malformed


def test_random_frames_never_raise() -> None:
    rng = random.Random(11)
    bases = [bytes(Ether() / IP() / SEG), bytes(Ether() / IPv6() / IPv6ExtHdrDestOpt() / UDP() / b"q")]
    for _ in range(20000):
        b = bytearray(rng.choice(bases))
        for _ in range(rng.randint(1, 5)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        r = decode(bytes(b[:rng.randint(0, len(b))]), rng.choice([0, 1, 9, 101, 108, 113, 276]))
        assert isinstance(r, (Packet, Drop))
