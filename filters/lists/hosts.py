"""The "hosts" format: ``ADDRESS NAME [NAME...]`` lines, as StevenBlack and many ad lists ship.

Names are read as domain entries (the name and everything below it): that is how UT1,
SquidGuard and AdGuard treat them, and the safer reading for children (docs/matching.md). The
address is only syntax here: a blocklist's 0.0.0.0 or 127.0.0.1 is a sinkhole, and we
answer blocked names our own way. A line without an address is read as names, because
trimmed hosts files (StevenBlack "hosts0") drop the 0.0.0.0 column.

Accounting is per name, not per line: ``a.com b.com`` keeps two entries, and every
boilerplate name (``localhost``, ``ip6-allnodes``, ...) counts once in ``ignored``.
Names are taken literally: ``*`` and a leading dot are not hosts syntax, so such a name is
rejected rather than guessed at.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from filters.errors import BadNameError
from filters.lists._lines import BAD_IP, content_lines, is_address_like
from filters.lists._result import ParsedList
from filters.names import normalise_domain

__all__ = ["parse", "BOILERPLATE"]

# The names every stock /etc/hosts defines (and hosts blocklists repeat in their header):
# they name this machine or multicast groups, so they are not entries to block.
BOILERPLATE = frozenset({
    "localhost", "localhost.localdomain", "local", "broadcasthost",
    "ip6-localhost", "ip6-loopback", "ip6-localnet", "ip6-mcastprefix",
    "ip6-allnodes", "ip6-allrouters", "ip6-allhosts", "0.0.0.0",
})

# The sinkhole addresses nearly every line uses, known valid: skips an ipaddress parse.
_COMMON_ADDRESSES = frozenset({"0.0.0.0", "127.0.0.1", "::", "::1", "::0"})


def parse(lines: Iterable[str], origin: str) -> ParsedList:
    """Parse hosts-file lines; ``origin`` names the source in rejections."""
    result = ParsedList(origin)
    block = result.block
    for lineno, text in content_lines(lines, result):
        tokens = text.split()
        first = tokens[0]
        # A zone index ("fe80::1%lo0 localhost", in macOS-derived headers) is valid here.
        if first in _COMMON_ADDRESSES or is_address_like(first.partition("%")[0]):
            if first not in _COMMON_ADDRESSES and not _is_address(first):
                result.reject(lineno, BAD_IP, text)
                continue
            del tokens[0]
            if not tokens:
                result.reject(lineno, "address without a name", text)
                continue
        for token in tokens:
            if token.lower() in BOILERPLATE:
                result.ignored += 1
                continue
            try:
                block.append(normalise_domain(token))
            except BadNameError as exc:
                # The token, not the line: on a line of several names it shows which one.
                result.reject(lineno, exc.reason, token)
    return result


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
