"""filters/lists/hosts.py: ``ADDRESS NAME...`` lines, names read as domain entries."""

from __future__ import annotations

from pathlib import Path

import pytest

from filters.lists import hosts
from filters.lists._result import MAX_LINE_LENGTH, ParsedList, Rejection


def parse(*lines: str) -> ParsedList:
    return hosts.parse(lines, "test.hosts")


def test_sinkhole_addresses() -> None:
    r = parse("0.0.0.0 a.com", "127.0.0.1 b.com", "::1 c.com", ":: d.com", "0:0:0:0:0:0:0:0 e.com")
    assert r.block == ["a.com", "b.com", "c.com", "d.com", "e.com"]
    assert r.rejected == [] and r.networks == []


def test_any_valid_address_is_syntax_only() -> None:
    # The address in a blocklist is a sinkhole; the name is the entry, never the address.
    r = parse("192.168.1.1 router.example", "2001:db8::1 v6.example")
    assert r.block == ["router.example", "v6.example"]
    assert r.networks == []


def test_several_names_per_line() -> None:
    r = parse("0.0.0.0 a.com B.com\tc.com.  bücher.de")
    assert r.block == ["a.com", "b.com", "c.com", "xn--bcher-kva.de"]


def test_bare_names_are_names() -> None:
    # StevenBlack "hosts0" trimmed files drop the 0.0.0.0 column.
    r = parse("ad.example.com", "Tracker.Example.NET.")
    assert r.block == ["ad.example.com", "tracker.example.net"]


def test_hosts_names_are_domain_entries_not_patterns() -> None:
    # Entries block the name and below (the compiler's job); the parser keeps them in block,
    # never in block_subdomains, and "*." is not hosts syntax.
    r = parse("0.0.0.0 example.com *.example.org .example.net")
    assert r.block == ["example.com"]
    assert r.block_subdomains == []
    assert [x.reason for x in r.rejected] == ["bad character '*'", "empty label"]


def test_boilerplate_is_ignored_not_rejected() -> None:
    r = parse(
        "127.0.0.1 localhost",
        "127.0.0.1 localhost.localdomain",
        "127.0.0.1 local",
        "255.255.255.255 broadcasthost",
        "::1 localhost ip6-localhost ip6-loopback",
        "fe80::1%lo0 localhost",
        "ff00::0 ip6-localnet",
        "ff00::0 ip6-mcastprefix",
        "ff02::1 ip6-allnodes",
        "ff02::2 ip6-allrouters",
        "ff02::3 ip6-allhosts",
        "0.0.0.0 0.0.0.0",
        "127.0.0.1 LOCALHOST real.example",
    )
    assert r.block == ["real.example"]
    assert r.rejected == []
    # Accounting is per name: the ::1 line holds three boilerplate names.
    assert r.ignored == 15


def test_comments() -> None:
    r = parse("# header", "", "0.0.0.0 a.com # trailing", "0.0.0.0 b.com#not-a-comment", "  # x")
    assert r.block == ["a.com"]
    assert r.ignored == 3
    assert r.rejected == [Rejection("test.hosts", 4, "bad character '#'", "b.com#not-a-comment")]


def test_crlf() -> None:
    r = hosts.parse(["0.0.0.0 a.com\r\n", "0.0.0.0 b.com c.com\r\n", "\r\n"], "t")
    assert r.block == ["a.com", "b.com", "c.com"]
    assert r.ignored == 1


@pytest.mark.parametrize(
    ("line", "reason", "text"),
    [
        ("0.0.0.0", "address without a name", "0.0.0.0"),
        ("1.2.3.4", "address without a name", "1.2.3.4"),
        ("::1   # only a comment", "address without a name", "::1"),
        ("999.0.0.1 a.com", "bad IP address", "999.0.0.1 a.com"),
        ("2001:db8:::1 a.com", "bad IP address", "2001:db8:::1 a.com"),
        ("0.0.0.0 bad!.com", "bad character '!'", "bad!.com"),
        ("0.0.0.0 " + "a" * 64 + ".com", "label longer than 63 characters (64)", "a" * 64 + ".com"),
        ("0.0.0.0 a..com", "empty label", "a..com"),
        ("http://a.com/", "bad character ':'", "http://a.com/"),
    ],
)
def test_rejections(line: str, reason: str, text: str) -> None:
    r = parse("0.0.0.0 ok.com", line)
    assert r.block == ["ok.com"]
    assert r.rejected == [Rejection("test.hosts", 2, reason, text[:120])]


def test_one_bad_name_does_not_spoil_the_line() -> None:
    r = parse("0.0.0.0 a.com b!d.com c.com")
    assert r.block == ["a.com", "c.com"]
    assert r.rejected == [Rejection("test.hosts", 1, "bad character '!'", "b!d.com")]


def test_junk_and_overlong_lines() -> None:
    overlong = "0.0.0.0 " + "x" * (MAX_LINE_LENGTH + 1)
    r = parse("\x00\x00\x00", "\ufffd\ufffd", overlong, "0.0.0.0 ok.com")
    assert r.block == ["ok.com"]
    assert [x.line for x in r.rejected] == [1, 2, 3]
    assert r.rejected[2].reason == f"line longer than {MAX_LINE_LENGTH} characters"


def test_empty_input() -> None:
    r = hosts.parse([], "e")
    assert (r.lines, r.entries, r.ignored, r.rejected) == (0, 0, 0, [])


# -- real data -------------------------------------------------------------------------------


def _parse_file(path: Path) -> ParsedList:
    with path.open(encoding="utf-8") as f:
        return hosts.parse(f, str(path))


def test_stevenblack_hosts0(shared_data: Path) -> None:
    r = _parse_file(shared_data / "lists/stevenblack/hosts0")
    assert r.rejected == []
    assert r.entries > 80_000
    assert r.entries + r.ignored == r.lines  # one name per line in the trimmed file
    names = set(r.block)
    assert {"ad-assets.futurecdn.net", "2no.co", "mclean.f.360.cn"} <= names


def test_hagezi_hosts(shared_data: Path) -> None:
    for path in sorted((shared_data / "lists/hagezi-2022/hosts").glob("*.txt")):
        r = _parse_file(path)
        assert r.rejected == [], path
        assert r.entries + r.ignored == r.lines
    r = _parse_file(shared_data / "lists/hagezi-2022/hosts/fake.txt")
    assert "10xcryptotrade.uk" in r.block


def test_byte_order_mark_does_not_hide_the_address() -> None:
    r = hosts.parse(["\ufeff0.0.0.0 a.com\n"], "bom.hosts")
    assert r.block == ["a.com"] and r.rejected == []
