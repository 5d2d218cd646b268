"""The query log: JSON lines under ``<state_dir>/logs/``, one file per (UTC) day.

    STATE/logs/queries-2026-11-24.jsonl    {"ts", "name", "qtype", "client", "policy", "action", "categories", "answer"}
    STATE/logs/keys/client-2026-11-24.key  today's HMAC key for client hashes (0600)

**Who writes.** Every DNS worker appends to the day's file itself: the file is opened with
``O_APPEND`` and each flush is one ``write()`` of whole lines (at most FLUSH_BYTES). On Linux a
write to a regular file holds the inode lock for its whole length and O_APPEND positions it
at the end under that lock, so lines of different workers never interleave; one file per day
is what an admin greps and what retention deletes. (Per-worker files would avoid even that
lock, but a worker flushes at most twice a second, so there is nothing to win.)

**Privacy** (children's data): by default only blocked queries are logged, and the client
address is replaced by HMAC-SHA256(key of the day, address), 16 hex digits. The key is
random, kept in ``logs/keys/`` only for its day and deleted by the retention job after it,
so a hash cannot be joined with another day's, nor reversed by trying every address of the
network once the key is gone. ``clients: none`` writes no client at all, ``ip`` the address.
The same rule filters the client in the appliance's block events (appliance/observe/stats.py).

**Failure policy: logging never stops DNS.** Lines go to a bounded buffer that the serving
process flushes every FLUSH_PERIOD; a write that fails (disk full, file size limit,
read-only or missing directory) drops those lines, counts them (``log_errors``, with the
errno and the time in the shared counters, so ``schoolgate status`` says so), logs once per
RETRY_PERIOD, and the log is retried after RETRY_PERIOD. A burst beyond LINE_RATE lines a
second per process (a flood of blocked names) is counted as ``log_dropped`` instead of
written. SIGXFSZ is ignored by the serving processes, so a file-size limit is an error here
(EFBIG), not the death of the worker.
"""

from __future__ import annotations

import errno
import hmac
import json
import logging
import os
import re
import secrets
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from pathlib import Path

import numpy as np

from appliance.config.log import LogConfig
from appliance.observe.stats import StatsSlot
from filters.errors import BadNameError
from filters.names import wire_to_name

__all__ = ["QueryLog", "ClientPrivacy", "enforce_retention", "log_dir", "log_file", "ignore_file_size_signal",
           "LINE_RATE", "LINE_BURST", "FLUSH_PERIOD", "RETRY_PERIOD", "FLUSH_BYTES", "MAX_BUFFER_LINES",
           "RETENTION_PERIOD"]

log = logging.getLogger("schoolgate.querylog")

LOGS = "logs"
KEYS = "keys"
_FILE = re.compile(r"queries-([0-9]{4}-[0-9]{2}-[0-9]{2})\.jsonl")
_KEY = re.compile(r"client-([0-9]{4}-[0-9]{2}-[0-9]{2})\.key")
# A school of 1,000 devices makes a few hundred queries a second at most; 500 logged lines a
# second per worker (burst 5,000) keeps a page-load burst complete and a flood from turning
# into a disk-filling write load (each line ~200 B: 100 kB/s at the cap).
LINE_RATE, LINE_BURST = 500.0, 5000.0
FLUSH_PERIOD = 0.5  # seconds between flushes: lines reach the disk within a second
FLUSH_BYTES = 64 * 1024  # one write() at most this long (whole lines)
MAX_BUFFER_LINES = 20_000  # past this (flushes failing or slow), new lines are dropped
RETRY_PERIOD = 10.0  # after a failed write, seconds before the log is tried again
RETENTION_PERIOD = 3600.0  # the owner deletes old files this often (and at start)
_TOKEN_HEX = 16  # 64 bits of the HMAC: no collisions among a school's devices
_MEMO_CLIENTS = 4096  # tokens remembered per process (a school's devices), cleared when full
_QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV",
           64: "SVCB", 65: "HTTPS", 255: "ANY"}


def _wire_text(qname: bytes) -> str:
    try:
        return wire_to_name(qname) or "."
    except BadNameError:
        return qname.decode("ascii", "replace")


def log_dir(state_dir: str | Path) -> Path:
    return Path(state_dir) / LOGS


_last_day: tuple[int, str] = (-1, "")
_last_second: tuple[int, str] = (-1, "")


def _day(ts: float) -> str:
    """The UTC date of ``ts`` (remembered: every line asks)."""
    global _last_day
    n = int(ts // 86400)
    if n != _last_day[0]:
        _last_day = (n, datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d"))
    return _last_day[1]


def _stamp(ts: float) -> str:
    """RFC 3339 UTC with milliseconds (the second's text remembered)."""
    global _last_second
    sec = int(ts // 1)
    if sec != _last_second[0]:
        _last_second = (sec, datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_last_second[1]}.{int((ts - sec) * 1000):03d}Z"


def log_file(state_dir: str | Path, ts: float) -> Path:
    """The file a line stamped ``ts`` goes to."""
    return log_dir(state_dir) / f"queries-{_day(ts)}.jsonl"


def ignore_file_size_signal() -> None:
    """A write past RLIMIT_FSIZE then fails with EFBIG instead of killing the process."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


class ClientPrivacy:
    """How a client address is written (log lines and block events): see the module doc.
    Calling it maps an address to what may be stored (None: nothing)."""

    def __init__(self, state_dir: str | Path, mode: str = "hash", clock: Callable[[], float] = time.time) -> None:
        if mode not in ("hash", "none", "ip"):
            raise ValueError(f"unknown client mode {mode!r}")
        self.mode = mode
        self.keys = log_dir(state_dir) / KEYS
        self.clock = clock
        self._key: tuple[str, bytes] | None = None
        self._memo: dict[str, str] = {}  # address -> token, for the key of self._key's day

    def __call__(self, address: str | None) -> str | None:
        if address is None or self.mode == "none":
            return None
        if self.mode == "ip":
            return address
        key = self.key()
        token = self._memo.get(address)
        if token is None:
            if len(self._memo) >= _MEMO_CLIENTS:
                self._memo.clear()
            token = self._memo[address] = hmac.new(key, address.encode(), sha256).hexdigest()[:_TOKEN_HEX]
        return token

    def key(self, day: str | None = None) -> bytes:
        """The day's key: read from keys/, else created there (the first process of the day
        wins: written to a temporary file and linked into place, so every worker reads the
        same key). Where it cannot be stored, a key kept in memory (hashes of different
        workers then differ for that day; never the raw address)."""
        day = day or _day(self.clock())
        if self._key is not None and self._key[0] == day:
            return self._key[1]
        path = self.keys / f"client-{day}.key"
        key = None
        for _ in range(2):
            try:
                key = path.read_bytes()
                if len(key) == 32:
                    break
                key = None
            except OSError:
                pass
            fresh = secrets.token_bytes(32)
            try:
                self.keys.mkdir(parents=True, exist_ok=True)
                tmp = self.keys / f".{day}.{secrets.token_hex(4)}"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                try:
                    os.write(fd, fresh)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                try:
                    os.link(tmp, path)  # fails if another process linked its key first
                except FileExistsError:
                    pass
                finally:
                    os.unlink(tmp)
            except OSError:
                key = fresh
                break
        if key is None:
            key = secrets.token_bytes(32)
        self._key = (day, key)
        self._memo = {}
        return key


class QueryLog:
    """One serving process's writer (see the module doc). ``slot``: where it counts."""

    def __init__(self, state_dir: str | Path, config: LogConfig, privacy: ClientPrivacy, slot: StatsSlot,
                 clock: Callable[[], float] = time.time) -> None:
        self.state_dir = Path(state_dir)
        self.config = config
        self.privacy = privacy
        self.slot = slot
        self.clock = clock
        self._lines: list[tuple[str, bytes]] = []  # (day, line)
        self._tokens = LINE_BURST
        self._last = clock()
        self._retry_at = 0.0
        self._torn = False  # the last write was short: start the next with a newline
        self._fd: tuple[str, int] | None = None  # (day, fd)
        self._last_complaint = -1e9
        # Blocked queries seen by blocked() since the last account(), and the blocked total
        # then: the fast path serves a flood past the budget without showing us its names,
        # and those must still be counted as dropped (account()).
        self._handled = 0
        self._blocked_base: int | None = None

    @property
    def all(self) -> bool:
        """Are allowed queries logged too?"""
        return self.config.queries == "all"

    def wants(self, blocked: bool) -> bool:
        q = self.config.queries
        return q == "all" or (blocked and q == "blocked")

    def _take(self, now: float) -> bool:
        self._tokens = min(LINE_BURST, self._tokens + (now - self._last) * LINE_RATE)
        self._last = now
        if self._tokens < 1 or len(self._lines) >= MAX_BUFFER_LINES:
            self.slot.add("log_dropped")
            return False
        self._tokens -= 1
        return True

    def blocked(self, qname: bytes, qtype: int, client: str | None, mask: int, policy: str,
                category_names: Callable[[int], list[str]], answer: str | None = None) -> None:
        """A blocked DNS query (``qname`` in wire form): a block event for the status page,
        the top-blocked table, and a log line unless ``queries: off``. Within the line
        budget (LINE_RATE): past it, counted as ``log_dropped``."""
        now = self.clock()
        self._handled += 1
        if not self._take(now):
            return
        name = _wire_text(qname)
        self.slot.record_event("dns", name, mask, policy, client, "block")
        if self.config.queries != "off":
            self._queue(now, name, qtype, client, policy, "block", category_names(mask), answer)

    def has_budget(self) -> bool:
        """Could a blocked query be recorded now? (The fast path then serves one batch per
        call, so that every batch's blocked names are read before its buffers are reused;
        in a flood past the budget it serves many, as without a log.)"""
        return self._tokens >= 1 or self._tokens + (self.clock() - self._last) * LINE_RATE >= 1

    def fast_blocked(self, rx: np.ndarray, rxlen: np.ndarray, masks: np.ndarray, n: int,
                     client_of: Callable[[int], str | None], policy_of: Callable[[str | None], str],
                     category_names: Callable[[int], list[str]]) -> None:
        """The blocked answers of one fast-path batch (``masks[i]``: the categories of packet
        i's blocked answer, 0 when it was not blocked)."""
        hits = np.flatnonzero(masks[:n])
        for k, i in enumerate(hits):
            if self._tokens < 1 and not self.has_budget():  # a flood: count the rest at once
                self.slot.add("log_dropped", len(hits) - k)
                self._handled += len(hits) - k
                return
            buf = rx[i, :rxlen[i]].tobytes()
            end = 12
            while end < len(buf) and buf[end] != 0 and end - 12 <= 255:
                end += 1 + buf[end]
            qtype = int.from_bytes(buf[end + 1:end + 3], "big") if end + 3 <= len(buf) else 0
            client = client_of(int(i))
            self.blocked(buf[12:end + 1], qtype, client, int(masks[i]), policy_of(client), category_names)

    def allowed(self, qname: bytes, qtype: int, client: str | None, policy: str, answer: str) -> None:
        """An allowed query (logged with ``queries: all`` only)."""
        if self.all:
            now = self.clock()
            if self._take(now):
                self._queue(now, _wire_text(qname), qtype, client, policy, "allow", None, answer)

    def record(self, name: str, qtype: int, client: str | None, policy: str, action: str,
               categories: list[str] | None = None, answer: str | None = None) -> None:
        """Queue one line (if the mode wants it and the rate allows)."""
        if not self.wants(action == "block"):
            return
        now = self.clock()
        if self._take(now):
            self._queue(now, name, qtype, client, policy, action, categories, answer)

    def _queue(self, now: float, name: str, qtype: int, client: str | None, policy: str, action: str,
               categories: list[str] | None, answer: str | None) -> None:
        rec: dict[str, object] = {"ts": _stamp(now), "name": name, "qtype": _QTYPES.get(qtype, qtype),
                                  "client": self.privacy(client), "policy": policy, "action": action}
        if categories:
            rec["categories"] = categories
        if answer:
            rec["answer"] = answer
        self._lines.append((_day(now), json.dumps(rec, separators=(",", ":")).encode() + b"\n"))

    def account(self, blocked_total: int) -> None:
        """Count as ``log_dropped`` the blocked queries (``blocked_total``: this process's
        blocked count, both paths) that never reached blocked() — the fast path serving a
        flood past the budget several batches per call. Called before each flush."""
        if self._blocked_base is not None:
            missing = blocked_total - self._blocked_base - self._handled
            if missing > 0:
                self.slot.add("log_dropped", missing)
        self._blocked_base = blocked_total
        self._handled = 0

    def pending(self) -> int:
        return len(self._lines)

    def flush(self) -> None:
        """Write what is queued; never raises (see the failure policy)."""
        if not self._lines:
            return
        now = self.clock()
        if now < self._retry_at:
            self._fail(len(self._lines), None, now)
            self._lines.clear()
            return
        lines, self._lines = self._lines, []
        i = 0
        while i < len(lines):
            day = lines[i][0]
            chunk = bytearray(b"\n" if self._torn else b"")
            j = i
            while j < len(lines) and lines[j][0] == day and (j == i or len(chunk) + len(lines[j][1]) <= FLUSH_BYTES):
                chunk += lines[j][1]
                j += 1
            err = self._write(day, bytes(chunk))
            if err is not None:
                self._fail(len(lines) - i, err, now)
                return
            self.slot.add("log_written", j - i)
            i = j

    def _write(self, day: str, data: bytes) -> OSError | None:
        try:
            fd = self._open(day)
            n = os.write(fd, data)
            if n < len(data):  # out of space part-way: the rest is lost, the line torn
                self._torn = True
                raise OSError(errno.ENOSPC, "short write (file system full?)")
            self._torn = False
            return None
        except OSError as exc:
            self.close()
            return exc

    def _open(self, day: str) -> int:
        if self._fd is not None and self._fd[0] == day:
            return self._fd[1]
        self.close()
        d = log_dir(self.state_dir)
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(d / f"queries-{day}.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._fd = (day, fd)
        return fd

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd[1])
            except OSError:
                pass
            self._fd = None

    def _fail(self, lines: int, exc: OSError | None, now: float) -> None:
        self.slot.add("log_errors", lines)
        if exc is None:
            return
        self._retry_at = now + RETRY_PERIOD
        self.slot.set("log_last_errno", exc.errno or 0)
        self.slot.set("log_last_error_ts", int(now))
        if now - self._last_complaint >= RETRY_PERIOD:
            self._last_complaint = now
            log.error("query log: cannot write (%s); %d line(s) dropped, DNS goes on; retrying in %d s",
                      exc.strerror or exc, lines, RETRY_PERIOD)


def enforce_retention(state_dir: str | Path, days: int, now: float | None = None) -> list[Path]:
    """Delete query log files older than ``days`` days (today counts as one) and every
    client key but today's. Returns what was deleted; errors are logged, never raised."""
    now = time.time() if now is None else now
    today = datetime.fromtimestamp(now, UTC).date()
    oldest_kept = (today - timedelta(days=max(days, 1) - 1)).isoformat()
    deleted = []
    d = log_dir(state_dir)
    for folder, pattern, keep_from in ((d, _FILE, oldest_kept), (d / KEYS, _KEY, today.isoformat())):
        try:
            entries = list(folder.iterdir())
        except OSError:
            continue
        for p in entries:
            m = pattern.fullmatch(p.name)
            if m is None and folder.name == KEYS and p.name.startswith("."):
                m = re.match(r"\.([0-9]{4}-[0-9]{2}-[0-9]{2})\.", p.name)  # a crashed writer's temp key
            if m is not None and m.group(1) < keep_from:
                try:
                    p.unlink()
                    deleted.append(p)
                except OSError as exc:
                    log.error("query log retention: cannot delete %s: %s", p, exc.strerror or exc)
    return deleted
