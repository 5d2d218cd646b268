"""Waiting in tests: poll a condition up to a generous deadline, never sleep a fixed time.

A test waits for what it needs (an answer, a log line, a file, a counter) rather than for a
time that a quiet machine happens to need: on a loaded or slow machine the same test then
takes longer instead of failing. The deadline only bounds a test that would otherwise hang,
so it is generous; how fast things happen is measured in benchmarks/, not asserted here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["DEADLINE", "PERIOD", "wait_for"]

DEADLINE = 120.0  # seconds: far past anything a loaded 2-core machine needs
PERIOD = 0.05  # seconds between polls

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = DEADLINE, what: str = "the condition",
             period: float = PERIOD) -> T:
    """Poll ``predicate()`` until it returns something truthy, and return that; AssertionError
    naming ``what`` once ``timeout`` has passed."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(period)
