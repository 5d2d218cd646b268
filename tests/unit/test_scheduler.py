"""The update scheduler's timing (pure functions) and its child-process bookkeeping, with a
fake clock and a fake spawn (the real subprocess runs in tests/integration/test_update_swap.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from appliance.config.load import UpdatesConfig
from appliance.updates.scheduler import UpdateScheduler, delay_after_run, start_delay, updater_argv
from appliance.updates.state import write_update_state

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
HOUR = 3600.0


def rec(next_in: float | None, **kw) -> dict:
    r = dict(kw)
    if next_in is not None:
        r["next_check"] = (NOW + timedelta(seconds=next_in)).isoformat().replace("+00:00", "Z")
    return r


def test_start_checks_at_once_without_a_signed_bundle() -> None:
    assert start_delay(rec(1800), NOW, HOUR, have_signed_bundle=False) == 0.0


def test_start_follows_the_recorded_next_check() -> None:
    assert start_delay(rec(1800), NOW, HOUR, have_signed_bundle=True) == 1800
    assert start_delay(rec(-50), NOW, HOUR, have_signed_bundle=True) == 0.0  # overdue: now


def test_start_without_a_record_spreads_a_fleet_over_a_tenth_of_the_interval() -> None:
    assert start_delay({}, NOW, HOUR, have_signed_bundle=True, rand=lambda: 0.0) == 0.0
    assert start_delay({}, NOW, HOUR, have_signed_bundle=True, rand=lambda: 0.999) < 0.1 * HOUR
    assert start_delay({"next_check": "garbage"}, NOW, HOUR, have_signed_bundle=True, rand=lambda: 0.5) == 180


def test_a_clock_jump_can_neither_stall_nor_speed_up_checks() -> None:
    # the record was written while the clock said 1970 (a Pi before NTP): due "decades" ahead
    assert start_delay(rec(50 * 365 * 86400), NOW, HOUR, have_signed_bundle=True) == 1.1 * HOUR
    assert delay_after_run(rec(50 * 365 * 86400), True, NOW, HOUR) == 1.1 * HOUR


def test_after_a_run_the_recorded_jittered_time_counts() -> None:
    assert delay_after_run(rec(3300), True, NOW, HOUR) == 3300
    assert delay_after_run({}, True, NOW, HOUR, rand=lambda: 0.5) == HOUR  # a record without it
    # nothing recorded (config error, lock held): one jittered interval
    assert delay_after_run(rec(10), False, NOW, HOUR, rand=lambda: 0.0) == 0.9 * HOUR
    assert delay_after_run(rec(10), False, NOW, HOUR, rand=lambda: 1.0) == 1.1 * HOUR


class FakeChild:
    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.pid = 4242
        self.code: int | None = None
        self.signals: list[str] = []

    def poll(self) -> int | None:
        return self.code

    def terminate(self) -> None:
        self.signals.append("TERM")
        self.code = -15

    def kill(self) -> None:
        self.signals.append("KILL")

    def wait(self, timeout: float | None = None) -> int:
        return self.code or 0


class Rig:
    def __init__(self, state: Path, have_signed_bundle: bool = True) -> None:
        self.t = 1000.0
        self.children: list[FakeChild] = []
        self.state = state
        self.s = UpdateScheduler("/etc/sg.yaml", state, UpdatesConfig("http://127.0.0.1:1/", state / "root.json"),
                                 have_signed_bundle=have_signed_bundle, clock=lambda: self.t,
                                 wall=lambda: NOW, rand=lambda: 0.5, spawn=self._spawn)

    def _spawn(self, argv: list[str]) -> FakeChild:
        self.children.append(FakeChild(argv))
        return self.children[-1]


def test_one_check_at_a_time_then_the_recorded_next_check(tmp_path: Path) -> None:
    rig = Rig(tmp_path, have_signed_bundle=False)
    rig.s.poll()
    assert len(rig.children) == 1 and rig.children[0].argv == updater_argv("/etc/sg.yaml")
    assert rig.children[0].argv[-4:] == ["update", "--once", "--config", "/etc/sg.yaml"]
    rig.t += 5000
    rig.s.poll()  # still running: no second check, however late
    assert len(rig.children) == 1
    write_update_state(tmp_path, rec(3500, last_result="updated", active_version=2))
    rig.children[0].code = 0
    rig.s.poll()
    assert rig.s.child is None and rig.s.due == rig.t + 3500
    rig.t += 3499
    rig.s.poll()
    assert len(rig.children) == 1
    rig.t += 1
    rig.s.poll()
    assert len(rig.children) == 2 and rig.s.checks == 2


def test_check_now_and_stop(tmp_path: Path) -> None:
    write_update_state(tmp_path, rec(3000))
    rig = Rig(tmp_path)
    rig.s.poll()
    assert rig.children == []
    rig.s.check_now()
    rig.s.poll()
    assert len(rig.children) == 1
    rig.s.stop()
    assert rig.children[0].signals == ["TERM"] and rig.s.child is None


def test_check_now_during_a_check_runs_another_after_it(tmp_path: Path) -> None:
    """An "update now" (SIGUSR2) while a check runs is not lost when that check ends: the
    publisher may have published after the running check read the repository."""
    write_update_state(tmp_path, rec(3000))
    rig = Rig(tmp_path)
    rig.s.check_now()
    rig.s.poll()
    assert len(rig.children) == 1
    rig.s.check_now()  # arrives while the first check is still running
    rig.s.poll()
    assert len(rig.children) == 1  # never two at once
    write_update_state(tmp_path, rec(3500, last_result="up-to-date"))
    rig.children[0].code = 0
    rig.s.poll()  # the first ends, and the second starts at once
    assert len(rig.children) == 2
    rig.children[1].code = 0
    write_update_state(tmp_path, rec(3400, last_result="up-to-date"))
    rig.s.poll()
    assert rig.s.due == rig.t + 3400  # then back to the schedule


def test_a_run_that_recorded_nothing_waits_one_interval(tmp_path: Path, caplog) -> None:
    write_update_state(tmp_path, rec(10, last_result="up-to-date"))
    rig = Rig(tmp_path, have_signed_bundle=False)
    rig.s.poll()
    rig.children[0].code = 2  # e.g. the config file became invalid
    rig.s.poll()
    assert rig.s.due == rig.t + HOUR  # rand 0.5: no jitter
    assert "did not run (exit status 2)" in caplog.text


def test_two_identical_records_in_one_second_still_count(tmp_path: Path) -> None:
    record = rec(30, last_result="up-to-date")
    write_update_state(tmp_path, record)
    rig = Rig(tmp_path, have_signed_bundle=False)
    rig.s.poll()
    write_update_state(tmp_path, record)  # the same bytes, written again by this run
    rig.children[0].code = 0
    rig.s.poll()
    assert rig.s.due == rig.t + 30


def test_reconfigure_pulls_the_next_check_in_when_the_interval_shrinks(tmp_path: Path) -> None:
    write_update_state(tmp_path, rec(3000))
    rig = Rig(tmp_path)
    assert rig.s.due == rig.t + 3000
    rig.s.reconfigure("/etc/sg2.yaml", UpdatesConfig("http://127.0.0.1:1/", tmp_path / "r.json", interval=60))
    assert rig.s.due == rig.t + 60 and rig.s.config_file == "/etc/sg2.yaml"
