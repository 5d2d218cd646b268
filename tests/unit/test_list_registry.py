"""filters/lists/__init__.py: the table of list formats."""

from __future__ import annotations

import dataclasses

import pytest

import filters.lists as lists
from filters.errors import InputError, ListFormatError
from filters.lists import FORMATS, ListFormat, adblock, cidr, domains, get_format, hosts, ut1


def test_every_format_of_design_is_registered() -> None:
    assert set(FORMATS) == {"domains", "hosts", "adblock", "ut1", "cidr"}
    for name, fmt in FORMATS.items():
        assert fmt.name == name


def test_table_points_at_the_parsers() -> None:
    assert get_format("domains").parse is domains.parse
    assert get_format("hosts").parse is hosts.parse
    assert get_format("adblock").parse is adblock.parse
    assert get_format("cidr").parse is cidr.parse
    assert get_format("ut1").parse is ut1.parse


def test_only_ut1_is_a_directory_format() -> None:
    assert {n: f.member for n, f in FORMATS.items()} == {
        "domains": None, "hosts": None, "adblock": None, "ut1": "domains", "cidr": None,
    }


def test_list_format_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_format("domains").member = "x"  # type: ignore[misc]


def test_unknown_format() -> None:
    with pytest.raises(ListFormatError) as info:
        get_format("squid")
    assert isinstance(info.value, InputError)
    assert str(info.value) == (
        "unknown list format 'squid'; known: adblock, cidr, domains, hosts, ut1"
    )


def test_every_parser_accounts_for_every_line() -> None:
    lines = ["# c\n", "a.com\n", "\n", "bad line!\n"]
    for fmt in FORMATS.values():
        r = fmt.parse(lines, "x")
        assert r.lines == 4 and r.origin == "x"
        assert r.entries + r.ignored + r.unsupported + len(r.rejected) >= 3


def test_public_surface() -> None:
    assert set(lists.__all__) >= {"ListFormat", "FORMATS", "get_format", "ParsedList"}
    assert ListFormat.__dataclass_params__.frozen  # type: ignore[attr-defined]
