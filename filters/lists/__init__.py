"""List formats: one pure parser module per format, registered in one table.

Every parser takes an iterable of text lines and an origin (the name used in reports) and
returns a :class:`ParsedList` that accounts for every line. Parsers read no files; a format
whose source is a directory (UT1) names the file inside it in :attr:`ListFormat.member`,
and the compiler in ``signatures/`` does the reading.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from filters.errors import ListFormatError
from filters.lists import adblock, cidr, domains, hosts, ut1
from filters.lists._result import MAX_LINE_LENGTH, ParsedList, Rejection

__all__ = [
    "ListFormat",
    "FORMATS",
    "get_format",
    "ParsedList",
    "Rejection",
    "MAX_LINE_LENGTH",
]


@dataclass(frozen=True)
class ListFormat:
    """A list format: its name in SOURCES.yaml, its parser, and the file to read inside a
    directory source (``None`` when the source is a single file)."""

    name: str
    parse: Callable[[Iterable[str], str], ParsedList]
    member: str | None = None


FORMATS: dict[str, ListFormat] = {
    f.name: f
    for f in (
        ListFormat("domains", domains.parse),
        ListFormat("hosts", hosts.parse),
        ListFormat("adblock", adblock.parse),
        ListFormat("ut1", ut1.parse, ut1.MEMBER),
        ListFormat("cidr", cidr.parse),
    )
}


def get_format(name: str) -> ListFormat:
    """Return the format called ``name``; raises :class:`ListFormatError` if unknown."""
    try:
        return FORMATS[name]
    except KeyError:
        known = ", ".join(sorted(FORMATS))
        raise ListFormatError(f"unknown list format {name!r}; known: {known}") from None
