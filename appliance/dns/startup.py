"""Start-up: "ready" means answering, and the fast path's kernels compile in the background.

:func:`first_answer` sends the service's own first query — Firefox's canary name, which
every policy answers locally (NXDOMAIN), so no upstream is involved — to its first listen
address and waits for the answer; only then is "ready" logged (it counts as one query).

:func:`warm_plain` first compiles (or loads) the few kernels the plain loop calls per query
(the matcher, the cache, the rate limiter: seconds on a cold cache), so that no client
query waits on a compile; then :class:`BackgroundWarmUp` compiles the fast path's kernels in
a forked child while the plain loop already answers.

numba compiles the batch kernels on the first start after an install or an upgrade (~25 s
on a 2-core board; later starts load them from its on-disk cache in well under a second).
Blocking the start on that would leave a school without DNS for as long, so a serving
process that has not loaded them (a single-process appliance; a supervisor loads them
before forking its workers) forks a child that only runs
:func:`appliance.dns.fastpath.warm_up` — compiling into the cache — and exits. The parent
serves through the plain loop meanwhile (the same answers, more CPU per query); when the
child is done it loads the kernels from the cache itself (milliseconds) and switches to the
fast path. A child that fails leaves the parent on the plain loop, logged, never down.

Progress is logged: once when compiling has visibly started, then every PROGRESS_EVERY.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable

from appliance.child import die_with_parent, reap, signal_child
from appliance.dns.cache import ArrayCache, WireCache
from appliance.dns.pipeline import Forward, Pipeline
from appliance.dns.ratelimit import ArrayRateLimiter, RateLimiter
from filters.dns_wire import make_query
from filters.names import name_to_wire

__all__ = ["BackgroundWarmUp", "PROGRESS_AFTER", "PROGRESS_EVERY", "first_answer", "warm_plain", "READY_PROBE"]

log = logging.getLogger("schoolgate.dns")

# A warm start loads the cached kernels in under a second: say nothing unless it takes longer.
PROGRESS_AFTER = 2.0
PROGRESS_EVERY = 10.0
# The name of the readiness query (filters/policy.py answers it NXDOMAIN under every policy).
READY_PROBE = "use-application-dns.net"
# Seconds between readiness queries, and how long to keep asking: the first query on a cold
# start may wait for the plain path's own kernels to compile (seconds, under load more).
_PROBE_EVERY, _PROBE_FOR = 1.0, 300.0
# Exit statuses of the child: loaded everything from numba's cache / had to compile.
_LOADED, _COMPILED = 0, 3


class BackgroundWarmUp:
    """One forked child running ``warm`` (which returns True when it compiled anything)."""

    def __init__(self, warm: Callable[[], bool], clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started = clock()
        self._next_progress = self.started + PROGRESS_AFTER
        self.compiled: bool | None = None
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: compile, exit; never return into the parent's loop
            code = 1
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                if die_with_parent(parent):
                    code = _COMPILED if warm() else _LOADED
            except BaseException:
                log.exception("compiling the DNS kernels failed")
            finally:
                os._exit(code)
        self.pid: int | None = pid

    def poll(self) -> bool | None:
        """None while the child runs; then True (the kernels are in the cache) or False."""
        if self.pid is None:
            return self.compiled is not None
        status = reap(self.pid)
        if status is None:
            now = self.clock()
            if now >= self._next_progress:
                self._next_progress = now + PROGRESS_EVERY
                log.info("compiling the DNS fast path's kernels (first start after an install or "
                         "upgrade; cached for later starts): %.0f s so far, the plain loop answers "
                         "meanwhile", now - self.started)
            return None
        self.pid = None
        code = os.waitstatus_to_exitcode(status)
        if code in (_LOADED, _COMPILED):
            self.compiled = code == _COMPILED
            return True
        log.error("compiling the DNS kernels failed (exit status %d): serving through the plain "
                  "loop (same answers, more CPU per query)", code)
        return False

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    def stop(self) -> None:
        if self.pid is not None:
            signal_child(self.pid, signal.SIGKILL)
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self.pid = None


def warm_plain(pipeline: Pipeline) -> None:
    """Compile (or load) the kernels the plain loop calls per query — the matcher, the
    cache, the rate limiter — by answering a blocked, a forwarded and a cached query through
    a throwaway pipeline of the same types (its own counters, cache and limiter: nothing is
    counted or logged). Before the first client query, so that none waits on a compile."""
    limiter = pipeline.limiter
    p = Pipeline(pipeline.matcher, pipeline.policies,
                 ArrayCache(4, 1, seed=0) if isinstance(pipeline.cache, ArrayCache) else WireCache(4, 1),
                 limiter=(ArrayRateLimiter(1e6, 1e6) if isinstance(limiter, ArrayRateLimiter)
                          else RateLimiter(1e6, 1e6) if limiter is not None else None))
    for name in (READY_PROBE, "warm-up.schoolgate.invalid"):
        query = make_query(1, name_to_wire(name), 1)
        res = p.handle(query, "127.0.0.1", True)
        if isinstance(res, Forward):  # as if the upstream answered: cached, then a hit
            p.finish(res, _answer_a(res.upstream_query(2), res.question))
            if not isinstance(p.handle(query, "127.0.0.1", True), bytes):  # a bug of ours: say so
                log.warning("warm-up: a forwarded answer was not served from the cache")


def _answer_a(query: bytes, question: bytes) -> bytes:
    """A response to our one-question ``query``: one A record (192.0.2.1, TTL 60)."""
    return (query[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + question
            + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc0\x00\x02\x01")


async def first_answer(listen: tuple[str, int], clock: Callable[[], float] = time.monotonic) -> float | None:
    """Seconds until the service at ``listen`` answered its own query over UDP (None if it
    did not within _PROBE_FOR: logged by the caller, serving goes on)."""
    host, port = listen
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    loop = asyncio.get_running_loop()
    qid = secrets.randbits(16)
    query = make_query(qid, name_to_wire(READY_PROBE), 1)
    t0 = clock()
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect((host, port))
        for _ in range(int(_PROBE_FOR / _PROBE_EVERY)):
            try:
                sock.send(query)
                data = await asyncio.wait_for(loop.sock_recv(sock, 4096), _PROBE_EVERY)
            except TimeoutError:
                continue
            except OSError:  # e.g. ICMP port unreachable from an earlier try: ask again
                await asyncio.sleep(_PROBE_EVERY)
                continue
            if len(data) >= 2 and int.from_bytes(data[:2], "big") == qid:
                return clock() - t0
    return None
