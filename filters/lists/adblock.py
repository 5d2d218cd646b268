"""The "adblock" format (Adblock Plus / AdGuard syntax), reduced to what DNS can enforce.

``||name^`` blocks the name and everything below it; ``@@||name^`` allows it. ``$important``
and a trailing ``|`` do not change what a DNS filter can do with a whole-domain rule, so
they are accepted. ``!`` comments, ``# `` comments (AdGuard DNS) and ``[Adblock Plus 2.0]``
headers are ignored.

Every other rule is valid syntax we cannot enforce at the DNS level (cosmetic ``##``, paths,
``$third-party`` and other modifiers, regexes, ``|http://`` anchors, bare substrings): it is
counted in ``unsupported`` so that the compile report shows how much of a list was not
enforced, rather than dropped silently or reported as an error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from filters.errors import BadNameError
from filters.lists._lines import add_address, content_lines
from filters.lists._result import ParsedList
from filters.names import looks_like_ip, normalise_pattern

__all__ = ["parse"]

# Modifiers that leave a domain-wide network rule domain-wide.
_HARMLESS_OPTIONS = frozenset({"important"})
# Characters that make the part between "||" and "^" more than a domain: a path, a port,
# a wildcard inside the name, or another anchor.
_NOT_A_DOMAIN = re.compile(r"[/:*^|?=&]")
_DIGITS = frozenset("0123456789")


def parse(lines: Iterable[str], origin: str) -> ParsedList:
    """Parse adblock-list lines; ``origin`` names the source in rejections."""
    result = ParsedList(origin)
    # No inline comments: '#' is part of cosmetic rule syntax.
    for lineno, text in content_lines(lines, result, comment_chars="!", inline_comments=False):
        if _is_header_or_comment(text):
            result.ignored += 1
            continue
        allow = text.startswith("@@")
        domain = _domain_part(text[2:] if allow else text)
        if domain is None:
            result.unsupported += 1
            continue
        try:
            name, subdomains_only = normalise_pattern(domain)
        except BadNameError as exc:
            result.reject(lineno, exc.reason, text)
            continue
        if name[-1] in _DIGITS and looks_like_ip(name):
            if subdomains_only:
                result.reject(lineno, "wildcard on an IP address", text)
            else:
                add_address(result, lineno, name, text, allow=allow)
        elif allow:
            (result.allow_subdomains if subdomains_only else result.allow).append(name)
        else:
            (result.block_subdomains if subdomains_only else result.block).append(name)
    return result


def _is_header_or_comment(text: str) -> bool:
    if text[0] == "[":
        return text[-1] == "]"
    # "# text" is a comment in AdGuard DNS lists; "##sel", "#@#sel", "#?#sel" are cosmetic.
    return text[0] == "#" and (len(text) == 1 or text[1].isspace())


def _domain_part(rule: str) -> str | None:
    """The name in a ``||name^`` rule, or None when the rule is anything else."""
    if not rule.startswith("||"):
        return None
    body, dollar, options = rule[2:].partition("$")
    if dollar and not {o.strip().lower() for o in options.split(",")} <= _HARMLESS_OPTIONS:
        return None
    if body.endswith("^|"):
        body = body[:-1]
    if not body.endswith("^"):
        return None
    domain = body[:-1]
    if _NOT_A_DOMAIN.search(domain[2:] if domain.startswith("*.") else domain):
        return None
    return domain
