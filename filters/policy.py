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

Besides the bundle's categories a policy carries what only Python answers: SafeSearch
rewrites (filters/safesearch.py) and the admin's temporary allows. The DNS fast path
(filters/_dns_kernels.py) must hand exactly those names to Python, at no cost for the
others: :func:`compile_policies` puts them into the matcher's local overlay under reserved
*divert* bits — category bits the bundle does not use, which no policy blocks — and gives
each policy the mask of the bits its names carry. A lookup's category union then shows a
divert bit for such a name, and the kernel hands the packet over when
``union & policy.divert`` is not zero. Policies with the same set of names share a bit;
when the bundle leaves fewer free bits than needed, the remaining sets share the last one
(more names go to Python, none is missed); with no free bit at all (a bundle of 63
categories) ``DIVERT_ALL`` sends every query of such a policy to Python.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from filters.classes import MAX_CATEGORIES
from filters.dns_answer import BlockAnswers
from filters.errors import InputError
from filters.names import name_to_wire
from filters.safesearch import SafeSearch

if TYPE_CHECKING:
    from filters.domain_matcher import DomainMatcher

__all__ = ["BYPASS_NXDOMAIN", "BYPASS_NODATA", "bypass_action", "PolicyRule", "NetworkTable",
           "PolicySet", "MAX_REMEMBERED_CLIENTS", "DOH_CATEGORY", "DIVERT_ALL", "PolicySpec",
           "blocked_categories", "assign_divert_bits", "CompiledPolicies", "compile_policies"]

# The bundle category of DNS-over-HTTPS resolvers: blocked under every policy unless the
# policy says ``allow_doh: true`` — a browser that reaches its own resolver bypasses every
# other rule here.
DOH_CATEGORY = "doh"
# A policy's divert mask when no category bit is free: every query of it goes to Python.
DIVERT_ALL = np.uint64((1 << 64) - 1)

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


@dataclass(frozen=True, eq=False)
class PolicyRule:
    name: str
    categories: tuple[str, ...]  # blocked category names, as configured
    mask: np.uint64  # the matcher's policy mask (the local category included)
    answers: BlockAnswers
    # SafeSearch: lower-case wire QNAME -> wire name of the safe endpoint (CNAME target)
    safesearch: Mapping[bytes, bytes] = field(default_factory=dict)
    # Temporary allows in force: lower-case wire names, each allowing the names below it
    temp_allowed: frozenset[bytes] = frozenset()
    # Divert bits of this policy's SafeSearch / temporary-allow names (see the module doc)
    divert: np.uint64 = np.uint64(0)

    def temporarily_allowed(self, qname: bytes, block_depth: int) -> bool:
        """Does a temporary allow cover the lower-case wire name ``qname`` at a suffix at
        least ``block_depth`` labels long (the longest blocking suffix, docs/matching.md)?"""
        if not self.temp_allowed:
            return False
        starts = []
        p = 0
        while p < len(qname) and qname[p]:
            starts.append(p)
            p += 1 + qname[p]
        n = len(starts)
        for i, s in enumerate(starts):
            if n - i < block_depth:
                break
            if qname[s:] in self.temp_allowed:
                return True
        return False


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
        return [*self._v4, *self._v6]

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


class CompiledPolicies(NamedTuple):
    """The policies in force at one moment (unpacks as ``matcher, policies``)."""

    matcher: DomainMatcher  # the bundle's, with the local lists and divert entries in its overlay
    policies: PolicySet


@dataclass(frozen=True)
class PolicySpec:
    """A policy as configured, at one moment: the categories it blocks now (schedules
    applied, see filters/schedule.py), how blocked names are answered, SafeSearch, DoH."""

    name: str
    block: tuple[str, ...]
    answers: BlockAnswers
    safesearch: SafeSearch = SafeSearch()
    allow_doh: bool = False


def blocked_categories(block: Iterable[str], allow_doh: bool, categories: Iterable[str]) -> tuple[str, ...]:
    """The categories a policy blocks: its own, plus the bundle's ``doh`` category unless the
    policy allows DoH (only when the bundle has that category)."""
    out = list(dict.fromkeys(block))
    if not allow_doh and DOH_CATEGORY in categories and DOH_CATEGORY not in out:
        out.append(DOH_CATEGORY)
    return tuple(out)


def assign_divert_bits(names: Mapping[str, frozenset[str]], free_bits: list[int]
                       ) -> tuple[dict[str, np.uint64], dict[int, set[str]]]:
    """Divert bits for each policy's set of names (see the module doc): ({policy: mask},
    {mask: names}). Policies with no names get 0."""
    groups: dict[frozenset[str], list[str]] = {}
    for policy, ns in names.items():
        if ns:
            groups.setdefault(ns, []).append(policy)
    masks = {p: np.uint64(0) for p in names}
    table: dict[int, set[str]] = {}
    if groups and not free_bits:
        return {p: (DIVERT_ALL if names[p] else np.uint64(0)) for p in names}, {}
    for i, (ns, policies) in enumerate(sorted(groups.items(), key=lambda g: sorted(g[1]))):
        bit = 1 << free_bits[min(i, len(free_bits) - 1)]
        table.setdefault(bit, set()).update(ns)
        for p in policies:
            masks[p] = np.uint64(bit)
    return masks, table


def compile_policies(matcher: DomainMatcher, local_block: Iterable[str], local_allow: Iterable[str],
                     specs: Iterable[PolicySpec], networks: NetworkTable,
                     temporary: Iterable[tuple[str, str]] = ()) -> CompiledPolicies:
    """The matcher (``matcher`` with the local lists and the divert entries in its overlay)
    and the PolicySet for ``specs`` at one moment. ``temporary``: (name, policy or "*") of
    every temporary allow in force. Raises InputError for an unknown category."""
    specs = list(specs)
    catalog = matcher.catalog
    temp = [(name, pol) for name, pol in temporary]
    per: dict[str, frozenset[str]] = {}
    allowed: dict[str, frozenset[bytes]] = {}
    for sp in specs:
        tnames = {n for n, p in temp if p in (sp.name, "*")}
        per[sp.name] = frozenset(sp.safesearch.rewrites()) | frozenset(tnames)
        allowed[sp.name] = frozenset(name_to_wire(n) for n in tnames)
    free = [b for b in range(MAX_CATEGORIES - 1, len(catalog.categories) - 1, -1)]
    divert_masks, divert_names = assign_divert_bits(per, free)
    full = matcher.with_local(local_block, local_allow, divert_names)
    rules = {}
    for sp in specs:
        rules[sp.name] = PolicyRule(sp.name, sp.block, full.policy_mask(catalog.mask(sp.block)), sp.answers,
                                    sp.safesearch.wire_rewrites(), allowed[sp.name], divert_masks[sp.name])
    return CompiledPolicies(full, PolicySet(rules, networks))
