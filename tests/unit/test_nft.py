"""nftables ruleset text and the policy CIDR sets (appliance/flows/nft.py)."""

from __future__ import annotations

import ipaddress
import random

import numpy as np
import pytest

from appliance.flows.nft import (
    CAPTURE_TCP_PACKETS,
    PolicyCidrs,
    RulesetSpec,
    capture_script,
    category_cidrs,
    flow_element,
    ruleset_script,
)
from filters.cidr_matcher import CidrMatcher
from filters.cidr_table import build_cidr_table
from filters.classes import ClassTable


def _matcher(entries: list[tuple[str, int, bool]]) -> CidrMatcher:
    """CIDRs with (category mask, allow) as their own classes."""
    masks = np.array([m for _, m, _ in entries], np.uint64)
    allow = np.array([1 if a else 0 for _, _, a in entries], np.uint8)
    classes = ClassTable(masks, masks, allow, np.zeros(len(entries) + 1, np.uint32), np.zeros(0, np.uint32))
    table = build_cidr_table([(ipaddress.ip_network(c), i) for i, (c, _, _) in enumerate(entries)])
    return CidrMatcher(table, classes)


def test_category_cidrs_agree_with_the_matcher() -> None:
    entries = [("10.0.0.0/8", 1, False), ("10.1.0.0/16", 0, True), ("10.1.2.0/24", 2, False),
               ("10.1.2.128/25", 0, True), ("192.168.0.0/16", 2, False), ("192.168.1.1/32", 1, True),
               ("172.16.0.0/12", 0, True), ("172.16.5.0/24", 1, False), ("2001:db8::/32", 1, False),
               ("2001:db8:1::/48", 0, True)]
    m = _matcher(entries)
    rng = random.Random(7)
    for mask in (1, 2, 3):
        v4, v6 = category_cidrs(m, mask)
        inside = lambda a, v4=v4, v6=v6: any(a in n for n in (v4 if a.version == 4 else v6))  # noqa: E731
        probes = [ipaddress.ip_address(rng.getrandbits(32)) for _ in range(200)]
        for net, _, _ in entries:
            n = ipaddress.ip_network(net)
            for _ in range(40):
                probes.append(n[rng.randrange(n.num_addresses)])
        for a in probes:
            assert inside(a) == m.match(a, mask).blocked, (mask, a)


def _spec(**kw) -> RulesetSpec:
    pols = (PolicyCidrs("staff", ("10.0.5.0/24",), (), ()),
            PolicyCidrs("pupils", ("10.0.0.0/16", "fd00::/64"), ("1.2.3.0/24",), ("2001:db8::/32",)),
            PolicyCidrs("default", (), ("1.2.3.0/24",), ()))
    return RulesetSpec("lan0", 90, policies=pols, doh_v4=("9.9.9.9",), **kw)


def test_ruleset_text() -> None:
    s = ruleset_script(_spec(block_quic=True))
    assert s.startswith("table inet schoolgate\ndelete table inet schoolgate\n")  # atomic replace
    assert "timeout 90s" in s and "flags interval" in s and "elements = { 9.9.9.9 }" in s
    assert 'iifname "lan0" udp dport 443 counter drop' in s
    assert 'iifname "lan0" tcp dport 853 counter reject with tcp reset' in s
    # most specific network first (per family); a policy blocking no CIDR accepts (no
    # fall-through to the default); the catch-all last
    order = [s.index(x) for x in ('ip saddr 10.0.5.0/24 accept', 'ip saddr 10.0.0.0/16 goto pol1',
                                  'iifname "lan0" goto pol2')]
    assert s.index('ip6 saddr fd00::/64 goto pol1') < order[-1]
    assert order == sorted(order), s
    assert "chain pol0" not in s  # nothing to refuse for staff
    s2 = ruleset_script(_spec(block_quic=False, block_dot=False))
    assert "udp dport 443" not in s2 and "dport 853" not in s2
    assert "table" in s2 and s2.count("table inet schoolgate {") == 1


def test_capture_chain_text() -> None:
    mon = capture_script("lan0", 77)
    assert mon.startswith("table inet schoolgate\ndelete table inet schoolgate\n")
    # monitor: log rules only, nothing that blocks
    assert not any(w in mon for w in ("reject", "drop", "set ", "chain forward")), mon
    assert mon.count("log group 77 snaplen") == 3 and "priority filter - 10" in mon
    assert f"ct original packets 1-{CAPTURE_TCP_PACKETS}" in mon and 'iifname "lan0" ct direction original' in mon
    full = ruleset_script(_spec(nflog_group=77))
    assert "chain capture" in full and "chain forward" in full and "log group 77" in full
    assert "chain capture" not in ruleset_script(_spec())  # bpf capture: no log rules
    with pytest.raises(ValueError):
        capture_script("lan0", 1 << 16)


def test_flow_element() -> None:
    assert flow_element(bytes([10, 0, 0, 2]), 6, 4000, bytes([1, 2, 3, 4]), 443) == (
        "v4", "10.0.0.2 . 6 . 4000 . 1.2.3.4 . 443")
    v6 = flow_element(ipaddress.ip_address("fd00::1").packed, 17, 5, ipaddress.ip_address("::2").packed, 443)
    assert v6[0] == "v6"


def test_nft_accepts_the_ruleset_in_a_namespace() -> None:
    from tests.integration.netns import namespaces, require_netns

    require_netns("nft")
    with namespaces("nft") as (ns,):
        ns.run("nft", "-f", "-", input=capture_script("lan0", 77))
        assert "log group 77" in ns.run("nft", "list", "table", "inet", "schoolgate").stdout
        for spec in (_spec(block_quic=True, nflog_group=77), _spec()):
            ns.run("nft", "-f", "-", input=ruleset_script(spec))  # twice: the replace is idempotent
        ns.run("nft", "add", "element", "inet", "schoolgate", "flows_v4", "{ 10.0.0.2 . 6 . 4000 . 1.2.3.4 . 443 }")
        assert "10.0.0.2 . tcp . 4000 . 1.2.3.4 . 443" in ns.run("nft", "list", "set", "inet", "schoolgate",
                                                                 "flows_v4").stdout
        ns.run("nft", "delete", "table", "inet", "schoolgate")
        assert "schoolgate" not in ns.run("nft", "list", "tables").stdout
