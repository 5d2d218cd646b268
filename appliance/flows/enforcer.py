"""Enforcement for the capture process (``flows.mode: enforce``): nftables and resets.

Split out of appliance/flows/capture.py because it is the one part that changes the network: it
installs the table ``inet schoolgate`` (appliance/flows/nft.py; with the capture chain when the
capture is ``nflog``), sends the RSTs that end a blocked TCP connection at once (one to the
client on the LAN interface, one to the server, routed by the kernel), and hands each blocked
5-tuple to nft in batches, one nft run at a time, never waited for in the packet loop.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import subprocess

from appliance.flows.inspector import Decision
from appliance.flows.nft import (
    DOH_CATEGORY,
    Nft,
    RulesetSpec,
    category_cidrs,
    flow_element,
    policy_cidrs,
    ruleset_script,
)
from appliance.flows.sources import ETH_P_IP, ETH_P_IPV6

__all__ = ["Enforcer"]

log = logging.getLogger("schoolgate")


class Enforcer:
    """nftables table and resets for one capture process. ``nflog_group``: the table also
    gets the capture chain logging to that group (capture ``nflog``)."""

    def __init__(self, cfg, built, interface: str, nflog_group: int | None = None) -> None:
        self.cfg = cfg
        self.nft = Nft()
        self.interface = interface
        self.nflog_group = nflog_group
        self.pending: list[tuple[str, str]] = []
        self.proc: subprocess.Popen | None = None
        self.raw4: socket.socket | None = None
        self.raw6: socket.socket | None = None
        self.tx: socket.socket | None = None
        self.installed = False
        # Imported now, not at the first block: scapy's layers take ~1 s to import, by which
        # time the connection to reset has long finished its handshake.
        from scapy.layers.inet import IP  # noqa: F401
        from scapy.layers.inet6 import IPv6  # noqa: F401
        self.install(cfg, built)

    def install(self, cfg, built) -> None:
        self.cfg = cfg
        f = cfg.flows
        doh4: list = []
        doh6: list = []
        if f.block_doh_addresses and DOH_CATEGORY in built.bundle.catalog.categories:
            doh4, doh6 = category_cidrs(built.bundle.cidr_matcher(), built.bundle.catalog.mask([DOH_CATEGORY]))
        spec = RulesetSpec(f.interface, f.flow_timeout, f.block_quic, f.block_dot,
                           tuple(map(str, doh4)), tuple(map(str, doh6)), policy_cidrs(built),
                           nflog_group=self.nflog_group)
        self.nft.apply(ruleset_script(spec))
        self.installed = True

    def block(self, d: Decision, hwaddr: bytes | None) -> None:
        """Reset (TCP) and remember a blocked flow; ``hwaddr``: the client's link-layer
        address as captured (None: unknown, no reset to the client)."""
        f = d.found
        self.pending.append(flow_element(f.src, d.transport, f.sport, f.dst, f.dport))
        if d.action == "reset":
            self._resets(d, hwaddr)

    def _resets(self, d: Decision, hwaddr: bytes | None) -> None:
        """RST to the client (on the LAN, as if from the server) and to the server."""
        from scapy.layers.inet import IP
        from scapy.layers.inet import TCP as STCP
        from scapy.layers.inet6 import IPv6

        f = d.found
        v6 = len(f.src) == 16
        ip_c = (IPv6 if v6 else IP)(src=str(ipaddress.ip_address(f.dst)), dst=str(ipaddress.ip_address(f.src)))
        to_client = bytes(ip_c / STCP(sport=f.dport, dport=f.sport, flags="R", seq=d.ack, window=0))
        ip_s = (IPv6 if v6 else IP)(src=str(ipaddress.ip_address(f.src)), dst=str(ipaddress.ip_address(f.dst)))
        to_server = bytes(ip_s / STCP(sport=f.sport, dport=f.dport, flags="R", seq=d.seq_end, window=0))
        try:
            if hwaddr is not None:
                if self.tx is None:
                    # Protocol 0: a socket that sends on the LAN interface and receives nothing.
                    self.tx = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
                self.tx.sendto(to_client, (self.interface, ETH_P_IPV6 if v6 else ETH_P_IP, 0, 0, hwaddr))
        except OSError as exc:
            log.warning("cannot send a reset to the client: %s", exc)
        try:
            raw = self._raw(v6)
            raw.sendto(to_server, (str(ipaddress.ip_address(f.dst)), 0))
        except OSError as exc:
            log.warning("cannot send a reset to the server: %s", exc)

    def _raw(self, v6: bool) -> socket.socket:
        if v6:
            if self.raw6 is None:
                self.raw6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
            return self.raw6
        if self.raw4 is None:
            self.raw4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        return self.raw4

    def flush(self) -> None:
        """Hand the pending set elements to nft (one run at a time, not waited for)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                return
            if self.proc.returncode != 0:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                log.error("nft could not add blocked flows: %s", err.strip()[:500])
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None
        if self.pending:
            batch, self.pending = self.pending[:1000], self.pending[1000:]
            try:
                self.proc = self.nft.add_flows_async(batch)
            except OSError as exc:
                log.error("cannot run nft: %s", exc)

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(5)
            except Exception:
                self.proc.kill()
        for s in (self.raw4, self.raw6, self.tx):
            if s is not None:
                s.close()
        if self.installed:
            self.nft.delete_table()
            self.installed = False
