"""filters/lists/domains.py: one name per line (docs/matching.md, "Entries")."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from filters.lists import domains
from filters.lists._result import MAX_LINE_LENGTH, ParsedList, Rejection


def parse(*lines: str) -> ParsedList:
    return domains.parse(lines, "test.txt")


def accounted(r: ParsedList) -> int:
    return r.entries + r.ignored + r.unsupported + len(r.rejected)


def test_plain_names_are_normalised() -> None:
    r = parse("Example.COM", "trailing.dot.", "bücher.de", "_dns.example.net")
    assert r.block == ["example.com", "trailing.dot", "xn--bcher-kva.de", "_dns.example.net"]
    assert r.block_subdomains == [] and r.rejected == []
    assert r.lines == 4


def test_wildcard_and_leading_dot() -> None:
    r = parse("*.example.com", ".example.org", "*.Bücher.de")
    assert r.block == ["example.org"]
    assert r.block_subdomains == ["example.com", "xn--bcher-kva.de"]


def test_comments_and_blank_lines_are_ignored() -> None:
    r = parse("# a comment", "", "   ", "\t# indented comment", "a.com # inline", "b.com\t#tab")
    assert r.block == ["a.com", "b.com"]
    assert r.ignored == 4
    assert r.lines == 6


def test_hash_without_whitespace_is_not_a_comment() -> None:
    r = parse("a.com#frag")
    assert r.block == []
    assert r.rejected == [Rejection("test.txt", 1, "bad character '#'", "a.com#frag")]


def test_line_endings() -> None:
    r = domains.parse(["a.com\r\n", "b.com\n", "c.com\r", "d.com", "\r\n", "e.com # x\r\n"], "t")
    assert r.block == ["a.com", "b.com", "c.com", "d.com", "e.com"]
    assert r.ignored == 1


def test_ip_addresses_become_host_routes() -> None:
    r = parse("1.2.3.4", "2001:db8::1", "::1", "10.0.0.1/32 # a comment")
    assert r.networks == [
        ipaddress.ip_network("1.2.3.4/32"),
        ipaddress.ip_network("2001:db8::1/128"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("10.0.0.1/32"),
    ]
    assert r.block == []


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("999.1.1.1", "bad IP address"),
        ("01.2.3.4", "bad IP address"),
        ("2001:db8:::1", "bad IP address"),
        ("2001:db8::/32", "network in a domain list (use a cidr source)"),
        ("10.0.0.0/8", "network in a domain list (use a cidr source)"),
        ("1.2.3.4/33", "bad IP address"),
        ("dead:beef", "bad IP address"),
        ("*.1.2.3.4", "wildcard on an IP address"),
    ],
)
def test_bad_addresses_are_rejected(line: str, reason: str) -> None:
    r = parse("ok.com", line)
    assert r.block == ["ok.com"] and r.networks == []
    assert r.rejected == [Rejection("test.txt", 2, reason, line)]


def test_numeric_labels_that_are_not_addresses_stay_names() -> None:
    r = parse("1.2.3", "1.2.3.4.5", "0.0.0.0.example.com", "123.example")
    assert r.block == ["1.2.3", "1.2.3.4.5", "0.0.0.0.example.com", "123.example"]
    assert r.networks == []


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("a" * 64 + ".com", "label longer than 63 characters (64)"),
        (".".join(["a" * 50] * 6), "name longer than 253 characters (305)"),
        ("bad!name.com", "bad character '!'"),
        ("has space.com", "bad character ' '"),
        ("a..b.com", "empty label"),
        ("*.", "empty name"),
        ("*.*.x.com", "bad character '*'"),
        ("http://x.com/path", "bad character ':'"),
        ("x.com/path", "bad character '/'"),
    ],
)
def test_bad_names_are_rejected_with_reason(line: str, reason: str) -> None:
    r = parse("# header", line)
    assert r.rejected == [Rejection("test.txt", 2, reason, line[:120])]
    assert r.entries == 0


def test_binary_junk_is_rejected_not_raised() -> None:
    junk = ["\x00\x01\x02", "\ufffd\ufffd", "PK\x03\x04\x14\x00", "\x7fELF\x02\x01", "é\udcff"]
    r = domains.parse(junk, "junk.bin")
    assert r.entries == 0
    assert [x.line for x in r.rejected] == [1, 2, 3, 4, 5]
    assert all(x.file == "junk.bin" and x.reason for x in r.rejected)


def test_overlong_line_is_rejected_cheaply() -> None:
    huge = "a" * (10 * 1024 * 1024)
    r = parse("a.com", huge, "b.com")
    assert r.block == ["a.com", "b.com"]
    [rej] = r.rejected
    assert (rej.line, rej.reason) == (2, f"line longer than {MAX_LINE_LENGTH} characters")
    assert len(rej.text) <= 120  # reports carry a cut, not 10 MB


def test_line_at_the_cap_is_parsed_not_cut() -> None:
    # The newline does not count: a line of exactly the cap is judged on its content.
    line = "a" * MAX_LINE_LENGTH + "\r\n"
    r = domains.parse([line], "t")
    assert [x.reason for x in r.rejected] == ["name longer than 253 characters (4096)"]


def test_empty_input() -> None:
    r = domains.parse([], "empty.txt")
    assert (r.origin, r.lines, r.entries, r.ignored, r.rejected) == ("empty.txt", 0, 0, 0, [])


def test_accepts_any_iterable_of_lines() -> None:
    r = domains.parse(iter("a.com\nb.com\n".splitlines(keepends=True)), "gen")
    assert r.block == ["a.com", "b.com"] and r.lines == 2


def test_rejections_name_file_and_line() -> None:
    r = domains.parse(["ok.com", "bad!", "", "also bad"], "lists/x/domains")
    assert [str(x) for x in r.rejected] == [
        "lists/x/domains:2: bad character '!': 'bad!'",
        "lists/x/domains:4: bad character ' ': 'also bad'",
    ]


@given(st.lists(st.text(max_size=30)))
def test_every_line_is_accounted_for(lines: list[str]) -> None:
    # A domains line yields at most one entry, so lines = kept + ignored + rejected.
    lines = [ln.replace("\n", " ") for ln in lines]
    r = domains.parse(lines, "prop")
    assert r.lines == len(lines)
    assert accounted(r) == len(lines)
    assert sorted({x.line for x in r.rejected}) == [x.line for x in r.rejected]


def test_byte_order_mark_on_the_first_line() -> None:
    r = domains.parse(["\ufeff# edited on Windows\r\n", "a.com\r\n"], "bom.txt")
    assert r.block == ["a.com"] and r.ignored == 1 and r.rejected == []
    assert domains.parse(["\ufeffb.com"], "bom.txt").block == ["b.com"]
