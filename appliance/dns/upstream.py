"""Forwarding to upstream resolvers: plain DNS over UDP (TCP when the answer is truncated),
or DNS over TLS (appliance/dns/dot.py) for upstreams written ``tls://address[:port][#name]``.

Each query gets a fresh socket, so the kernel picks a random source port (Linux randomises
ephemeral ports), and a random ID from the system CSPRNG: together ~32 bits an off-path
spoofer must guess (RFC 5452 §9.2). The socket is connected, so the kernel drops datagrams
from other addresses; replies that do not match our ID and question are ignored (RFC 5452
§9.1) until the deadline.

Health: an upstream that fails twice in a row is marked down for a back-off that doubles up
to a minute. Only a failure of the upstream counts: any answer is an answer, whatever its
rcode (an upstream's FORMERR, NOTIMP or REFUSED, even without a question section, is passed
on to the client), and a try that gets no answer while the upstream answered other queries
is the question's slowness, not the upstream's — so no query a client chooses can put an
upstream into back-off. Queries try healthy upstreams first, in configured order, at most
MAX_TRIES of them, so a query waits at most MAX_TRIES × timeout. When all are down one is still
tried (that is how recovery is noticed), but only one. Plain and DoT upstreams are one list:
a DoT upstream that fails is skipped like a plain one, in configured order.

Every try is counted in the process's stats slot (appliance/observe/stats.py): per upstream index,
queries, failures and a latency histogram.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from appliance.config.values import UpstreamAddress
from appliance.dns.dot import DotConnection, tls_context
from appliance.dns.pipeline import Forward
from appliance.observe.stats import StatsSlot
from filters.dns_response import answers_question
from filters.dns_wire import make_query

__all__ = ["Upstream", "UpstreamSet", "MAX_TRIES", "upstream_text", "failure_text", "failure_code", "health_rows"]

log = logging.getLogger("schoolgate.dns")

# Upstreams tried per query: two keeps the worst case (2 × timeout) under a stub
# resolver's 5 s patience with the default 1.5 s timeout.
MAX_TRIES = 2
# Mismatched datagrams read per try before giving up on that socket (spoofing attempts).
MAX_STRAY_REPLIES = 16
FAILS_BEFORE_DOWN = 2
BACKOFF_FIRST, BACKOFF_MAX = 2.0, 60.0
_RECV = 65535


# Why a try failed, as a number the shared counters can hold (appliance/observe/stats.py):
# an errno (> 0), or one of these.
WHY_NO_VALID_ANSWER, WHY_TIMEOUT, WHY_CLOSED, WHY_OTHER = -1, -2, -3, -4


def failure_code(exc: BaseException | None) -> int:
    if exc is None:
        return WHY_NO_VALID_ANSWER
    if isinstance(exc, TimeoutError):
        return WHY_TIMEOUT
    if isinstance(exc, asyncio.IncompleteReadError):
        return WHY_CLOSED
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return WHY_OTHER


def failure_text(exc: BaseException | None, timeout: float, code: int | None = None) -> str:
    """Why a try at an upstream failed, in words: ``connection refused``, ``no answer within
    1.5 s`` (from the exception, or from its :func:`failure_code`)."""
    code = failure_code(exc) if code is None else code
    if code == WHY_TIMEOUT:
        return f"no answer within {timeout:g} s"
    if code == WHY_CLOSED:
        return "the connection closed mid-answer"
    if code == WHY_NO_VALID_ANSWER:
        return f"no valid answer within {timeout:g} s"
    if code > 0:
        text = os.strerror(code)
        return text[:1].lower() + text[1:]
    return (str(exc) or type(exc).__name__) if exc is not None else "failed"


def health_rows(addresses: Sequence[UpstreamAddress], health: dict[int, tuple[int, int, int]],
                timeout: float) -> list[dict]:
    """Upstream status records (as :meth:`Upstream.status`) from the shared counters'
    :meth:`~appliance.observe.stats.SharedStats.upstream_health`, for a supervisor whose
    workers hold the upstreams: up unless the latest try failed."""
    out = []
    for i, a in enumerate(addresses):
        ok, fail, why = health.get(i, (0, 0, 0))
        down = fail > ok
        out.append({"address": upstream_text(a), "index": i, "up": not down,
                    "last_error": failure_text(None, timeout, why) if down else None})
    return out


def upstream_text(u: UpstreamAddress | tuple) -> str:
    """An upstream as configured: ``1.2.3.4:53``, ``[::1]:53``, ``tls://1.2.3.4:853#name``."""
    return UpstreamAddress(*u).text


class _RootProbe:
    """What the forwarding code needs of a Forward, for ``. IN NS`` (every resolver answers it)."""

    question = b"\x00\x00\x02\x00\x01"

    def upstream_query(self, qid: int) -> bytes:
        return make_query(qid, b"\x00", 2)


@dataclass
class Upstream:
    host: str
    port: int
    tls_name: str | None = None  # None: plain DNS; else DoT, the name to verify ("" = the address)
    index: int = 0  # position in the config (the stats' upstream row)
    fails: int = 0
    down_until: float = 0.0
    rtt: float = 0.0  # smoothed round-trip time, seconds
    queries: int = 0
    errors: int = 0
    last_error: str | None = None  # why the last failed try failed, in words (None: it answered)
    last_answer: float = -1.0  # clock of its last answer to a forwarded query (resolve)
    dot: DotConnection | None = field(default=None, repr=False)

    @property
    def key(self) -> UpstreamAddress:
        return UpstreamAddress(self.host, self.port, self.tls_name)

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    def status(self, now: float) -> dict:
        return {"address": upstream_text(self.key), "index": self.index, "up": self.down_until <= now,
                "rtt_ms": round(self.rtt * 1000, 2), "queries": self.queries, "errors": self.errors,
                "last_error": self.last_error}

    def failed(self, clock: float, why: str) -> None:
        """One failed try: counted, and twice in a row marks it down for a back-off."""
        self.errors += 1
        self.fails += 1
        self.last_error = why
        if self.fails >= FAILS_BEFORE_DOWN:
            self.down_until = clock + min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (self.fails - FAILS_BEFORE_DOWN))

    def answered(self, rtt: float) -> None:
        self.fails, self.down_until, self.last_error = 0, 0.0, None
        self.rtt = rtt if not self.rtt else 0.8 * self.rtt + 0.2 * rtt


class UpstreamSet:
    def __init__(self, addresses: Sequence[UpstreamAddress | tuple], timeout: float, *,
                 tls_ca: str | Path | None = None, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self.rng = rng or random.SystemRandom()
        self.clock = clock
        self.slot: StatsSlot | None = None  # where tries are counted (None: nowhere)
        self.tls_ca = tls_ca
        self._ssl: ssl.SSLContext | None = None
        self.upstreams: list[Upstream] = []
        self.update(addresses, timeout, tls_ca=tls_ca)

    def update(self, addresses: Sequence[UpstreamAddress | tuple], timeout: float, *,
               tls_ca: str | Path | None = None) -> None:
        """New addresses from a reloaded config; health (and DoT connections) of the ones
        kept is kept."""
        if tls_ca != self.tls_ca:
            self._ssl = None
            for u in self.upstreams:
                if u.dot is not None:
                    u.dot.close()
                    u.dot = None
        self.tls_ca = tls_ca
        old = {u.key: u for u in self.upstreams}
        new = []
        for i, given in enumerate(addresses):
            a = UpstreamAddress(*given)  # (host, port) or (host, port, tls name) from tests too
            kept = old.pop(a, None)
            u = kept if kept is not None else Upstream(a.host, a.port, a.tls_name)
            u.index = i
            new.append(u)
        for u in old.values():
            if u.dot is not None:
                u.dot.close()
        self.upstreams = new
        self.timeout = timeout

    def close(self) -> None:
        """Close DoT connections (at stop)."""
        for u in self.upstreams:
            if u.dot is not None:
                u.dot.close()

    def _order(self) -> list[Upstream]:
        now = self.clock()
        up = [u for u in self.upstreams if u.down_until <= now]
        if up:
            return up[:MAX_TRIES]
        return sorted(self.upstreams, key=lambda u: u.down_until)[:1]

    async def resolve(self, fwd: Forward) -> bytes | None:
        """A validated response to ``fwd``'s question, or None when every try failed."""
        for u in self._order():
            u.queries += 1
            t0 = self.clock()
            failure: BaseException | None = None
            try:
                resp = await (self._udp(u, fwd) if u.tls_name is None else self._dot(u, fwd))
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                resp = None  # ssl.SSLError (a certificate that does not verify) is an OSError
                failure = exc
            if resp is not None:
                # Any answer is one, whatever its rcode: an upstream's FORMERR, NOTIMP or
                # REFUSED is its verdict on a query a client chose, passed on to the client.
                dt = self.clock() - t0
                u.answered(dt)
                u.last_answer = self.clock()
                if self.slot is not None:
                    self.slot.upstream_result(u.index, dt)
                return resp
            if self.slot is not None:
                self.slot.upstream_result(u.index, None, failure_code(failure))
            if (failure is None or isinstance(failure, TimeoutError)) and u.last_answer > t0:
                # No answer to this question, but it answered others meanwhile: the question
                # is slow (say a name whose servers a client picked for not answering), not
                # the upstream; the next upstream gets its try, this one's health is kept.
                continue
            why = failure_text(failure, self.timeout)
            was_up = u.down_until <= self.clock()
            u.failed(self.clock(), why)
            if was_up and u.down_until > self.clock():
                log.warning("upstream %s is not answering (%s): skipped for %.0f s; allowed names get "
                            "SERVFAIL while no upstream answers", upstream_text(u.key), why,
                            u.down_until - self.clock(), extra={"upstream": upstream_text(u.key)})
        return None

    async def probe(self) -> list[tuple[str, str | None]]:
        """Ask every upstream for the root's NS records once, all at once (at start): those
        that do not answer are marked down at once, so that the first clients' queries go to
        one that does. (upstream address, None or why it failed) in configured order."""
        async def one(u: Upstream) -> tuple[str, str | None]:
            t0 = self.clock()
            failure: BaseException | None = None
            u.queries += 1
            try:
                probe = _RootProbe()
                resp = await (self._udp(u, probe) if u.tls_name is None else self._dot(u, probe))
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                resp, failure = None, exc
            if resp is not None:
                u.answered(self.clock() - t0)
                if self.slot is not None:
                    self.slot.upstream_result(u.index, self.clock() - t0)
                return upstream_text(u.key), None
            if self.slot is not None:
                self.slot.upstream_result(u.index, None, failure_code(failure))
            why = failure_text(failure, self.timeout)
            u.fails = max(u.fails, FAILS_BEFORE_DOWN - 1)
            u.failed(self.clock(), why)
            return upstream_text(u.key), why

        return list(await asyncio.gather(*(one(u) for u in self.upstreams)))

    async def _dot(self, u: Upstream, fwd: Forward | _RootProbe) -> bytes | None:
        if u.dot is None:
            if self._ssl is None:
                self._ssl = tls_context(self.tls_ca)
            u.dot = DotConnection(u.host, u.port, u.tls_name or "", self._ssl, rng=self.rng)
        return await u.dot.query(fwd.upstream_query, fwd.question, self.timeout)

    async def _udp(self, u: Upstream, fwd: Forward | _RootProbe) -> bytes | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        qid = self.rng.getrandbits(16)
        sock = socket.socket(u.family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect((u.host, u.port))
            sock.send(fwd.upstream_query(qid))
            for _ in range(MAX_STRAY_REPLIES):
                left = deadline - loop.time()
                if left <= 0:
                    return None
                data = await asyncio.wait_for(loop.sock_recv(sock, _RECV), left)
                if answers_question(data, qid, fwd.question):
                    if data[2] & 0x02:  # TC: the answer did not fit; ask again over TCP
                        return await self._tcp(u, fwd, deadline)
                    return data
            return None
        finally:
            sock.close()

    async def _tcp(self, u: Upstream, fwd: Forward | _RootProbe, deadline: float) -> bytes | None:
        loop = asyncio.get_running_loop()
        qid = self.rng.getrandbits(16)
        msg = fwd.upstream_query(qid)

        async def exchange() -> bytes:
            reader, writer = await asyncio.open_connection(u.host, u.port)
            try:
                writer.write(len(msg).to_bytes(2, "big") + msg)
                await writer.drain()
                n = int.from_bytes(await reader.readexactly(2), "big")
                return await reader.readexactly(n)
            finally:
                writer.close()

        data = await asyncio.wait_for(exchange(), max(deadline - loop.time(), 0.001))
        return data if answers_question(data, qid, fwd.question) else None
