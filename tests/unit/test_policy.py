"""filters.policy: most specific network wins, default policy, bypass names."""

from __future__ import annotations

import numpy as np
import pytest

from filters.dns_answer import BlockAnswers
from filters.errors import InputError
from filters.names import name_to_wire
from filters.policy import NetworkTable, PolicyRule, PolicySet, bypass_action


def _rule(name: str) -> PolicyRule:
    return PolicyRule(name, (), np.uint64(0), BlockAnswers("nxdomain"))


def test_most_specific_network_wins() -> None:
    nets = NetworkTable([("10.0.0.0/8", "students"), ("10.20.0.0/16", "staff"),
                         ("10.20.5.0/24", "guest"), ("fd00::/8", "staff")], default="guest")
    assert nets.policy_name("10.1.2.3") == "students"
    assert nets.policy_name("10.20.1.1") == "staff"
    assert nets.policy_name("10.20.5.9") == "guest"
    assert nets.policy_name("::ffff:10.20.1.1") == "staff"  # v4-mapped on a dual-stack socket
    assert nets.policy_name("fd12::1") == "staff"
    assert nets.policy_name("fe80::1%eth0") == "guest"
    assert nets.policy_name("192.0.2.1") == "guest" and nets.policy_name("junk") == "guest"


def test_policy_set_checks_names_and_remembers() -> None:
    rules = {n: _rule(n) for n in ("students", "default")}
    ps = PolicySet(rules, NetworkTable([("10.0.0.0/8", "students")], "default"))
    assert ps.for_client("10.9.9.9").name == "students"
    assert ps.for_client("127.0.0.1").name == "default"
    with pytest.raises(InputError):
        PolicySet(rules, NetworkTable([("10.0.0.0/8", "staff")], "default"))
    with pytest.raises(InputError):
        NetworkTable([("10.0.0.300/8", "x")], "default")


def test_bypass_names() -> None:
    assert bypass_action(name_to_wire("use-application-dns.net")) == "nxdomain"
    assert bypass_action(name_to_wire("mask-h2.icloud.com")) == "nxdomain"
    assert bypass_action(name_to_wire("_dns.resolver.arpa")) == "nodata"
    assert bypass_action(name_to_wire("www.icloud.com")) is None
