"""The "ut1" format: a UT1 (Université Toulouse Capitole) blacklist category directory.

A category directory holds ``domains`` (one name or address per line), ``usage`` ("black"
or "white") and sometimes ``urls``. Parsers do no file I/O, so this module says which file
of the directory to read (:data:`MEMBER`) and parses its lines with the domains rules; the
compiler in ``signatures/`` reads the file. Whether a category blocks or allows is declared
in SOURCES.yaml, not taken from ``usage``: the publisher decides what a category means.

The ``urls`` file is deliberately not read: its rules are host+path prefixes
("example.com/ads"), which only an HTTP path matcher can enforce. Reading them as domain
entries would block whole sites that the list meant to block in part.
"""

from __future__ import annotations

from collections.abc import Iterable

from filters.lists._lines import parse_domain_lines
from filters.lists._result import ParsedList

__all__ = ["MEMBER", "parse"]

MEMBER = "domains"


def parse(lines: Iterable[str], origin: str) -> ParsedList:
    """Parse the lines of a UT1 category's ``domains`` file."""
    return parse_domain_lines(lines, origin)
