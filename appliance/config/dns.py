"""The config's ``dns:`` and ``networks:`` sections and the per-policy DNS keys.

Loaded by appliance.config.load.load_config after config/schema.json (appliance/config/schema.py),
which declares the keys, types, enums and ranges: the values here have the schema's shape, and
these functions check what it cannot (addresses and CIDRs parse, files exist, policy names,
schedules' days and times, time zones, rules across keys). Every problem is appended to the
error list with the value's file:line:col, so check-config reports them all at once.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.config.schema import ConfigDoc
from appliance.config.values import (
    UpstreamAddress,
    one_or_many,
    parse_hostport,
    parse_upstream,
    resolv_conf_nameservers,
)
from filters.dns_answer import DEFAULT_BLOCK_TTL
from filters.errors import ConfigError, InputError, Where
from filters.safesearch import parse_safesearch
from filters.schedule import ScheduleEntry, load_zone, parse_days, parse_time_range

__all__ = ["DnsConfig", "Network", "parse_dns", "parse_upstreams", "parse_tls_ca", "parse_networks",
           "policy_extras", "parse_timezone", "DEFAULT_LISTEN", "DEFAULT_POLICY", "DEFAULT_TIMEZONE"]

DEFAULT_LISTEN = ("127.0.0.1", 5353)
# ``dns.upstreams: system`` (the default): the host's resolvers, read from dns.resolv_conf,
# else $SCHOOLGATE_RESOLV_CONF (the tests point it at a file of their own), else this.
SYSTEM = "system"
SYSTEM_RESOLV_CONF = Path("/etc/resolv.conf")
# Clients in no configured network get the policy of this name; without one, every category
# is blocked (the safe reading for children, as `lookup` without --policy).
DEFAULT_POLICY = "default"
DEFAULT_TIMEZONE = "UTC"
# Entries in the wire cache: ~10k entries × ~300 B ≈ 3 MB, a school's working set of names
# for a day. The schema's cap (10 M) keeps a scan of random names from growing the process
# without bound.
DEFAULT_CACHE_SIZE = 10_000
# RFC 8767 §5 suggests keeping stale data 1 to 3 days; a day rides out a long link outage.
DEFAULT_CACHE_MAX_TTL, DEFAULT_STALE_TTL = 86400, 86400
# Per try at one upstream: stub resolvers give up after ~5 s (glibc: timeout 5, attempts 2),
# so two upstreams at 1.5 s each still answer SERVFAIL before the client has gone.
DEFAULT_UPSTREAM_TIMEOUT = 1.5
# RFC 7766 §6.2.3: idle TCP connections are closed after a few seconds; 10 s as unbound's
# default. Past the connection cap new connections are closed at once.
DEFAULT_TCP_IDLE, DEFAULT_TCP_MAX, DEFAULT_TCP_PER_CLIENT = 10.0, 256, 16
# Per client: a busy laptop makes tens of queries a second at page load; 200/s with a burst
# of 400 never touches a real client and caps one spoofed source's share of the CPU.
DEFAULT_RATE, DEFAULT_BURST = 200.0, 400.0


@dataclass(frozen=True)
class DnsConfig:
    listen: tuple[tuple[str, int], ...] = (DEFAULT_LISTEN,)
    # (host, port) plain DNS; (host, port, tls name) DNS over TLS (appliance/config/values.py)
    upstreams: tuple[UpstreamAddress, ...] = ()
    block_mode: str = "nxdomain"
    blockpage: tuple[str, ...] = ()  # block page addresses (v4 and/or v6) for "blockpage"
    block_ttl: int = DEFAULT_BLOCK_TTL
    cache_size: int = DEFAULT_CACHE_SIZE
    cache_max_ttl: int = DEFAULT_CACHE_MAX_TTL
    stale_ttl: int = DEFAULT_STALE_TTL
    upstream_timeout: float = DEFAULT_UPSTREAM_TIMEOUT
    rate_limit: float = DEFAULT_RATE  # queries per second per client; 0 = off
    rate_burst: float = DEFAULT_BURST
    tcp_idle_timeout: float = DEFAULT_TCP_IDLE
    tcp_max_connections: int = DEFAULT_TCP_MAX
    tcp_per_client: int = DEFAULT_TCP_PER_CLIENT  # per client address (IPv6: per /64)
    workers: int = 1
    # UDP queries answered in batches by jitted code (appliance/dns/fastpath.py); false: the
    # plain Python loop (same answers, ~2.5x the CPU per query).
    fast_path: bool = True
    tls_ca: Path | None = None  # CAs for DoT upstreams (None: the system's)
    # Where ``upstreams: system`` came from, and what it found there (None: not used)
    system_resolvers: str | None = None


@dataclass(frozen=True)
class Network:
    name: str
    cidrs: tuple[str, ...]
    policy: str
    where: Where | None = field(default=None, compare=False)


def parse_dns(doc: ConfigDoc, d: dict, errors: list[ConfigError], warnings: list[str] | None = None) -> DnsConfig:
    """The ``dns:`` section (defaults for what is missing); ``warnings`` gets what works but
    will not do what the admin probably wants (no upstream found)."""
    s = d.get("dns") or {}
    got: dict = {k: s[k] for k in ("block_mode", "block_ttl", "cache_size", "tcp_max_connections", "tcp_per_client",
                                   "workers", "fast_path") if k in s}
    if "listen" in s:
        got["listen"] = _listen(doc, s["listen"], errors)
    resolv = (Path(doc.file).resolve().parent / s["resolv_conf"] if "resolv_conf" in s
              else Path(os.environ.get("SCHOOLGATE_RESOLV_CONF") or SYSTEM_RESOLV_CONF))
    got["upstreams"], got["system_resolvers"] = parse_upstreams(
        doc, s.get("upstreams", SYSTEM), errors, listen=got.get("listen", (DEFAULT_LISTEN,)), resolv_conf=resolv,
        warnings=warnings)
    if "tls_ca" in s:
        got["tls_ca"] = parse_tls_ca(doc, s["tls_ca"], errors)
    good = []
    for at, a in one_or_many(s.get("blockpage")):
        try:
            good.append(str(ipaddress.ip_address(a)))
        except ValueError:
            errors.append(doc.error(f"not an IP address (192.0.2.1 or 2001:db8::1): {a!r}", "dns", "blockpage", *at))
    got["blockpage"] = tuple(good)
    for key in ("cache_max_ttl", "stale_ttl", "upstream_timeout", "tcp_idle_timeout"):
        secs = doc.duration(s[key], errors, "dns", key) if key in s else None
        if secs is not None:
            got[key] = int(secs) if key in ("cache_max_ttl", "stale_ttl") else secs
    rl = s.get("rate_limit")
    if isinstance(rl, dict):
        got["rate_limit"] = float(rl.get("qps", DEFAULT_RATE))
        got["rate_burst"] = float(rl.get("burst", max(got["rate_limit"] * 2, 1)))
    elif "rate_limit" in s:  # 0, false or null
        got["rate_limit"] = 0.0
    if got.get("block_mode") == "blockpage" and not good:
        errors.append(doc.error("blockpage needs dns.blockpage addresses", "dns", "block_mode"))
    return DnsConfig(**got)


def _listen(doc: ConfigDoc, v: Any, errors: list[ConfigError]) -> tuple[tuple[str, int], ...]:
    out = []
    for at, item in one_or_many(v):
        hp = parse_hostport(item)
        if hp is None:
            errors.append(doc.error(f"not an IP address with optional port (1.2.3.4:53 or [::1]:53): {item!r}",
                                    "dns", "listen", *at))
        else:
            out.append(hp)
    return tuple(out)


def parse_upstreams(doc: ConfigDoc, v: Any, errors: list[ConfigError], *,
                    listen: tuple[tuple[str, int], ...] = (DEFAULT_LISTEN,),
                    resolv_conf: Path = SYSTEM_RESOLV_CONF,
                    warnings: list[str] | None = None) -> tuple[tuple[UpstreamAddress, ...], str | None]:
    """``dns.upstreams``: plain DNS and DoT upstreams, in order; ``system`` stands for the
    host's resolvers (``resolv_conf``) other than this appliance. Also says, when
    ``system`` was used, where from and what it found."""
    out: list[UpstreamAddress] = []
    system: str | None = None
    for at, item in one_or_many(v):
        if isinstance(item, str) and item.strip() == SYSTEM:
            found, system = _system_resolvers(resolv_conf, listen)
            if not found and warnings is not None:
                warnings.append(f"dns.upstreams: system: {system}; allowed names will get "
                                "SERVFAIL until dns.upstreams names a resolver (e.g. your router, "
                                "or tls://9.9.9.9#dns.quad9.net)")
            out.extend(u for u in found if u not in out)
            continue
        u = parse_upstream(item)
        if u is None:
            what = ("not tls://address[:port][#server-name]" if item.strip().startswith("tls://")
                    else "not an IP address with optional port (1.2.3.4:53 or [::1]:53)")
            errors.append(doc.error(f"{what}: {item!r}", "dns", "upstreams", *at))
        else:
            out.append(u)
    return tuple(out), system


def _system_resolvers(path: Path, listen: tuple[tuple[str, int], ...]) -> tuple[list[UpstreamAddress], str]:
    """The nameservers of ``path`` that are not this appliance, and a sentence saying so."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return [], f"cannot read {path} ({exc.strerror or exc})"
    named = resolv_conf_nameservers(text)
    found = [UpstreamAddress(a, 53) for a in named if not _is_self(a, listen)]
    if found:
        return found, f"{', '.join(u.text for u in found)} from {path}"
    if named:
        return [], f"{path} names only this appliance ({', '.join(named)})"
    return [], f"{path} names no nameserver"


def _is_self(addr: str, listen: tuple[tuple[str, int], ...]) -> bool:
    """Would a query to ``addr`` port 53 reach this appliance's own listener?"""
    host = addr.split("%", 1)[0]
    for lh, lp in listen:
        if lp != 53:
            continue
        if lh == host:
            return True
        if lh in ("0.0.0.0", "::") and (":" in lh) == (":" in host) and _local_address(host):
            return True
    return False


def _local_address(host: str) -> bool:
    """Is ``host`` one of this machine's addresses (it can be bound)?"""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
        return True
    except OSError:
        return False


def parse_tls_ca(doc: ConfigDoc, v: str | None, errors: list[ConfigError]) -> Path | None:
    """``dns.tls_ca``: a PEM file of CAs to verify DoT upstreams with (default: the system's)."""
    if v is None:
        return None
    p = (Path(doc.file).resolve().parent / v).resolve()
    if not p.is_file():
        errors.append(doc.error(f"no such file: {p}", "dns", "tls_ca"))
        return None
    return p


def parse_networks(doc: ConfigDoc, d: dict, policies: set[str], errors: list[ConfigError]) -> tuple[Network, ...]:
    """``networks: {name: {cidrs: [...], policy: name}}``; every policy named must exist."""
    out = []
    for name, body in (d.get("networks") or {}).items():
        good = []
        for at, c in one_or_many(body.get("cidrs")):
            try:
                good.append(str(ipaddress.ip_network(c, strict=False)))
            except ValueError:
                errors.append(doc.error(f"not a CIDR (10.10.0.0/16 or fd00::/8): {c!r}", "networks", name,
                                        "cidrs", *at))
        policy = body.get("policy")
        if policy is None:  # missing or not a name: the schema said so
            continue
        if policy not in policies:
            errors.append(doc.error(f"must name a policy defined under policies "
                                    f"(have: {', '.join(sorted(policies)) or 'none'})", "networks", name, "policy"))
            continue
        out.append(Network(str(name), tuple(good), policy, doc.where("networks", name)))
    return tuple(out)


def policy_extras(doc: ConfigDoc, name: Any, body: dict, errors: list[ConfigError]) -> dict:
    """A policy's ``safesearch``, ``allow_doh`` and ``schedule`` (filters/safesearch.py,
    filters/schedule.py) as Policy fields; each problem with its file:line:col."""
    out: dict = {}
    if "safesearch" in body:
        try:
            out["safesearch"] = parse_safesearch(body["safesearch"])
        except InputError as exc:
            errors.append(doc.error(exc.message, "policies", name, "safesearch"))
    if "allow_doh" in body:
        out["allow_doh"] = body["allow_doh"]
    if "schedule" in body:
        entries: list[ScheduleEntry] = []
        for i, item in enumerate(body["schedule"]):
            at = ("policies", name, "schedule", i)
            days = span = None
            if "days" in item:
                try:
                    days = parse_days(item["days"])
                except InputError as exc:
                    errors.append(doc.error(exc.message.removeprefix("days: "), *at, "days"))
            if "time" in item:
                try:
                    span = parse_time_range(item["time"])
                except InputError as exc:
                    errors.append(doc.error(exc.message, *at, "time"))
            if days is not None and span is not None and "block" in item:
                entries.append(ScheduleEntry(days, span[0], span[1], tuple(item["block"])))
        out["schedule"] = tuple(entries)
    return out


def parse_timezone(doc: ConfigDoc, d: dict, errors: list[ConfigError]) -> str:
    """The top-level ``timezone`` (IANA name) that schedules are read in; UTC by default."""
    if "timezone" not in d:
        return DEFAULT_TIMEZONE
    try:
        load_zone(d["timezone"])
    except InputError as exc:
        errors.append(doc.error(exc.message, "timezone"))
        return DEFAULT_TIMEZONE
    return str(d["timezone"])
