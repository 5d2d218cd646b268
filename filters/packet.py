"""Decode one captured frame down to its TCP/UDP 5-tuple and payload (sans-IO, pure).

The flow inspector and the tests feed frames from pcap files and live capture here; the
extractors (extract_*.py) then read names from the payloads. Only the layers that carry a
name are decoded, each with a bounds check, and nothing here raises: a frame that is not
IP (ARP, LLDP) comes back as an *ignored* :class:`Drop`, a frame whose headers lie about
their lengths as a *malformed* one, so the caller counts both and moves on.

Link types (the pcap LINKTYPE_* registry, https://www.tcpdump.org/linktypes.html):
Ethernet with any stack of 802.1Q/802.1ad VLAN tags, BSD loopback (NULL and LOOP), PPP,
raw IPv4/IPv6, Linux cooked captures v1 (SLL, ``tcpdump -i any``) and v2 (SLL2).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "LINKTYPE_NULL", "LINKTYPE_ETHERNET", "LINKTYPE_PPP", "LINKTYPE_PPP_HDLC", "LINKTYPE_RAW", "LINKTYPE_LOOP",
    "LINKTYPE_LINUX_SLL", "LINKTYPE_IPV4", "LINKTYPE_IPV6", "LINKTYPE_LINUX_SLL2",
    "SUPPORTED_LINKTYPES", "TCP", "UDP", "MAX_VLAN_TAGS", "MAX_IPV6_EXT_HEADERS",
    "Packet", "Drop", "decode", "decode_ip",
]

LINKTYPE_NULL = 0  # BSD loopback: 4-byte address family in the capturing host's byte order
LINKTYPE_ETHERNET = 1
LINKTYPE_PPP = 9
LINKTYPE_PPP_HDLC = 50  # RFC 1662 framing (or Cisco HDLC: address 0x0f/0x8f, an EtherType)
LINKTYPE_RAW = 101  # raw IPv4 or IPv6 (DLT_RAW is 12 or 14 on some BSDs: same framing)
_LINKTYPE_RAW_BSD = (12, 14)
LINKTYPE_LOOP = 108  # OpenBSD loopback: the address family in network byte order
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
SUPPORTED_LINKTYPES = frozenset({LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_PPP, LINKTYPE_PPP_HDLC, LINKTYPE_RAW,
                                 *_LINKTYPE_RAW_BSD, LINKTYPE_LOOP, LINKTYPE_LINUX_SLL,
                                 LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL2})

TCP = 6
UDP = 17

# IEEE 802.1Q tags stack (802.1ad "QinQ" puts two); real networks use at most two or three.
# More than this is not a frame we can trust, and the bound keeps the loop short.
MAX_VLAN_TAGS = 4
# RFC 8200 §4.1 recommends each extension header appear at most once (Destination Options
# twice): about 8 in a legal chain. RFC 9098 documents middleboxes giving up on long chains.
MAX_IPV6_EXT_HEADERS = 8

_ETH_IPV4, _ETH_IPV6 = 0x0800, 0x86DD
_ETH_VLAN = (0x8100, 0x88A8, 0x9100)
# Address families a BSD loopback header names IPv6 with: AF_INET6 is 24 (NetBSD,
# OpenBSD), 28 (FreeBSD), 30 (macOS) — pcap files keep the capturing host's value.
_AF_INET = 2
_AF_INET6 = (10, 24, 28, 30)
_PPP_IPV4, _PPP_IPV6 = 0x0021, 0x0057
# IPv6 extension headers that are skipped with the generic (next, length in 8-octet units)
# layout (RFC 8200 §4; mobility RFC 6275, HIP RFC 7401, shim6 RFC 5533).
_V6_GENERIC_EXT = frozenset({0, 43, 60, 135, 139, 140})
_V6_FRAGMENT, _V6_AH, _V6_NONE, _V6_ESP = 44, 51, 59, 50

_U16 = struct.Struct(">H")
_TCP_HDR = struct.Struct(">HHIIBB")  # ports, seq, ack, data offset, flags
_UDP_HDR = struct.Struct(">HHH")
_U32_LE = struct.Struct("<I")
_U32_BE = struct.Struct(">I")


@dataclass(slots=True)
class Packet:
    """A TCP segment or UDP datagram. Addresses are packed (4 or 16 bytes)."""

    src: bytes
    dst: bytes
    proto: int  # TCP or UDP
    sport: int
    dport: int
    payload: bytes
    tcp_flags: int = 0  # FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10
    seq: int = 0  # TCP sequence number of the payload's first byte


@dataclass(frozen=True, slots=True)
class Drop:
    """A frame that yields no packet; ``malformed`` when its headers lie (truncated,
    lengths past the end), otherwise merely not something we inspect."""

    reason: str
    malformed: bool


# Shared instances: dropping allocates nothing.
_D_LINK_SHORT = Drop("link header truncated", True)
_D_LINKTYPE = Drop("link type not supported", False)
_D_NOT_IP = Drop("not IPv4 or IPv6", False)
_D_VLAN_DEPTH = Drop(f"more than {MAX_VLAN_TAGS} VLAN tags", True)
_D_IP_SHORT = Drop("IP header truncated", True)
_D_IP_VERSION = Drop("IP version does not match the link layer", True)
_D_IP_LEN = Drop("IP lengths inconsistent", True)
_D_FRAGMENT = Drop("IP fragment (fragments are not reassembled)", False)
_D_EXT_DEPTH = Drop(f"more than {MAX_IPV6_EXT_HEADERS} IPv6 extension headers", True)
_D_EXT_SHORT = Drop("IPv6 extension header truncated", True)
_D_JUMBO = Drop("IPv6 jumbogram (RFC 2675) not inspected", False)
_D_L4_OTHER = Drop("neither TCP nor UDP", False)
_D_ENCRYPTED = Drop("IPsec ESP: payload encrypted", False)
_D_TCP_SHORT = Drop("TCP header truncated or bad data offset", True)
_D_UDP_SHORT = Drop("UDP header truncated or bad length", True)


def decode(frame: bytes, linktype: int) -> Packet | Drop:
    """Decode a captured frame of the given pcap link type."""
    n = len(frame)
    if linktype == LINKTYPE_ETHERNET:
        if n < 14:
            return _D_LINK_SHORT
        etype = (frame[12] << 8) | frame[13]
        pos = 14
        tags = 0
        while etype in _ETH_VLAN:
            tags += 1
            if tags > MAX_VLAN_TAGS:
                return _D_VLAN_DEPTH
            if pos + 4 > n:
                return _D_LINK_SHORT
            etype = (frame[pos + 2] << 8) | frame[pos + 3]
            pos += 4
        version = 4 if etype == _ETH_IPV4 else 6 if etype == _ETH_IPV6 else 0
    elif linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6) or linktype in _LINKTYPE_RAW_BSD:
        pos = 0
        version = frame[0] >> 4 if n else 0
    elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if n < 4:
            return _D_LINK_SHORT
        if linktype == LINKTYPE_LOOP:
            af = _U32_BE.unpack_from(frame)[0]
        else:
            # Host byte order of the capturing machine, which the file does not record;
            # family numbers are small, so whichever order gives a small value is right.
            af = _U32_LE.unpack_from(frame)[0]
            if af > 0xFFFF:
                af = _U32_BE.unpack_from(frame)[0]
        pos = 4
        version = 4 if af == _AF_INET else 6 if af in _AF_INET6 else 0
    elif linktype == LINKTYPE_LINUX_SLL:
        # packet type, ARPHRD, address length, 8 address bytes, protocol (network order)
        if n < 16:
            return _D_LINK_SHORT
        etype = (frame[14] << 8) | frame[15]
        pos = 16
        version = 4 if etype == _ETH_IPV4 else 6 if etype == _ETH_IPV6 else 0
    elif linktype == LINKTYPE_LINUX_SLL2:
        # protocol first (2), reserved (2), ifindex (4), ARPHRD (2), type, addr len, 8 addr
        if n < 20:
            return _D_LINK_SHORT
        etype = (frame[0] << 8) | frame[1]
        pos = 20
        version = 4 if etype == _ETH_IPV4 else 6 if etype == _ETH_IPV6 else 0
    elif linktype == LINKTYPE_PPP or linktype == LINKTYPE_PPP_HDLC:
        if linktype == LINKTYPE_PPP_HDLC and n >= 4 and frame[0] in (0x0F, 0x8F) and frame[1] == 0:
            etype = (frame[2] << 8) | frame[3]  # Cisco HDLC: an EtherType follows
            pos = 4
            version = 4 if etype == _ETH_IPV4 else 6 if etype == _ETH_IPV6 else 0
        else:
            # RFC 1662 HDLC-like framing: address 0xff, control 0x03, may be omitted
            # (address-and-control-field compression, RFC 1661 §6.6); then the protocol.
            pos = 2 if n >= 2 and frame[0] == 0xFF and frame[1] == 0x03 else 0
            if n < pos + 2:
                return _D_LINK_SHORT
            proto = (frame[pos] << 8) | frame[pos + 1]
            pos += 2
            version = 4 if proto == _PPP_IPV4 else 6 if proto == _PPP_IPV6 else 0
    else:
        return _D_LINKTYPE
    if version == 0:
        return _D_NOT_IP
    return decode_ip(frame, pos, version)


def decode_ip(frame: bytes, pos: int, version: int) -> Packet | Drop:
    """Decode the IP packet at ``frame[pos:]``; ``version`` is what the link layer says."""
    n = len(frame)
    if pos >= n:
        return _D_IP_SHORT
    if frame[pos] >> 4 != version:
        return _D_IP_VERSION
    if version == 4:
        if pos + 20 > n:
            return _D_IP_SHORT
        ihl = (frame[pos] & 0x0F) * 4
        total = (frame[pos + 2] << 8) | frame[pos + 3]
        if total == 0:
            # Captured on a host with TCP segmentation offload: the kernel hands the
            # capture a super-segment whose length the NIC fills in later (Wireshark and
            # tcpdump read such packets to the end of the frame too).
            total = n - pos
        if ihl < 20 or total < ihl:
            return _D_IP_LEN
        # The total length trims the link layer's padding (Ethernet pads to 60 bytes). A
        # frame captured short of it (snaplen) keeps what was captured.
        end = min(n, pos + total)
        if pos + ihl > end:
            return _D_IP_SHORT
        frag = (frame[pos + 6] << 8) | frame[pos + 7]
        if frag & 0x3FFF:  # MF set or a non-zero offset (RFC 791 §3.1)
            return _D_FRAGMENT
        l4 = frame[pos + 9]
        src = frame[pos + 12:pos + 16]
        dst = frame[pos + 16:pos + 20]
        pos += ihl
    else:
        if pos + 40 > n:
            return _D_IP_SHORT
        plen = (frame[pos + 4] << 8) | frame[pos + 5]
        l4 = frame[pos + 6]
        src = frame[pos + 8:pos + 24]
        dst = frame[pos + 24:pos + 40]
        if plen == 0:
            # Zero payload length means a jumbogram's hop-by-hop option carries the length
            # (RFC 2675) — or, far more likely, a truncated or TSO-captured packet.
            return _D_JUMBO if l4 == 0 else _D_IP_LEN
        end = min(n, pos + 40 + plen)
        pos += 40
        hops = 0
        while l4 in _V6_GENERIC_EXT or l4 == _V6_FRAGMENT or l4 == _V6_AH:
            hops += 1
            if hops > MAX_IPV6_EXT_HEADERS:
                return _D_EXT_DEPTH
            if pos + 8 > end:
                return _D_EXT_SHORT
            nxt = frame[pos]
            if l4 == _V6_FRAGMENT:  # fixed 8 octets (RFC 8200 §4.5)
                if ((frame[pos + 2] << 8) | frame[pos + 3]) & 0xFFF9:  # offset or M flag
                    return _D_FRAGMENT
                size = 8
            elif l4 == _V6_AH:  # length in 4-octet units minus 2 (RFC 4302 §2.2)
                size = (frame[pos + 1] + 2) * 4
            else:
                size = (frame[pos + 1] + 1) * 8
            pos += size
            l4 = nxt
        if l4 == _V6_ESP:
            return _D_ENCRYPTED
    if l4 == TCP:
        if pos + 20 > end:
            return _D_TCP_SHORT
        sport, dport, seq, _ack, off, flags = _TCP_HDR.unpack_from(frame, pos)
        hlen = (off >> 4) * 4
        if hlen < 20 or pos + hlen > end:
            return _D_TCP_SHORT
        return Packet(src, dst, TCP, sport, dport, frame[pos + hlen:end], flags, seq)
    if l4 == UDP:
        if pos + 8 > end:
            return _D_UDP_SHORT
        sport, dport, ulen = _UDP_HDR.unpack_from(frame, pos)
        if ulen < 8:
            return _D_UDP_SHORT
        # A UDP length past the IP payload is a lie (or a snaplen cut: keep what we have);
        # a shorter one trims trailing bytes that are not the datagram's.
        return Packet(src, dst, UDP, sport, dport, frame[pos + 8:min(end, pos + ulen)])
    return _D_L4_OTHER
