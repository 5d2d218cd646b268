"""``schoolgate run``: config -> bundle, policies and pipeline -> listeners; signals.

SIGTERM/SIGINT stop gracefully (listeners closed, forwards in flight cancelled). SIGHUP
reloads the config: the new one is loaded and fully built (bundle opened, every policy's
categories checked against it) before anything is swapped, so an invalid config is refused
— each error logged as file:line:col — and the running one stays. The cache survives a
reload (answers do not depend on policy; policy is applied on every hit). Listen addresses
and the worker count change only at restart. SIGUSR1 logs the counters; SIGUSR2 checks for
an update now (when the config has ``updates:``).

**Bundle swaps.** Every WATCH_PERIOD the service looks where ``bundles/current`` points
(a readlink) — or, as a worker under a supervisor, when the supervisor has seen it move and
sends SIGUSR2, so that all workers swap within milliseconds of each other instead of each
on its own tick. When an update has switched it, the new bundle is opened (mmap), its matcher
and policies built and checked, and the pipeline reference replaced — all between two
queries, on the event loop, in a few milliseconds even for a million domains (queries
arriving meanwhile wait in the socket buffer; none is lost). Forwarded queries still in
flight finish with the pipeline they started with, so the old maps stay alive (and valid:
a pruned bundle's files live on while mapped) until the last of them is answered. A bundle
the config cannot use (a policy names a category it lacks) is refused and logged once; the
old one keeps serving. With a single worker, the update scheduler runs here too
(appliance/scheduler.py); with several, in the supervisor (appliance/dns/workers.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from appliance.config import Config, ConfigErrors, load_config
from appliance.dns.cache import ArrayCache, WireCache
from appliance.dns.observe import Observer
from appliance.dns.pipeline import Pipeline
from appliance.dns.policy_state import PolicyState, utc_now
from appliance.dns.ratelimit import ArrayRateLimiter, RateLimiter
from appliance.dns.server import DnsServer, open_sockets
from appliance.dns.upstream import UpstreamSet, upstream_text
from appliance.no_bundle import HOW_REFUSING, fallback_bundle
from appliance.embedded import DEFAULT_CONFIG, open_selected, resolve_bundle, user_state_dir
from appliance.flows import CaptureChild
from appliance.querylog import FLUSH_PERIOD
from appliance.stats import SharedStats
from appliance.scheduler import UpdateScheduler
from appliance.web.process import WebProcess, start_web
from appliance.state import clear_run_state, write_run_state
from filters.catalog import Catalog
from filters.domain_matcher import DomainMatcher
from filters.errors import ConfigError, InputError, SchoolgateError, Where
from filters.policy import PolicySet
from signatures.bundle import Bundle, open_bundle

__all__ = ["load_run_config", "policy_errors", "Built", "build", "Service", "run_service", "check_catalog",
           "WATCH_PERIOD", "make_scheduler", "run_record", "utc_text", "log_serving"]

log = logging.getLogger("schoolgate")

# How often a serving process looks at bundles/current: one readlink, so a new bundle is
# served within half a second of its activation at no measurable cost.
WATCH_PERIOD = 0.5


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
            for entry in p.schedule:
                catalog.mask(entry.block)
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
    how: str  # configured | active | demo | refusing | unfiltered (appliance/no_bundle.py)
    matcher: DomainMatcher
    policies: PolicySet
    # Schedules and temporary allows: rebuilds matcher + policies when they change
    policy_state: PolicyState | None = None


def build(cfg: Config, bundle_at: tuple[Path, str] | None = None) -> Built:
    """Everything a config needs before it can serve; raises ConfigErrors / BundleError.
    ``bundle_at`` (path, how) names the bundle; by default the one the config selects
    (installing the demo bundle when there is none)."""
    if bundle_at is None:
        try:
            bundle, how = open_selected(cfg)
        except SchoolgateError as exc:  # nothing opens: what config no_bundle says
            bundle, how = fallback_bundle(cfg, exc)
    else:
        bundle, how = open_bundle(bundle_at[0]), bundle_at[1]
    matcher = bundle.domain_matcher().with_local(cfg.local_block, cfg.local_allow)
    errors = policy_errors(cfg, bundle.catalog)
    if errors:
        raise ConfigErrors(errors)
    # Policies as in force now (schedules, temporary allows, SafeSearch, DoH): see
    # appliance/dns/policy_state.py; without a default policy every category is blocked.
    state = PolicyState(cfg, bundle.catalog, matcher)
    matcher, policies = state.build()
    return Built(cfg, bundle, how, matcher, policies, state)


def make_scheduler(config_path: str | None, cfg: Config) -> UpdateScheduler | None:
    """The update scheduler for ``cfg`` (None without ``updates:``)."""
    if cfg.updates is None or config_path is None:
        return None
    found = resolve_bundle(cfg)
    return UpdateScheduler(config_path, cfg.state_dir, cfg.updates,
                           have_signed_bundle=found is not None and found[1] != "demo")


def run_record(built: Built, since: str, started: str, workers: int) -> dict:
    """run.json: what `schoolgate status` shows about the running appliance."""
    b = built.bundle
    return {"pid": os.getpid(), "started": started, "config": built.cfg.file, "workers": workers,
            "listen": [f"{h}:{p}" for h, p in built.cfg.dns.listen],
            "bundle": {"path": str(b.path), "version": b.version, "demo": b.demo, "how": built.how,
                       "since": since}}


def utc_text() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def log_serving(built: Built, what: str | None, worker: int | None = None) -> None:
    """Log the bundle served (``what``: the event) and, for the demo, a warning saying so."""
    b = built.bundle
    if what:
        log.info(what, extra={"worker": worker, "bundle": str(b.path), "bundle_version": b.version,
                              "bundle_source": built.how, "demo": b.demo})
    if b.demo:
        log.warning("serving the DEMO bundle (version %d: demo excerpts of public lists, signed with "
                    "public demo keys) - not for real filtering; configure updates: with your "
                    "district's repository", b.version, extra={"worker": worker})


class Service:
    """One serving process. ``prebuilt`` is what a forking supervisor built before fork
    (imports, JIT, bundle maps shared); ``reuse_port`` binds with SO_REUSEPORT so that
    several workers share the addresses and the kernel spreads clients across them.
    ``owner``: this process is the whole appliance (no supervisor), so it also runs the
    update scheduler and writes run.json."""

    def __init__(self, config_path: str | None, prebuilt: Built | None = None, reuse_port: bool = False,
                 worker: int | None = None, owner: bool = True, stats: SharedStats | None = None) -> None:
        self.config_path = config_path
        self.prebuilt = prebuilt
        self.reuse_port = reuse_port
        self.worker = worker
        self.owner = owner
        self.built: Built | None = None
        self.server: DnsServer | None = None
        self.scheduler: UpdateScheduler | None = None
        self.swaps = 0
        self._stop: asyncio.Event | None = None
        self._refused: Path | None = None  # a bundle the config could not use: not retried
        self._watch: asyncio.TimerHandle | None = None
        self._started = utc_text()
        # Schedules and temporary allows are looked at every WATCH_PERIOD in every serving
        # process (appliance/dns/policy_state.py); the wall clock is a seam for tests.
        self.wall_clock = utc_now
        self._policy_watch: asyncio.TimerHandle | None = None
        self.web: WebProcess | None = None  # the web page's process (owner only)
        self.capture: CaptureChild | None = None  # the flow inspection process (owner only)
        # Counters shared with the other processes and the query log (appliance/dns/observe.py).
        self.obs = Observer(stats, worker, owner, self._started)
        self._obs: asyncio.TimerHandle | None = None

    def _pipeline(self, built: Built, cache: WireCache) -> Pipeline:
        d = built.cfg.dns
        limiter_type = ArrayRateLimiter if d.fast_path else RateLimiter  # the fast path shares its buckets
        limiter = limiter_type(d.rate_limit, d.rate_burst) if d.rate_limit > 0 else None
        p = Pipeline(built.matcher, built.policies, cache, limiter=limiter, max_ttl=d.cache_max_ttl)
        p.refuse_all = built.how == HOW_REFUSING
        if self.obs.counters is not None:
            p.counters = self.obs.counters
        p.qlog = self.obs.qlog
        return p

    @property
    def stats(self) -> SharedStats | None:
        return self.obs.stats

    def _observe_tick(self) -> None:
        try:
            self.observe(time.time())
        except Exception:  # a bug of ours in reporting must not end it, nor DNS
            log.exception("counters/query log tick failed")
        self._obs = asyncio.get_running_loop().call_later(FLUSH_PERIOD, self._observe_tick)

    def observe(self, now: float, final: bool = False) -> None:
        assert self.built is not None
        cfg = self.built.cfg
        self.obs.tick(now, cfg.state_dir, cfg.log.retention_days, self.built.bundle.catalog.names,
                      lambda: {"upstreams": self._upstream_status()}, final)

    def _upstream_status(self) -> list[dict]:
        if self.server is None:
            return []
        ups = self.server.upstreams
        return [u.status(ups.clock()) for u in ups.upstreams]

    async def run(self, ready: asyncio.Event | None = None) -> int:
        built = self.prebuilt or build(load_run_config(self.config_path))
        d = built.cfg.dns
        self.obs.setup(built.cfg, built.bundle.catalog.names)
        sockets = open_sockets(d.listen, reuse_port=self.reuse_port)
        cache = (ArrayCache if d.fast_path else WireCache)(d.cache_size, d.stale_ttl)
        upstreams = UpstreamSet(d.upstreams, d.upstream_timeout, tls_ca=d.tls_ca)
        upstreams.slot = self.obs.counters.slot if self.obs.counters is not None else None
        self.built = built
        self.server = DnsServer(self._pipeline(built, cache), upstreams, idle_timeout=d.tcp_idle_timeout,
                                max_connections=d.tcp_max_connections, fast_path=d.fast_path)
        await self.server.start(sockets)
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGUSR1, self.log_counters)
        loop.add_signal_handler(signal.SIGUSR2, self.check_now)
        log.info("ready", extra={"worker": self.worker, "listen": [f"{h}:{p}" for h, p in d.listen],
                                 "bundle": str(built.bundle.path),
                                 "bundle_version": built.bundle.version, "bundle_source": built.how,
                                 "demo": built.bundle.demo,
                                 "upstreams": [upstream_text(u) for u in d.upstreams], "config": built.cfg.file})
        log_serving(built, None, self.worker)
        if self.owner:
            self.scheduler = make_scheduler(self.config_path, built.cfg)
            self._write_run_state(self._started)
            # The web page, a forked child (appliance/web/process.py): it closes these sockets.
            self.web = start_web(self.config_path, built.cfg, self.stats, built,
                                 [s for pair in sockets for s in pair])
            # Flow inspection (appliance/flows.py), a forked child when flows.enabled.
            self.capture = CaptureChild(self.config_path, built, self.stats)
        if self.owner:  # a worker swaps when its supervisor says so (SIGUSR2)
            self._watch = loop.call_later(WATCH_PERIOD, self._tick)
        else:
            self.swap_if_changed()  # activated while this worker was starting
        self._obs = loop.call_later(FLUSH_PERIOD, self._observe_tick)
        self.refresh_policies()
        self._policy_watch = loop.call_later(WATCH_PERIOD, self._policy_tick)
        if ready is not None:
            ready.set()
        try:
            await self._stop.wait()
        finally:
            if self._watch is not None:
                self._watch.cancel()
            if self._obs is not None:
                self._obs.cancel()
            if self._policy_watch is not None:
                self._policy_watch.cancel()
            if self.scheduler is not None:
                self.scheduler.stop()
            if self.web is not None:
                self.web.stop()
            if self.capture is not None:
                self.capture.stop()  # its nftables table goes with it
            if self.owner:
                clear_run_state(built.cfg.state_dir, os.getpid())
        log.info("stopping")
        await self.server.stop()
        self.server.upstreams.close()
        self.log_counters()
        try:
            self.observe(time.time(), final=True)
        except Exception:
            log.exception("final counters/query log flush failed")
        self.obs.close()
        return 0

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def _tick(self) -> None:
        try:
            if self.scheduler is not None:
                self.scheduler.poll()
            if self.web is not None:
                self.web.poll()
            if self.capture is not None:
                self.capture.poll()
            self.swap_if_changed()
        except Exception:  # a bug of ours must not end the watch: log it, keep serving
            log.exception("bundle watch failed")
        self._watch = asyncio.get_running_loop().call_later(WATCH_PERIOD, self._tick)

    def check_now(self) -> None:
        """SIGUSR2: check for an update now (and look for a new bundle at once: in a worker,
        this is the supervisor saying that one was activated)."""
        if self.scheduler is not None:
            self.scheduler.check_now()
            self.scheduler.poll()
        self.swap_if_changed()

    def swap_if_changed(self) -> bool:
        """Serve the bundle bundles/current points at, if it changed (see the module doc)."""
        assert self.built is not None
        found = resolve_bundle(self.built.cfg)
        if found is None or found[0] == self.built.bundle.path or found[0] == self._refused:
            return False
        try:
            built = build(self.built.cfg, found)
        except ConfigErrors as exc:
            self._refused = found[0]
            for e in exc.errors:
                log.error("new bundle refused, the running one stays: %s", e, extra={"bundle": str(found[0])})
            return False
        except SchoolgateError as exc:
            self._refused = found[0]
            log.error("new bundle refused, the running one stays: %s", exc, extra={"bundle": str(found[0])})
            return False
        self._install(built)
        self.swaps += 1
        log_serving(built, "bundle swapped", self.worker)
        if self.owner:
            self._write_run_state(utc_text())
        return True

    def _write_run_state(self, since: str) -> None:
        assert self.built is not None
        try:
            write_run_state(self.built.cfg.state_dir, run_record(self.built, since, self._started, 1))
        except SchoolgateError as exc:
            log.error("%s", exc)

    def _policy_tick(self) -> None:
        try:
            self.refresh_policies()
        except Exception:  # a bug of ours must not end the watch: log it, keep serving
            log.exception("policy refresh failed")
        self._policy_watch = asyncio.get_running_loop().call_later(WATCH_PERIOD, self._policy_tick)

    def refresh_policies(self) -> bool:
        """Serve the policies in force now (a schedule boundary passed, a temporary allow
        was added, removed or expired): a new pipeline over the same cache, rate limiter and
        counters, swapped between two queries. False when nothing changed."""
        if self.built is None or self.built.policy_state is None or self.server is None:
            return False
        got = self.built.policy_state.refresh(self.wall_clock())
        if got is None:
            return False
        self.built.matcher, self.built.policies = got
        old = self.server.pipeline
        p = Pipeline(got[0], got[1], old.cache, limiter=old.limiter, max_ttl=old.max_ttl, clock=old.clock)
        p.counters = old.counters
        p.qlog = getattr(old, "qlog", None)
        self.server.pipeline = p
        return True

    def _install(self, built: Built) -> None:
        """Replace the pipeline (one reference, between two queries); cache and counters stay."""
        assert self.server is not None
        d = built.cfg.dns
        cache = self.server.pipeline.cache
        cache.max_entries, cache.stale_ttl = d.cache_size, d.stale_ttl
        counters = self.server.pipeline.counters
        pipeline = self._pipeline(built, cache)
        pipeline.counters = counters
        self.server.pipeline = pipeline
        self.server.upstreams.update(d.upstreams, d.upstream_timeout, tls_ca=d.tls_ca)
        self.obs.reconfigure(built.cfg, built.bundle.catalog.names)
        self.server.idle_timeout, self.server.max_connections = d.tcp_idle_timeout, d.tcp_max_connections
        self.built = built
        self._refused = None

    def reload(self) -> bool:
        """Load and build the config again; swap only if all of it is valid."""
        assert self.server is not None and self.built is not None
        try:
            cfg = load_run_config(self.config_path)
            built = build(cfg)
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
        self._install(built)
        if self.owner:
            self._reschedule(cfg)
            self._write_run_state(utc_text())
            if self.capture is not None:
                self.capture.reload(built)
            if self.web is not None:
                self.web.reload(built.cfg, built)
            elif built.cfg.web.enabled:
                self.web = start_web(self.config_path, built.cfg, self.stats, built)
        log.info("config reloaded", extra={"bundle": str(built.bundle.path), "bundle_version": built.bundle.version})
        return True

    def _reschedule(self, cfg: Config) -> None:
        if cfg.updates is None or self.scheduler is None:
            if self.scheduler is not None:
                self.scheduler.stop()
            self.scheduler = make_scheduler(self.config_path, cfg)
        else:
            self.scheduler.reconfigure(cfg.file, cfg.updates)

    def counters(self) -> dict:
        """Totals over every process of the appliance (the shared counters), and this
        process's cache, connections and upstream health."""
        assert self.server is not None and self.built is not None and self.stats is not None
        snap = self.stats.totals(self.built.bundle.catalog.names)
        snap["this_worker"] = self.server.pipeline.counters.snapshot(self.built.bundle.catalog.names)
        snap["cache_entries"] = len(self.server.pipeline.cache)
        snap["tcp_connections"] = self.server.tcp_connections
        snap["upstreams"] = self._upstream_status()
        return snap

    def log_counters(self) -> None:
        if self.server is not None:
            log.info("counters", extra={"counters": self.counters()})


def run_service(config_path: str | None) -> int:
    cfg = load_run_config(config_path)
    # run.json, counters, logs and flow state live here even when the config names its own
    # bundle (nothing else would create the directory then). Not being able to is not fatal:
    # filtering matters more than the reports, and each writer says what failed.
    try:
        cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    except OSError as exc:
        log.error("cannot create the state directory %s: %s", cfg.state_dir, exc)
    if cfg.dns.workers > 1:
        from appliance.dns.workers import Supervisor

        return Supervisor(config_path, build(cfg)).run()
    return asyncio.run(Service(config_path).run())


def check_catalog(cfg: Config) -> Catalog:
    """The categories check-config validates policies against: those of the bundle ``run``
    would serve, without installing anything (before the demo bundle is installed, its
    categories come from the demo sources file)."""
    from appliance.embedded import DEMO_SOURCES
    from signatures.sources import load_sources

    found = resolve_bundle(cfg)
    if found is not None:
        return open_bundle(found[0]).catalog
    return Catalog(tuple(c.name for c in load_sources(DEMO_SOURCES).categories), ())
