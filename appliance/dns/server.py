"""UDP and TCP listeners on an asyncio loop, both driving the same Pipeline.

UDP: the loop watches each socket with ``add_reader``. With the fast path (the default:
appliance/dns/fastpath.py) the callback hands the socket to one jitted call that receives,
answers and sends whole batches, and only the packets it leaves over come through the
pipeline here. Without it, the callback drains up to UDP_BATCH datagrams per wake-up with
plain ``recvfrom``/``sendto``; measured on this 2-core machine with dnsperf against blocked
names, that beats a DatagramProtocol, whose per-datagram callback and transport bookkeeping
cost more than the answer itself. See docs/dns.md, "Measured" for the figures.

TCP (RFC 7766): 2-byte length framing; queries on one connection are read and answered as
they come (pipelining) — forwarded ones complete out of order, which §6.2.1.1 allows; a
connection idle for ``idle_timeout`` is closed (§6.2.3). Connections are shared fairly
(§6.2.3 lets a server close idle ones to make room): one client (an address, a /64 for
IPv6: :func:`tcp_client_key`) holds at most ``per_client`` — a new one past that closes
that client's idlest — and at ``max_connections`` a new connection closes the idlest of
all, so a client holding idle connections cannot shut the others out. Only a connection
with nothing waiting upstream is closed so; when every one is busy the new one is closed
at once. Every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import cast

from appliance.dns.fastpath import FastPath, warm_up, warmed
from appliance.dns.fastpath import usable as fast_usable
from appliance.dns.pipeline import Forward, Pipeline
from appliance.dns.startup import PROGRESS_AFTER, BackgroundWarmUp, warm_plain
from appliance.dns.upstream import UpstreamSet
from appliance.memory import release_file_pages
from appliance.observe.holders import listen_error
from filters.dns_answer import error_response
from filters.dns_response import RCODE_SERVFAIL

__all__ = ["DnsServer", "open_sockets", "tcp_client_key", "UDP_BATCH", "MAX_PENDING_FORWARDS"]

log = logging.getLogger("schoolgate.dns")

# Datagrams handled per wake-up before yielding to the loop (TCP, timers, upstream replies).
UDP_BATCH = 64
# A UDP query is under 512 bytes in practice (a name, a type, an OPT with a cookie); a
# datagram longer than this is cut, fails to parse and gets FORMERR.
UDP_RECV_SIZE = 4096
# Forwarded queries in flight at once; past this new ones get SERVFAIL at once, so a flood
# of random names cannot pile up tasks and sockets (each in-flight query holds a socket).
MAX_PENDING_FORWARDS = 2048
# Queries read on one TCP connection before it is closed (clients reconnect).
MAX_TCP_QUERIES = 10_000
# Seconds between looks at the kernel compiler child at start.
_WARM_POLL = 0.2
# Answers buffered for a slow TCP reader before we wait for it to drain.
_TCP_HIGH_WATER = 64 * 1024


def tcp_client_key(address: str) -> str:
    """Whose connection this is, for the per-client TCP cap: the IPv4 address (IPv4-mapped
    IPv6 too), or the /64 of an IPv6 address (one host picks addresses in its /64 at will,
    RFC 4941); scope suffixes (``%eth0``) ignored. Anything else: the text itself."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


class _TcpConnection:
    """One TCP client connection, as the fairness rules see it."""

    __slots__ = ("writer", "client", "last", "pending")

    def __init__(self, writer: asyncio.StreamWriter, client: str, now: float) -> None:
        self.writer = writer
        self.client = client
        self.last = now  # when a query was last read or an answer written
        self.pending: set[asyncio.Task] = set()  # its forwarded queries still upstream


def open_sockets(listen: tuple[tuple[str, int], ...],
                 reuse_port: bool = False) -> list[tuple[socket.socket, socket.socket]]:
    """Bind (udp, tcp) socket pairs for every listen address. IPv6 sockets are v6-only so
    that ``[::]:53`` and ``0.0.0.0:53`` can be listed together."""
    out = []
    try:
        for host, port in listen:
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            pair = []
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                s = socket.socket(fam, kind)
                pair.append(s)
                if fam == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if kind == socket.SOCK_STREAM:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                s.setblocking(False)
                s.bind((host, port))
                if kind == socket.SOCK_STREAM:
                    s.listen(128)
            out.append((pair[0], pair[1]))
    except OSError as exc:
        for made in out:
            for s in made:
                s.close()
        raise listen_error(exc, host, port, kind) from exc  # which address, and who holds it
    return out


class DnsServer:
    """Serves ``pipeline`` (replaceable at any time: reloads swap it) on bound sockets."""

    def __init__(self, pipeline: Pipeline, upstreams: UpstreamSet, *, idle_timeout: float = 10.0,
                 max_connections: int = 256, per_client: int = 16, fast_path: bool = False) -> None:
        self.pipeline = pipeline
        # UDP through the batched jitted path (appliance/dns/fastpath.py) when the pipeline
        # allows it; the plain loop below otherwise.
        self.fast: FastPath | None = FastPath() if fast_path else None
        # Until its kernels are loaded (appliance/dns/startup.py), the plain loop answers.
        self.fast_ready = False
        self._warming: BackgroundWarmUp | None = None
        self._warm_check: asyncio.TimerHandle | None = None
        self.upstreams = upstreams
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.per_client = per_client
        self.tcp_connections = 0
        self.tcp_refused = 0  # new connections closed at once (every open one busy)
        self.tcp_evicted = 0  # idle connections closed to make room for a new one
        self._tcp: dict[str, dict[_TcpConnection, None]] = {}  # client key -> its connections
        self.send_errors = 0
        self._tasks: set[asyncio.Task] = set()
        self._inflight: dict[bytes, asyncio.Future] = {}
        self._servers: list[asyncio.base_events.Server] = []
        self._udp: list[socket.socket] = []

    async def start(self, sockets: list[tuple[socket.socket, socket.socket]]) -> None:
        loop = asyncio.get_running_loop()
        p = self.pipeline
        if not warmed():  # not loaded before this worker was forked (appliance/dns/workers.py)
            t0 = time.monotonic()
            warm_plain(p)  # the kernels the plain loop calls: no client query waits on a compile
            if time.monotonic() - t0 > PROGRESS_AFTER:
                log.info("compiled the DNS kernels the plain loop needs in %.1f s (first start after "
                         "an install or upgrade)", time.monotonic() - t0)
            if self.fast is not None:  # compiled (or loaded from numba's cache) in a child
                self._warming = BackgroundWarmUp(lambda: warm_up(p.matcher, p.policies))
                self._warm_check = loop.call_later(_WARM_POLL, self._warm_done)
        elif self.fast is not None:
            self.fast_ready = True
        for udp, tcp in sockets:
            self._udp.append(udp)
            loop.add_reader(udp.fileno(), self._udp_ready, udp)
            self._servers.append(await asyncio.start_server(self._tcp_client, sock=tcp))

    def _warm_done(self) -> None:
        """Poll the kernel compiler child; when it is done, load the kernels here (from the
        cache: milliseconds) and switch UDP to the fast path."""
        assert self._warming is not None
        done = self._warming.poll()
        if done is None:
            self._warm_check = asyncio.get_running_loop().call_later(_WARM_POLL, self._warm_done)
            return
        self._warm_check = None
        if not done:
            return  # logged; the plain loop goes on answering
        compiled = warm_up(self.pipeline.matcher, self.pipeline.policies)  # every kernel loaded ...
        release_file_pages()  # ... so the pages only loading needed (LLVM) can go
        self.fast_ready = True
        if self._warming.compiled or compiled:
            log.info("DNS fast path on: its kernels compiled in %.1f s (numba's cache keeps them "
                     "for later starts)", self._warming.elapsed)
        else:
            log.debug("DNS fast path on (kernels loaded from the cache in %.2f s)", self._warming.elapsed)

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._warm_check is not None:
            self._warm_check.cancel()
        if self._warming is not None:
            self._warming.stop()
        for s in self._udp:
            loop.remove_reader(s.fileno())
        for srv in self._servers:
            srv.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1.0)
        for s in self._udp:
            s.close()
        if self.fast is not None:
            log.info("fast path", extra={"fast_path": self.fast.stats})

    # -- UDP ---------------------------------------------------------------------------------
    def _udp_ready(self, sock: socket.socket) -> None:
        if self.fast is not None and self.fast_ready and fast_usable(self.pipeline):
            self.fast.drain(sock, self)
            return
        handle = self.pipeline.handle
        for _ in range(UDP_BATCH):
            try:
                data, addr = sock.recvfrom(UDP_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            res = handle(data, addr[0], True)
            if res is None:
                continue
            if res.__class__ is bytes:
                try:
                    sock.sendto(res, addr)
                except OSError:
                    self.send_errors += 1
            else:
                self.forward(cast(Forward, res), partial(self.send_udp, sock, addr=addr))

    def send_udp(self, sock: socket.socket, answer: bytes, addr: tuple) -> None:
        """Send one answer; a failed send is counted (the client retries), never raised."""
        try:
            sock.sendto(answer, addr)
        except OSError:
            self.send_errors += 1

    # -- forwarding (shared) ---------------------------------------------------------------
    def forward(self, fwd: Forward, send: Callable[[bytes], None]) -> asyncio.Task | None:
        """Resolve ``fwd`` upstream in a task that calls ``send`` with the answer (SERVFAIL at
        once when MAX_PENDING_FORWARDS are already waiting)."""
        if len(self._tasks) >= MAX_PENDING_FORWARDS:
            self.pipeline.counters.servfail += 1
            answer = error_response(fwd.buf, RCODE_SERVFAIL, fwd.query)
            if answer:
                send(answer)
            return None
        # The pipeline of the moment: a bundle swap while this query waits upstream must not
        # judge its answer with the new matcher under the old policy's category bits.
        task = asyncio.get_running_loop().create_task(self._resolve_and_send(fwd, send, self.pipeline))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _resolve_and_send(self, fwd: Forward, send: Callable[[bytes], None],
                                pipeline: Pipeline) -> None:
        try:
            response = await self._resolve(fwd)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("upstream query failed unexpectedly")
            response = None
        answer = pipeline.finish(fwd, response)
        if answer is not None:
            send(answer)

    async def _resolve(self, fwd: Forward) -> bytes | None:
        """One upstream query per question in flight: identical concurrent questions wait
        for the first one's answer (no thundering herd, less exposure to spoofing)."""
        fut = self._inflight.get(fwd.key)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._inflight[fwd.key] = fut
        response = None
        try:
            response = await self.upstreams.resolve(fwd)
            if response is None:
                self.pipeline.counters.upstream_errors += 1
            return response
        finally:
            del self._inflight[fwd.key]
            fut.set_result(response)

    # -- TCP ---------------------------------------------------------------------------------
    def _idlest(self, conns: Iterable[_TcpConnection]) -> _TcpConnection | None:
        """The connection idle longest among ``conns`` with nothing waiting upstream."""
        idle = [c for c in conns if not c.pending and not c.writer.is_closing()]
        return min(idle, key=lambda c: c.last) if idle else None

    def _admit(self, conn: _TcpConnection) -> bool:
        """Make room for ``conn`` (RFC 7766 §6.2.3): past its client's cap, close that client's
        idlest connection; at the global cap, the idlest of all. False: no room (every
        candidate busy), ``conn`` is to be closed."""
        mine = self._tcp.get(conn.client, {})
        victim = None
        if len(mine) >= self.per_client:
            victim = self._idlest(mine)
            if victim is None:
                return False
        elif self.tcp_connections >= self.max_connections:
            victim = self._idlest(c for conns in self._tcp.values() for c in conns)
            if victim is None:
                return False
        if victim is not None:
            self.tcp_evicted += 1
            self._forget(victim)
            victim.writer.close()  # its handler sees EOF and ends
        self._tcp.setdefault(conn.client, {})[conn] = None
        self.tcp_connections += 1
        return True

    def _forget(self, conn: _TcpConnection) -> None:
        mine = self._tcp.get(conn.client)
        if mine is not None and conn in mine:
            del mine[conn]
            self.tcp_connections -= 1
            if not mine:
                del self._tcp[conn.client]

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        peer = (writer.get_extra_info("peername") or ("",))[0]
        conn = _TcpConnection(writer, tcp_client_key(peer), loop.time())
        if not self._admit(conn):
            self.tcp_refused += 1
            writer.close()
            return
        closed = False
        mine = conn.pending  # this connection's forwarded queries

        def send(answer: bytes) -> None:
            if not closed and not writer.is_closing():
                conn.last = loop.time()
                writer.write(len(answer).to_bytes(2, "big") + answer)

        try:
            for _ in range(MAX_TCP_QUERIES):
                head = await asyncio.wait_for(reader.readexactly(2), self.idle_timeout)
                size = int.from_bytes(head, "big")
                data = await asyncio.wait_for(reader.readexactly(size), self.idle_timeout)
                conn.last = loop.time()
                res = self.pipeline.handle(data, peer, False)
                if res is None:
                    break  # a runt on TCP: the framing is not DNS; close (RFC 7766 §6.2.4)
                if res.__class__ is bytes:
                    send(res)
                else:
                    task = self.forward(cast(Forward, res), send)
                    if task is not None:
                        mine.add(task)
                        task.add_done_callback(mine.discard)
                if writer.transport.get_write_buffer_size() > _TCP_HIGH_WATER:
                    await asyncio.wait_for(writer.drain(), self.idle_timeout)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            # Let forwarded answers for this connection arrive (bounded by the upstream
            # timeouts), then close.
            await self._drain_pending(writer, mine)
            closed = True
            self._forget(conn)
            writer.close()

    async def _drain_pending(self, writer: asyncio.StreamWriter, mine: set[asyncio.Task]) -> None:
        if mine and not writer.is_closing():
            # Bounded by the upstream timeouts (each forward gives up on its own by then).
            await asyncio.wait(set(mine), timeout=self.upstreams.timeout * 2 + 0.5)
        try:
            await asyncio.wait_for(writer.drain(), 1.0)
        except (TimeoutError, ConnectionError, OSError):
            pass
