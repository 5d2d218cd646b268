"""filters/lists/cidr.py: one network or address per line."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from filters.lists import cidr
from filters.lists._result import MAX_LINE_LENGTH, ParsedList, Rejection


def parse(*lines: str) -> ParsedList:
    return cidr.parse(lines, "nets.txt")


def nets(*texts: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(t) for t in texts]


def test_networks_and_addresses() -> None:
    r = parse(
        "1.2.3.0/24", "2001:db8::/32", "9.9.9.9", "2620:fe::fe", "0.0.0.0/0", "10.0.0.0/255.0.0.0"
    )
    assert r.networks == nets(
        "1.2.3.0/24", "2001:db8::/32", "9.9.9.9/32", "2620:fe::fe/128", "0.0.0.0/0", "10.0.0.0/8"
    )
    assert r.rejected == [] and r.block == []


def test_comments_blank_and_crlf() -> None:
    lines = ["# DoH resolvers\r\n", "\r\n", "1.1.1.1   # cloudflare\r\n", "  8.8.8.8\t#g\n"]
    r = cidr.parse(lines, "t")
    assert r.networks == nets("1.1.1.1/32", "8.8.8.8/32")
    assert r.ignored == 2 and r.lines == 4


def test_host_bits_set_are_rejected_with_a_suggestion() -> None:
    r = parse("10.0.0.1/8", "2001:db8::1/32")
    assert r.networks == []
    assert r.rejected == [
        Rejection(
            "nets.txt", 1, "host bits set in 10.0.0.1/8 (did you mean 10.0.0.0/8?)", "10.0.0.1/8"
        ),
        Rejection(
            "nets.txt", 2,
            "host bits set in 2001:db8::1/32 (did you mean 2001:db8::/32?)", "2001:db8::1/32",
        ),
    ]


@pytest.mark.parametrize(
    "line",
    ["1.2.3.0/33", "2001:db8::/129", "1.2.3.0/-1", "1.2.3.0/", "256.0.0.0", "1.2.3", "example.com",
     "1.2.3.4 5.6.7.8", "1.2.3.4#x", "\x00\xff", "::g"],
)
def test_garbage_is_rejected(line: str) -> None:
    r = parse("1.1.1.1", line)
    assert r.networks == nets("1.1.1.1/32")
    assert r.rejected == [Rejection("nets.txt", 2, "bad CIDR", line)]


def test_allow_marker_is_not_syntax() -> None:
    # Allow lists are declared in SOURCES.yaml; a "!" prefix is just a bad line here.
    r = parse("!1.2.3.4")
    assert [x.reason for x in r.rejected] == ["bad CIDR"]
    assert r.allow_networks == []


def test_overlong_line_and_empty_input() -> None:
    r = parse("1" * (MAX_LINE_LENGTH + 10))
    assert [x.reason for x in r.rejected] == [f"line longer than {MAX_LINE_LENGTH} characters"]
    e = cidr.parse([], "e")
    assert (e.lines, e.entries, e.rejected) == (0, 0, [])


@given(st.lists(st.text(max_size=45).map(lambda t: t.replace("\n", " "))))
def test_every_line_is_accounted_for(lines: list[str]) -> None:
    r = cidr.parse(lines, "prop")
    assert r.lines == len(lines)
    assert r.entries + r.ignored + len(r.rejected) == len(lines)


@given(st.ip_addresses(), st.integers(0, 128))
def test_masked_networks_round_trip(address: ipaddress.IPv4Address | ipaddress.IPv6Address,
                                    prefix: int) -> None:
    net = ipaddress.ip_network(f"{address}/{prefix % (address.max_prefixlen + 1)}", strict=False)
    assert cidr.parse([f"{net}\n"], "p").networks == [net]


# -- real data -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "version", "spot"),
    [("doh-ipv4.txt", 4, "1.1.1.1/32"), ("doh-ipv6.txt", 6, "2001:148f:fffe::1/128")],
)
def test_dibdot_doh_addresses(shared_data: Path, name: str, version: int, spot: str) -> None:
    path = shared_data / "lists/doh/dibdot" / name
    with path.open(encoding="utf-8") as f:
        r = cidr.parse(f, str(path))
    assert r.rejected == []
    assert r.entries + r.ignored == r.lines
    assert r.entries > 1000
    assert {n.version for n in r.networks} == {version}
    assert ipaddress.ip_network(spot) in r.networks
