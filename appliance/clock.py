"""The wall clock, in the two forms the appliance writes: an aware datetime and RFC 3339 text.

One place so that every record (run.json, counters.json, update state, the web page) says
the time the same way, and so that tests have one seam to replace.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["utc_now", "utc_text"]


def utc_now() -> datetime:
    return datetime.now(UTC)


def utc_text() -> str:
    """Now as RFC 3339 UTC to the second, e.g. ``2026-12-04T17:53:50Z``."""
    return utc_now().replace(microsecond=0).isoformat().replace("+00:00", "Z")
