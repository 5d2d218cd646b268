"""Value syntaxes the config sections share: host:port, DNS upstreams, durations, key paths.

Pure functions: config/schema.json checks the shape of a value (a string of the right
characters, a number in range); these turn a value that passed it into what the appliance
uses, and say None when the value only looked right (an address that does not parse, a port
past 65535). The section modules (dns.py, log.py, flows.py, web.py, load.py) import this
module; it imports none of them.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, NamedTuple

__all__ = ["UpstreamAddress", "parse_hostport", "parse_upstream", "hostname_ok", "seconds", "one_or_many", "keypath",
           "DOT_PORT"]

DOT_PORT = 853  # RFC 7858 §3.1
_SECONDS = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?")
_UNITS = {"ms": 0.001, None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def parse_hostport(text: object, default_port: int = 53) -> tuple[str, int] | None:
    """``1.2.3.4:53``, ``[::1]:5353``, ``1.2.3.4`` or ``::1`` -> (address, port); None if not."""
    if not isinstance(text, str):
        return None
    host, port = text.strip(), default_port
    if host.startswith("["):
        close = host.find("]")
        if close < 0:
            return None
        rest = host[close + 1:]
        host = host[1:close]
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                return None
            port = int(rest[1:])
    elif host.count(":") == 1:
        host, p = host.split(":")
        if not p.isdigit():
            return None
        port = int(p)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return (host, port) if 0 < port < 65536 else None


class UpstreamAddress(NamedTuple):
    """One ``dns.upstreams`` entry."""

    host: str
    port: int
    tls_name: str | None = None  # None: plain DNS; else DoT, the name to verify ("" = the address)

    @property
    def text(self) -> str:
        """As configured: ``1.2.3.4:53``, ``[::1]:53``, ``tls://1.2.3.4:853#name``."""
        addr = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        if self.tls_name is None:
            return addr
        return f"tls://{addr}" + (f"#{self.tls_name}" if self.tls_name else "")


def parse_upstream(text: object) -> UpstreamAddress | None:
    """``1.2.3.4:53`` / ``[::1]:53`` (also with ``udp://`` or ``dns://``) -> plain DNS;
    ``tls://1.2.3.4[:853][#name]`` -> DoT, where name is the name the certificate must
    carry ("" = the address). None if it is neither."""
    if not isinstance(text, str):
        return None
    t = text.strip()
    if not t.startswith("tls://"):
        hp = parse_hostport(t.split("://", 1)[1] if t.startswith(("udp://", "dns://")) else t)
        return UpstreamAddress(*hp) if hp is not None else None
    rest = t[len("tls://"):]
    rest, _, name = rest.partition("#")
    hp = parse_hostport(rest, DOT_PORT)
    if hp is None or (name and not hostname_ok(name)):
        return None
    return UpstreamAddress(hp[0], hp[1], name.lower().rstrip("."))


def resolv_conf_nameservers(text: str) -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf(5) text, in order (a zone index such as
    ``fe80::1%eth0`` kept; anything that is not an IP address skipped)."""
    out = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                ipaddress.ip_address(words[1].split("%", 1)[0])
            except ValueError:
                continue
            out.append(words[1])
    return out


def hostname_ok(name: str) -> bool:
    """A DNS host name: labels of 1-63 letters, digits, '-' or '_', 253 characters at most."""
    labels = name.rstrip(".").split(".")
    return len(name) <= 253 and all(0 < len(x) <= 63 and all(c.isalnum() or c in "-_" for c in x)
                                    for x in labels)


def seconds(value: object) -> float | None:
    """Seconds in ``90``, ``1.5``, ``500ms``, ``90s``, ``30m``, ``1h``, ``2d``; None if it is not one.

    Which of these a key takes (whole seconds only, ``ms``) is its pattern in the schema."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = _SECONDS.fullmatch(value.strip()) if isinstance(value, str) else None
    return float(m.group(1)) * _UNITS[m.group(2)] if m else None


def one_or_many(value: Any) -> list[tuple[tuple, Any]]:
    """A key that takes one string or a list of them -> [(index path, item)]: ``[((), v)]``
    for a single value, ``[((0,), v0), ((1,), v1), ...]`` for a list, ``[]`` for null."""
    if value is None:
        return []
    if isinstance(value, list):
        return [((i,), v) for i, v in enumerate(value)]
    return [((), value)]


def keypath(path: tuple) -> str:
    """``("dns", "upstreams", 1)`` -> ``dns.upstreams[1]``; odd keys are quoted (``x['a b']``)."""
    out = ""
    for p in path:
        if isinstance(p, int) and not isinstance(p, bool):
            out += f"[{p}]"
        elif isinstance(p, str) and _NAME.fullmatch(p):
            out += f".{p}" if out else p
        else:
            out += f"[{p!r}]"
    return out or "the config"
