"""appliance/observe/holders.py: /proc/net rows parsed, the holder of a real socket found,
and the message a bind error becomes."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest

from appliance.dns.server import open_sockets
from appliance.observe.holders import ProcSocket, listen_error, parse_proc_net_line, socket_holders
from filters.errors import EnvironmentFault
from tests.dnsservers import free_port

# Rows as a little-endian kernel writes them (the address words in host order).
UDP = "  771: 0100007F:14E9 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 123456 2 0 0"
TCP = ("   0: 00000000:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 "
       "4242 1 0000000000000000 100 0 0 10 0")
UDP6 = ("  100: 00000000000000000000000001000000:14E9 00000000000000000000000000000000:0000 07 "
        "00000000:00000000 00:00000000 00000000     0        0 5678 2 0000000000000000 0")
HEADER = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout "
          "inode ref pointer drops")


def test_rows_parse_to_address_port_state_and_inode() -> None:
    assert parse_proc_net_line(UDP, "little") == ProcSocket(ipaddress.ip_address("127.0.0.1"), 5353, 7, 123456)
    assert parse_proc_net_line(TCP, "little") == ProcSocket(ipaddress.ip_address("0.0.0.0"), 53, 0x0A, 4242)
    assert parse_proc_net_line(UDP6, "little") == ProcSocket(ipaddress.ip_address("::1"), 5353, 7, 5678)
    # a big-endian kernel prints the bytes in order
    assert parse_proc_net_line(UDP.replace("0100007F", "7F000001"), "big").address == ipaddress.ip_address("127.0.0.1")
    for junk in (HEADER, "", "  1: zz:14E9 00000000:0000 07 0 0 0 0 0 1", "  1: 0100:14E9 0:0 07 0 0 0 0 0 1"):
        assert parse_proc_net_line(junk) is None, junk


def test_the_row_of_a_real_socket_is_found_and_its_holder_is_this_process() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        inode = os.fstat(s.fileno()).st_ino
        rows = [parse_proc_net_line(line) for line in Path("/proc/net/udp").read_text().splitlines()]
        assert ProcSocket(ipaddress.ip_address("127.0.0.1"), port, 7, inode) in rows
        me = (os.getpid(), Path("/proc/self/comm").read_text().strip())
        assert socket_holders("127.0.0.1", port, "udp") == [me]
        assert socket_holders("0.0.0.0", port, "udp") == [me]  # the wildcard conflicts with it too
        assert socket_holders("127.0.0.1", port, "tcp") == []  # another protocol's port


def test_a_bind_error_names_address_protocol_and_holder() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        with pytest.raises(EnvironmentFault) as info:
            open_sockets((("127.0.0.1", port),))  # udp binds, then tcp is in use
        assert str(info.value) == (f"cannot listen on 127.0.0.1:{port}/tcp: address already in use "
                                   f"(held by process {os.getpid()} {Path('/proc/self/comm').read_text().strip()})")
        assert isinstance(info.value.__cause__, OSError)
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("192.0.2.1", port))
        except OSError as exc:  # TEST-NET-1 is on no interface here
            assert str(listen_error(exc, "192.0.2.1", port, socket.SOCK_DGRAM)) == (
                f"cannot listen on 192.0.2.1:{port}/udp: cannot assign requested address "
                "(not an address of this machine)")
        exc6 = OSError(98, "Address already in use")
        assert str(listen_error(exc6, "::1", 1, socket.SOCK_DGRAM)).startswith(
            "cannot listen on [::1]:1/udp: address already in use")
