"""The config's ``dns:`` and ``networks:`` sections and the per-policy DNS keys.

Loaded by appliance.config.load_config; every problem is appended to its error list with the
value's file:line:col, so check-config reports them all at once. Limits name their reason.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from filters.dns_answer import BLOCK_MODES, DEFAULT_BLOCK_TTL
from filters.errors import ConfigError, InputError, Where
from filters.safesearch import parse_safesearch
from filters.schedule import ScheduleEntry, load_zone, parse_entry
from signatures.yamldoc import YamlDoc

__all__ = ["DnsConfig", "Network", "parse_dns", "parse_networks", "check_policy_keys", "policy_extras",
           "parse_timezone", "parse_hostport", "DEFAULT_LISTEN", "DEFAULT_POLICY", "DEFAULT_TIMEZONE",
           "MAX_SCHEDULE_ENTRIES"]

DEFAULT_LISTEN = ("127.0.0.1", 5353)
# Clients in no configured network get the policy of this name; without one, every category
# is blocked (the safe reading for children, as `lookup` without --policy).
DEFAULT_POLICY = "default"
_DNS_KEYS = {"listen", "upstreams", "block_mode", "blockpage", "block_ttl", "cache_size",
             "cache_max_ttl", "stale_ttl", "upstream_timeout", "rate_limit", "tcp_idle_timeout",
             "tcp_max_connections", "workers", "fast_path", "tls_ca"}
_POLICY_KEYS = {"block", "block_mode", "safesearch", "allow_doh", "schedule"}
# Schedules: a handful of ranges per policy is what a school needs; the cap keeps the
# per-tick evaluation (every 0.5 s, filters/schedule.py) trivially cheap.
MAX_SCHEDULE_ENTRIES = 32
DEFAULT_TIMEZONE = "UTC"
_NETWORK_KEYS = {"cidrs", "policy"}
# Entries in the wire cache: ~10k entries × ~300 B ≈ 3 MB, a school's working set of names
# for a day. The cap keeps a scan of random names from growing the process without bound.
DEFAULT_CACHE_SIZE, MAX_CACHE_SIZE = 10_000, 10_000_000
# RFC 8767 §5 suggests keeping stale data 1 to 3 days; a day rides out a long link outage.
DEFAULT_CACHE_MAX_TTL, DEFAULT_STALE_TTL = 86400, 86400
# Per try at one upstream: stub resolvers give up after ~5 s (glibc: timeout 5, attempts 2),
# so two upstreams at 1.5 s each still answer SERVFAIL before the client has gone.
DEFAULT_UPSTREAM_TIMEOUT = 1.5
# RFC 7766 §6.2.3: idle TCP connections are closed after a few seconds; 10 s as unbound's
# default. Past the connection cap new connections are closed at once.
DEFAULT_TCP_IDLE, DEFAULT_TCP_MAX = 10.0, 256
# Per client: a busy laptop makes tens of queries a second at page load; 200/s with a burst
# of 400 never touches a real client and caps one spoofed source's share of the CPU.
DEFAULT_RATE, DEFAULT_BURST = 200.0, 400.0
MAX_WORKERS = 64
_SECONDS = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?")
_UNITS = {"ms": 0.001, None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class DnsConfig:
    listen: tuple[tuple[str, int], ...] = (DEFAULT_LISTEN,)
    # (host, port) plain DNS; (host, port, tls name) DNS over TLS (appliance/config_log.py)
    upstreams: tuple[tuple, ...] = ()
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
    workers: int = 1
    # UDP queries answered in batches by jitted code (appliance/dns/fastpath.py); false: the
    # plain Python loop (same answers, ~2.5x the CPU per query).
    fast_path: bool = True
    tls_ca: Path | None = None  # CAs for DoT upstreams (None: the system's)


@dataclass(frozen=True)
class Network:
    name: str
    cidrs: tuple[str, ...]
    policy: str
    where: Where | None = field(default=None, compare=False)


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


def _seconds(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = _SECONDS.fullmatch(value.strip()) if isinstance(value, str) else None
    return float(m.group(1)) * _UNITS[m.group(2)] if m else None


def _addresses(doc: YamlDoc, v: object, key: str, errors: list[ConfigError]) -> tuple[tuple[str, int], ...]:
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list):
        errors.append(doc.error(f"dns.{key} must be a list of host:port", "dns", key))
        return ()
    out = []
    for i, item in enumerate(items):
        hp = parse_hostport(item)
        if hp is None:
            errors.append(doc.error(f"dns.{key}: not an IP address with optional port "
                                    f"(1.2.3.4:53 or [::1]:53): {item!r}", "dns", key,
                                    *((i,) if isinstance(v, list) else ())))
        else:
            out.append(hp)
    return tuple(out)


def parse_dns(doc: YamlDoc, d: dict, errors: list[ConfigError]) -> DnsConfig:
    """The ``dns:`` section (defaults for what is missing)."""
    s = d.get("dns")
    if s is None:
        return DnsConfig()
    if not isinstance(s, dict):
        errors.append(doc.error("dns must be a mapping (listen, upstreams, block_mode, ...)", "dns"))
        return DnsConfig()
    for k in s:
        if k not in _DNS_KEYS:
            errors.append(doc.key_error(f"unknown key dns.{k} (known: {', '.join(sorted(_DNS_KEYS))})", "dns", k))
    got: dict = {}
    if "listen" in s:
        n = len(errors)
        got["listen"] = _addresses(doc, s["listen"], "listen", errors)
        if not got["listen"] and len(errors) == n:
            errors.append(doc.error("dns.listen needs at least one address", "dns", "listen"))
    if "upstreams" in s:
        from appliance.config_log import parse_upstreams  # it imports this module

        got["upstreams"] = parse_upstreams(doc, s["upstreams"] or [], errors)
    if "tls_ca" in s:
        from appliance.config_log import parse_tls_ca

        got["tls_ca"] = parse_tls_ca(doc, s, errors)
    mode = s.get("block_mode", "nxdomain")
    if mode not in BLOCK_MODES:
        errors.append(doc.error(f"dns.block_mode must be one of {', '.join(BLOCK_MODES)}", "dns", "block_mode"))
    got["block_mode"] = mode
    bp = s.get("blockpage", [])
    bp = [bp] if isinstance(bp, str) else bp
    good = []
    for i, a in enumerate(bp if isinstance(bp, list) else [None]):
        try:
            good.append(str(ipaddress.ip_address(a)))
        except ValueError:
            errors.append(doc.error(f"dns.blockpage: not an IP address: {a!r}", "dns", "blockpage", i))
    got["blockpage"] = tuple(good)
    ints = {"block_ttl": (0, 86400), "cache_size": (0, MAX_CACHE_SIZE),
            "tcp_max_connections": (1, 65536), "workers": (1, MAX_WORKERS)}
    for key, (lo, hi) in ints.items():
        if key in s:
            v = s[key]
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                errors.append(doc.error(f"dns.{key} must be a whole number from {lo} to {hi}", "dns", key))
            else:
                got[key] = v
    durations = {"cache_max_ttl": (0, 7 * 86400), "stale_ttl": (0, 7 * 86400),
                 "upstream_timeout": (0.05, 10), "tcp_idle_timeout": (0.1, 3600)}
    for key, (lo, hi) in durations.items():
        if key in s:
            secs = _seconds(s[key])
            if secs is None or not lo <= secs <= hi:
                errors.append(doc.error(f"dns.{key} must be a duration from {lo} s to {hi} s "
                                        "(e.g. 500ms, 2s, 1h)", "dns", key))
            else:
                got[key] = int(secs) if key in ("cache_max_ttl", "stale_ttl") else secs
    if "rate_limit" in s:
        rl = s["rate_limit"]
        if rl in (0, None, False):
            got["rate_limit"] = 0.0
        elif not isinstance(rl, dict) or set(rl) - {"qps", "burst"} or not all(
                isinstance(rl.get(k, 1), (int, float)) and not isinstance(rl.get(k, 1), bool)
                and 0 <= rl.get(k, 1) <= 1e6 for k in ("qps", "burst")):
            errors.append(doc.error("dns.rate_limit must be {qps: N, burst: N} (per client) or 0 for off",
                                    "dns", "rate_limit"))
        else:
            got["rate_limit"] = float(rl.get("qps", DEFAULT_RATE))
            got["rate_burst"] = float(rl.get("burst", max(got["rate_limit"] * 2, 1)))
    if "fast_path" in s:
        if not isinstance(s["fast_path"], bool):
            errors.append(doc.error("dns.fast_path must be true or false", "dns", "fast_path"))
        else:
            got["fast_path"] = s["fast_path"]
    if mode == "blockpage" and not good:
        errors.append(doc.error("block_mode blockpage needs dns.blockpage addresses", "dns", "block_mode"))
    return DnsConfig(**got)


def check_policy_keys(doc: YamlDoc, name: str, body: dict, errors: list[ConfigError]) -> str | None:
    """Unknown keys and the block mode of one policy; returns its block mode (None: dns's)."""
    for k in body:
        if k not in _POLICY_KEYS:
            errors.append(doc.key_error(f"unknown key policies.{name}.{k} (known: "
                                        f"{', '.join(sorted(_POLICY_KEYS))})", "policies", name, k))
    mode = body.get("block_mode")
    if mode is not None and mode not in BLOCK_MODES:
        errors.append(doc.error(f"block_mode must be one of {', '.join(BLOCK_MODES)}",
                                "policies", name, "block_mode"))
        return None
    return mode


def parse_networks(doc: YamlDoc, d: dict, policies: set[str], errors: list[ConfigError]) -> tuple[Network, ...]:
    """``networks: {name: {cidrs: [...], policy: name}}``; every policy named must exist."""
    s = d.get("networks")
    if s is None:
        return ()
    if not isinstance(s, dict):
        errors.append(doc.error("networks must be a mapping name -> {cidrs: [...], policy: name}", "networks"))
        return ()
    out = []
    for name, body in s.items():
        if not isinstance(body, dict):
            errors.append(doc.error("a network is {cidrs: [CIDR, ...], policy: name}", "networks", name))
            continue
        for k in body:
            if k not in _NETWORK_KEYS:
                errors.append(doc.key_error(f"unknown key networks.{name}.{k} (known: cidrs, policy)",
                                            "networks", name, k))
        cidrs = body.get("cidrs", [])
        cidrs = [cidrs] if isinstance(cidrs, str) else cidrs
        good = []
        if not isinstance(cidrs, list) or not cidrs:
            errors.append(doc.error("cidrs must be a non-empty list of CIDRs", "networks", name, "cidrs"))
            cidrs = []
        for i, c in enumerate(cidrs):
            try:
                good.append(str(ipaddress.ip_network(str(c), strict=False)))
            except ValueError:
                errors.append(doc.error(f"not a CIDR: {c!r}", "networks", name, "cidrs", i))
        policy = body.get("policy")
        if not isinstance(policy, str) or policy not in policies:
            errors.append(doc.error(f"policy must name a policy defined under policies "
                                    f"(have: {', '.join(sorted(policies)) or 'none'})",
                                    *(("networks", name, "policy") if "policy" in body else ("networks", name))))
            continue
        out.append(Network(str(name), tuple(good), policy, doc.where("networks", name)))
    return tuple(out)


def policy_extras(doc: YamlDoc, name: str, body: dict, errors: list[ConfigError]) -> dict:
    """A policy's ``safesearch``, ``allow_doh`` and ``schedule`` (filters/safesearch.py,
    filters/schedule.py) as Policy fields; each problem with its file:line:col."""
    out: dict = {}
    if "safesearch" in body:
        try:
            out["safesearch"] = parse_safesearch(body["safesearch"])
        except InputError as exc:
            path = ("policies", name, "safesearch")
            ss = body["safesearch"]
            unknown = [k for k in ss if k not in ("google", "bing", "duckduckgo", "youtube")] \
                if isinstance(ss, dict) else []
            if unknown:
                errors.append(doc.key_error(f"policies.{name}.safesearch: {exc.message}", *path, unknown[0]))
            else:
                for k in ss if isinstance(ss, dict) else ():  # point at the engine at fault
                    if f"safesearch.{k} " in exc.message:
                        path = path + (k,)
                        break
                errors.append(doc.error(f"policies.{name}.{'.'.join(str(p) for p in path[2:])}: {exc.message}",
                                        *path))
    if "allow_doh" in body:
        if not isinstance(body["allow_doh"], bool):
            errors.append(doc.error(f"policies.{name}.allow_doh must be true or false", "policies", name, "allow_doh"))
        else:
            out["allow_doh"] = body["allow_doh"]
    if "schedule" in body:
        items = body["schedule"]
        if not isinstance(items, list):
            errors.append(doc.error(f"policies.{name}.schedule must be a list of "
                                    "{days: mon-fri, time: \"08:00-16:00\", block: [categories]}",
                                    "policies", name, "schedule"))
            return out
        if len(items) > MAX_SCHEDULE_ENTRIES:
            errors.append(doc.error(f"policies.{name}.schedule: at most {MAX_SCHEDULE_ENTRIES} entries",
                                    "policies", name, "schedule"))
            return out
        entries: list[ScheduleEntry] = []
        for i, item in enumerate(items):
            try:
                entries.append(parse_entry(item))
            except InputError as exc:
                # Point at the key at fault (days, time, block) when it is one of them.
                path: tuple = ("policies", name, "schedule", i)
                if isinstance(item, dict):
                    for k in item:
                        if str(k) not in ("days", "time", "block"):
                            errors.append(doc.key_error(f"policies.{name}.schedule[{i}]: {exc.message}", *path, k))
                            break
                    else:
                        for k in ("days", "time", "block"):
                            if k in item and (k in exc.message or (k == "days" and "day" in exc.message)):
                                path = path + (k,)
                                break
                        errors.append(doc.error(f"policies.{name}.schedule[{i}]: {exc.message}", *path))
                    continue
                errors.append(doc.error(f"policies.{name}.schedule[{i}]: {exc.message}", *path))
        out["schedule"] = tuple(entries)
    return out


def parse_timezone(doc: YamlDoc, d: dict, errors: list[ConfigError]) -> str:
    """The top-level ``timezone`` (IANA name) that schedules are read in; UTC by default."""
    if "timezone" not in d:
        return DEFAULT_TIMEZONE
    try:
        load_zone(d["timezone"])
    except InputError as exc:
        errors.append(doc.error(exc.message, "timezone"))
        return DEFAULT_TIMEZONE
    return str(d["timezone"])

