"""Packets logged by nftables' ``log group N`` rules, read from nfnetlink_log.

The live capture's NFLOG mode (appliance/flows/capture.py): the table ``inet schoolgate``
(appliance/flows/nft.py ``capture`` chain) logs only each flow's first packets to a netlink group,
and this module reads them from an ``AF_NETLINK``/``NETLINK_NETFILTER`` socket. Unlike a
cBPF filter on an AF_PACKET socket, which can only pick packets by what they start with, the
rule picks them by conntrack state (``ct original packets``), so every segment of a
ClientHello split across segments arrives, and the flow table (filters/flow_table.py,
filters/tcp_stream.py) reassembles it.

The wire format is the kernel's uapi header include/uapi/linux/netfilter/nfnetlink_log.h
(enum nfulnl_msg_types, nfulnl_attr_type, nfulnl_attr_config, struct nfulnl_msg_config_cmd
and _mode, nfulnl_msg_packet_hdr, _hw and _timestamp) on top of include/uapi/linux/
netfilter/nfnetlink.h (struct nfgenmsg, NFNL_SUBSYS_ULOG) and include/uapi/linux/
netlink.h (struct nlmsghdr, struct nlattr, NLMSG_ERROR). Attributes of nfnetlink are in
network byte order (NLA_F_NET_BYTEORDER); the netlink headers are in host order.

Sans-IO split: :func:`parse` turns the bytes of one ``recv`` into :class:`Logged` packets
and :func:`config_message` builds the requests — both pure and unit-tested;
:class:`NflogSocket` is the thin socket around them.

Not sent: ``NFULNL_CFG_CMD_PF_BIND``. It makes nfnetlink_log the network namespace's
*default* logger for an address family — which changes where every other ``log`` rule
without a group (someone else's iptables ``LOG``) goes. An nftables ``log group N`` rule
names its logger type itself (nf_log_packet with NF_LOG_TYPE_ULOG), so binding the group is
all we need, and nothing outside our own table and group is touched.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import NamedTuple

from filters.errors import EnvironmentFault

__all__ = ["NETLINK_NETFILTER", "COPY_RANGE", "NLBUFSIZ", "RCVBUF", "Logged", "NflogError", "parse",
           "config_message", "NflogSocket"]

NETLINK_NETFILTER = 12  # include/uapi/linux/netlink.h
_NFNL_SUBSYS_ULOG = 4  # include/uapi/linux/netfilter/nfnetlink.h
_NFULNL_MSG_PACKET, _NFULNL_MSG_CONFIG = 0, 1
_MSG_PACKET = (_NFNL_SUBSYS_ULOG << 8) | _NFULNL_MSG_PACKET
_MSG_CONFIG = (_NFNL_SUBSYS_ULOG << 8) | _NFULNL_MSG_CONFIG
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_ACK = 0x1, 0x4
_SO_RCVBUFFORCE = 33  # include/uapi/asm-generic/socket.h
_NLA_TYPE_MASK = 0x3FFF  # ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER)

# enum nfulnl_attr_type
_NFULA_PACKET_HDR, _NFULA_MARK, _NFULA_TIMESTAMP = 1, 2, 3
_NFULA_IFINDEX_INDEV, _NFULA_IFINDEX_OUTDEV = 4, 5
_NFULA_HWADDR, _NFULA_PAYLOAD, _NFULA_PREFIX = 8, 9, 10
# enum nfulnl_attr_config
CFG_CMD, CFG_MODE, CFG_NLBUFSIZ, CFG_TIMEOUT, CFG_QTHRESH, CFG_FLAGS = 1, 2, 3, 4, 5, 6
# enum nfulnl_msg_config_cmds
CMD_BIND, CMD_UNBIND = 1, 2
_COPY_PACKET = 0x02  # NFULNL_COPY_PACKET

# Bytes of each logged packet copied to us (struct nfulnl_msg_config_mode copy_range). The
# rule's ``snaplen`` (appliance/flows/nft.py SNAPLEN) cuts first; this is the socket's own bound:
# a forwarded packet merged by GRO can be up to 64 KiB, and the first flight we read is at
# most filters/extract_tls.MAX_FIRST_FLIGHT (20 KiB) anyway.
COPY_RANGE = 0xFFFF
# Size of the kernel's batch buffer per group (NFULA_CFG_NLBUFSIZ; the kernel's default is
# NLMSG_GOODSIZE, ~4-8 KiB). With a queue threshold of 1 every packet is flushed at once,
# so this only has to hold one message; larger messages get a buffer of their own.
NLBUFSIZ = 1 << 16
# Socket receive buffer: 8 MiB holds a few thousand logged packets (the kernel accounts a
# full skb per message) — bursts of a school's flow openings while the process is busy.
RCVBUF = 8 << 20
# One message is flushed as soon as it is logged (NFULA_CFG_QTHRESH 1): batching would
# delay a verdict by the flush timeout, and the verdict races the server's reply.
QTHRESH = 1
_MAX_DATAGRAM = COPY_RANGE + 4096  # one message: a full copy plus the headers

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid (host order)
_NFGENMSG = struct.Struct(">BBH")  # family, version, res_id (group, big-endian)
_NLATTR = struct.Struct("=HH")


class NflogError(EnvironmentFault):
    """The kernel refused a request (``errno`` set), or sent what is not nfnetlink_log."""

    def __init__(self, message: str, errno_: int = 0) -> None:
        super().__init__(message)
        self.errno = errno_


class Logged(NamedTuple):
    """One logged packet. ``payload`` starts at the network (IP) header."""

    family: int  # NFPROTO_IPV4 (2) or NFPROTO_IPV6 (10): the packet's, from nfgenmsg
    group: int
    payload: bytes
    prefix: bytes = b""  # the rule's ``prefix`` (without the NUL)
    hw_protocol: int = 0  # the EtherType (0x0800, 0x86dd)
    hook: int = -1  # netfilter hook (NF_INET_FORWARD is 2)
    indev: int = 0  # input interface index (0: none)
    outdev: int = 0
    hwaddr: bytes = b""  # the link-layer source address (the client's MAC on Ethernet)
    timestamp: float | None = None  # when the kernel received it (only if it was stamped)
    mark: int = 0

    @property
    def version(self) -> int:
        """4 or 6, what filters.packet.decode_ip expects (0: neither)."""
        return 4 if self.family == socket.AF_INET else 6 if self.family == socket.AF_INET6 else 0


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attrs(buf: bytes, pos: int, end: int) -> dict[int, bytes]:
    """The attributes in ``buf[pos:end]`` by type; a lying length ends the walk."""
    out: dict[int, bytes] = {}
    while pos + 4 <= end:
        alen, atype = _NLATTR.unpack_from(buf, pos)
        if alen < 4 or pos + alen > end:
            break
        out[atype & _NLA_TYPE_MASK] = buf[pos + 4:pos + alen]
        pos += _align(alen)
    return out


def _packet(buf: bytes, pos: int, end: int) -> Logged | None:
    if pos + _NFGENMSG.size > end:
        return None
    family, _version, group = _NFGENMSG.unpack_from(buf, pos)
    a = _attrs(buf, pos + _NFGENMSG.size, end)
    payload = a.get(_NFULA_PAYLOAD)
    if payload is None:
        return None
    hw_protocol = hook = 0
    hdr = a.get(_NFULA_PACKET_HDR)
    if hdr is not None and len(hdr) >= 3:
        hw_protocol, hook = (hdr[0] << 8) | hdr[1], hdr[2]
    hwaddr = b""
    hw = a.get(_NFULA_HWADDR)  # struct nfulnl_msg_packet_hw: be16 length, pad, 8 bytes
    if hw is not None and len(hw) >= 4:
        hwaddr = hw[4:4 + min(8, (hw[0] << 8) | hw[1])]
    ts = None
    t = a.get(_NFULA_TIMESTAMP)  # struct nfulnl_msg_packet_timestamp: be64 sec, be64 usec
    if t is not None and len(t) >= 16:
        sec, usec = struct.unpack_from(">QQ", t)
        ts = sec + usec / 1e6
    return Logged(family, group, payload, a.get(_NFULA_PREFIX, b"").split(b"\0", 1)[0], hw_protocol, hook,
                  _be32(a.get(_NFULA_IFINDEX_INDEV)), _be32(a.get(_NFULA_IFINDEX_OUTDEV)), hwaddr, ts,
                  _be32(a.get(_NFULA_MARK)))


def _be32(v: bytes | None) -> int:
    return int.from_bytes(v[:4], "big") if v is not None and len(v) >= 4 else 0


def parse(buf: bytes) -> tuple[list[Logged], list[int]]:
    """The packets in the bytes of one ``recv`` (one or more netlink messages), and the
    errno of every NLMSG_ERROR among them (0 is an ACK). Never raises: truncated or lying
    lengths end the walk, messages of other types are skipped."""
    packets: list[Logged] = []
    errors: list[int] = []
    pos, n = 0, len(buf)
    while pos + _NLMSGHDR.size <= n:
        mlen, mtype, _flags, _seq, _pid = _NLMSGHDR.unpack_from(buf, pos)
        if mlen < _NLMSGHDR.size or pos + mlen > n:
            break
        body, end = pos + _NLMSGHDR.size, pos + mlen
        if mtype == _MSG_PACKET:
            p = _packet(buf, body, end)
            if p is not None:
                packets.append(p)
        elif mtype == _NLMSG_ERROR and body + 4 <= end:
            errors.append(-struct.unpack_from("=i", buf, body)[0])  # struct nlmsgerr: -errno first
        elif mtype == _NLMSG_DONE:
            break
        pos += _align(mlen)
    return packets, errors


def _attr(atype: int, value: bytes) -> bytes:
    raw = _NLATTR.pack(4 + len(value), atype) + value
    return raw + bytes(_align(len(raw)) - len(raw))


def config_message(group: int, attrs: list[tuple[int, bytes]], seq: int = 0, family: int = 0) -> bytes:
    """An NFULNL_MSG_CONFIG request for ``group`` with ``attrs`` ((CFG_*, value) pairs,
    values already in the kernel's byte order), asking for an ACK."""
    if not 0 <= group <= 0xFFFF:
        raise ValueError(f"an nflog group is 0-65535, not {group}")
    body = _NFGENMSG.pack(family, 0, group) + b"".join(_attr(t, v) for t, v in attrs)
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), _MSG_CONFIG, _NLM_F_REQUEST | _NLM_F_ACK, seq, 0) + body


def bind_attrs(copy_range: int = COPY_RANGE, nlbufsiz: int = NLBUFSIZ, qthresh: int = QTHRESH) -> list[list]:
    """The configuration requests, in order: bind the group, then copy mode (whole packets
    up to ``copy_range``), buffer size, queue threshold and flush timeout. One request each,
    so that a kernel refusing one says which."""
    return [[(CFG_CMD, bytes([CMD_BIND]))],
            [(CFG_MODE, struct.pack(">IBB", copy_range, _COPY_PACKET, 0))],
            [(CFG_NLBUFSIZ, struct.pack(">I", nlbufsiz))],
            [(CFG_QTHRESH, struct.pack(">I", qthresh))],
            [(CFG_TIMEOUT, struct.pack(">I", 1))]]  # 1/100 s: a flush timer, should a batch form


class NflogSocket:
    """A netlink socket bound to one nfnetlink_log group, in the calling process's network
    namespace. Raises :class:`NflogError` when the kernel refuses the bind (EPERM: another
    socket has bound the group — one per group and namespace — or no CAP_NET_ADMIN) — the
    caller falls back to BPF."""

    def __init__(self, group: int, copy_range: int = COPY_RANGE, rcvbuf: int = RCVBUF,
                 timeout: float | None = 0.2) -> None:
        self.group = group
        self.drops = 0  # ENOBUFS: the receive buffer overflowed and the kernel dropped messages
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        except OSError as exc:
            raise NflogError(f"no netfilter netlink socket: {os.strerror(exc.errno or 0)}", exc.errno or 0) from exc
        try:
            self.sock.bind((0, 0))
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            try:  # root may exceed net.core.rmem_max
                self.sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, rcvbuf)
            except OSError:
                pass
            self.sock.settimeout(2.0)
            for seq, attrs in enumerate(bind_attrs(copy_range), 1):
                self._request(attrs, seq)
            self.sock.settimeout(timeout)
        except BaseException:
            self.sock.close()
            raise

    def _request(self, attrs: list[tuple[int, bytes]], seq: int) -> None:
        self.sock.send(config_message(self.group, attrs, seq))
        for _ in range(16):  # the ACK; logged packets may already be queued before it
            try:
                buf = self.sock.recv(_MAX_DATAGRAM)
            except TimeoutError as exc:
                raise NflogError(f"nflog group {self.group}: no answer from the kernel") from exc
            _, errors = parse(buf)
            for e in errors:
                if e:
                    raise NflogError(f"nflog group {self.group}: the kernel refused the configuration "
                                     f"(attribute {attrs[0][0]}): {os.strerror(e)}", e)
                return
        raise NflogError(f"nflog group {self.group}: no acknowledgement from the kernel")

    def fileno(self) -> int:
        return self.sock.fileno()

    def settimeout(self, t: float | None) -> None:
        self.sock.settimeout(t)

    def recv(self) -> list[Logged]:
        """The packets of one message (``[]`` on a timeout). An overflowed receive buffer
        (ENOBUFS) is counted in ``drops`` and reading goes on."""
        try:
            buf = self.sock.recv(_MAX_DATAGRAM)
        except TimeoutError:
            return []
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                self.drops += 1
                return []
            if exc.errno in (errno.EINTR, errno.EAGAIN):
                return []
            raise
        return parse(buf)[0]

    def close(self) -> None:
        try:
            self.sock.send(config_message(self.group, [(CFG_CMD, bytes([CMD_UNBIND]))], 99))
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> NflogSocket:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
