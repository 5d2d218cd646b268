"""The appliance config file (DESIGN.md §5 lists the keys tests rely on).

Every problem found is reported, each with file:line:col; a config with errors is refused
as a whole, so the running appliance keeps its last good config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from appliance.config.dns import (DnsConfig, Network, check_policy_keys, parse_dns, parse_networks,
                                  parse_timezone, policy_extras)
from appliance.config.web import WebConfig, parse_web
from appliance.config.flows import FlowsConfig, parse_flows
from appliance.config.log import LogConfig, parse_log
from filters.errors import BadNameError, ConfigError, Where
from filters.names import normalise_pattern
from filters.safesearch import SafeSearch
from filters.schedule import ScheduleEntry
from signatures.yamldoc import YamlDoc, load_yaml

__all__ = ["Policy", "UpdatesConfig", "Config", "ConfigErrors", "load_config", "parse_duration",
           "DEFAULT_STATE_DIR", "NO_BUNDLE_MODES"]

DEFAULT_STATE_DIR = "/var/lib/schoolgate"
_TOP_KEYS = {"state_dir", "bundle", "dns", "updates", "web", "policies", "local", "networks", "flows", "log",
             "timezone", "no_bundle"}
# What DNS answers while no bundle opens (appliance/bundles/fallback.py): the embedded demo bundle,
# REFUSED to every query, or forwarding unfiltered (said loudly on the status page).
NO_BUNDLE_MODES = ("embedded", "refuse", "forward")
_UPDATE_KEYS = {"repository", "trusted_root", "interval", "timeout", "keep"}
# Poll at least weekly (the timestamp expires daily; a device a week behind is already
# stale). The floor is one second for labs and tests: an up-to-date check fetches one
# ~600-byte timestamp.json, so even that is cheap; deployments use the default hour.
MIN_INTERVAL, MAX_INTERVAL, DEFAULT_INTERVAL = 1, 7 * 86400, 3600
# One whole update run (metadata + bundle): 30 min fetches a 100 MB bundle at ~0.5 Mbit/s,
# a poor school uplink; past that a stalled download is given up and retried next check.
DEFAULT_TIMEOUT, MAX_TIMEOUT = 1800, 86400
# Bundles kept on disk: the active one and two to roll back to by hand.
DEFAULT_KEEP = 3
_DURATION = re.compile(r"([0-9]+)\s*(s|m|h|d)?")
_UNITS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class ConfigErrors(ConfigError):
    """Several config errors at once; str() lists them one per line."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("\n".join(str(e) for e in errors), None)
        self.errors = errors


@dataclass(frozen=True)
class Policy:
    name: str
    block: tuple[str, ...]  # category names
    block_mode: str | None = None  # how the DNS server answers blocked names (None: dns.block_mode)
    safesearch: SafeSearch = SafeSearch()  # filters/safesearch.py (off by default)
    allow_doh: bool = False  # the bundle's doh category is blocked unless this is true
    schedule: tuple[ScheduleEntry, ...] = ()  # extra categories by weekday and time (filters/schedule.py)
    where: Where | None = field(default=None, compare=False)  # for errors found later (unknown category)


@dataclass(frozen=True)
class UpdatesConfig:
    repository: str  # base URL; metadata/ and targets/ below it
    trusted_root: Path
    interval: int = DEFAULT_INTERVAL  # seconds
    timeout: int = DEFAULT_TIMEOUT  # seconds for one whole update run
    keep: int = DEFAULT_KEEP


@dataclass(frozen=True)
class Config:
    file: str
    state_dir: Path
    bundle: Path | None
    policies: dict[str, Policy] = field(default_factory=dict)
    local_block: tuple[str, ...] = ()
    local_allow: tuple[str, ...] = ()
    raw: dict = field(default_factory=dict)
    updates: UpdatesConfig | None = None
    dns: DnsConfig = field(default_factory=DnsConfig)
    networks: tuple[Network, ...] = ()
    timezone: str = "UTC"  # IANA zone that policy schedules are read in
    web: WebConfig = field(default_factory=WebConfig)
    flows: FlowsConfig = field(default_factory=FlowsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    no_bundle: str = "embedded"  # one of NO_BUNDLE_MODES


def load_config(path: str | Path, text: str | None = None) -> Config:
    doc = load_yaml(path, text)
    errors: list[ConfigError] = []
    d = doc.data if doc.data is not None else {}
    if not isinstance(d, dict):
        raise ConfigErrors([doc.error("config must be a mapping")])
    for k in d:
        if k not in _TOP_KEYS:
            errors.append(doc.key_error(f"unknown key {k!r} (known: {', '.join(sorted(_TOP_KEYS))})", k))
    base = Path(path).resolve().parent
    state_dir = _path(doc, d, "state_dir", base, errors) or Path(DEFAULT_STATE_DIR)
    bundle = _path(doc, d, "bundle", base, errors)
    policies: dict[str, Policy] = {}
    pol = d.get("policies", {}) or {}
    if not isinstance(pol, dict):
        errors.append(doc.error("policies must be a mapping name -> {block: [categories]}", "policies"))
        pol = {}
    for name, body in pol.items():
        if not isinstance(body, dict) or not isinstance(body.get("block", []), list):
            errors.append(doc.error("a policy is {block: [category, ...]}", "policies", name))
            continue
        cats = body.get("block", [])
        if not all(isinstance(c, str) for c in cats):
            errors.append(doc.error("categories must be names", "policies", name, "block"))
            continue
        mode = check_policy_keys(doc, str(name), body, errors)
        extras = policy_extras(doc, str(name), body, errors)
        policies[str(name)] = Policy(str(name), tuple(cats), mode, where=doc.where("policies", name, "block"), **extras)
    local = d.get("local", {}) or {}
    lists: dict[str, tuple[str, ...]] = {"block": (), "allow": ()}
    if not isinstance(local, dict):
        errors.append(doc.error("local must be {block: [names], allow: [names]}", "local"))
        local = {}
    for kind in lists:
        items = local.get(kind, []) or []
        if not isinstance(items, list):
            errors.append(doc.error(f"local.{kind} must be a list of names", "local", kind))
            continue
        good = []
        for i, item in enumerate(items):
            try:
                normalise_pattern(str(item))
                good.append(str(item))
            except BadNameError as exc:
                errors.append(doc.error(f"local.{kind}: {exc.reason}: {item!r}", "local", kind, i))
        lists[kind] = tuple(good)
    updates = _updates(doc, d, base, errors)
    dns = parse_dns(doc, d, errors)
    networks = parse_networks(doc, d, set(policies), errors)
    tz = parse_timezone(doc, d, errors)
    web = parse_web(doc, d, errors)
    flows = parse_flows(doc, d, errors)
    log = parse_log(doc, d, errors)
    no_bundle = d.get("no_bundle", "embedded")
    if no_bundle not in NO_BUNDLE_MODES:
        errors.append(doc.error(f"no_bundle must be one of {', '.join(NO_BUNDLE_MODES)}", "no_bundle"))
    if errors:
        raise ConfigErrors(errors)
    return Config(doc.file, state_dir, bundle, policies, lists["block"], lists["allow"], d, updates,
                  dns=dns, networks=networks, timezone=tz, web=web, flows=flows, log=log, no_bundle=no_bundle)


def parse_duration(value: object) -> int | None:
    """Seconds in ``90``, ``90s``, ``30m``, ``1h``, ``2d``; None if it is not one."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _DURATION.fullmatch(str(value).strip()) if isinstance(value, str) else None
    return int(m.group(1)) * _UNITS[m.group(2)] if m else None


def _updates(doc: YamlDoc, d: dict, base: Path, errors: list[ConfigError]) -> UpdatesConfig | None:
    u = d.get("updates")
    if u is None:
        return None
    if not isinstance(u, dict):
        errors.append(doc.error("updates must be {repository: URL, trusted_root: PATH, interval: 1h}", "updates"))
        return None
    n = len(errors)
    for k in u:
        if k not in _UPDATE_KEYS:
            errors.append(doc.key_error(f"unknown key updates.{k} (known: {', '.join(sorted(_UPDATE_KEYS))})",
                                        "updates", k))
    repo = u.get("repository")
    parts = urlsplit(repo) if isinstance(repo, str) else None
    if parts is None or parts.scheme not in ("http", "https", "file") or (
            parts.scheme != "file" and not parts.hostname) or (parts.scheme == "file" and not parts.path):
        errors.append(doc.error("updates.repository must be an http://, https:// or file:// URL",
                                *(("updates", "repository") if "repository" in u else ("updates",))))
    root = _path(doc, u, "trusted_root", base, errors, ("updates",))
    if "trusted_root" not in u:
        errors.append(doc.error("updates needs trusted_root (the root.json to trust)", "updates"))
    elif root is not None and not root.is_file():
        errors.append(doc.error(f"trusted root not found: {root}", "updates", "trusted_root"))
    limits = {"interval": (DEFAULT_INTERVAL, MIN_INTERVAL, MAX_INTERVAL),
              "timeout": (DEFAULT_TIMEOUT, 1, MAX_TIMEOUT)}
    got: dict[str, int] = {}
    for key, (default, lo, hi) in limits.items():
        secs = parse_duration(u.get(key, default))
        if secs is None or not lo <= secs <= hi:
            errors.append(doc.error(f"updates.{key} must be a duration from {lo} s to {hi // 3600} h "
                                    "(e.g. 90s, 30m, 1h)", "updates", key))
        got[key] = secs or default
    keep = u.get("keep", DEFAULT_KEEP)
    if not isinstance(keep, int) or isinstance(keep, bool) or not 1 <= keep <= 100:
        errors.append(doc.error("updates.keep must be a whole number from 1 to 100", "updates", "keep"))
    if len(errors) > n or root is None:
        return None
    return UpdatesConfig(str(repo), root, got["interval"], got["timeout"], keep)


def _path(doc: YamlDoc, d: dict, key: str, base: Path, errors: list[ConfigError],
          parent: tuple = ()) -> Path | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, str) or not v:
        errors.append(doc.error(f"{'.'.join(parent + (key,))} must be a path", *parent, key))
        return None
    return (base / v).resolve()
