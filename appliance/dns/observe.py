"""A serving process's counters and query log, and the owner's periodic reports.

Kept apart from service.py's serving logic: which slot of the shared counters this process
writes (appliance/observe/stats.py), its query log (appliance/observe/querylog.py), and — in the process
that owns the appliance — counters.json every COUNTERS_PERIOD and the query log's retention
every RETENTION_PERIOD (once before anything serves).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from appliance.dns.pipeline import Counters
from appliance.observe.querylog import (
    RETENTION_PERIOD,
    ClientPrivacy,
    QueryLog,
    enforce_retention,
    ignore_file_size_signal,
)
from appliance.observe.stats import SharedStats, slots_for
from appliance.observe.status import COUNTERS_PERIOD, seed_counters, write_counters

__all__ = ["Observer"]


class Observer:
    """``stats``: the shared counters a supervisor made before forking; None when this
    process is the whole appliance (they are made here). ``owner``: write the reports."""

    def __init__(self, stats: SharedStats | None, worker: int | None, owner: bool, started: str) -> None:
        self.stats = stats
        self.worker = worker
        self.owner = owner
        self.since = started  # counters counted since (carried over a restart)
        self.counters: Counters | None = None
        self.qlog: QueryLog | None = None
        self._next_report = 0.0
        self._next_retention = 0.0

    def setup(self, cfg, category_names: Callable[[int], list[str]]) -> None:
        if self.stats is None:  # no supervisor: this process owns the shared counters
            self.stats = SharedStats.create(slots_for(1))
            if self.owner:
                self.since = seed_counters(cfg.state_dir, self.stats) or self.since
                self._next_retention = time.time() + RETENTION_PERIOD
                enforce_retention(cfg.state_dir, cfg.log.retention_days)  # before anything serves
        privacy = ClientPrivacy(cfg.state_dir, cfg.log.clients)
        self.stats.privacy = privacy
        self.stats.category_names = category_names
        slot = self.stats.slot(self.worker or 0)
        self.counters = Counters(slot)
        self.qlog = QueryLog(cfg.state_dir, cfg.log, privacy, slot)
        self.qlog.account(self.counters.both("blocked"))  # a restarted worker: counted before
        ignore_file_size_signal()

    def reconfigure(self, cfg, category_names: Callable[[int], list[str]]) -> None:
        """A new bundle or config: category names, client privacy mode, log settings."""
        if self.stats is not None:
            self.stats.category_names = category_names
        if self.qlog is not None and self.stats is not None:
            if cfg.log.clients != self.qlog.privacy.mode:
                self.qlog.privacy = self.stats.privacy = ClientPrivacy(cfg.state_dir, cfg.log.clients)
            self.qlog.config = cfg.log

    def tick(self, now: float, state_dir: Path, retention_days: int, category_names: Callable[[int], list[str]],
             extra: Callable[[], dict], final: bool = False) -> None:
        """Every FLUSH_PERIOD: minute history and query log flush; as owner also counters.json
        and the retention job when due. ``extra``: more for counters.json (upstream health)."""
        assert self.counters is not None and self.qlog is not None and self.stats is not None
        self.counters.roll(now)
        self.qlog.account(self.counters.both("blocked"))
        self.qlog.flush()
        if not self.owner:
            return
        if final or now >= self._next_report:
            self._next_report = now + COUNTERS_PERIOD
            write_counters(state_dir, self.stats, category_names, self.since, extra())
        if now >= self._next_retention:
            self._next_retention = now + RETENTION_PERIOD
            enforce_retention(state_dir, retention_days, now)

    def close(self) -> None:
        if self.qlog is not None:
            self.qlog.close()
