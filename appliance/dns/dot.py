"""DNS over TLS to an upstream resolver (RFC 7858), with the standard library's ssl.

One persistent connection per DoT upstream, reused for every query (RFC 7858 §3.4: a TLS
handshake per query would cost more than the query), messages framed with a 2-byte length
(RFC 7766 §8) and pipelined: each query gets a random ID not in flight, a reader task hands
each response to the query waiting for that ID and question (RFC 7766 §6.2.1.1: responses may
come back in any order). Queries are padded to a multiple of 128 bytes (RFC 7830, RFC 8467
§4.1), so their length does not give the name away.

The server is authenticated (RFC 8310 strict profile): the certificate must chain to the
configured CAs (``dns.tls_ca``, else the system's) and carry the configured name — the
``#name`` of ``tls://address:port#name`` — or, without one, the address itself. TLS 1.2 is
the least accepted (RFC 8310 §9 / BCP 195).

The server may close an idle connection at any time (RFC 7766 §6.2.3); a query that finds
its reused connection closed before any answer is retried once on a fresh one. An idle
connection is closed by us after IDLE_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Callable
from pathlib import Path

from filters.dns_response import answers_question

__all__ = ["DotConnection", "tls_context", "pad_query", "IDLE_TIMEOUT", "MAX_IN_FLIGHT", "PAD_BLOCK"]

log = logging.getLogger("schoolgate.dns")

# Unbound closes idle DoT connections after 30 s by default (tcp-idle-timeout); closing ours
# a bit earlier avoids writing into a connection the server is just closing.
IDLE_TIMEOUT = 25.0
# Queries in flight on one connection; past this a query fails over to the next upstream
# (a flood of cache misses must not queue without bound behind one TLS stream).
MAX_IN_FLIGHT = 256
PAD_BLOCK = 128  # RFC 8467 §4.1: queries padded to a multiple of 128 octets
_OPT_CODE_PADDING = 12  # RFC 7830


def tls_context(cafile: str | Path | None = None) -> ssl.SSLContext:
    """Verify the chain and the name; TLS 1.2 or later."""
    ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def pad_query(msg: bytes) -> bytes:
    """``msg`` (ending with our OPT record, RDLEN 0) with an EDNS padding option that makes
    its length a multiple of PAD_BLOCK."""
    if len(msg) < 12 + 11 or msg[-11:-8] != b"\x00\x00\x29" or msg[-2:] != b"\x00\x00":
        return msg  # no OPT of ours at the end: send as it is
    pad = (-(len(msg) + 4)) % PAD_BLOCK
    return msg[:-2] + (4 + pad).to_bytes(2, "big") + _OPT_CODE_PADDING.to_bytes(2, "big") + pad.to_bytes(2, "big") \
        + bytes(pad)


class DotConnection:
    """One TLS connection to ``host:port`` (opened when first needed, reopened after it closed)."""

    def __init__(self, host: str, port: int, server_name: str, context: ssl.SSLContext, *,
                 rng: random.Random | None = None) -> None:
        self.host, self.port = host, port
        self.server_name = server_name or host  # "" -> the certificate must name the address
        self.context = context
        self.rng = rng or random.SystemRandom()
        self.connects = 0  # TLS handshakes done (how well connections are reused)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task | None = None
        self._opening: asyncio.Future | None = None
        self._waiting: dict[int, tuple[asyncio.Future, bytes]] = {}
        self._idle: asyncio.TimerHandle | None = None

    @property
    def open(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def _connect(self, timeout: float) -> None:
        if self.open:
            return
        if self._opening is not None:  # another query is connecting: wait for it
            await asyncio.wait_for(asyncio.shield(self._opening), timeout)
            return
        loop = asyncio.get_running_loop()
        self._opening = loop.create_future()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=self.context, server_hostname=self.server_name,
                                        ssl_handshake_timeout=timeout), timeout)
            self._reader, self._writer = reader, writer
            self.connects += 1
            self._task = loop.create_task(self._read_loop(reader, writer))
            self._opening.set_result(None)
        except BaseException as exc:
            self._opening.set_exception(exc if isinstance(exc, Exception) else ConnectionError("cancelled"))
            self._opening.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            self._opening = None

    async def query(self, build: Callable[[int], bytes], question: bytes, timeout: float) -> bytes | None:
        """Send ``build(qid)`` and return the response for ``question``; None on timeout. Raises
        OSError / ssl.SSLError / ConnectionError when the server cannot be reached or verified."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for attempt in range(2):
            reused = self.open
            await self._connect(max(deadline - loop.time(), 0.001))
            if len(self._waiting) >= MAX_IN_FLIGHT:
                return None
            qid = self.rng.getrandbits(16)
            while qid in self._waiting:
                qid = self.rng.getrandbits(16)
            fut = loop.create_future()
            self._waiting[qid] = (fut, question)
            self._touch()
            try:
                msg = pad_query(build(qid))
                assert self._writer is not None
                self._writer.write(len(msg).to_bytes(2, "big") + msg)
                await self._writer.drain()
                return await asyncio.wait_for(fut, max(deadline - loop.time(), 0.001))
            except (ConnectionError, OSError, asyncio.IncompleteReadError):
                if attempt == 0 and reused and loop.time() < deadline:
                    continue  # the server closed the idle connection under us: once more, fresh
                raise
            finally:
                self._waiting.pop(qid, None)
                self._touch()
        return None

    async def _read_loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        exc: BaseException = ConnectionResetError("DoT connection closed")
        try:
            while True:
                n = int.from_bytes(await reader.readexactly(2), "big")
                data = await reader.readexactly(n)
                if len(data) < 2:
                    continue
                w = self._waiting.get(int.from_bytes(data[:2], "big"))
                if w is not None and not w[0].done() and answers_question(data, int.from_bytes(data[:2], "big"), w[1]):
                    w[0].set_result(data)
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ssl.SSLError) as e:
            exc = e if not isinstance(e, asyncio.IncompleteReadError) else ConnectionResetError("DoT connection closed")
        except asyncio.CancelledError:
            exc = ConnectionResetError("DoT connection closed by us")
        finally:
            if self._writer is writer:
                self._reader = self._writer = None
            writer.close()
            for fut, _q in list(self._waiting.values()):
                if not fut.done():
                    fut.set_exception(ConnectionResetError(str(exc)))

    def _touch(self) -> None:
        """(Re)arm the idle timer: close when nothing was asked for IDLE_TIMEOUT."""
        if self._idle is not None:
            self._idle.cancel()
        self._idle = None
        if not self._waiting:
            self._idle = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self.close)

    def close(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._writer is not None:
            self._writer.close()
            self._reader = self._writer = None
