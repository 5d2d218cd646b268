"""filters/lists/ut1.py: a UT1 category directory, parsed through its ``domains`` file."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from filters.lists import domains, ut1
from filters.lists._result import ParsedList


def _parse_category(base: Path, category: str) -> ParsedList:
    path = base / "lists/ut1" / category / ut1.MEMBER
    with path.open(encoding="utf-8") as f:
        return ut1.parse(f, str(path))


def test_member_names_the_domains_file() -> None:
    assert ut1.MEMBER == "domains"


def test_ut1_uses_the_domains_rules() -> None:
    lines = ["Casino.example\n", "*.bet.example\n", "1.2.3.4\n", "# c\n", "bad!\n", "\n"]
    assert ut1.parse(lines, "o") == domains.parse(lines, "o")


@pytest.mark.parametrize(
    ("category", "spot"),
    [
        ("gambling", ["0-casino.info", "000-online-casino.com", "00000onlinecasino.com"]),
        ("doh", ["003.tisyang.com", "0ms.dev"]),
        ("dating", ["007agent-russian-women.net", "1000amigos.com"]),
    ],
)
def test_real_categories(shared_data: Path, category: str, spot: list[str]) -> None:
    r = _parse_category(shared_data, category)
    assert r.lines > 1000
    assert r.entries + r.ignored + len(r.rejected) == r.lines
    assert len(r.rejected) <= r.lines // 1000, r.rejected[:5]
    assert set(spot) <= set(r.block)


def test_real_addresses_become_networks(shared_data: Path) -> None:
    # UT1's doh category lists resolvers by address too (1.0.0.1 is its fifth line).
    r = _parse_category(shared_data, "doh")
    assert ipaddress.ip_network("1.0.0.1/32") in r.networks
    assert "1.0.0.1" not in r.block


def test_real_malware_parses_without_loss(shared_data: Path) -> None:
    # ~218k lines, the largest UT1 category in the snapshot (its speed is measured in
    # benchmarks/, not here).
    path = shared_data / "lists/ut1/malware/domains"
    lines = path.read_text(encoding="utf-8").splitlines()
    r = ut1.parse(lines, str(path))
    assert r.rejected == [] and r.entries == r.lines
