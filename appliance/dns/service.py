"""One serving DNS process: a built config's pipeline behind listeners; signals.

It is handed what it serves (a ``Built``, appliance/bundles/served.py) and an
:class:`Assembly` to rebuild with (appliance/compose.py makes both); it never assembles a
config itself.

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
(appliance/updates/scheduler.py); with several, in the supervisor (appliance/dns/workers.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Protocol

from appliance.bundles.fallback import HOW_REFUSING
from appliance.bundles.select import resolve_bundle
from appliance.bundles.served import Builder, Built, log_serving, run_record
from appliance.child import ChildProcess
from appliance.clock import utc_now, utc_text
from appliance.config.load import Config, ConfigErrors
from appliance.dns.cache import AnswerCache, ArrayCache, WireCache
from appliance.dns.observe import Observer
from appliance.dns.pipeline import Pipeline
from appliance.dns.ratelimit import ArrayRateLimiter, RateLimiter
from appliance.dns.server import DnsServer, open_sockets
from appliance.dns.startup import first_answer
from appliance.dns.upstream import UpstreamSet, upstream_text
from appliance.observe.querylog import FLUSH_PERIOD
from appliance.observe.stats import SharedStats
from appliance.updates.scheduler import UpdateScheduler
from appliance.updates.state import clear_run_state, write_run_state
from filters.errors import SchoolgateError

__all__ = ["Assembly", "Service", "WATCH_PERIOD"]

log = logging.getLogger("schoolgate")

# How often a serving process looks at bundles/current: one readlink, so a new bundle is
# served within half a second of its activation at no measurable cost.
WATCH_PERIOD = 0.5


class Assembly(Builder, Protocol):
    """What the owner process needs from the composition root (appliance/compose.py) besides
    rebuilding: the update scheduler for a config and the forked children."""

    def scheduler(self, cfg: Config) -> UpdateScheduler | None: ...

    def children(self, built: Built, stats: SharedStats | None,
                 close_in_child: list[socket.socket]) -> list[ChildProcess]: ...


class Service:
    """One serving process. ``prebuilt`` is what a forking supervisor built before fork
    (imports, JIT, bundle maps shared); ``reuse_port`` binds with SO_REUSEPORT so that
    several workers share the addresses and the kernel spreads clients across them.
    ``owner``: this process is the whole appliance (no supervisor), so it also runs the
    update scheduler and writes run.json."""

    def __init__(self, assembly: Assembly, prebuilt: Built | None = None, reuse_port: bool = False,
                 worker: int | None = None, owner: bool = True, stats: SharedStats | None = None) -> None:
        self.assembly = assembly
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
        # process (appliance/policy/state.py); the wall clock is a seam for tests.
        self.wall_clock = utc_now
        self._policy_watch: asyncio.TimerHandle | None = None
        # The owner's forked children: the web page and flow inspection (appliance/compose.py).
        self.children: list[ChildProcess] = []
        # Counters shared with the other processes and the query log (appliance/dns/observe.py).
        self.obs = Observer(stats, worker, owner, self._started)
        self._obs: asyncio.TimerHandle | None = None
        self._probe: asyncio.Task | None = None  # the upstreams asked once at start

    def _pipeline(self, built: Built, cache: AnswerCache) -> Pipeline:
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
        built = self.prebuilt or self.assembly.reload()
        d = built.cfg.dns
        self.obs.setup(built.cfg, built.bundle.catalog.names)
        sockets = open_sockets(d.listen, reuse_port=self.reuse_port)
        cache = (ArrayCache if d.fast_path else WireCache)(d.cache_size, d.stale_ttl)
        upstreams = UpstreamSet(d.upstreams, d.upstream_timeout, tls_ca=d.tls_ca)
        upstreams.slot = self.obs.counters.slot if self.obs.counters is not None else None
        self.built = built
        self.server = DnsServer(self._pipeline(built, cache), upstreams, idle_timeout=d.tcp_idle_timeout,
                                max_connections=d.tcp_max_connections, per_client=d.tcp_per_client,
                                fast_path=d.fast_path)
        await self.server.start(sockets)
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGUSR1, self.log_counters)
        loop.add_signal_handler(signal.SIGUSR2, self.check_now)
        for w in built.cfg.warnings:
            log.warning("config: %s", w, extra={"worker": self.worker})
        if self.owner or self.worker == 0:
            self._probe = loop.create_task(self._probe_upstreams())
        answered = await first_answer(d.listen[0])
        if answered is None:
            log.error("the DNS service does not answer its own queries on %s:%d", *d.listen[0],
                      extra={"worker": self.worker})
        log.info("ready", extra={"worker": self.worker, "listen": [f"{h}:{p}" for h, p in d.listen],
                                 "first_answer_s": round(answered, 3) if answered is not None else None,
                                 "bundle": str(built.bundle.path),
                                 "bundle_version": built.bundle.version, "bundle_source": built.how,
                                 "demo": built.bundle.demo,
                                 "upstreams": [upstream_text(u) for u in d.upstreams], "config": built.cfg.file})
        log_serving(built, None, self.worker)
        if self.owner:
            self.scheduler = self.assembly.scheduler(built.cfg)
            self._write_run_state(self._started)
            # The web page (it closes these sockets) and flow inspection, forked children.
            self.children = self.assembly.children(built, self.stats, [s for pair in sockets for s in pair])
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
            for child in self.children:
                child.stop()  # the capture process's nftables table goes with it
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

    async def _probe_upstreams(self) -> None:
        """Ask each upstream once at start and say loudly which do not answer (the status
        page and `schoolgate status` show the same from the upstream records)."""
        assert self.server is not None
        ups = self.server.upstreams
        if not ups.upstreams:
            log.warning("no upstream resolver configured: allowed names get SERVFAIL (set dns.upstreams)",
                        extra={"worker": self.worker})
            return
        results = await ups.probe()
        for addr, why in results:
            if why is not None:
                log.warning("upstream %s is not answering (%s)%s", addr, why,
                            "" if any(w is None for _, w in results)
                            else ": allowed names get SERVFAIL until an upstream answers (check dns.upstreams)",
                            extra={"worker": self.worker, "upstream": addr})

    def _tick(self) -> None:
        try:
            if self.scheduler is not None:
                self.scheduler.poll()
            for child in self.children:
                child.poll()
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
        if found is None or found.path == self.built.bundle.path or found.path == self._refused:
            return False
        try:
            built = self.assembly.with_bundle(self.built.cfg, found)
        except ConfigErrors as exc:
            self._refused = found.path
            for e in exc.errors:
                log.error("new bundle refused, the running one stays: %s", e, extra={"bundle": str(found.path)})
            return False
        except SchoolgateError as exc:
            self._refused = found.path
            log.error("new bundle refused, the running one stays: %s", exc, extra={"bundle": str(found.path)})
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
        self.server.per_client = d.tcp_per_client
        self.built = built
        self._refused = None

    def reload(self) -> bool:
        """Load and build the config again; swap only if all of it is valid."""
        assert self.server is not None and self.built is not None
        try:
            built = self.assembly.reload()
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
            self._reschedule(built.cfg)
            self._write_run_state(utc_text())
            for child in self.children:
                child.reload(built)
        log.info("config reloaded", extra={"bundle": str(built.bundle.path), "bundle_version": built.bundle.version})
        return True

    def _reschedule(self, cfg: Config) -> None:
        if cfg.updates is None or self.scheduler is None:
            if self.scheduler is not None:
                self.scheduler.stop()
            self.scheduler = self.assembly.scheduler(cfg)
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

