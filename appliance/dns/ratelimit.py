"""Per-client rate limiting with token buckets in a bounded table.

Each client address has a bucket of ``burst`` tokens refilled at ``rate`` per second; a
query takes one, and a query finding none is dropped (answering would let a spoofed
source aim our replies at a victim). The table is bounded: when it is full the oldest
clients are forgotten, which only ever gives a forgotten client a full bucket again.
"""

from __future__ import annotations

__all__ = ["RateLimiter", "MAX_TRACKED_CLIENTS"]

# A school has a few thousand devices; 65,536 buckets (~10 MB) cover a /16 and keep a
# flood of spoofed sources from growing memory.
MAX_TRACKED_CLIENTS = 65536


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
