"""``schoolgate run``: config -> bundle, policies and pipeline -> listeners; signals.

SIGTERM/SIGINT stop gracefully (listeners closed, forwards in flight cancelled). SIGHUP
reloads the config: the new one is loaded and fully built (bundle opened, every policy's
categories checked against it) before anything is swapped, so an invalid config is refused
— each error logged as file:line:col — and the running one stays. The cache survives a
reload (answers do not depend on policy; policy is applied on every hit). Listen addresses
and the worker count change only at restart. SIGUSR1 logs the counters.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, replace

from appliance.config import Config, ConfigErrors, load_config
from appliance.config_dns import DEFAULT_POLICY
from appliance.dns.cache import WireCache
from appliance.dns.pipeline import Pipeline
from appliance.dns.ratelimit import RateLimiter
from appliance.dns.server import DnsServer, open_sockets
from appliance.dns.upstream import UpstreamSet
from appliance.embedded import DEFAULT_CONFIG, select_bundle, user_state_dir
from filters.catalog import ALL_CATEGORIES, Catalog
from filters.dns_answer import BlockAnswers
from filters.domain_matcher import DomainMatcher
from filters.errors import ConfigError, InputError, SchoolgateError, Where
from filters.policy import NetworkTable, PolicyRule, PolicySet
from signatures.bundle import Bundle, open_bundle

__all__ = ["load_run_config", "policy_errors", "Built", "build", "Service", "run_service", "check_catalog"]

log = logging.getLogger("schoolgate")


def load_run_config(path: str | None) -> Config:
    """The config at ``path``, or the embedded default with a per-user state directory."""
    if path is not None:
        return load_config(path)
    cfg = load_config(DEFAULT_CONFIG)
    return cfg if "state_dir" in cfg.raw else replace(cfg, state_dir=user_state_dir())


def policy_errors(cfg: Config, catalog: Catalog) -> list[ConfigError]:
    """What only the bundle can tell: unknown category names, a block page with no address."""
    errors = []
    for p in cfg.policies.values():
        try:
            catalog.mask(p.block)
        except InputError as exc:
            errors.append(ConfigError(f"policy {p.name}: {exc.message}", p.where or Where(cfg.file)))
        if p.block_mode == "blockpage" and not cfg.dns.blockpage:
            errors.append(ConfigError(f"policy {p.name}: block_mode blockpage needs dns.blockpage addresses",
                                      p.where or Where(cfg.file)))
    return errors


@dataclass
class Built:
    cfg: Config
    bundle: Bundle
    how: str  # configured | active | embedded
    matcher: DomainMatcher
    policies: PolicySet


def build(cfg: Config) -> Built:
    """Everything a config needs before it can serve; raises ConfigErrors / BundleError."""
    path, how = select_bundle(cfg)
    bundle = open_bundle(path)
    matcher = bundle.domain_matcher().with_local(cfg.local_block, cfg.local_allow)
    errors = policy_errors(cfg, bundle.catalog)
    if errors:
        raise ConfigErrors(errors)
    d = cfg.dns
    rules = {}
    for p in cfg.policies.values():
        answers = BlockAnswers(p.block_mode or d.block_mode, d.block_ttl, d.blockpage)
        rules[p.name] = PolicyRule(p.name, p.block, matcher.policy_mask(bundle.catalog.mask(p.block)), answers)
    if DEFAULT_POLICY not in rules:  # no default policy: every category is blocked
        rules[DEFAULT_POLICY] = PolicyRule(DEFAULT_POLICY, tuple(bundle.catalog.categories),
                                           matcher.policy_mask(ALL_CATEGORIES),
                                           BlockAnswers(d.block_mode, d.block_ttl, d.blockpage))
    nets = NetworkTable([(c, n.policy) for n in cfg.networks for c in n.cidrs], DEFAULT_POLICY)
    return Built(cfg, bundle, how, matcher, PolicySet(rules, nets))


class Service:
    """One serving process. ``prebuilt`` is what a forking supervisor built before fork
    (imports, JIT, bundle maps shared); ``reuse_port`` binds with SO_REUSEPORT so that
    several workers share the addresses and the kernel spreads clients across them."""

    def __init__(self, config_path: str | None, prebuilt: Built | None = None, reuse_port: bool = False,
                 worker: int | None = None) -> None:
        self.config_path = config_path
        self.prebuilt = prebuilt
        self.reuse_port = reuse_port
        self.worker = worker
        self.built: Built | None = None
        self.server: DnsServer | None = None
        self._stop: asyncio.Event | None = None

    def _pipeline(self, built: Built, cache: WireCache) -> Pipeline:
        d = built.cfg.dns
        limiter = RateLimiter(d.rate_limit, d.rate_burst) if d.rate_limit > 0 else None
        return Pipeline(built.matcher, built.policies, cache, limiter=limiter, max_ttl=d.cache_max_ttl)

    async def run(self, ready: asyncio.Event | None = None) -> int:
        built = self.prebuilt or build(load_run_config(self.config_path))
        d = built.cfg.dns
        sockets = open_sockets(d.listen, reuse_port=self.reuse_port)
        cache = WireCache(d.cache_size, d.stale_ttl)
        upstreams = UpstreamSet(d.upstreams, d.upstream_timeout)
        self.built = built
        self.server = DnsServer(self._pipeline(built, cache), upstreams, idle_timeout=d.tcp_idle_timeout,
                                max_connections=d.tcp_max_connections)
        await self.server.start(sockets)
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGUSR1, self.log_counters)
        log.info("ready", extra={"worker": self.worker, "listen": [f"{h}:{p}" for h, p in d.listen],
                                 "bundle": str(built.bundle.path),
                                 "bundle_version": built.bundle.version, "bundle_source": built.how,
                                 "upstreams": [f"{h}:{p}" for h, p in d.upstreams], "config": built.cfg.file})
        if built.how == "embedded":
            log.warning("serving the embedded demo bundle: no signed bundle is active")
        if ready is not None:
            ready.set()
        await self._stop.wait()
        log.info("stopping")
        await self.server.stop()
        self.log_counters()
        return 0

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def reload(self) -> bool:
        """Load and build the config again; swap only if all of it is valid."""
        assert self.server is not None and self.built is not None
        try:
            built = build(load_run_config(self.config_path))
        except ConfigErrors as exc:
            for e in exc.errors:
                log.error("config refused, keeping the running one: %s", e, extra={"where": str(e.where)})
            return False
        except SchoolgateError as exc:
            log.error("config refused, keeping the running one: %s", exc)
            return False
        old = self.built.cfg.dns
        d = built.cfg.dns
        if d.listen != old.listen or d.workers != old.workers:
            log.warning("dns.listen and dns.workers take effect at the next restart")
        cache = self.server.pipeline.cache
        cache.max_entries, cache.stale_ttl = d.cache_size, d.stale_ttl
        counters = self.server.pipeline.counters
        pipeline = self._pipeline(built, cache)
        pipeline.counters = counters
        self.server.pipeline = pipeline
        self.server.upstreams.update(d.upstreams, d.upstream_timeout)
        self.server.idle_timeout, self.server.max_connections = d.tcp_idle_timeout, d.tcp_max_connections
        self.built = built
        log.info("config reloaded", extra={"bundle": str(built.bundle.path), "bundle_version": built.bundle.version})
        return True

    def counters(self) -> dict:
        assert self.server is not None and self.built is not None
        snap = self.server.pipeline.counters.snapshot(self.built.bundle.catalog.names)
        snap["cache_entries"] = len(self.server.pipeline.cache)
        snap["tcp_connections"] = self.server.tcp_connections
        snap["upstreams"] = [u.status(self.server.upstreams.clock()) for u in self.server.upstreams.upstreams]
        return snap

    def log_counters(self) -> None:
        if self.server is not None:
            log.info("counters", extra={"counters": self.counters()})


def run_service(config_path: str | None) -> int:
    cfg = load_run_config(config_path)
    if cfg.dns.workers > 1:
        from appliance.dns.workers import Supervisor

        return Supervisor(config_path, build(cfg)).run()
    return asyncio.run(Service(config_path).run())


def check_catalog(cfg: Config) -> Catalog:
    """The categories check-config validates policies against: those of the bundle ``run``
    would serve, without compiling anything (the embedded bundle's come from the demo
    sources file)."""
    from appliance.embedded import DEMO_SOURCES
    from signatures.sources import load_sources

    if cfg.bundle:
        return open_bundle(cfg.bundle).catalog
    active = cfg.bundle_path()
    if (active / "manifest.json").is_file():
        return open_bundle(active).catalog
    return Catalog(tuple(c.name for c in load_sources(DEMO_SOURCES).categories), ())
