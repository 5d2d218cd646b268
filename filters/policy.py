"""Which policy applies to a client, and the fixed encrypted-DNS bypass rules (sans-IO).

Networks map client CIDRs to policy names; the most specific network containing the client
wins (a staff /24 inside the school's /16), and clients in no network get the default
policy. A policy is the set of blocked categories and how a blocked name is answered.

The bypass rules keep browsers and phones from leaving the school's resolver for their own
encrypted one, so they hold under every policy:

- ``use-application-dns.net`` → NXDOMAIN: Firefox's canary domain; NXDOMAIN tells Firefox
  not to turn on DNS over HTTPS by default
  (https://support.mozilla.org/kb/canary-domain-use-application-dnsnet).
- ``mask.icloud.com``, ``mask-h2.icloud.com`` → NXDOMAIN: Apple's documented way for a
  network to turn off iCloud Private Relay
  (https://developer.apple.com/support/prepare-your-network-for-icloud-private-relay).
- ``_dns.resolver.arpa`` → NODATA: RFC 9462 discovery of designated (encrypted) resolvers;
  no SVCB records means clients stay on plain DNS.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

from filters.dns_answer import BlockAnswers
from filters.errors import InputError
from filters.names import name_to_wire

__all__ = ["BYPASS_NXDOMAIN", "BYPASS_NODATA", "bypass_action", "PolicyRule", "NetworkTable",
           "PolicySet", "MAX_REMEMBERED_CLIENTS"]

BYPASS_NXDOMAIN = ("use-application-dns.net", "mask.icloud.com", "mask-h2.icloud.com")
BYPASS_NODATA = ("_dns.resolver.arpa",)
_BYPASS: dict[bytes, str] = {name_to_wire(n): "nxdomain" for n in BYPASS_NXDOMAIN}
_BYPASS.update({name_to_wire(n): "nodata" for n in BYPASS_NODATA})
# Client address -> policy answers are remembered; a /16 of clients fits. Past that the
# memo starts over, so a scan of spoofed sources costs CPU, never unbounded memory.
MAX_REMEMBERED_CLIENTS = 65536


def bypass_action(qname_wire_lower: bytes) -> str | None:
    """"nxdomain", "nodata" or None for a lower-case wire QNAME (exact names only)."""
    return _BYPASS.get(qname_wire_lower)


@dataclass(frozen=True)
class PolicyRule:
    name: str
    categories: tuple[str, ...]  # blocked category names, as configured
    mask: np.uint64  # the matcher's policy mask (the local category included)
    answers: BlockAnswers


class NetworkTable:
    """Client address -> policy name; the longest matching prefix wins."""

    def __init__(self, networks: Iterable[tuple[str, str]], default: str) -> None:
        nets = []
        for cidr, policy in networks:
            try:
                nets.append((ipaddress.ip_network(cidr, strict=False), policy))
            except ValueError as exc:
                raise InputError(f"not a network: {cidr!r} ({exc})") from exc
        # Most specific first; at equal length the earlier entry wins (sort is stable).
        nets.sort(key=lambda n: -n[0].prefixlen)
        self._v4 = [(n, p) for n, p in nets if n.version == 4]
        self._v6 = [(n, p) for n, p in nets if n.version == 6]
        self.default = default

    def ordered(self) -> list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]]:
        """Every (network, policy) in the order lookups try them: v4 then v6, each most
        specific first (the DNS fast path copies this into its CIDR table)."""
        return self._v4 + self._v6

    def policy_name(self, address: str) -> str:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return self.default
        if ip.version == 6 and ip.ipv4_mapped is not None:  # a v4 client on a dual-stack socket
            ip = ip.ipv4_mapped
        for net, policy in (self._v4 if ip.version == 4 else self._v6):
            if ip in net:
                return policy
        return self.default


class PolicySet:
    """Policies by name plus the network table; ``for_client`` is the per-query call."""

    def __init__(self, rules: Mapping[str, PolicyRule], networks: NetworkTable) -> None:
        missing = {networks.default} - set(rules)
        missing |= {p for _, p in networks._v4 + networks._v6} - set(rules)
        if missing:
            raise InputError(f"networks name undefined policies: {', '.join(sorted(missing))}")
        self.rules = dict(rules)
        self.networks = networks
        self._memo: dict[str, PolicyRule] = {}

    def for_client(self, address: str) -> PolicyRule:
        rule = self._memo.get(address)
        if rule is None:
            if len(self._memo) >= MAX_REMEMBERED_CLIENTS:
                self._memo.clear()
            rule = self._memo[address] = self.rules[self.networks.policy_name(address)]
        return rule
