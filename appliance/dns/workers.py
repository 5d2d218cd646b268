"""N DNS worker processes sharing the listen addresses with SO_REUSEPORT.

The supervisor imports everything, loads the numba kernels and maps the bundle *before*
forking, so every worker shares those pages copy-on-write (numba alone is ~90 MB per
process; the bundle is read-only mmap). Each worker binds its own sockets with
SO_REUSEPORT and the kernel spreads clients across them by address hash.

Signals: SIGTERM/SIGINT stop every worker (and then the supervisor); SIGHUP is checked by
the supervisor first — an invalid config is refused once, here, and the workers never see
it; a valid one is rebuilt here (so restarted workers fork from it) and passed on as SIGHUP
for each worker to reload; SIGUSR1 logs the counters of all workers (summed here, from the
shared counters every worker adds into: appliance/observe/stats.py, mapped before the first fork).
A worker that dies is restarted (into its slot of the counters), at most once per
RESTART_DELAY per slot so that a crash loop cannot spin. The supervisor writes counters.json
every COUNTERS_PERIOD and runs the query log's retention job (appliance/observe/querylog.py).

Updates: the supervisor runs the update scheduler (appliance/updates/scheduler.py; SIGUSR2 = check
now), so the repository sees one poll per appliance, not one per worker. It watches
``bundles/current``; when an update (its own or a manual one) has moved it, it rebuilds (so
that a restarted worker forks from the new bundle), records what is served in run.json and
sends every worker SIGUSR2, on which each swaps between two queries (service.py) — all
within milliseconds of each other, so that clients spread over the workers do not see the
old and the new verdicts alternate.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from pathlib import Path

from appliance.bundles.select import resolve_bundle
from appliance.bundles.served import Built, log_serving, run_record
from appliance.child import ChildProcess, die_with_parent, reap
from appliance.clock import utc_text
from appliance.config.load import ConfigErrors
from appliance.dns.fastpath import warm_up
from appliance.dns.server import open_sockets
from appliance.dns.service import Assembly, Service
from appliance.dns.upstream import health_rows
from appliance.memory import release_file_pages
from appliance.observe.querylog import RETENTION_PERIOD, ClientPrivacy, enforce_retention
from appliance.observe.stats import SharedStats, slots_for
from appliance.observe.status import COUNTERS_PERIOD, seed_counters, write_counters
from appliance.updates.scheduler import UpdateScheduler
from appliance.updates.state import clear_run_state, write_run_state
from filters.errors import SchoolgateError

__all__ = ["Supervisor", "RESTART_DELAY"]

log = logging.getLogger("schoolgate")

RESTART_DELAY = 1.0  # seconds between restarts of one worker slot
_TICK = 0.2  # the supervisor's loop period
_STOP_GRACE = 10.0  # seconds workers get to exit after SIGTERM before SIGKILL


class Supervisor:
    def __init__(self, assembly: Assembly, built: Built) -> None:
        self.assembly = assembly
        self.built = built
        self.n = built.cfg.dns.workers
        self.pids: dict[int, int] = {}  # pid -> slot
        self._last_start: dict[int, float] = {}
        self._flags: set[int] = set()
        self.scheduler: UpdateScheduler | None = None
        self._started = utc_text()
        self._refused: Path | None = None  # a bundle the config could not use: not retried
        # Counters every worker adds into (appliance/observe/stats.py): mapped before the first fork.
        self.stats: SharedStats | None = None
        self._since = self._started
        self._next_report = 0.0
        self._next_retention = 0.0
        # The web page and flow inspection, forked children like the workers (appliance/compose.py).
        self.children: list[ChildProcess] = []

    def _spawn(self, slot: int) -> None:
        self._last_start[slot] = time.monotonic()
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
                    signal.signal(sig, signal.SIG_DFL)
                # An orphaned worker would keep serving its old bundle on the shared port
                # forever, beside the workers of a restarted appliance
                # (tests/integration/test_gateway_faults.py).
                if not die_with_parent(supervisor):  # it died between fork() and prctl()
                    os.kill(os.getpid(), signal.SIGTERM)
                # "swap now" arriving before the worker listens for it must not kill it; the
                # worker looks for a newer bundle once it is ready anyway.
                signal.signal(signal.SIGUSR2, signal.SIG_IGN)
                code = asyncio.run(Service(self.assembly, self.built, reuse_port=True, worker=slot,
                                           owner=False, stats=self.stats).run())
            except BaseException:
                log.exception("worker %d failed", slot)
            finally:
                logging.shutdown()
                os._exit(code)
        self.pids[pid] = slot

    def run(self) -> int:
        # Fail early, in one place, when an address cannot be bound (in use, not ours).
        for pair in open_sockets(self.built.cfg.dns.listen, reuse_port=True):
            for s in pair:
                s.close()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
                    signal.SIGCHLD):
            signal.signal(sig, lambda s, _f: self._flags.add(s))
        cfg = self.built.cfg
        self.stats = SharedStats.create(slots_for(self.n))
        self._since = seed_counters(cfg.state_dir, self.stats) or self._started
        self.stats.privacy = ClientPrivacy(cfg.state_dir, cfg.log.clients)
        self.stats.category_names = self.built.bundle.catalog.names
        self._observe(time.time())  # retention (and a first report) before anything serves
        self.stats.privacy("0.0.0.0")  # today's client key exists before the workers look for it
        self._share_before_fork()
        for slot in range(self.n):
            self._spawn(slot)
        log.info("supervisor started %d workers", self.n, extra={"pids": sorted(self.pids)})
        self.scheduler = self.assembly.scheduler(self.built.cfg)
        self._write_run_state(self._started)
        # The capture process follows bundle swaps itself.
        self.children = self.assembly.children(self.built, self.stats, [])
        while True:
            time.sleep(_TICK)  # interrupted early by any signal
            flags, self._flags = self._flags, set()
            if flags & {signal.SIGTERM, signal.SIGINT}:
                return self._stop()
            if signal.SIGHUP in flags:
                self._reload()
            if signal.SIGUSR1 in flags:  # the totals of every worker, logged once, here
                log.info("counters", extra={"counters": self.stats.totals(self.built.bundle.catalog.names)})
            if signal.SIGUSR2 in flags and self.scheduler is not None:
                self.scheduler.check_now()
            try:
                if self.scheduler is not None:
                    self.scheduler.poll()
                self._follow_bundle()
            except Exception:  # a bug of ours must not take the workers down with us
                log.exception("update scheduling failed")
            try:
                self._observe(time.time())
            except Exception:
                log.exception("counters report failed")
            self._reap()

    def _observe(self, now: float, final: bool = False) -> None:
        """counters.json every COUNTERS_PERIOD; the query log retention hourly (and at start)."""
        assert self.stats is not None  # mapped by run() before anything reports
        cfg = self.built.cfg
        if final or now >= self._next_report:
            self._next_report = now + COUNTERS_PERIOD
            ups = health_rows(cfg.dns.upstreams, self.stats.upstream_health(), cfg.dns.upstream_timeout)
            write_counters(cfg.state_dir, self.stats, self.built.bundle.catalog.names, self._since,
                           {"workers": self.n, "upstreams": ups})
        if now >= self._next_retention:
            self._next_retention = now + RETENTION_PERIOD
            enforce_retention(cfg.state_dir, cfg.log.retention_days, now)

    def _follow_bundle(self) -> None:
        """Rebuild when bundles/current moved, then tell the workers to swap."""
        found = resolve_bundle(self.built.cfg)
        if found is None or found.path in (self.built.bundle.path, self._refused):
            return
        try:
            built = self.assembly.with_bundle(self.built.cfg, found)
        except SchoolgateError as exc:
            self._refused = found.path
            log.error("new bundle refused, the running one stays: %s", exc, extra={"bundle": str(found.path)})
            return
        self.built, self._refused = built, None
        self._tell(signal.SIGUSR2)
        log_serving(built, "bundle activated; workers swap to it")
        self._write_run_state(utc_text())

    def _write_run_state(self, since: str) -> None:
        try:
            write_run_state(self.built.cfg.state_dir, run_record(self.built, since, self._started, self.n))
        except SchoolgateError as exc:
            log.error("%s", exc)

    def _share_before_fork(self) -> None:
        """Load every kernel here so workers share the code (and skip numba's loader), give
        back the pages only loading needed, and move every object to the GC's permanent
        generation so that collections in the workers do not write to (and so copy) pages
        they share with this process."""
        if self.built.cfg.dns.fast_path:
            warm_up(self.built.matcher, self.built.policies)
        release_file_pages()
        gc.freeze()

    def _reap(self) -> None:
        # Worker by worker, not waitpid(-1): the updater child is the scheduler's to reap.
        for child in self.children:
            child.poll()
        for pid in list(self.pids):
            status = reap(pid)
            if status is None:
                continue
            slot = self.pids.pop(pid)
            log.error("worker %d (pid %d) exited with status %d; restarting", slot, pid,
                      os.waitstatus_to_exitcode(status))
        running = set(self.pids.values())
        for slot in range(self.n):
            if slot not in running and time.monotonic() - self._last_start.get(slot, 0) >= RESTART_DELAY:
                self._spawn(slot)

    def _reload(self) -> None:
        try:
            built = self.assembly.reload()
        except ConfigErrors as exc:
            for e in exc.errors:
                log.error("config refused, keeping the running one: %s", e, extra={"where": str(e.where)})
            return
        except SchoolgateError as exc:
            log.error("config refused, keeping the running one: %s", exc)
            return
        self.built, self._refused = built, None
        if self.scheduler is not None and built.cfg.updates is not None:
            self.scheduler.reconfigure(built.cfg.file, built.cfg.updates)
        else:
            if self.scheduler is not None:
                self.scheduler.stop()
            self.scheduler = self.assembly.scheduler(built.cfg)
        self._write_run_state(utc_text())
        for child in self.children:
            child.reload(built)
        self._tell(signal.SIGHUP)

    def _tell(self, sig: int) -> None:
        for pid in list(self.pids):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def _stop(self) -> int:
        if self.scheduler is not None:
            self.scheduler.stop()
        clear_run_state(self.built.cfg.state_dir, os.getpid())
        for child in self.children:
            child.stop()  # before waitpid(-1) below could reap the capture process
        self._tell(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE
        while self.pids and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                self.pids.pop(pid, None)
            else:
                time.sleep(0.05)
        for pid in list(self.pids):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        try:
            self._observe(time.time(), final=True)  # the workers' last counts
        except Exception:
            log.exception("counters report failed")
        log.info("stopped")
        return 0
