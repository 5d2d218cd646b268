"""The DNS fast path's socket side: a batch of datagrams per system call, one jitted call.

When a UDP socket is readable, :meth:`FastPath.drain` calls one njit function that loops:
``recvmmsg`` (up to a batch of datagrams and their source addresses, straight into numpy
buffers), the batch kernel (filters/_dns_kernels.process_batch: rate limit, parse, policy,
match, answer from templates or the wire cache), ``sendmmsg`` of every answer — until the
socket is empty, a batch holds packets for Python, or FAST_ROUNDS batches have been served
(so TCP, timers and upstream replies get their turn). Packets the kernel hands over (cache
misses to forward, anything unusual) go through the pipeline exactly as the plain loop
would send them, and are answered with ``sendto`` or forwarded.

The system calls are made from the jitted code: ``recvmmsg``/``sendmmsg`` are declared as
external functions (a numba intrinsic; the symbol is resolved in the process, i.e. libc),
which keeps the function cacheable (ctypes function pointers are baked into the code as
addresses and make numba refuse to cache). Measured against calling them through ctypes
from Python once per batch: see docs/dns.md, "The UDP fast path".

Buffers are laid out by ctypes (struct mmsghdr, iovec), so the offsets are the platform's;
the kernel writes only lengths (through numpy views with the right strides) and copies
source addresses, never pointers.
"""

from __future__ import annotations

import ctypes
import logging
import socket
import sys
from collections.abc import Callable
from functools import partial
from typing import Protocol, cast

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from appliance.dns.cache import ArrayCache
from appliance.dns.pipeline import Forward, Pipeline
from appliance.dns.ratelimit import ArrayRateLimiter, disabled_limiter
from filters import _dns_kernels as K
from filters._jit import njit
from filters.dns_fast import DEFAULT_BATCH, Batch, FastTables, new_counters
from filters.dns_response import Normalised
from filters.domain_matcher import DomainMatcher
from filters.policy import PolicySet

__all__ = ["FastPath", "Responder", "FAST_ROUNDS", "usable", "warm_up", "warmed"]

log = logging.getLogger("schoolgate.dns")

# Batches served per jitted call before returning to the event loop: 16 × 64 datagrams is
# ~1 ms of work at ~1 µs a query, so other events wait at most about that long.
FAST_ROUNDS = 16
# Calls per readable event (each returns early when it hands packets to Python).
_CALLS_PER_WAKEUP = 4
# struct sockaddr_storage would be 128 bytes; sockaddr_in6 (28) is the largest we receive.
SOCKADDR_WIDTH = 32
_AF_INET, _AF_INET6 = int(socket.AF_INET), int(socket.AF_INET6)
_MSG_DONTWAIT = int(getattr(socket, "MSG_DONTWAIT", 0x40))
# Results of one jitted call (R_BATCHES and R_PACKETS accumulate across calls).
R_RECEIVED, R_SLOW, R_SEND_ERRORS, R_BATCHES, R_PACKETS = 0, 1, 2, 3, 4


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.c_void_p),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("len", ctypes.c_uint)]


def _declare(builder, name, ret, args):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


def _c_call(typer: Callable[..., object]) -> Callable[[int, int, int, int], int]:
    """``@intrinsic``, typed as jitted code calls it. numba's stubs give an intrinsic the
    typing function's parameters (the typing context first) and a Never result (it raises
    outside jitted code); a jitted caller passes the four int64 arguments and gets an int64."""
    return cast("Callable[[int, int, int, int], int]", intrinsic(typer))


@_c_call
def _recvmmsg(typingctx, fd, vec, vlen, flags):
    """int recvmmsg(int fd, struct mmsghdr *vec, unsigned vlen, int flags, NULL)."""
    def codegen(context, builder, signature, args):
        i32, vp = ir.IntType(32), ir.IntType(8).as_pointer()
        fn = _declare(builder, "recvmmsg", i32, [i32, vp, i32, i32, vp])
        a = [builder.trunc(args[0], i32), builder.inttoptr(args[1], vp), builder.trunc(args[2], i32),
             builder.trunc(args[3], i32), ir.Constant(vp, None)]
        return builder.sext(builder.call(fn, a), ir.IntType(64))
    return types.int64(types.int64, types.int64, types.int64, types.int64), codegen


@_c_call
def _sendmmsg(typingctx, fd, vec, vlen, flags):
    """int sendmmsg(int fd, struct mmsghdr *vec, unsigned vlen, int flags)."""
    def codegen(context, builder, signature, args):
        i32, vp = ir.IntType(32), ir.IntType(8).as_pointer()
        fn = _declare(builder, "sendmmsg", i32, [i32, vp, i32, i32])
        a = [builder.trunc(args[0], i32), builder.inttoptr(args[1], vp), builder.trunc(args[2], i32),
             builder.trunc(args[3], i32)]
        return builder.sext(builder.call(fn, a), ir.IntType(64))
    return types.int64(types.int64, types.int64, types.int64, types.int64), codegen


@njit(cache=True)
def _client(name, namelen, addr):
    """The kernels' client row (family 4/6, address bytes) from a received sockaddr."""
    addr[:] = 0
    if namelen < 2:
        return
    fam = np.int64(name[0]) | np.int64(name[1])  # sa_family in host order: one byte is 0
    if fam == _AF_INET and namelen >= 8:
        addr[0] = 4
        addr[1:5] = name[4:8]
    elif fam == _AF_INET6 and namelen >= 24:
        addr[0] = 6
        addr[1:17] = name[8:24]


@njit(cache=True)
def _serve(fd, io, rx, rxlen, addrs, tx, txlen, txsrc, act, bmask, tables, match, cache, limiter, counters,
           scratch, now, rounds, stop_on_block, result):
    """recvmmsg → process_batch → sendmmsg, up to ``rounds`` batches (see the module doc).
    ``stop_on_block``: return after a batch that blocked something, so the caller can log
    it before the buffers are reused (batches of cache hits go on at full speed)."""
    rx_vec, tx_vec, hdr_size, rx_namelen, rx_msglen, names, tx_namelen, tx_iovlen, tx_names = io
    size = rx.shape[0]
    result[R_RECEIVED] = 0
    result[R_SLOW] = 0
    for _ in range(rounds):
        for i in range(size):
            rx_namelen[i] = names.shape[1]
        n = _recvmmsg(fd, rx_vec, size, _MSG_DONTWAIT)
        if n <= 0:
            result[R_RECEIVED] = 0
            return  # nothing waiting (EAGAIN) or an error the plain loop would also skip
        result[R_RECEIVED] = n
        result[R_BATCHES] += 1
        result[R_PACKETS] += n
        for i in range(n):
            rxlen[i] = rx_msglen[i]
            _client(names[i], np.int64(rx_namelen[i]), addrs[i])
        nsend = K.process_batch(n, rx, rxlen, addrs, tx, txlen, txsrc, act, bmask, tables, match, cache, limiter,
                                counters, scratch, now)
        for j in range(nsend):
            s = txsrc[j]
            tx_names[j, :] = names[s, :]
            tx_namelen[j] = min(rx_namelen[s], names.shape[1])  # never past our buffer
            tx_iovlen[j] = txlen[j]
        k = 0
        while k < nsend:
            sent = _sendmmsg(fd, tx_vec + k * hdr_size, nsend - k, _MSG_DONTWAIT)
            if sent <= 0:  # the first of the rest failed (buffer full, bad address): skip it
                result[R_SEND_ERRORS] += 1
                k += 1
            else:
                k += sent
        slow = 0
        for i in range(n):
            if act[i] == K.ACT_PYTHON:
                slow += 1
        if slow:
            result[R_SLOW] = slow
            return  # Python takes them before the buffers are reused
        if n < size:
            return
        if stop_on_block:
            for i in range(n):
                if bmask[i] != 0:
                    return


def warm_up(matcher: DomainMatcher, policies: PolicySet) -> bool:
    """Load every kernel the service runs (numba loads cached code on first call) for the
    argument types it will see: before workers are forked, so that they share the code, and
    before appliance.memory.release_file_pages, which assumes LLVM is no longer needed.
    True when something had to be compiled (the cache was cold: appliance/dns/warmup.py)."""
    global _warmed
    fp = FastPath(1)
    tables = FastTables.build(policies, matcher)
    cache = ArrayCache(4, 1, seed=0)
    limiter = ArrayRateLimiter(1.0, 1.0, 2, seed=0)
    b = fp.batch
    # fd -1: EBADF, no I/O
    _serve(-1, fp._io, b.rx, b.rxlen, b.addrs, b.tx, b.txlen, b.txsrc, b.act, b.blocked_mask, tables.tables,
           tables.match, cache.arrays, limiter.arrays, new_counters(), b.scratch, 0.0, 1, False, fp._result)
    _serve(-1, fp._io, b.rx, b.rxlen, b.addrs, b.tx, b.txlen, b.txsrc, b.act, b.blocked_mask, tables.tables,
           tables.match, cache.arrays, disabled_limiter(), new_counters(), b.scratch, 0.0, 1, False, fp._result)
    key = b"\x01a\x00\x00\x01\x00\x01\x00"
    cache.put(key, Normalised(0x8180, (0, 0, 0), b"", 20, [(0, 1)], 1, [b"\x01b\x00"]), 0.0)
    cache.get(key, 0.0)
    cache.get_stale(key, 100.0)
    limiter.allow("127.0.0.1", 0.0)
    _warmed = True
    return any(_serve.stats.cache_misses.values())


_warmed = False


def warmed() -> bool:
    """Has :func:`warm_up` run in this process (or in the one it was forked from)?"""
    return _warmed


def usable(pipeline: Pipeline) -> bool:
    """Can the kernel stand in for this pipeline? Its rate limiter must be one the kernel
    shares (or none); any cache works (the kernel answers hits only from an ArrayCache)."""
    return not pipeline.refuse_all and (pipeline.limiter is None or isinstance(pipeline.limiter, ArrayRateLimiter))


class Responder(Protocol):
    """What the fast path hands back to its server (appliance/dns/server.py DnsServer): the
    pipeline of the moment, answers Python made for the packets the kernel left to it, the
    queries to forward, and the count of failed sends."""

    pipeline: Pipeline
    send_errors: int

    def send_udp(self, sock: socket.socket, answer: bytes, addr: tuple) -> None: ...

    def forward(self, fwd: Forward, send: Callable[[bytes], None]) -> object: ...


class FastPath:
    """Batch buffers and the current pipeline's tables; one per DnsServer (the event loop
    serves one socket at a time, so the buffers are shared by every UDP socket)."""

    def __init__(self, batch: int = DEFAULT_BATCH) -> None:
        self.batch = Batch(batch)
        self._pipeline: Pipeline | None = None
        self._tables: FastTables | None = None
        self._none_limiter = disabled_limiter()
        self._no_cache = ArrayCache(0, 0).arrays
        self._result = np.zeros(5, dtype=np.int64)
        self.wakeups = 0
        b = self.batch
        self._names = np.zeros((batch, SOCKADDR_WIDTH), dtype=np.uint8)
        self._tx_names = np.zeros((batch, SOCKADDR_WIDTH), dtype=np.uint8)
        self._rx_hdrs, self._rx_iovs = (_MMsgHdr * batch)(), (_IoVec * batch)()
        self._tx_hdrs, self._tx_iovs = (_MMsgHdr * batch)(), (_IoVec * batch)()
        for i in range(batch):
            for hdrs, iovs, data, names, width in ((self._rx_hdrs, self._rx_iovs, b.rx, self._names, b.rx.shape[1]),
                                                   (self._tx_hdrs, self._tx_iovs, b.tx, self._tx_names, 0)):
                iovs[i].base = data[i].ctypes.data
                iovs[i].len = width
                hdrs[i].hdr.name = names[i].ctypes.data
                hdrs[i].hdr.namelen = SOCKADDR_WIDTH
                hdrs[i].hdr.iov = ctypes.addressof(iovs[i])
                hdrs[i].hdr.iovlen = 1
        hdr = ctypes.sizeof(_MMsgHdr)

        def view(arr, dtype, offset: int, stride: int) -> np.ndarray:
            return np.ndarray((batch,), dtype=dtype, buffer=arr, offset=offset, strides=(stride,))

        namelen = _MMsgHdr.hdr.offset + _MsgHdr.namelen.offset
        self._io = (ctypes.addressof(self._rx_hdrs), ctypes.addressof(self._tx_hdrs), hdr,
                    view(self._rx_hdrs, np.uint32, namelen, hdr),
                    view(self._rx_hdrs, np.uint32, _MMsgHdr.len.offset, hdr),
                    self._names, view(self._tx_hdrs, np.uint32, namelen, hdr),
                    view(self._tx_iovs, np.uintp, _IoVec.len.offset, ctypes.sizeof(_IoVec)), self._tx_names)

    @property
    def stats(self) -> dict[str, int]:
        """Readable events served, batches received (recvmmsg calls that returned
        datagrams) and datagrams: datagrams per batch is how well the batching works."""
        return {"wakeups": self.wakeups, "batches": int(self._result[R_BATCHES]),
                "datagrams": int(self._result[R_PACKETS])}

    def tables(self, pipeline: Pipeline) -> FastTables:
        """The tables for ``pipeline``, rebuilt when it was replaced (reload, bundle swap, a
        schedule boundary or a temporary allow: appliance/policy/state.py)."""
        if pipeline is not self._pipeline or self._tables is None:
            self._tables = FastTables.build(pipeline.policies, pipeline.matcher)
            self._pipeline = pipeline
        return self._tables

    def drain(self, sock: socket.socket, server: Responder) -> None:
        """Serve what is waiting on ``sock``; ``server`` answers and forwards what the kernel
        leaves to Python."""
        b = self.batch
        self.wakeups += 1
        for _ in range(_CALLS_PER_WAKEUP):
            pipeline: Pipeline = server.pipeline
            fast = self.tables(pipeline)
            cache = pipeline.cache.arrays if isinstance(pipeline.cache, ArrayCache) else self._no_cache
            # usable(): no limiter, or one whose buckets the kernel updates
            assert pipeline.limiter is None or isinstance(pipeline.limiter, ArrayRateLimiter)
            limiter = pipeline.limiter.arrays if pipeline.limiter is not None else self._none_limiter
            res = self._result
            res[R_SEND_ERRORS] = 0
            # With a query log to feed, the call returns after any batch that blocked a name:
            # those are read below before the buffers are reused (appliance/observe/querylog.py; a
            # flood past the log's budget is served without stopping).
            qlog = pipeline.qlog if pipeline.qlog is not None and pipeline.qlog.has_budget() else None
            _serve(sock.fileno(), self._io, b.rx, b.rxlen, b.addrs, b.tx, b.txlen, b.txsrc, b.act, b.blocked_mask,
                   fast.tables, fast.match, cache, limiter, pipeline.counters.fast, b.scratch, float(pipeline.clock()),
                   FAST_ROUNDS, qlog is not None, res)
            n, slow = int(res[R_RECEIVED]), int(res[R_SLOW])
            if qlog is not None and n > 0:
                qlog.fast_blocked(b.rx, b.rxlen, b.blocked_mask, n, self._client_text, pipeline.policy_name,
                                  pipeline.matcher.catalog.names)
            if res[R_SEND_ERRORS]:
                server.send_errors += int(res[R_SEND_ERRORS])
            if slow:
                self._hand_over(sock, server, pipeline, n)
            if n < b.size:
                return  # the socket was empty

    def _client_text(self, i: int) -> str | None:
        """The source address of datagram ``i`` of the last batch."""
        addr = _sockaddr(self._names[i, :self._io[3][i]].tobytes())
        return addr[0] if addr is not None else None

    def _hand_over(self, sock: socket.socket, server: Responder, pipeline: Pipeline, n: int) -> None:
        """The packets of the last batch that the kernel left to Python."""
        b = self.batch
        for i in np.flatnonzero(b.act[:n] == K.ACT_PYTHON):
            data = b.rx[i, :b.rxlen[i]].tobytes()
            addr = _sockaddr(self._names[i, :self._io[3][i]].tobytes())
            if addr is None:
                continue
            res = pipeline.handle(data, addr[0], True, rate_checked=True)
            if res is None:
                continue
            if res.__class__ is bytes:
                server.send_udp(sock, res, addr)
            else:
                server.forward(cast(Forward, res), partial(server.send_udp, sock, addr=addr))


def _sockaddr(raw: bytes) -> tuple | None:
    """A received sockaddr as Python's socket module gives addresses."""
    if len(raw) < 2:
        return None
    fam = int.from_bytes(raw[:2], sys.byteorder)
    port = int.from_bytes(raw[2:4], "big")
    if fam == _AF_INET and len(raw) >= 8:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    if fam == _AF_INET6 and len(raw) >= 24:
        scope = int.from_bytes(raw[24:28], sys.byteorder) if len(raw) >= 28 else 0
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port, int.from_bytes(raw[4:8], "big"), scope
    return None
