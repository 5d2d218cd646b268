"""filters.schedule: weekday/time ranges in a time zone, across DST and midnight."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from filters.errors import InputError
from filters.schedule import ScheduleEntry, effective_blocks, is_active, load_zone, parse_days, parse_entry

PARIS = load_zone("Europe/Paris")
SCHOOL = parse_entry({"days": "mon-fri", "time": "08:00-16:00", "block": ["games"]})
NIGHT = parse_entry({"days": ["sat"], "time": "22:00-06:00", "block": ["social"]})
POLICIES = {"students": (("gambling",), (SCHOOL, NIGHT)), "staff": ((), ())}


def utc(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)


def test_parse_days() -> None:
    assert parse_days("mon-fri") == frozenset(range(5))
    assert parse_days("fri-mon") == frozenset({4, 5, 6, 0})
    assert parse_days(["Sat", "sunday"]) == frozenset({5, 6})
    assert parse_days("all") == frozenset(range(7))
    for bad in ("funday", "mon-xyz", 3, ["mon", None], "mo"):
        with pytest.raises(InputError):
            parse_days(bad)


def test_parse_entry_errors() -> None:
    for bad in ({"days": "mon", "time": "8-16", "block": []}, {"days": "mon", "time": "08:00-08:00", "block": []},
                {"days": "mon", "time": "25:00-08:00", "block": []},
                {"days": "mon", "time": "24:00-08:00", "block": []},
                {"days": "mon", "block": []}, {"days": "mon", "time": "08:00-09:00", "block": "games"},
                {"days": "mon", "time": "08:00-09:00", "block": [], "colour": 1}, "mon 8-16"):
        with pytest.raises(InputError):
            parse_entry(bad)
    assert parse_entry({"days": "mon", "time": "00:00-24:00", "block": []}).end == 24 * 60
    with pytest.raises(InputError):
        load_zone("Mars/Olympus")


def test_school_hours_in_paris_across_dst() -> None:
    # Friday 29 March 2024, CET (UTC+1): 07:30 UTC is 08:30 local -> on; 06:30 UTC is 07:30 -> off.
    assert effective_blocks(POLICIES, PARIS, utc(2024, 3, 29, 7, 30))["students"] == ("gambling", "games")
    assert effective_blocks(POLICIES, PARIS, utc(2024, 3, 29, 6, 30))["students"] == ("gambling",)
    # Monday 1 April 2024, CEST (UTC+2) after the change: 06:30 UTC is 08:30 local -> on.
    assert effective_blocks(POLICIES, PARIS, utc(2024, 4, 1, 6, 30))["students"] == ("gambling", "games")
    assert effective_blocks(POLICIES, PARIS, utc(2024, 4, 1, 5, 59))["students"] == ("gambling",)
    # End of school: 15:59 local on, 16:00 off (CEST: 13:59 / 14:00 UTC).
    assert "games" in effective_blocks(POLICIES, PARIS, utc(2024, 4, 1, 13, 59))["students"]
    assert "games" not in effective_blocks(POLICIES, PARIS, utc(2024, 4, 1, 14, 0))["students"]
    # Autumn: Monday 28 October 2024 is CET again: 07:00 UTC is 08:00 local.
    assert "games" in effective_blocks(POLICIES, PARIS, utc(2024, 10, 28, 7, 0))["students"]
    assert "games" not in effective_blocks(POLICIES, PARIS, utc(2024, 10, 28, 6, 59))["students"]
    assert effective_blocks(POLICIES, PARIS, utc(2024, 4, 1, 7))["staff"] == ()


def test_range_spanning_midnight() -> None:
    # Saturday 6 April 2024 22:00 CEST = 20:00 UTC; ends Sunday 06:00 CEST = 04:00 UTC.
    on = [utc(2024, 4, 6, 20, 0), utc(2024, 4, 6, 23, 59), utc(2024, 4, 7, 3, 59)]
    off = [utc(2024, 4, 6, 19, 59), utc(2024, 4, 7, 4, 0), utc(2024, 4, 7, 20, 30), utc(2024, 4, 6, 3, 0)]
    for t in on:
        assert "social" in effective_blocks(POLICIES, PARIS, t)["students"], t
    for t in off:  # Sunday evening is not listed; Saturday morning follows a Friday, not listed
        assert "social" not in effective_blocks(POLICIES, PARIS, t)["students"], t


def test_skipped_and_repeated_hours() -> None:
    early = ScheduleEntry(frozenset({6}), 2 * 60 + 15, 2 * 60 + 45, ("x",))  # Sundays 02:15-02:45
    # 31 March 2024: Paris skips 02:00-03:00 -> the range never happens that night.
    for minute in range(0, 120, 5):
        t = utc(2024, 3, 31, 0, 0).replace(minute=minute % 60, hour=minute // 60)
        assert not is_active(early, t.astimezone(PARIS)), t
    # 27 October 2024: 02:00-03:00 happens twice (00:xx UTC and 01:xx UTC) -> on both times.
    assert is_active(early, utc(2024, 10, 27, 0, 30).astimezone(PARIS))
    assert is_active(early, utc(2024, 10, 27, 1, 30).astimezone(PARIS))


def test_naive_now_is_utc_and_results_compare() -> None:
    a = effective_blocks(POLICIES, PARIS, datetime(2024, 4, 1, 6, 30))
    b = effective_blocks(POLICIES, PARIS, utc(2024, 4, 1, 6, 30))
    assert a == b and a["students"] == ("gambling", "games")


def test_utc_needs_no_time_zone_database(monkeypatch) -> None:
    import filters.schedule as sch

    def missing(name):
        raise sch.ZoneInfoNotFoundError(name)

    monkeypatch.setattr(sch, "ZoneInfo", missing)  # a system without tzdata
    assert sch.load_zone("UTC").utcoffset(None).total_seconds() == 0
    with pytest.raises(InputError):
        sch.load_zone("Europe/Paris")
