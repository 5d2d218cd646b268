"""Match IP addresses against a bundle's CIDR entries (docs/matching.md).

An address matches every CIDR that contains it. Its categories are the union of those
CIDRs' categories; it is blocked under a policy when some matching CIDR's categories meet
the policy and no matching allow CIDR is at least as specific (prefix at least as long) as
the most specific such CIDR. The verdict names the rule that decided it, so "why?" always
has an answer.

IPv4-mapped IPv6 addresses (``::ffff:1.2.3.4``) are matched against the IPv4 entries, as an
admin expects: a dual-stack socket reports IPv4 peers in that form. v6 entries inside
``::ffff:0:0/96`` are therefore never matched. Other transition forms (NAT64 ``64:ff9b::/96``,
6to4) are plain IPv6.

This module validates and converts; the work is done by the numba kernels in
``filters/_cidr_kernels.py``, which other kernels may call directly with :attr:`kernel_args`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import numpy as np

from filters import _cidr_kernels as _k
from filters.catalog import Catalog
from filters.cidr_table import CidrTable
from filters.classes import ClassTable
from filters.domain_matcher import Verdict
from filters.errors import BadNameError, BundleError

__all__ = ["IpVerdict", "CidrMatcher", "parse_address"]

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_W64 = (1 << 64) - 1


@dataclass(frozen=True)
class IpVerdict:
    """The answer for one address.

    ``rule``/``cls``/``entry`` describe the entry that decided the verdict: the most
    specific CIDR whose categories meet the policy when ``blocked``; the allow CIDR that
    overrode it when an allow won; ``None`` when no matching CIDR's categories meet the
    policy (``categories`` may still be non-zero then).
    """

    address: str
    blocked: bool
    categories: int  # union of the category masks of every CIDR containing the address
    rule: str | None  # e.g. "10.0.0.0/8"
    cls: int | None  # class id of that rule: its categories and sources (ClassTable)
    entry: int | None = None  # its entry index in the CidrTable


def parse_address(address: str | IpAddress) -> IpAddress:
    """Turn text into an address; raises :class:`BadNameError` with a reason."""
    if isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return address
    if not isinstance(address, str):
        raise BadNameError(f"not an IP address: {address!r}")
    text = address.strip()
    try:
        return ipaddress.ip_address(text)
    except ValueError as e:
        raise BadNameError(f"not an IP address: {text[:80]!r}") from e


def _address_text(addr: IpAddress) -> str:
    """``str(addr)``, an IPv4-mapped address in its dotted form (``::ffff:1.2.3.4``, as
    Python 3.13 prints it; 3.11 gives ``::ffff:102:304``)."""
    mapped = getattr(addr, "ipv4_mapped", None)
    return f"::ffff:{mapped}" if mapped is not None else str(addr)


def _policy(policy_mask: int) -> np.uint64:
    if not isinstance(policy_mask, (int, np.integer)) or not 0 <= policy_mask <= _W64:
        raise ValueError(f"policy mask must be an integer in [0, 2**64), got {policy_mask!r}")
    return np.uint64(policy_mask)


def _addr_array(a: np.ndarray, dtype: type, name: str) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.dtype != dtype or a.ndim != 1:
        raise TypeError(f"{name} must be a 1-D {np.dtype(dtype)} array")
    return np.ascontiguousarray(a)


class CidrMatcher:
    """Matches addresses against one :class:`CidrTable` whose class ids index ``classes``.

    Holds no state besides the arrays, so one instance can serve every thread.
    """

    def __init__(self, table: CidrTable, classes: ClassTable) -> None:
        mask, allow = classes.mask, classes.allow
        if mask.dtype != np.uint64 or allow.dtype != np.uint8 or len(allow) != len(mask):
            raise BundleError("class table: mask must be uint64 and allow uint8, one per class")
        # The kernels index the class arrays without bounds checks.
        if len(table) and int(table.cls.max()) >= len(mask):
            raise BundleError(
                f"CIDR table refers to class {int(table.cls.max())}, "
                f"but the class table has {len(mask)}"
            )
        self.table = table
        self.classes = classes
        self._mask = np.ascontiguousarray(mask)
        self._allow = np.ascontiguousarray(allow)

    @property
    def kernel_args(self) -> tuple[np.ndarray, ...]:
        """``(net4, index4, net6_hi, net6_lo, prefix, cls, parent, cls_mask, cls_allow)``:
        the table arguments of the kernels, for other numba code (the v4 kernels omit the
        two v6 arrays)."""
        t = self.table
        return (t.v4_net, t.v4_index, t.v6_net_hi, t.v6_net_lo, t.prefix, t.cls, t.parent,
                self._mask, self._allow)

    def match(self, address: str | IpAddress, policy_mask: int) -> IpVerdict:
        """Match one address (text or ``ipaddress`` object) under ``policy_mask``.

        Raises :class:`BadNameError` for text that is not an address.
        """
        addr = parse_address(address)
        pol = _policy(policy_mask)
        t = self.table
        value = int(addr)
        if addr.version == 4:
            blocked, cats, rule = _k.lookup_v4(
                t.v4_net, t.v4_index, t.prefix, t.cls, t.parent, self._mask, self._allow,
                value, pol,
            )
        else:
            blocked, cats, rule = _k.lookup_v6(
                t.v4_net, t.v4_index, t.v6_net_hi, t.v6_net_lo, t.prefix, t.cls, t.parent,
                self._mask, self._allow, np.uint64(value >> 64), np.uint64(value & _W64), pol,
            )
        text = _address_text(addr)
        if rule < 0:
            return IpVerdict(text, bool(blocked), int(cats), None, None, None)
        return IpVerdict(
            text, bool(blocked), int(cats), self.rule_text(rule), int(t.cls[rule]), rule
        )

    def match_batch_v4(
        self, addrs: np.ndarray, policy_mask: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Match IPv4 addresses given as a uint32 array (host order integers).

        Returns ``(blocked bool, categories uint64, rule int64)`` arrays; rule is the
        deciding entry index as in :class:`IpVerdict`, -1 for none.
        """
        a = _addr_array(addrs, np.uint32, "addrs")
        pol = _policy(policy_mask)
        blocked, cats, rule = _outputs(len(a))
        t = self.table
        _k.lookup_v4_batch(t.v4_net, t.v4_index, t.prefix, t.cls, t.parent, self._mask,
                           self._allow, a, pol, blocked, cats, rule)
        return blocked, cats, rule

    def match_batch_v6(
        self, hi: np.ndarray, lo: np.ndarray, policy_mask: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Match IPv6 addresses given as their high and low 64-bit words (uint64 arrays);
        IPv4-mapped ones match the v4 entries. Returns as :meth:`match_batch_v4`."""
        h = _addr_array(hi, np.uint64, "hi")
        lw = _addr_array(lo, np.uint64, "lo")
        if len(h) != len(lw):
            raise ValueError(f"hi and lo differ in length ({len(h)} != {len(lw)})")
        pol = _policy(policy_mask)
        blocked, cats, rule = _outputs(len(h))
        t = self.table
        _k.lookup_v6_batch(t.v4_net, t.v4_index, t.v6_net_hi, t.v6_net_lo, t.prefix, t.cls,
                           t.parent, self._mask, self._allow, h, lw, pol, blocked, cats, rule)
        return blocked, cats, rule

    def explain(self, v: IpVerdict, catalog: Catalog, policy_mask: int) -> Verdict:
        """``v`` (matched under ``policy_mask``) with its why, as a name's Verdict: the
        categories of every CIDR containing the address, the deciding CIDR and the lists it
        came from (for a block those of the categories the policy blocks, for an allow the
        allow lists), so `schoolgate lookup` answers addresses and names alike."""
        sources: list[str] = []
        if v.cls is not None:
            ids = self.classes.sources(v.cls)
            sources = catalog.deciding(ids, v.blocked, int(_policy(policy_mask)))
        return Verdict(v.address, v.blocked, tuple(catalog.names(v.categories)), v.rule, tuple(sources))

    def rule_text(self, entry_index: int) -> str:
        """The CIDR of an entry as text, e.g. ``"10.0.0.0/8"``; IndexError when out of range
        (including -1, "no rule")."""
        return str(self.table.network(int(entry_index)))


def _outputs(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.empty(n, np.bool_), np.empty(n, np.uint64), np.empty(n, np.int64)
