"""The "cidr" format: one IPv4 or IPv6 network or address per line, ``#`` comments.

Addresses become host routes (/32, /128). A network with host bits set ("10.0.0.1/8") is
rejected, not silently masked: the admin probably mistyped either the address or the
prefix, and only they know which. Every entry goes to ``networks``; whether a source blocks
or allows is declared in SOURCES.yaml and applied by the compiler.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from filters.lists._lines import content_lines
from filters.lists._result import ParsedList

__all__ = ["parse"]

BAD_CIDR = "bad CIDR"


def parse(lines: Iterable[str], origin: str) -> ParsedList:
    """Parse CIDR-list lines; ``origin`` names the source in rejections."""
    result = ParsedList(origin)
    networks = result.networks
    for lineno, text in content_lines(lines, result):
        try:
            networks.append(ipaddress.ip_network(text))
            continue
        except ValueError:
            pass
        try:
            masked = ipaddress.ip_network(text, strict=False)
        except ValueError:
            result.reject(lineno, BAD_CIDR, text)
            continue
        result.reject(lineno, f"host bits set in {text} (did you mean {masked}?)", text)
    return result
