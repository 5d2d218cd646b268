"""The "domains" format: one name per line, as UT1, SquidGuard and most DNS blocklists ship.

Each name is a domain entry (the name and everything below it, docs/matching.md); ``*.name``
matches only below the name and a leading ``.`` is ignored. ``#`` starts a comment, at the
start of a line or after whitespace. A line holding an IP address becomes a host route in
``networks``: UT1 lists sites reached by address that way.
"""

from __future__ import annotations

from collections.abc import Iterable

from filters.lists._lines import parse_domain_lines
from filters.lists._result import ParsedList

__all__ = ["parse"]


def parse(lines: Iterable[str], origin: str) -> ParsedList:
    """Parse domain-list lines; ``origin`` names the source in rejections."""
    return parse_domain_lines(lines, origin)
