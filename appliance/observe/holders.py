"""Who holds an address we cannot listen on: the error `schoolgate run` gives for it.

``[Errno 98] Address already in use`` says neither which address nor who has it. The
kernel lists every socket in /proc/net/{udp,tcp,udp6,tcp6} (local address, state, inode);
a process holding one has an fd linking to ``socket:[INODE]`` under /proc/PID/fd. Finding
the holder is best effort: another user's processes are unreadable without root, and then
the message goes without it.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import sys
from pathlib import Path
from typing import Literal, NamedTuple

from filters.errors import EnvironmentFault

__all__ = ["ProcSocket", "parse_proc_net_line", "socket_holders", "listen_error"]

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

TCP_LISTEN = 0x0A  # include/net/tcp_states.h
_SHOWN = 3  # holders named in a message (a forking server shares one socket among many)


class ProcSocket(NamedTuple):
    """One row of /proc/net/{udp,tcp,udp6,tcp6}."""

    address: IpAddress
    port: int
    state: int
    inode: int


def parse_proc_net_line(line: str, byteorder: Literal["little", "big"] = sys.byteorder) -> ProcSocket | None:
    """A /proc/net socket row (``0: 0100007F:14E9 00000000:0000 07 ... 12345 ...``), or None
    for the header and anything else. The kernel prints each 32-bit word of the address as
    the host-order number its bytes make (``byteorder``: the machine's)."""
    fields = line.split()
    if len(fields) < 10 or not fields[0].rstrip(":").isdigit():
        return None
    addr_hex, _, port_hex = fields[1].partition(":")
    try:
        if len(addr_hex) not in (8, 32):
            return None
        raw = b"".join(int(addr_hex[i:i + 8], 16).to_bytes(4, byteorder)
                       for i in range(0, len(addr_hex), 8))
        address: IpAddress = (ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw))
        return ProcSocket(address, int(port_hex, 16), int(fields[3], 16), int(fields[9]))
    except ValueError:
        return None


def _conflicts(s: ProcSocket, host: IpAddress, port: int, proto: str) -> bool:
    """Does socket ``s`` keep ``host:port`` (``proto``) from being bound? The same port on
    the same address, or where either side is the wildcard; a v4 address also by a v6
    wildcard socket that takes v4 (one not v6-only: /proc does not say, so it counts)."""
    if s.port != port or (proto == "tcp" and s.state != TCP_LISTEN):
        return False
    if s.address.version != host.version:
        return host.version == 4 and s.address == ipaddress.IPv6Address("::")
    return s.address == host or s.address.is_unspecified or host.is_unspecified


def socket_holders(host: str, port: int, proto: str, proc: Path = Path("/proc")) -> list[tuple[int, str]]:
    """(pid, command name) of the processes holding a socket that conflicts with binding
    ``host:port`` over ``proto`` (udp | tcp); [] when none is found or readable."""
    want = ipaddress.ip_address(host)
    inodes: set[int] = set()
    for table in (proto, proto + "6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            s = parse_proc_net_line(line)
            if s is not None and s.inode and _conflicts(s, want, port, proto):
                inodes.add(s.inode)
    if not inodes:
        return []
    links = {f"socket:[{i}]" for i in inodes}
    found: list[tuple[int, str]] = []
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            fds = list((pid_dir / "fd").iterdir())
        except OSError:  # gone, or another user's
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in links:
                    found.append((int(pid_dir.name), _command(pid_dir)))
                    break
            except OSError:
                continue
    return sorted(found)


def _command(pid_dir: Path) -> str:
    try:
        return (pid_dir / "comm").read_text().strip() or "?"
    except OSError:
        return "?"


def listen_error(exc: OSError, host: str, port: int, kind: int) -> EnvironmentFault:
    """``exc`` from binding ``host:port`` (``kind``: socket.SOCK_DGRAM or SOCK_STREAM) as
    one message naming the address, the protocol and, when it is in use, who holds it."""
    proto = "udp" if kind == socket.SOCK_DGRAM else "tcp"
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    reason = exc.strerror or str(exc)
    reason = reason[:1].lower() + reason[1:]
    if exc.errno == errno.EADDRINUSE:
        try:
            holders = socket_holders(host, port, proto)
        except (OSError, ValueError):
            holders = []
        if holders:
            names = ", ".join(f"{pid} {cmd}" for pid, cmd in holders[:_SHOWN])
            more = f" and {len(holders) - _SHOWN} more" if len(holders) > _SHOWN else ""
            reason += f" (held by process{'es' if len(holders) > 1 else ''} {names}{more})"
    elif exc.errno == errno.EADDRNOTAVAIL:
        reason += " (not an address of this machine)"
    elif exc.errno == errno.EACCES and port < 1024:
        reason += " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    return EnvironmentFault(f"cannot listen on {where}/{proto}: {reason}")
