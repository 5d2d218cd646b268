"""Per-client rate limiting with token buckets in a bounded table.

Each client address has a bucket of ``burst`` tokens refilled at ``rate`` per second; a
query takes one, and a query finding none is dropped (answering would let a spoofed
source aim our replies at a victim). The table is bounded: when it is full the oldest
clients are forgotten, which only ever gives a forgotten client a full bucket again.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from filters import _dns_kernels as K
from filters.dns_fast import client_key

__all__ = ["ClientLimiter", "RateLimiter", "ArrayRateLimiter", "disabled_limiter", "MAX_TRACKED_CLIENTS"]

# A school has a few thousand devices; 65,536 buckets (~10 MB) cover a /16 and keep a
# flood of spoofed sources from growing memory.
MAX_TRACKED_CLIENTS = 65536


class ClientLimiter(Protocol):
    """Per-client admission: :class:`RateLimiter` (a dict of buckets, the Python path) or
    :class:`ArrayRateLimiter` (buckets in arrays the fast path's kernel updates too)."""

    def allow(self, client: str, now: float) -> bool:
        """Take a token from ``client``'s bucket; False when it has none (drop the query)."""
        ...


class RateLimiter:
    def __init__(self, rate: float, burst: float, max_clients: int = MAX_TRACKED_CLIENTS) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.max_clients = max_clients
        self._buckets: dict[str, list[float]] = {}  # client -> [tokens, last refill time]

    def allow(self, client: str, now: float) -> bool:
        b = self._buckets.get(client)
        if b is None:
            if len(self._buckets) >= self.max_clients:
                # Forget the oldest half (dicts keep insertion order): amortised O(1).
                for k in list(self._buckets)[: self.max_clients // 2]:
                    del self._buckets[k]
            self._buckets[client] = [self.burst - 1.0, now]
            return True
        tokens = b[0] + (now - b[1]) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        b[1] = now
        if tokens < 1.0:
            b[0] = tokens
            return False
        b[0] = tokens - 1.0
        return True


def _limiter_arrays(rate: float, burst: float, max_clients: int, enabled: bool, seed: int | None) -> tuple:
    slots = 16
    while slots < 2 * max_clients:
        slots *= 2
    state = np.zeros(K.LS_WIDTH, dtype=np.int64)
    state[K.LS_ENABLED] = int(enabled)
    state[K.LS_CAP] = max_clients
    state[K.LS_SMASK] = slots - 1
    key = np.random.default_rng(seed).integers(0, 2**64, size=2, dtype=np.uint64)
    return (state, np.array([rate, max(burst, 1.0)], dtype=np.float64), key, np.zeros(slots, dtype=np.int64),
            np.zeros((max_clients, 4), dtype=np.uint64), np.zeros((max_clients, 2), dtype=np.float64))


def disabled_limiter() -> tuple:
    """The arrays of a limiter that allows everything (rate limiting off)."""
    return _limiter_arrays(0.0, 1.0, 1, False, 0)


class ArrayRateLimiter:
    """RateLimiter's behaviour (same buckets, same arithmetic, the oldest half forgotten when
    full) in arrays that the DNS fast path's batch kernel updates itself, so that a client's
    UDP queries answered there and its queries through Python (TCP, the slow path) draw on one
    bucket. Clients are keyed by address bytes (a keyed SipHash picks the slot, so spoofed
    sources cannot aim at one chain)."""

    def __init__(self, rate: float, burst: float, max_clients: int = MAX_TRACKED_CLIENTS,
                 seed: int | None = None) -> None:
        if max_clients < 2:
            raise ValueError("the limiter tracks at least two clients")
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.max_clients = max_clients
        self.arrays = _limiter_arrays(rate, burst, max_clients, True, seed)

    def allow(self, client: str, now: float) -> bool:
        return bool(K.lim_allow_client(self.arrays, client_key(client), float(now)))

    def __len__(self) -> int:
        return int(self.arrays[0][K.LS_COUNT])
