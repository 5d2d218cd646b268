"""The config's ``log:`` section, and the DNS upstream syntax (plain and DNS over TLS).

Loaded by appliance.config.load_config / config_dns.parse_dns; every problem is appended to
their error list with the value's file:line:col, so check-config reports them all at once.

    log:
      queries: blocked        # all | blocked | off
      clients: hash           # hash | none | ip
      retention_days: 7       # query log files kept, 1 .. 366

Defaults keep as little about children as still answers "what was blocked": only blocked
queries, client addresses replaced by a keyed hash whose key changes every day (README
"Counters and query log").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance.config_dns import parse_hostport
from filters.errors import ConfigError
from signatures.yamldoc import YamlDoc

__all__ = ["LogConfig", "parse_log", "parse_upstreams", "parse_tls_ca", "QUERY_MODES", "CLIENT_MODES",
           "DEFAULT_RETENTION_DAYS", "MAX_RETENTION_DAYS", "DOT_PORT"]

QUERY_MODES = ("all", "blocked", "off")
CLIENT_MODES = ("hash", "none", "ip")
# A week answers "what happened on Monday" on a Friday; a school year is the longest a
# school would be asked to keep anything (and more than the data partition should hold).
DEFAULT_RETENTION_DAYS, MAX_RETENTION_DAYS = 7, 366
DOT_PORT = 853  # RFC 7858 §3.1
_LOG_KEYS = {"queries", "clients", "retention_days"}


@dataclass(frozen=True)
class LogConfig:
    queries: str = "blocked"
    clients: str = "hash"
    retention_days: int = DEFAULT_RETENTION_DAYS


def parse_log(doc: YamlDoc, d: dict, errors: list[ConfigError]) -> LogConfig:
    """The ``log:`` section (defaults for what is missing)."""
    s = d.get("log")
    if s is None:
        return LogConfig()
    if not isinstance(s, dict):
        errors.append(doc.error("log must be a mapping (queries, clients, retention_days)", "log"))
        return LogConfig()
    for k in s:
        if k not in _LOG_KEYS:
            errors.append(doc.key_error(f"unknown key log.{k} (known: {', '.join(sorted(_LOG_KEYS))})", "log", k))
    got: dict = {}
    for key, modes in (("queries", QUERY_MODES), ("clients", CLIENT_MODES)):
        if key in s:
            v = s[key]
            if v is False and key == "queries":  # YAML reads a bare `off` as false
                v = "off"
            if v not in modes:
                errors.append(doc.error(f"log.{key} must be one of {', '.join(modes)}", "log", key))
            else:
                got[key] = v
    if "retention_days" in s:
        v = s["retention_days"]
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_RETENTION_DAYS:
            errors.append(doc.error(f"log.retention_days must be a whole number from 1 to {MAX_RETENTION_DAYS}",
                                    "log", "retention_days"))
        else:
            got["retention_days"] = v
    return LogConfig(**got)


def _upstream(text: object) -> tuple | None:
    """``1.2.3.4:53`` / ``[::1]:53`` -> (host, port); ``tls://1.2.3.4[:853][#name]`` ->
    (host, port, name) where name is the name the certificate must carry ("" = the address)."""
    if not isinstance(text, str):
        return None
    t = text.strip()
    if t.startswith("udp://") or t.startswith("dns://"):
        return parse_hostport(t.split("://", 1)[1])
    if not t.startswith("tls://"):
        return parse_hostport(t)
    rest = t[len("tls://"):]
    rest, _, name = rest.partition("#")
    hp = parse_hostport(rest, DOT_PORT)
    if hp is None or (name and not _hostname_ok(name)):
        return None
    return hp[0], hp[1], name.lower().rstrip(".")


def _hostname_ok(name: str) -> bool:
    labels = name.rstrip(".").split(".")
    return len(name) <= 253 and all(0 < len(x) <= 63 and all(c.isalnum() or c in "-_" for c in x)
                                    for x in labels)


def parse_upstreams(doc: YamlDoc, v: object, errors: list[ConfigError]) -> tuple[tuple, ...]:
    """``dns.upstreams``: plain ones as (host, port), DoT ones as (host, port, tls name)."""
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list):
        errors.append(doc.error("dns.upstreams must be a list of host:port or tls://host:port#name", "dns",
                                "upstreams"))
        return ()
    out = []
    for i, item in enumerate(items):
        u = _upstream(item)
        if u is None:
            what = ("not tls://address[:port][#server-name]" if str(item).startswith("tls://")
                    else "not an IP address with optional port (1.2.3.4:53 or [::1]:53)")
            errors.append(doc.error(f"dns.upstreams: {what}: {item!r}", "dns", "upstreams",
                                    *((i,) if isinstance(v, list) else ())))
        else:
            out.append(u)
    return tuple(out)


def parse_tls_ca(doc: YamlDoc, s: dict, errors: list[ConfigError]) -> Path | None:
    """``dns.tls_ca``: a PEM file of CAs to verify DoT upstreams with (default: the system's)."""
    v = s.get("tls_ca")
    if v is None:
        return None
    if not isinstance(v, str) or not v:
        errors.append(doc.error("dns.tls_ca must be the path of a PEM file", "dns", "tls_ca"))
        return None
    p = (Path(doc.file).resolve().parent / v).resolve()
    if not p.is_file():
        errors.append(doc.error(f"dns.tls_ca: no such file: {p}", "dns", "tls_ca"))
        return None
    return p
