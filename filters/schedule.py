"""Policy schedules: which categories a policy blocks at a given moment (pure; time is a
parameter).

A policy may have ``schedule:`` entries, each a set of weekdays, a time range in the
config's time zone and the categories blocked *in addition* while the range is on — e.g.
students stricter in school hours::

    timezone: Europe/Paris
    policies:
      students:
        block: [gambling, doh]
        schedule:
          - {days: mon-fri, time: "08:00-16:00", block: [games, social]}
          - {days: [sat, sun], time: "22:00-06:00", block: [games]}   # spans midnight

Days are ``mon`` .. ``sun``, ranges (``mon-fri``, ``fri-mon`` wraps), lists of either, or
``all``. A range starts on the listed day; one whose end is not after its start runs past
midnight into the next day (``22:00-06:00`` on Saturday covers Sunday 00:00-06:00).
``24:00`` ends at midnight. Times are local wall-clock times in the zone (zoneinfo), so a
range means the same clock hours on either side of a daylight-saving change; on the day
the clocks spring forward a range inside the skipped hour does not happen, and one inside
the repeated autumn hour is on for both.

The DNS service calls :func:`effective_blocks` every WATCH_PERIOD and rebuilds its policy
tables only when the result changes, so answering a query costs nothing for schedules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from filters.errors import InputError

__all__ = ["DAYS", "ScheduleEntry", "parse_days", "parse_time_range", "parse_entry", "load_zone",
           "is_active", "effective_blocks"]

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # datetime.weekday() order
_TIME = re.compile(r"([01]?[0-9]|2[0-4]):([0-5][0-9])")
_DAY_MINUTES = 24 * 60


@dataclass(frozen=True)
class ScheduleEntry:
    days: frozenset[int]  # weekday() numbers the range starts on (0 = Monday)
    start: int  # minutes after local midnight
    end: int  # minutes; end <= start: the range ends the next day
    block: tuple[str, ...]  # categories blocked in addition while the range is on

    def __post_init__(self) -> None:
        if not self.days or not all(0 <= d < 7 for d in self.days):
            raise InputError("a schedule needs at least one weekday")
        if not (0 <= self.start < _DAY_MINUTES and 0 <= self.end <= _DAY_MINUTES):
            raise InputError("schedule times lie within 00:00-24:00")


def parse_days(value: object) -> frozenset[int]:
    """``mon``, ``mon-fri``, ``fri-mon`` (wraps), ``all``, or a list of those."""
    items = value if isinstance(value, list) else [value]
    out: set[int] = set()
    for item in items:
        if not isinstance(item, str):
            raise InputError(f"days: {item!r} is not a day name (mon .. sun)")
        text = item.strip().lower()
        if text in ("all", "daily", "*"):
            out.update(range(7))
            continue
        first, sep, last = text.partition("-")
        a = _day_index(first)
        b = _day_index(last) if sep else a
        if a < 0 or b < 0:
            raise InputError(f"days: {item!r} is not a day or a range of days (mon .. sun, e.g. mon-fri)")
        d = a
        while True:
            out.add(d)
            if d == b:
                break
            d = (d + 1) % 7
    if not out:
        raise InputError("days must name at least one day")
    return frozenset(out)


_FULL = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _day_index(word: str) -> int:
    """0..6 for ``mon`` or ``monday`` (any case, already lowered), -1 otherwise."""
    word = word.strip()
    for i, (short, full) in enumerate(zip(DAYS, _FULL)):
        if word in (short, full):
            return i
    return -1


def _minutes(text: str) -> int:
    m = _TIME.fullmatch(text.strip())
    if not m:
        raise InputError(f"time {text!r} is not HH:MM")
    h, mi = int(m.group(1)), int(m.group(2))
    if h == 24 and mi:
        raise InputError(f"time {text!r} is past 24:00")
    return h * 60 + mi


def parse_time_range(value: object) -> tuple[int, int]:
    """``"08:00-16:00"`` -> (480, 960); an end not after the start runs into the next day."""
    if not isinstance(value, str) or value.count("-") != 1:
        raise InputError(f"time must be \"HH:MM-HH:MM\" (quoted), not {value!r}")
    a, b = value.split("-")
    start, end = _minutes(a), _minutes(b)
    if start == _DAY_MINUTES:
        raise InputError("a time range cannot start at 24:00")
    if start == end:
        raise InputError(f"time range {value!r} is empty (use 00:00-24:00 for the whole day)")
    return start, end


def parse_entry(value: object) -> ScheduleEntry:
    """One ``schedule:`` item: {days, time, block}."""
    if not isinstance(value, dict):
        raise InputError("a schedule entry is {days: mon-fri, time: \"08:00-16:00\", block: [categories]}")
    unknown = sorted(str(k) for k in value if k not in ("days", "time", "block"))
    if unknown:
        raise InputError(f"unknown key {unknown[0]!r} in a schedule entry (known: days, time, block)")
    for key in ("days", "time", "block"):
        if key not in value:
            raise InputError(f"a schedule entry needs {key}")
    block = value["block"]
    if not isinstance(block, list) or not all(isinstance(c, str) for c in block):
        raise InputError("schedule block must be a list of category names")
    start, end = parse_time_range(value["time"])
    return ScheduleEntry(parse_days(value["days"]), start, end, tuple(block))


_UTC_NAMES = ("UTC", "Etc/UTC", "Z")


def load_zone(name: object) -> tzinfo:
    """A time zone by IANA name (``Europe/Paris``); InputError when unknown."""
    if not isinstance(name, str) or not name:
        raise InputError("timezone must be an IANA zone name such as Europe/Paris or UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        # UTC needs no database: a system without tzdata (a minimal image) still runs the default.
        if name in _UTC_NAMES:
            return UTC
        raise InputError(f"unknown time zone {name!r} (an IANA name such as Europe/Paris)") from exc


def is_active(entry: ScheduleEntry, local: datetime) -> bool:
    """Is ``entry`` on at the local wall-clock time ``local``?"""
    minute = local.hour * 60 + local.minute
    day = local.weekday()
    if entry.start < entry.end:
        return day in entry.days and entry.start <= minute < entry.end
    # Past midnight: the evening part on a listed day, the morning part the day after one.
    return (day in entry.days and minute >= entry.start) or ((day - 1) % 7 in entry.days and minute < entry.end)


def effective_blocks(policies: Mapping[str, tuple[Iterable[str], Iterable[ScheduleEntry]]], zone: tzinfo,
                     now: datetime) -> dict[str, tuple[str, ...]]:
    """Per policy, the categories blocked at ``now`` (an aware datetime; naive means UTC):
    the policy's own plus those of every schedule entry on. Sorted, without duplicates, so
    that equal results compare equal."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    local = now.astimezone(zone)
    out = {}
    for name, (block, entries) in policies.items():
        cats = set(block)
        for e in entries:
            if is_active(e, local):
                cats.update(e.block)
        out[name] = tuple(sorted(cats))
    return out
