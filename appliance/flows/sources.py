"""Where the capture process's packets come from (config ``flows.capture``).

Split out of appliance/flows/capture.py so that the kernel-side selection (the cBPF program libpcap
compiles from :func:`selection_filter`, attached to an AF_PACKET socket) and the two packet
sources the capture loop reads — :class:`BpfSource` and :class:`NflogSource` (the
nfnetlink_log group of appliance/flows/nflog.py) — can be read and tested without the process
around them. Both sources yield ``(IP packet, version, client hwaddr)``.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
from typing import Protocol

from appliance.flows.nflog import NflogSocket

__all__ = ["PacketSource", "CAPTURE_BPF", "CAPTURE_NFLOG", "RCVBUF", "RECV_TIMEOUT", "ETH_P_IP", "ETH_P_IPV6",
           "selection_filter", "compile_bpf", "attach_bpf", "open_capture", "BpfSource", "NflogSource", "ReplaySource"]

CAPTURE_BPF, CAPTURE_NFLOG = "bpf", "nflog"
RECV_TIMEOUT = 0.2  # seconds: how long one recv waits (bounds the reaction to signals)
# Socket receive buffer: 4 MiB holds ~20k selected packets (~200 B each in the kernel's
# accounting) — seconds of a school's flow-opening rate if the process is briefly busy.
RCVBUF = 4 << 20
_ETH_P_ALL = 0x0003
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
_SOL_PACKET = 263
_PACKET_IGNORE_OUTGOING = 23  # Linux 4.20
_PACKET_STATISTICS = 6
_SO_ATTACH_FILTER = 26
DLT_RAW = 12  # libpcap's DLT for "starts with the IP header" (LINKTYPE_RAW)

# One read: (IP packet, IP version, the client's hardware address when the source knows it).
Packets = list[tuple[bytes, int, "bytes | None"]]


class PacketSource(Protocol):
    """What the capture loop reads: :class:`BpfSource` or :class:`NflogSource`."""

    name: str  # CAPTURE_BPF | CAPTURE_NFLOG, as flows-state.json says

    @property
    def drops(self) -> int:
        """Packets the kernel dropped so far (a full receive buffer)."""
        ...

    def settimeout(self, t: float) -> None: ...

    def read(self) -> Packets | None:
        """The next packets, or None when none arrived within the timeout."""
        ...

    def close(self) -> None: ...


def selection_filter(http_ports: tuple[int, ...] = (80,)) -> str:
    """The libpcap expression of the packets that open a flow (appliance/flows/capture.py doc), for packets
    starting at the IP header. Header-only tests come first: a payload load past the end of
    a packet ends a cBPF program with "reject", so payload tests must come last."""
    hp = " or ".join(f"tcp dst port {p}" for p in http_ports)
    p4 = "((tcp[12] & 0xf0) >> 2)"
    p6 = "(40 + ((ip6[52] & 0xf0) >> 2))"
    v4 = (f"(ip and ((udp dst port 53) or (tcp dst port 53) or (tcp dst port 853 and tcp[13] & 0x12 = 0x02)"
          f" or (udp dst port 443 and udp[4:2] >= 1208 and udp[8] & 0xc0 = 0xc0)"
          f" or (tcp and tcp[{p4}] = 0x16 and tcp[{p4} + 5] = 0x01)"
          f" or (({hp}) and tcp[{p4}] >= 0x41 and tcp[{p4}] <= 0x5a)))")
    # IPv6: libpcap reads upper-layer bytes only after the fixed header (ip6[40...]), so
    # packets with extension headers before TCP/UDP are not selected (rare for flow starts).
    v6 = (f"(ip6 and ((udp dst port 53) or (tcp dst port 53)"
          f" or (ip6[6] = 6 and tcp dst port 853 and ip6[53] & 0x12 = 0x02)"
          f" or (ip6[6] = 17 and udp dst port 443 and ip6[44:2] >= 1208 and ip6[48] & 0xc0 = 0xc0)"
          f" or (ip6[6] = 6 and ip6[{p6}] = 0x16 and ip6[{p6} + 5] = 0x01)"
          f" or (ip6[6] = 6 and ({hp}) and ip6[{p6}] >= 0x41 and ip6[{p6}] <= 0x5a)))")
    return f"{v4} or {v6}"


def compile_bpf(expression: str) -> bytes:
    """The cBPF instructions (struct sock_filter array) libpcap compiles ``expression`` to,
    for packets that start at the IP header. Imports scapy (the capture process only)."""
    from scapy.arch.common import compile_filter, free_filter

    prog = compile_filter(expression, linktype=DLT_RAW)
    try:
        insns = prog.bf_insns
        return b"".join(struct.pack("=HBBI", insns[i].code, insns[i].jt, insns[i].jf, insns[i].k)
                        for i in range(prog.bf_len))
    finally:
        free_filter(prog)


def attach_bpf(sock: socket.socket, code: bytes) -> None:
    """SO_ATTACH_FILTER with ``code`` (see compile_bpf)."""
    n = len(code) // 8
    buf = ctypes.create_string_buffer(code, len(code))

    class _Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = _Fprog(n, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, bytes(memoryview(fprog).cast("B")))


def open_capture(interface: str) -> socket.socket:
    """An AF_PACKET SOCK_DGRAM socket on ``interface`` passing only selected packets.
    The filter is attached before the socket is bound, so nothing unfiltered is queued."""
    code = compile_bpf(selection_filter())
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)  # protocol 0: receives nothing yet
    try:
        attach_bpf(s, code)
        try:
            s.setsockopt(_SOL_PACKET, _PACKET_IGNORE_OUTGOING, 1)
        except OSError:
            pass  # kernels before 4.20: outgoing packets are skipped by pkttype below
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        s.bind((interface, _ETH_P_ALL))
        s.settimeout(RECV_TIMEOUT)
    except BaseException:
        s.close()
        raise
    return s


class BpfSource:
    """Selected packets from the AF_PACKET socket (capture ``bpf``)."""

    name = CAPTURE_BPF

    def __init__(self, interface: str) -> None:
        self.sock = open_capture(interface)
        self._drops = 0

    @property
    def drops(self) -> int:
        """Packets the kernel dropped for want of buffer (PACKET_STATISTICS, which resets
        on each read: summed here)."""
        try:
            _, dropped = struct.unpack("=II", self.sock.getsockopt(_SOL_PACKET, _PACKET_STATISTICS, 8))
            self._drops += dropped
        except OSError:
            pass
        return self._drops

    def settimeout(self, t: float) -> None:
        self.sock.settimeout(t)

    def read(self) -> list[tuple[bytes, int, bytes | None]] | None:
        """[(IP packet, version, client hwaddr)] — [] for a packet skipped; None when
        nothing came within the timeout."""
        try:
            data, addr = self.sock.recvfrom(65535)
        except TimeoutError:
            return None
        except OSError as exc:
            if exc.errno in (errno.EINTR, errno.EAGAIN):
                return None
            raise
        if addr[2] == socket.PACKET_OUTGOING:
            return []
        version = 4 if addr[1] == ETH_P_IP else 6 if addr[1] == ETH_P_IPV6 else 0
        return [(data, version, addr[4])] if version else []

    def close(self) -> None:
        self.sock.close()


class NflogSource:
    """Packets the capture chain logged, from the nfnetlink_log group (capture ``nflog``)."""

    name = CAPTURE_NFLOG

    def __init__(self, group: int) -> None:
        self.nl = NflogSocket(group)

    @property
    def drops(self) -> int:
        """Receive-buffer overflows (ENOBUFS: each lost one or more logged packets)."""
        return self.nl.drops

    def settimeout(self, t: float) -> None:
        self.nl.settimeout(t)

    def read(self) -> list[tuple[bytes, int, bytes | None]] | None:
        try:
            got = self.nl.recv()
        except OSError as exc:
            if exc.errno in (errno.EINTR, errno.EAGAIN):
                return None
            raise
        if not got:
            return None
        return [(p.payload, p.version, p.hwaddr) for p in got if p.version]

    def close(self) -> None:
        self.nl.close()


class ReplaySource:
    """A :class:`PacketSource` over packets given up front (IP packet, version, hwaddr): the
    capture loop driven without a network — tests, and replaying what a capture recorded."""

    name = "replay"

    def __init__(self, packets: Packets, per_read: int = 64) -> None:
        self._left = list(packets)
        self.per_read = per_read
        self.drops = 0
        self.closed = False

    def settimeout(self, t: float) -> None:
        pass

    def read(self) -> Packets | None:
        if not self._left:
            return None
        got, self._left = self._left[:self.per_read], self._left[self.per_read:]
        return got

    def close(self) -> None:
        self.closed = True
