"""The per-line loop every list parser shares, and the domain-entry rule two formats share.

Kept in one place so that every format caps line length, tolerates CRLF and strips comments
the same way, and so that the hot loop (a million lines per compile) is tuned once.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from collections.abc import Iterable, Iterator

from filters.errors import BadNameError
from filters.lists._result import MAX_LINE_LENGTH, ParsedList
from filters.names import looks_like_ip, normalise_pattern

# A '#' starts an inline comment only after whitespace: "a.com#x" is a malformed name the
# admin should hear about, not "a.com" with a comment.
_INLINE_COMMENT = re.compile(r"\s#")

# names.looks_like_ip takes anything with a colon for IPv6; a line must also be made of
# address characters before we call it a bad address, so "http://x.com" is reported as
# a bad name (its real problem) rather than as a bad IP address.
_ADDRESS_CHARS = re.compile(r"[0-9A-Fa-f:.]+(?:/[0-9]+)?")

TOO_LONG = f"line longer than {MAX_LINE_LENGTH} characters"
BAD_IP = "bad IP address"
_DIGITS = frozenset("0123456789")


def content_lines(
    lines: Iterable[str],
    result: ParsedList,
    comment_chars: str = "#",
    inline_comments: bool = True,
) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for every line that carries content.

    Blank and comment lines are counted in ``result.ignored``; overlong lines are rejected
    before any other work is done on them. ``text`` is stripped of surrounding whitespace
    (which covers "\\r\\n" and a lone "\\r") and of any inline comment. ``result.lines`` is set
    to the number of lines seen once the iteration ends.
    """
    lineno = 0
    try:
        for lineno, raw in enumerate(_without_bom(lines), 1):
            # Check the raw length first: stripping a 10 MB line already costs a copy.
            if len(raw) > MAX_LINE_LENGTH and len(raw.rstrip("\r\n")) > MAX_LINE_LENGTH:
                result.reject(lineno, TOO_LONG, raw)
                continue
            s = raw.strip()
            if not s or s[0] in comment_chars:
                result.ignored += 1
                continue
            if inline_comments and "#" in s:
                m = _INLINE_COMMENT.search(s)
                if m is not None:
                    s = s[: m.start()].rstrip()
            yield lineno, s
    finally:
        result.lines = lineno


def _without_bom(lines: Iterable[str]) -> Iterator[str]:
    """Drop a byte-order mark from the first line (lists edited on Windows carry one).

    Left in, it would hide a first-line comment and, inside a name, be mapped away by
    UTS #46 only on the IDNA path; done here, it costs nothing per line.
    """
    it = iter(lines)
    first = next(it, None)
    if first is None:
        return it
    return itertools.chain((first.removeprefix("\ufeff"),), it)


def parse_domain_lines(lines: Iterable[str], origin: str) -> ParsedList:
    """The "domains" rule: one name, ``*.name`` or IP address per line (docs/matching.md)."""
    result = ParsedList(origin)
    block = result.block
    block_sub = result.block_subdomains
    for lineno, text in content_lines(lines, result):
        try:
            name, subdomains_only = normalise_pattern(text)
        except BadNameError as exc:
            # IPv6 addresses fail normalisation (':'); only then is the IP test worth it.
            if is_address_like(text):
                add_address(result, lineno, text, text)
            else:
                result.reject(lineno, exc.reason, text)
            continue
        # No top-level domain is all digits, so only a name ending in a digit can be a
        # dotted quad: this keeps the IP test off the fast path.
        if name[-1] in _DIGITS and looks_like_ip(name):
            if subdomains_only:
                result.reject(lineno, "wildcard on an IP address", text)
            else:
                add_address(result, lineno, name, text)
        elif subdomains_only:
            block_sub.append(name)
        else:
            block.append(name)
    return result


def is_address_like(text: str) -> bool:
    """True when ``text`` should be judged as an IP address (and rejected as a bad one)."""
    return _ADDRESS_CHARS.fullmatch(text) is not None and looks_like_ip(text.partition("/")[0])


def add_address(
    result: ParsedList, lineno: int, address: str, text: str, allow: bool = False
) -> None:
    """Add an IP address found in a name list as a host route, or reject it.

    UT1 and SquidGuard domain lists carry bare addresses (sites reached by IP); blocking
    the address is what an admin who listed it expects. ``text`` is the line as written,
    for the report; ``allow`` files the address under ``allow_networks`` (adblock ``@@``).
    """
    try:
        net = ipaddress.ip_network(address, strict=False)
    except ValueError:
        result.reject(lineno, BAD_IP, text)
        return
    if net.num_addresses != 1:
        # A network in a domain list is more likely a mistake than a wish to block a whole
        # range; a cidr source states that intent.
        result.reject(lineno, "network in a domain list (use a cidr source)", text)
        return
    (result.allow_networks if allow else result.networks).append(net)
