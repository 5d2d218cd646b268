"""The web listeners: asyncio, one request per connection, every wait bounded.

Why our own loop on asyncio rather than the stdlib ``http.server``: http.server reads the
body with no size cap of its own, has no deadline for a whole request (a socket timeout per
``recv`` lets a slowloris client trickle a byte every few seconds for ever), answers with a
thread per connection (ThreadingHTTPServer) and accepts HTTP/0.9-style and folded requests —
all of which we would have to patch around. Here the bytes go to ``web/http.py``'s
RequestParser (h11 underneath: the grammar is h11's, the caps and the subset we serve are
ours), and this module owns the I/O and every deadline and count, none of which h11 has:

- the head and the body must both arrive within REQUEST_TIMEOUT of the connection being
  accepted (one deadline for the whole request, not one per read: 408 after it);
- the answer must be written within WRITE_TIMEOUT, else the connection is aborted;
- at most MAX_CONNECTIONS connections are served at once (MAX_PER_CLIENT per address) and
  extra ones are closed at accept;
- a refused request (4xx/5xx before the request was read to its end) is answered, the
  sending side shut down and what the client still sends read and dropped for at most
  LINGER_TIMEOUT / LINGER_BYTES before closing: closing with unread bytes would send a RST,
  which can destroy the answer in the client's receive buffer before it is read.

One request per connection, every answer ``Connection: close``. One process, one event loop:
the web page needs no threads (scrypt runs in a worker thread, see app.py).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

from appliance.web.http import MAX_BODY, MAX_HEAD, HttpError, Request, RequestParser, Response

__all__ = ["WebServer", "security_headers", "REQUEST_TIMEOUT", "WRITE_TIMEOUT", "MAX_CONNECTIONS",
           "MAX_PER_CLIENT", "LINGER_TIMEOUT", "LINGER_BYTES", "CSP"]

log = logging.getLogger("schoolgate.web")

# A phone on a poor school Wi-Fi sends a small request in well under a second; 10 s bounds
# how long a slowloris connection can hold one of the MAX_CONNECTIONS slots.
REQUEST_TIMEOUT = 10.0
WRITE_TIMEOUT = 10.0
# After a refusal: long enough for the client to read the answer and close, short enough
# that a refused connection frees its slot quickly; the bytes bound what we read to drop.
LINGER_TIMEOUT = 2.0
LINGER_BYTES = 4 * MAX_BODY
READ_SIZE = 8192
# A status page has a handful of viewers; the block page gets one request per blocked page
# load from each client — 256 parallel is far above a school's burst and bounds memory.
MAX_CONNECTIONS = 256
MAX_PER_CLIENT = 32
# No script at all; styles only from our own /style.css; images only inline SVG (data:).
CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")

Handler = Callable[[Request], Awaitable[Response]]


def security_headers() -> list[tuple[str, str]]:
    return [("Content-Security-Policy", CSP), ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"), ("X-Frame-Options", "DENY"),
            ("Cache-Control", "no-store"), ("Cross-Origin-Opener-Policy", "same-origin")]


def _error_page(e: HttpError) -> Response:
    return Response(e.status, f"{e.status} {e.message}\n".encode(), "text/plain; charset=utf-8")


class WebServer:
    """Serve ``handler`` on a bound listening socket."""

    def __init__(self, handler: Handler, *, request_timeout: float = REQUEST_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS, max_per_client: int = MAX_PER_CLIENT) -> None:
        self.handler = handler
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.active = 0
        self.per_client: dict[str, int] = {}
        self.refused = 0
        self.timeouts = 0
        self._servers: list[asyncio.base_events.Server] = []

    async def start(self, sock: socket.socket) -> None:
        self._servers.append(await asyncio.start_server(self._client, sock=sock, limit=MAX_HEAD + 4))

    async def stop(self) -> None:
        for s in self._servers:
            s.close()
        for s in self._servers:
            await s.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        addr = peer[0] if peer else ""
        if self.active >= self.max_connections or self.per_client.get(addr, 0) >= self.max_per_client:
            self.refused += 1
            writer.transport.abort()
            return
        self.active += 1
        self.per_client[addr] = self.per_client.get(addr, 0) + 1
        try:
            resp, head_only, whole = await self._answer(reader, addr)
            if resp is not None:
                writer.write(resp.encode(head_only, security_headers()))
                try:
                    await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
                except TimeoutError:
                    writer.transport.abort()  # a client that does not read: drop the unsent rest
                    return
                if not whole:
                    await self._linger(reader, writer)
        except (TimeoutError, ConnectionError, OSError):
            pass
        finally:
            self.active -= 1
            n = self.per_client.get(addr, 1) - 1
            if n:
                self.per_client[addr] = n
            else:
                self.per_client.pop(addr, None)
            writer.close()

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Shut our side down, then read and drop what the client still sends, bounded."""
        if not writer.can_write_eof():
            return
        writer.write_eof()
        loop = asyncio.get_running_loop()
        end = loop.time() + LINGER_TIMEOUT
        budget = LINGER_BYTES
        while budget > 0 and (left := end - loop.time()) > 0:
            data = await asyncio.wait_for(reader.read(READ_SIZE), left)
            if not data:
                return
            budget -= len(data)

    async def _answer(self, reader: asyncio.StreamReader, addr: str) -> tuple[Response | None, bool, bool]:
        """(answer or None for no answer, HEAD, whether the request was read to its end)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout
        parser = RequestParser()
        try:
            req = None
            while req is None:
                left = deadline - loop.time()
                if left <= 0:
                    raise TimeoutError
                data = await asyncio.wait_for(reader.read(READ_SIZE), left)
                if not data:
                    return None, False, False  # closed before a whole request: nothing to answer
                req = parser.feed(data)
            req.client = addr
        except HttpError as e:
            return _error_page(e), False, False
        except TimeoutError:
            self.timeouts += 1
            return _error_page(HttpError(408, "request not received in time")), False, False
        except (ConnectionError, OSError):
            raise
        except Exception:  # a parser bug of ours: log it, refuse the request, keep serving
            log.exception("web request parsing failed", extra={"client": addr})
            return _error_page(HttpError(400, "malformed request")), False, False
        try:
            resp = await self.handler(req)
        except HttpError as e:
            resp = _error_page(e)
        except Exception:  # a bug of ours: log it, answer 500, keep serving
            log.exception("web handler failed", extra={"path": req.path})
            resp = _error_page(HttpError(500, "internal error"))
        return resp, req.method == "HEAD", True
