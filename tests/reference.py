"""Naive pure-Python references for the matchers: every kernel is checked against one.

Each reference restates one rule of docs/matching.md in the most obvious way — loop over every
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
# docs/matching.md: an address matches every CIDR that contains it; its categories are the union
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


# ---------------------------------------------------------------------------------------
# Domain reference
#
# Two independent restatements for filters/_domain_kernels.py and the domain matcher:
#
# 1. SipHash-c-d with 64- or 128-bit output, written from the paper (Aumasson & Bernstein,
#    "SipHash: a fast short-input PRF", 2012) and the reference C code (veorq/SipHash), with
#    the rounds as parameters. tests/unit/test_siphash.py pins it to the published 2-4
#    vectors, then compares the kernels (1-3) with it at the kernels' own c and d.
# 2. The matching rule of docs/matching.md, over a plain list of entries, one per (name, form,
#    source): "name" matches the name and everything below it, "*.name" only what is
#    below. For a canonical query q: categories = OR of the masks of every matching block
#    entry; B = the longest matching block entry whose mask meets the policy; A = the
#    longest matching allow entry; q is blocked iff B exists and no A is at least as long.
#    The deciding rule is B when blocked, else A when some allow entry matches, else none.
# ---------------------------------------------------------------------------------------

__all__ += [
    "siphash",
    "siphash128_words",
    "suffix_message",
    "DomainEntry",
    "DomainAnswer",
    "domain_entry_matches",
    "reference_domain_match",
]

_M64 = (1 << 64) - 1


def _rotl64(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _M64


def _sipround(v: list[int]) -> None:
    v[0] = (v[0] + v[1]) & _M64
    v[1] = _rotl64(v[1], 13) ^ v[0]
    v[0] = _rotl64(v[0], 32)
    v[2] = (v[2] + v[3]) & _M64
    v[3] = _rotl64(v[3], 16) ^ v[2]
    v[0] = (v[0] + v[3]) & _M64
    v[3] = _rotl64(v[3], 21) ^ v[0]
    v[2] = (v[2] + v[1]) & _M64
    v[1] = _rotl64(v[1], 17) ^ v[2]
    v[2] = _rotl64(v[2], 32)


def siphash(key: bytes, message: bytes, c: int = 2, d: int = 4, outlen: int = 8) -> bytes:
    """SipHash-``c``-``d`` of ``message`` under a 16-byte ``key``; ``outlen`` 8 or 16 bytes,
    laid out as the reference implementation writes them (little-endian words)."""
    if len(key) != 16 or outlen not in (8, 16):
        raise ValueError("SipHash takes a 16-byte key and gives 8 or 16 bytes")
    k0 = int.from_bytes(key[:8], "little")
    k1 = int.from_bytes(key[8:], "little")
    v = [
        k0 ^ 0x736F6D6570736575,  # "somepseudorandomlygeneratedbytes"
        k1 ^ 0x646F72616E646F6D,
        k0 ^ 0x6C7967656E657261,
        k1 ^ 0x7465646279746573,
    ]
    if outlen == 16:
        v[1] ^= 0xEE
    n = len(message)
    full = n - n % 8
    blocks = [int.from_bytes(message[i : i + 8], "little") for i in range(0, full, 8)]
    # The last block: the 0-7 remaining bytes, and the length mod 256 in the top byte.
    blocks.append(int.from_bytes(message[full:], "little") | (n & 0xFF) << 56)
    for m in blocks:
        v[3] ^= m
        for _ in range(c):
            _sipround(v)
        v[0] ^= m
    v[2] ^= 0xEE if outlen == 16 else 0xFF
    for _ in range(d):
        _sipround(v)
    out = (v[0] ^ v[1] ^ v[2] ^ v[3]).to_bytes(8, "little")
    if outlen == 16:
        v[1] ^= 0xDD
        for _ in range(d):
            _sipround(v)
        out += (v[0] ^ v[1] ^ v[2] ^ v[3]).to_bytes(8, "little")
    return out


def siphash128_words(k0: int, k1: int, message: bytes, c: int, d: int) -> tuple[int, int]:
    """SipHash-c-d-128 with the key given as two 64-bit words (k0 = key bytes 0-7, read
    little-endian), returned as two 64-bit words: what the kernels call (h0, h1)."""
    key = k0.to_bytes(8, "little") + k1.to_bytes(8, "little")
    out = siphash(key, message, c, d, 16)
    return int.from_bytes(out[:8], "little"), int.from_bytes(out[8:], "little")


_BUCKET_MIX = 0x9E3779B97F4A7C15


def sip_words(k0: int, k1: int, message: bytes, c: int, d: int) -> tuple[int, int]:
    """What the domain kernels compute for one suffix message: (SipHash-c-d-64 of it, the
    bucket word). The bucket word is (v1 ^ v3) * 0x9E3779B97F4A7C15 mod 2**64, taken from
    the state right after the last block (the one carrying the length) is absorbed."""
    v = [
        k0 ^ 0x736F6D6570736575,
        k1 ^ 0x646F72616E646F6D,
        k0 ^ 0x6C7967656E657261,
        k1 ^ 0x7465646279746573,
    ]
    n = len(message)
    full = n - n % 8
    blocks = [int.from_bytes(message[i : i + 8], "little") for i in range(0, full, 8)]
    blocks.append(int.from_bytes(message[full:], "little") | (n & 0xFF) << 56)
    for m in blocks:
        v[3] ^= m
        for _ in range(c):
            _sipround(v)
        v[0] ^= m
    mix = ((v[1] ^ v[3]) * _BUCKET_MIX) & _M64
    v[2] ^= 0xFF
    for _ in range(d):
        _sipround(v)
    return v[0] ^ v[1] ^ v[2] ^ v[3], mix


def suffix_message(name: str) -> bytes:
    """The bytes a name's hash covers: its labels, lower-cased, in wire form, from the
    right. ``suffix_message("Example.COM") == b"\\x03com\\x07example"``."""
    out = b""
    for label in reversed(name.split(".")):
        raw = label.encode("ascii").lower()
        out += bytes([len(raw)]) + raw
    return out


@dataclass(frozen=True)
class DomainEntry:
    """One line of one list: ``name`` (canonical) or ``*.name`` when ``subdomains_only``."""

    name: str
    subdomains_only: bool
    source: int


@dataclass(frozen=True)
class DomainAnswer:
    blocked: bool
    categories: int  # OR of the masks of every matching block entry
    rule: str | None  # the deciding suffix (B when blocked, else A, else None)
    # Sources of the deciding entries: the matching block entries named ``rule`` whose masks
    # meet the policy when blocked; the matching allow entries named ``rule`` otherwise.
    sources: tuple[int, ...]
    # Every source with an entry named ``rule`` that matches the query, whatever its kind
    # or mask: the lists the deciding rule "came from" in the widest sense.
    listed_by: tuple[int, ...]


def domain_entry_matches(entry: DomainEntry, name: str) -> bool:
    below = name.endswith("." + entry.name)
    return below if entry.subdomains_only else (below or name == entry.name)


def _labels(name: str) -> int:
    return name.count(".") + 1


def reference_domain_match(
    entries: Iterable[DomainEntry],
    source_masks: list[int],
    source_allow: list[bool],
    name: str,
    policy: int,
) -> DomainAnswer:
    """Match the canonical ``name`` against every entry, one string test per entry.
    ``source_masks[s]`` is source s's category mask (ignored for allow sources)."""
    matching = [e for e in entries if domain_entry_matches(e, name)]
    block = [e for e in matching if not source_allow[e.source]]
    allow = [e for e in matching if source_allow[e.source]]
    categories = 0
    for e in block:
        categories |= source_masks[e.source]
    blocking = [e for e in block if source_masks[e.source] & policy]
    b_depth = max((_labels(e.name) for e in blocking), default=0)
    a_depth = max((_labels(e.name) for e in allow), default=0)
    if b_depth and a_depth < b_depth:
        blocked, deciding = True, [e for e in blocking if _labels(e.name) == b_depth]
    elif a_depth:
        blocked, deciding = False, [e for e in allow if _labels(e.name) == a_depth]
    else:
        return DomainAnswer(False, categories, None, (), ())
    rule = deciding[0].name
    listed = sorted({e.source for e in matching if e.name == rule})
    return DomainAnswer(blocked, categories, rule, tuple(sorted({e.source for e in deciding})),
                        tuple(listed))
