"""The appliance config file (its keys: config/schema.json, listed in docs/configuration.md).

Every problem found is reported, each with file:line:col, in file order; a config with
errors is refused as a whole, so the running appliance keeps its last good config.

First the document is checked against config/schema.json (appliance/config/schema.py: the
keys, types, enums, ranges and value patterns, declared once); then the sections are read
from the values that passed it, and what the schema cannot say is checked here and in the
section modules: paths resolve and files exist, URLs have a host, names normalise, policy
names exist, durations are in range whatever their unit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from appliance.config.dns import DnsConfig, Network, parse_dns, parse_networks, parse_timezone, policy_extras
from appliance.config.flows import FlowsConfig, parse_flows
from appliance.config.log import LogConfig, parse_log
from appliance.config.schema import ConfigDoc, validate
from appliance.config.web import WebConfig, parse_web
from filters.errors import BadNameError, ConfigError, Where
from filters.names import normalise_pattern
from filters.safesearch import SafeSearch
from filters.schedule import ScheduleEntry
from signatures.yamldoc import load_yaml

__all__ = ["Policy", "UpdatesConfig", "Config", "ConfigErrors", "load_config", "DEFAULT_STATE_DIR"]

DEFAULT_STATE_DIR = "/var/lib/schoolgate"
# Poll hourly; the schema allows 1 s (labs and tests: an up-to-date check fetches one
# ~600-byte timestamp.json) to a week (the timestamp expires daily).
DEFAULT_INTERVAL = 3600
# One whole update run (metadata + bundle): 30 min fetches a 100 MB bundle at ~0.5 Mbit/s,
# a poor school uplink; past that a stalled download is given up and retried next check.
DEFAULT_TIMEOUT = 1800
# Bundles kept on disk: the active one and two to roll back to by hand.
DEFAULT_KEEP = 3


class ConfigErrors(ConfigError):
    """Several config errors at once; str() lists them one per line. ``partial``: the config
    as far as it could be read (load_config: the values that passed), so that check-config
    can report what only the bundle can tell in the same pass; never served."""

    def __init__(self, errors: list[ConfigError], partial: Config | None = None) -> None:
        super().__init__("\n".join(str(e) for e in errors), None)
        self.errors = errors
        self.partial = partial


@dataclass(frozen=True)
class Policy:
    name: str
    block: tuple[str, ...]  # category names
    block_mode: str | None = None  # how the DNS server answers blocked names (None: dns.block_mode)
    safesearch: SafeSearch = SafeSearch()  # filters/safesearch.py (off by default)
    allow_doh: bool = False  # the bundle's doh category is blocked unless this is true
    schedule: tuple[ScheduleEntry, ...] = ()  # extra categories by weekday and time (filters/schedule.py)
    where: Where | None = field(default=None, compare=False)  # for errors found later (unknown category)

    @property
    def categories(self) -> tuple[str, ...]:
        """Every category it names, its own and its schedules', once each, in order."""
        return tuple(dict.fromkeys((*self.block, *(c for e in self.schedule for c in e.block))))


@dataclass(frozen=True)
class UpdatesConfig:
    repository: str  # base URL; metadata/ and targets/ below it
    trusted_root: Path
    interval: int = DEFAULT_INTERVAL  # seconds
    timeout: int = DEFAULT_TIMEOUT  # seconds for one whole update run
    keep: int = DEFAULT_KEEP
    # refuse | degrade: a delivered bundle lacking a category some policy blocks
    # (appliance/policy/categories.py)
    missing_categories: str = "refuse"


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
    no_bundle: str = "embedded"  # embedded | refuse | forward (appliance/bundles/fallback.py)
    # What works but probably not as meant (no upstream found): check-config prints these,
    # `run` logs them at start and reload
    warnings: tuple[str, ...] = field(default=(), compare=False)


def load_config(path: str | Path, text: str | None = None) -> Config:
    doc = load_yaml(path, text)
    cd, errors = validate(doc)
    d = cd.data
    if d is None:  # not a mapping: nothing to read
        raise ConfigErrors(errors)
    base = Path(path).resolve().parent
    state_dir = _path(base, d.get("state_dir")) or Path(DEFAULT_STATE_DIR)
    bundle = _path(base, d.get("bundle"))
    policies: dict[str, Policy] = {}
    for name, body in (d.get("policies") or {}).items():
        extras = policy_extras(cd, name, body, errors)
        policies[str(name)] = Policy(str(name), tuple(body.get("block", ())), body.get("block_mode"),
                                     where=cd.where("policies", name, "block"), **extras)
    local = d.get("local") or {}
    lists = {kind: _names(cd, local, kind, errors) for kind in ("block", "allow")}
    updates = _updates(cd, d, base, errors)
    warnings: list[str] = []
    dns = parse_dns(cd, d, errors, warnings)
    # Every policy written counts, even one the schema refused: a network naming it is fine.
    written = cd.raw.get("policies") if isinstance(cd.raw, dict) else None
    names = set(policies) | ({str(k) for k in written} if isinstance(written, dict) else set())
    networks = parse_networks(cd, d, names, errors)
    tz = parse_timezone(cd, d, errors)
    web = parse_web(cd, d, errors)
    flows = parse_flows(cd, d, errors)
    log = parse_log(cd, d, errors)
    cfg = Config(doc.file, state_dir, bundle, policies, lists["block"], lists["allow"], d, updates,
                 dns=dns, networks=networks, timezone=tz, web=web, flows=flows, log=log,
                 no_bundle=d.get("no_bundle", "embedded"), warnings=tuple(warnings))
    if errors:
        errors.sort(key=lambda e: (e.where.line, e.where.col) if e.where else (0, 0))
        raise ConfigErrors(errors, cfg)
    return cfg


def _names(doc: ConfigDoc, local: dict, kind: str, errors: list[ConfigError]) -> tuple[str, ...]:
    """``local.block`` / ``local.allow``: names that normalise (filters/names.py)."""
    good = []
    for i, item in enumerate(local.get(kind) or ()):
        try:
            normalise_pattern(item)
            good.append(item)
        except BadNameError as exc:
            errors.append(doc.error(f"{exc.reason}: {item!r}", "local", kind, i))
    return tuple(good)


def _updates(doc: ConfigDoc, d: dict, base: Path, errors: list[ConfigError]) -> UpdatesConfig | None:
    u = d.get("updates")
    if u is None:
        return None
    n = len(errors)
    repo = u.get("repository")
    if repo is not None:
        parts = urlsplit(repo)
        if not (parts.path if parts.scheme == "file" else parts.hostname):
            errors.append(doc.error("must be an http://, https:// or file:// URL with a "
                                    f"{'path' if parts.scheme == 'file' else 'host'}", "updates", "repository"))
    root = _path(base, u.get("trusted_root"))
    if root is not None and not root.is_file():
        errors.append(doc.error(f"no such file: {root}", "updates", "trusted_root"))
    got: dict[str, Any] = {}
    for key in ("interval", "timeout"):
        secs = doc.duration(u[key], errors, "updates", key) if key in u else None
        if secs is not None:
            got[key] = int(secs)
    for key in ("keep", "missing_categories"):
        if key in u:
            got[key] = u[key]
    if len(errors) > n or repo is None or root is None:
        return None
    return UpdatesConfig(repo, root, **got)


def _path(base: Path, v: str | None) -> Path | None:
    """A path in the config, relative to the config file's directory."""
    return None if v is None else (base / v).resolve()
