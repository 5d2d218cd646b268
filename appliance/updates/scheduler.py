"""The update scheduler inside ``schoolgate run``: when to check, and the updater process.

It lives in the process that supervises — the supervisor with ``dns.workers`` > 1, else
the one serving process — never in every worker: N workers polling would multiply the load
on the repository and queue on ``update.lock``.

Each check is ``schoolgate update --once --config FILE`` as a child process (the command an
admin runs, and the one the power-loss test kills), so a crash, a memory spike or a hang of
the updater never touches DNS serving; the child has its own deadline (``updates.timeout``)
and is reaped without blocking. Activation needs no message to the serving processes: the
updater switches ``bundles/current`` and each of them notices the pointer change between
queries and swaps (appliance/dns/service.py).

When (:func:`start_delay`, :func:`delay_after_run`; pure, clock passed in): after a run, the
``next_check`` the updater recorded (interval ± 10 % jitter, JITTER in appliance/updates/state.py), read
back from update-state.json and clamped to [0, interval × (1 + JITTER)] so that a clock jump
(a Pi without a real-time clock setting the time from NTP after boot) neither stalls checks
nor makes them hot. At start: at once when no signed bundle is active yet (the demo serves
until then); else the recorded ``next_check``; else a random point in the first
JITTER × interval, so that a fleet powered on together does not poll together.
"""

from __future__ import annotations

import logging
import random
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from appliance.config.load import UpdatesConfig
from appliance.updates.state import JITTER, STATE_FILE, read_update_state

__all__ = ["UpdateScheduler", "start_delay", "delay_after_run", "updater_argv"]

log = logging.getLogger("schoolgate")

# Seconds an updater child gets to exit after SIGTERM when the appliance stops; it is safe
# to kill at any point (the next run cleans up), so this only spares a finished download.
_STOP_GRACE = 2.0


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _recorded_delay(record: dict, now: datetime, interval: float) -> float | None:
    nxt = record.get("next_check")
    if not isinstance(nxt, str):
        return None
    try:
        due = datetime.fromisoformat(nxt)
    except ValueError:
        return None
    if due.tzinfo is None:
        return None
    return min(max(0.0, (due - now).total_seconds()), interval * (1 + JITTER))


def start_delay(record: dict, now: datetime, interval: float, *, have_signed_bundle: bool,
                rand: Callable[[], float] = random.random) -> float:
    """Seconds from start to the first check (see the module doc)."""
    if not have_signed_bundle:
        return 0.0
    recorded = _recorded_delay(record, now, interval)
    return recorded if recorded is not None else rand() * JITTER * interval


def delay_after_run(record: dict, recorded_now: bool, now: datetime, interval: float,
                    rand: Callable[[], float] = random.random) -> float:
    """Seconds from the end of a check to the next one. ``recorded_now``: the run wrote
    ``record``; when it recorded nothing (it could not start: a config error, the lock held
    by a manual run), the next check is one jittered interval away."""
    if recorded_now:
        recorded = _recorded_delay(record, now, interval)
        if recorded is not None:
            return recorded
    return interval * (1 + JITTER * (2 * rand() - 1))


def updater_argv(config_file: str) -> list[str]:
    return [sys.executable, "-m", "appliance.cli", "update", "--once", "--config", config_file]


class _Child(Protocol):
    pid: int

    def poll(self) -> int | None: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...
    def wait(self, timeout: float | None = None) -> int: ...


def _spawn(argv: list[str]) -> _Child:
    # close_fds (the default): the child holds none of our listening sockets, so it never
    # keeps a DNS port bound after the appliance has stopped.
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


class UpdateScheduler:
    """Call :meth:`poll` every fraction of a second; it starts a check when one is due and
    reaps (and logs) the one that finished. Never blocks."""

    def __init__(self, config_file: str, state_dir: Path, updates: UpdatesConfig, *,
                 have_signed_bundle: bool, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime] = _utcnow, rand: Callable[[], float] = random.random,
                 spawn: Callable[[list[str]], _Child] = _spawn) -> None:
        self.config_file = config_file
        self.state_dir = state_dir
        self.updates = updates
        self.clock, self.wall, self.rand, self.spawn = clock, wall, rand, spawn
        self.child: _Child | None = None
        self.checks = 0  # checks started (for tests and the status page)
        self._stamp: tuple[int, int] | None = None  # update-state.json before the running check
        self._again = False  # "check now" arrived while a check ran: run another when it ends
        delay = start_delay(read_update_state(state_dir), wall(), updates.interval,
                            have_signed_bundle=have_signed_bundle, rand=rand)
        self.due = clock() + delay
        log.info("update checks scheduled", extra={"repository": updates.repository,
                                                    "interval_s": updates.interval,
                                                    "first_check_in_s": round(delay, 1)})

    def reconfigure(self, config_file: str, updates: UpdatesConfig) -> None:
        """A reloaded config: the next check keeps its time unless the interval shrank."""
        self.config_file = config_file
        if updates.interval < self.updates.interval:
            self.due = min(self.due, self.clock() + updates.interval)
        self.updates = updates

    def check_now(self) -> None:
        # During a check, the request must outlive it: the check's end sets the next due time.
        if self.child is not None:
            self._again = True
        self.due = self.clock()

    def poll(self) -> None:
        if self.child is not None:
            code = self.child.poll()
            if code is None:
                return
            self.child = None
            self._finished(code)
        if self.clock() >= self.due:
            self._stamp = self._state_stamp()
            try:
                self.child = self.spawn(updater_argv(self.config_file))
            except OSError as exc:
                log.error("cannot start the updater: %s", exc)
                self.due = self.clock() + self.updates.interval
                return
            self.checks += 1
            self.due = float("inf")  # set again when this check finishes

    def _state_stamp(self) -> tuple[int, int] | None:
        """Identity of update-state.json (each write replaces it: a new inode)."""
        try:
            st = (self.state_dir / STATE_FILE).stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns

    def _finished(self, code: int) -> None:
        record = read_update_state(self.state_dir)
        recorded = self._state_stamp() not in (None, self._stamp)
        delay = delay_after_run(record, recorded, self.wall(), self.updates.interval, self.rand)
        self.due = self.clock() + delay
        if self._again:  # the repository may have changed since this check started
            self._again, self.due = False, self.clock()
        extra: dict[str, object] = {"exit_status": code, "next_check_in_s": round(delay, 1)}
        if not recorded:
            log.error("update check did not run (exit status %d): try `schoolgate update --once "
                      "--config %s`", code, self.config_file, extra=extra)
            return
        extra.update({k: record.get(k) for k in ("last_result", "active_version", "offered_version",
                                                 "bytes_downloaded")})
        if record.get("last_result") in ("updated", "up-to-date"):
            log.info("update check: %s (bundle version %s)", record["last_result"],
                     record.get("active_version"), extra=extra)
        else:
            log.error("update check %s: %s", record.get("last_result"), record.get("last_error"),
                      extra=extra)

    def stop(self) -> None:
        """End a running check (safe at any point: the next run cleans up after it)."""
        child, self.child = self.child, None
        if child is None or child.poll() is not None:
            return
        child.terminate()
        try:
            child.wait(_STOP_GRACE)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
