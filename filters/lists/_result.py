"""What a list parser returns: the entries it kept and an account of every line it did not."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

__all__ = ["Rejection", "ParsedList", "MAX_LINE_LENGTH", "Network"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# No real list line comes near this (hosts lines with many aliases stay under 1 KiB); a
# longer line is junk or an attack on the compiler, rejected before any work is done on it.
MAX_LINE_LENGTH = 4096


@dataclass(frozen=True)
class Rejection:
    """One line a parser refused: where it was, why, and (a cut of) what it said."""

    file: str
    line: int
    reason: str
    text: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}: {self.text!r}"


@dataclass
class ParsedList:
    """The result of parsing one list source.

    ``block``/``allow`` hold canonical names that match themselves and every name below;
    the ``*_subdomains`` lists hold names from ``*.name`` entries, which match only below.
    Every input line is accounted for: kept, ``ignored`` (blank, comment, hosts
    boilerplate such as ``localhost``), ``unsupported`` (valid syntax we do not enforce,
    e.g. adblock cosmetic rules) or in ``rejected`` with a reason.
    """

    origin: str
    block: list[str] = field(default_factory=list)
    block_subdomains: list[str] = field(default_factory=list)
    allow: list[str] = field(default_factory=list)
    allow_subdomains: list[str] = field(default_factory=list)
    networks: list[Network] = field(default_factory=list)
    allow_networks: list[Network] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    unsupported: int = 0
    ignored: int = 0
    lines: int = 0

    @property
    def entries(self) -> int:
        return (
            len(self.block) + len(self.block_subdomains) + len(self.allow)
            + len(self.allow_subdomains) + len(self.networks) + len(self.allow_networks)
        )

    def reject(self, line: int, reason: str, text: str) -> None:
        self.rejected.append(Rejection(self.origin, line, reason, text[:120]))
