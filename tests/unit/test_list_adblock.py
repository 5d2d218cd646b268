"""filters/lists/adblock.py: ``||d^`` blocks, ``@@||d^`` allows, the rest is counted."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from types import ModuleType

import pytest

from filters.lists import adblock, domains, hosts
from filters.lists._result import MAX_LINE_LENGTH, ParsedList, Rejection


def parse(*lines: str) -> ParsedList:
    return adblock.parse(lines, "filters.txt")


def test_block_and_allow() -> None:
    r = parse("||ads.example.com^", "@@||good.example.com^", "||Bücher.DE^")
    assert r.block == ["ads.example.com", "xn--bcher-kva.de"]
    assert r.allow == ["good.example.com"]
    assert r.unsupported == 0 and r.rejected == []


@pytest.mark.parametrize(
    "rule", ["||a.com^$important", "||a.com^|", "||a.com^|$important", "||a.com^$IMPORTANT",
             "||a.com.^"],
)
def test_domain_wide_variants(rule: str) -> None:
    r = parse(rule, "@@" + rule)
    assert r.block == ["a.com"] and r.allow == ["a.com"]
    assert r.unsupported == 0


def test_wildcard_prefix() -> None:
    r = parse("||*.a.com^", "@@||*.b.com^")
    assert r.block_subdomains == ["a.com"] and r.allow_subdomains == ["b.com"]
    assert r.block == [] and r.allow == []


def test_ip_rules_are_networks() -> None:
    r = parse("||1.2.3.4^", "@@||5.6.7.8^")
    assert r.networks == [ipaddress.ip_network("1.2.3.4/32")]
    assert r.allow_networks == [ipaddress.ip_network("5.6.7.8/32")]


def test_comments_and_headers_are_ignored() -> None:
    r = parse(
        "[Adblock Plus 2.0]", "[AdGuard]", "! Title: x", "!", "", "# hosts-style comment", "#"
    )
    assert r.ignored == 7
    assert r.entries == 0 and r.unsupported == 0 and r.rejected == []


@pytest.mark.parametrize(
    "rule",
    [
        "##.ad-banner",  # cosmetic
        "example.com##.ad",
        "example.com#@#.ad",
        "#?#div:has(.ad)",
        "||example.com/ads",  # path
        "||example.com/ads^",
        "||example.com^$third-party",  # modifiers other than important
        "||example.com^$important,third-party",
        "||example.com^$dnstype=AAAA",
        "||example.com^$",
        "@@||example.com^$document",
        "/banner\\d+/",  # regex
        "|http://example.com/",  # anchors
        "|https://",
        "||example.com",  # no separator: a prefix match, not a domain
        "||ads.*.example.com^",  # wildcard inside the name
        "||example.com:8080^",  # port
        "||[::1]^",
        "example.com",  # bare substring rule
        "0.0.0.0 example.com",  # hosts syntax in an adblock list
        "@@example.com",
        "[Adblock Plus 2.0",  # not a header
        "#comment-without-space",
    ],
)
def test_everything_else_is_unsupported_not_rejected(rule: str) -> None:
    r = parse(rule)
    assert r.unsupported == 1
    assert r.rejected == [] and r.entries == 0 and r.ignored == 0


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        ("||bad!.com^", "bad character '!'"),
        ("@@||a..com^", "empty label"),
        ("||^", "empty name"),
        ("||" + "a" * 64 + ".com^", "label longer than 63 characters (64)"),
        ("||*.1.2.3.4^", "wildcard on an IP address"),
        ("||999.1.1.1^", "bad IP address"),
    ],
)
def test_bad_domains_are_rejected(rule: str, reason: str) -> None:
    r = parse("! header", rule)
    assert r.rejected == [Rejection("filters.txt", 2, reason, rule[:120])]


def test_no_inline_comments() -> None:
    # '#' belongs to cosmetic syntax, so " # x" after a rule is not stripped, and the rule
    # is then not one we know.
    r = parse("||a.com^ # x")
    assert r.block == [] and r.unsupported == 1


def test_crlf_junk_overlong_and_empty() -> None:
    r = adblock.parse(["||a.com^\r\n", "\x00\x01", "||" + "a" * MAX_LINE_LENGTH + "^"], "t")
    assert r.block == ["a.com"]
    assert r.unsupported == 1  # the junk line is not a rule we know
    assert [x.reason for x in r.rejected] == [f"line longer than {MAX_LINE_LENGTH} characters"]
    e = adblock.parse([], "e")
    assert (e.lines, e.entries, e.unsupported, e.rejected) == (0, 0, 0, [])


# -- real data -------------------------------------------------------------------------------


def _parse_file(module: ModuleType, path: Path) -> ParsedList:
    with path.open(encoding="utf-8") as f:
        return module.parse(f, str(path))


# Upstream drift, checked by hand: the hosts file of "crypto" is a later snapshot (its
# header: "Updated by upstream monitoring", 2026-07-20) than the plain and adblock files
# (2026-07-06) and lists two more names. Everything else agrees exactly.
_BLP_HOSTS_ONLY = {"crypto": {"adiri.tel", "tokenist.com"}}


def _blp_categories(base: Path) -> list[str]:
    h = {p.stem for p in (base / "hosts").glob("*.txt")}
    p = {p.stem.removesuffix("-nl") for p in (base / "plain").glob("*-nl.txt")}
    a = {p.stem.removesuffix("-ags") for p in (base / "adblock").glob("*-ags.txt")}
    return sorted(h & p & a)


def test_blocklistproject_formats_agree(shared_data: Path) -> None:
    base = shared_data / "lists/blocklistproject"
    categories = _blp_categories(base)
    assert categories, "no category present in all three formats"
    for cat in categories:
        h = _parse_file(hosts, base / "hosts" / f"{cat}.txt")
        p = _parse_file(domains, base / "plain" / f"{cat}-nl.txt")
        a = _parse_file(adblock, base / "adblock" / f"{cat}-ags.txt")
        for r in (h, p, a):
            assert r.rejected == [] and r.unsupported == 0, r.origin
            assert len(r.block) + r.ignored == r.lines, r.origin
        assert set(p.block) == set(a.block), cat
        assert set(h.block) ^ set(p.block) == _BLP_HOSTS_ONLY.get(cat, set()), cat
        assert set(h.block) >= set(p.block), cat


def test_hagezi_adblock_matches_wildcard_flavour(shared_data: Path) -> None:
    # Same list, two syntaxes: "||d^" (adblock) and "*.d" (wildcard). Note the semantic
    # difference (docs/matching.md): "*.d" leaves the apex d itself unblocked.
    base = shared_data / "lists/hagezi-2022"
    for name in ("doh-vpn-proxy-bypass.txt", "nosafesearch.txt"):
        a = _parse_file(adblock, base / "adblock" / name)
        w = _parse_file(domains, base / "wildcard" / name)
        assert a.rejected == [] and a.unsupported == 0
        assert w.block == [] and w.rejected == []
        assert set(a.block) == set(w.block_subdomains), name


def test_hagezi_light(shared_data: Path) -> None:
    base = shared_data / "lists/hagezi-2022"
    a = _parse_file(adblock, base / "adblock/light.txt")
    w = _parse_file(domains, base / "wildcard/light.txt")
    assert a.rejected == [] and a.unsupported == 0 and len(a.block) > 100_000
    assert w.rejected == [] and w.block == [] and len(w.block_subdomains) > 100_000
    assert "000123456789.online" in w.block_subdomains
    assert set(a.block) == set(w.block_subdomains)
