"""Naive pure-Python references for the matchers (STYLE.md point 7).

Each reference restates one rule of DESIGN.md §3 in the most obvious way — loop over every
entry, use only the standard library — so that the numba kernels can be checked against it
with property tests. Speed does not matter here; being evidently right does. Each section is
self-contained: it takes plain Python values, not the compiled tables.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["CidrRule", "CidrAnswer", "reference_cidr_match"]


# ---------------------------------------------------------------------------------------
# CIDR reference
#
# DESIGN.md §3: an address matches every CIDR that contains it; its categories are the union
# of their masks; it is blocked when some matching CIDR's categories meet the policy and no
# matching allow CIDR has a prefix at least as long as the longest such CIDR. The deciding
# rule is that blocking CIDR, or the overriding allow CIDR, or none. IPv4-mapped IPv6
# addresses are matched as the IPv4 address they carry (filters/cidr_matcher.py).
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CidrRule:
    """One CIDR entry with what its class says: category mask and whether it allows."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    mask: int
    allow: bool


@dataclass(frozen=True)
class CidrAnswer:
    blocked: bool
    categories: int
    rule: ipaddress.IPv4Network | ipaddress.IPv6Network | None


def reference_cidr_match(
    rules: Iterable[CidrRule],
    address: str | ipaddress.IPv4Address | ipaddress.IPv6Address,
    policy: int,
) -> CidrAnswer:
    """Match ``address`` against every rule, one ``in`` test per rule."""
    addr = ipaddress.ip_address(address)
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    containing = [r for r in rules if r.network.version == addr.version and addr in r.network]
    categories = 0
    for r in containing:
        categories |= r.mask
    blocking = [r for r in containing if r.mask & policy]
    allowing = [r for r in containing if r.allow]
    if not blocking:
        return CidrAnswer(False, categories, None)
    longest_block = max(blocking, key=lambda r: r.network.prefixlen)
    if allowing:
        longest_allow = max(allowing, key=lambda r: r.network.prefixlen)
        if longest_allow.network.prefixlen >= longest_block.network.prefixlen:
            return CidrAnswer(False, categories, longest_allow.network)
    return CidrAnswer(True, categories, longest_block.network)
