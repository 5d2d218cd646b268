"""Domain name normalisation (docs/matching.md) and the wire form the matcher hashes.

Names are compared lower-cased, without the trailing dot, with internationalised labels as
A-labels (punycode). This module is the single place that turns text from lists, configs and
command lines into that canonical form; the matcher never sees anything else.
"""

from __future__ import annotations

import re

import idna

from filters.errors import BadNameError

__all__ = [
    "MAX_NAME_LENGTH",
    "MAX_LABEL_LENGTH",
    "MAX_LABELS",
    "normalise_domain",
    "normalise_pattern",
    "looks_like_ip",
    "name_to_wire",
    "wire_to_name",
]

# RFC 1035 §2.3.4: a name is at most 255 octets on the wire, which is 253 characters of
# text without the trailing dot; a label is at most 63 octets.
MAX_NAME_LENGTH = 253
MAX_LABEL_LENGTH = 63
# 255 wire octets hold at most 127 one-character labels plus the root.
MAX_LABELS = 127

# Letters, digits and hyphen (RFC 1123 §2.1) plus underscore: real blocklists carry service
# labels such as "_dns" and tracking hosts with underscores, and a filter must be able to
# block whatever a resolver will resolve. Hyphens are accepted anywhere for the same reason.
_VALID_NAME = re.compile(r"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*")
_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")


def normalise_pattern(text: str) -> tuple[str, bool]:
    """Normalise a list entry; returns ``(name, subdomains_only)``.

    ``*.example.com`` means example.com's subdomains but not the apex (docs/matching.md), so it
    comes back as ``("example.com", True)``; a leading ``.`` is ignored.
    Raises :class:`BadNameError` with a reason an admin can act on.
    """
    s = text.strip()
    wildcard = False
    if s.startswith("*."):
        s = s[2:]
        wildcard = True
    elif s.startswith("."):
        s = s[1:]
    return normalise_domain(s), wildcard


def normalise_domain(text: str) -> str:
    """Return the canonical form of one domain name, or raise :class:`BadNameError`."""
    s = text.strip()
    if s.endswith("."):
        s = s[:-1]
    if not s.isascii():
        s = _to_alabels(s)
    s = s.lower()
    if len(s) <= MAX_NAME_LENGTH and _VALID_NAME.fullmatch(s):
        return s
    raise BadNameError(_diagnose(s))


def looks_like_ip(text: str) -> bool:
    """True for dotted-quad IPv4 or anything with a colon (IPv6): lists mix these in."""
    return ":" in text or _IPV4.fullmatch(text) is not None


def _to_alabels(s: str) -> str:
    try:
        # UTS #46 maps full-width dots, case and compatibility forms the way browsers do.
        mapped = idna.uts46_remap(s, std3_rules=False, transitional=False)
        labels = [
            lab if lab.isascii() else idna.alabel(lab).decode("ascii")
            for lab in mapped.split(".")
        ]
    except (idna.IDNAError, UnicodeError, ValueError) as exc:
        raise BadNameError(f"bad internationalised name: {exc}") from exc
    return ".".join(labels)


def _diagnose(s: str) -> str:
    if not s:
        return "empty name"
    if len(s) > MAX_NAME_LENGTH:
        return f"name longer than {MAX_NAME_LENGTH} characters ({len(s)})"
    for label in s.split("."):
        if not label:
            return "empty label"
        if len(label) > MAX_LABEL_LENGTH:
            return f"label longer than {MAX_LABEL_LENGTH} characters ({len(label)})"
        for ch in label:
            if ch not in _LABEL_CHARS:
                return f"bad character {ch!r}"
    return "not a domain name"


def name_to_wire(name: str) -> bytes:
    """Encode a canonical name in DNS wire form (RFC 1035 §3.1), ending with the root."""
    if not name:
        return b"\x00"
    out = bytearray()
    for label in name.split("."):
        raw = label.encode("ascii")
        out.append(len(raw))
        out += raw
    out.append(0)
    return bytes(out)


def wire_to_name(wire: bytes, start: int = 0) -> str:
    """Decode an uncompressed wire name; raises :class:`BadNameError` when malformed."""
    labels = []
    pos = start
    while True:
        if pos >= len(wire):
            raise BadNameError("name runs past the end of the buffer")
        n = wire[pos]
        if n == 0:
            break
        if n > MAX_LABEL_LENGTH:
            raise BadNameError(f"label length byte {n} (compression or extended label)")
        labels.append(wire[pos + 1 : pos + 1 + n].decode("ascii", "replace").lower())
        pos += 1 + n
    return ".".join(labels)
