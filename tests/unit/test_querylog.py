"""appliance/observe/querylog.py: privacy of client addresses, the line budget, failures, retention."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from appliance.config.load import load_config
from appliance.config.log import LogConfig
from appliance.observe.querylog import (
    LINE_BURST,
    RETRY_PERIOD,
    ClientPrivacy,
    QueryLog,
    enforce_retention,
    log_dir,
    log_file,
)
from appliance.observe.stats import SharedStats
from filters.errors import ConfigError
from filters.names import name_to_wire

DAY1 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC).timestamp()
DAY2 = DAY1 + 86400


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def cats(mask: int) -> list[str]:
    return ["gambling"] if mask & 1 else []


def qlog(tmp: Path, clock: Clock, **kw) -> tuple[QueryLog, SharedStats]:
    stats = SharedStats.create(3)
    priv = ClientPrivacy(tmp, kw.pop("clients", "hash"), clock)
    stats.privacy = priv
    return QueryLog(tmp, LogConfig(**kw), priv, stats.slot(0), clock), stats


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_hash_is_keyed_per_day_and_shared_by_workers(tmp_path) -> None:
    clock = Clock(DAY1)
    a, b = ClientPrivacy(tmp_path, "hash", clock), ClientPrivacy(tmp_path, "hash", clock)
    ta = a("10.10.0.7")
    assert ta == b("10.10.0.7") and len(ta) == 16 and "10.10" not in ta  # two workers agree
    assert a("10.10.0.8") != ta
    key = log_dir(tmp_path) / "keys" / "client-2026-11-24.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32
    clock.t = DAY2
    assert a("10.10.0.7") != ta  # a new day, a new key: no joining across days
    assert ClientPrivacy(tmp_path, "none", clock)("10.10.0.7") is None
    assert ClientPrivacy(tmp_path, "ip", clock)("10.10.0.7") == "10.10.0.7"


def test_unwritable_key_dir_never_falls_back_to_the_address(tmp_path) -> None:
    (tmp_path / "logs").write_text("not a directory")
    p = ClientPrivacy(tmp_path, "hash", Clock(DAY1))
    t = p("10.10.0.7")
    assert t and t != "10.10.0.7" and t == p("10.10.0.7")


def test_blocked_mode_logs_blocked_only_without_raw_addresses(tmp_path) -> None:
    clock = Clock(DAY1)
    q, stats = qlog(tmp_path, clock)
    q.blocked(name_to_wire("www.casino.test"), 1, "10.10.0.7", 1, "students", cats)
    q.allowed(name_to_wire("www.school.test"), 28, "10.10.0.7", "students", "upstream")
    q.flush()
    got = lines(log_file(tmp_path, DAY1))
    assert len(got) == 1
    assert got[0]["name"] == "www.casino.test" and got[0]["qtype"] == "A" and got[0]["action"] == "block"
    assert got[0]["categories"] == ["gambling"] and got[0]["policy"] == "students"
    assert got[0]["ts"].startswith("2026-11-24T12:00:00") and got[0]["client"] == q.privacy("10.10.0.7")
    assert "10.10.0.7" not in log_file(tmp_path, DAY1).read_text()
    ev = stats.events(1)[0]
    assert ev["name"] == "www.casino.test" and ev["client"] == got[0]["client"]
    assert stats.top_blocked(1) == [("www.casino.test", 1)]
    assert stats.totals(cats)["log"]["written"] == 1


def test_all_and_off_modes(tmp_path) -> None:
    clock = Clock(DAY1)
    q, stats = qlog(tmp_path, clock, queries="all", clients="none")
    q.blocked(name_to_wire("casino.test"), 1, "10.0.0.1", 1, "default", cats)
    q.allowed(name_to_wire("school.test"), 1, "10.0.0.1", "default", "cache")
    q.flush()
    got = lines(log_file(tmp_path, DAY1))
    assert [g["action"] for g in got] == ["block", "allow"] and got[1]["answer"] == "cache"
    assert all(g["client"] is None for g in got)
    off, stats = qlog(tmp_path / "off", clock, queries="off")
    off.blocked(name_to_wire("casino.test"), 1, "10.0.0.1", 1, "default", cats)
    off.flush()
    assert not log_dir(tmp_path / "off").joinpath("queries-2026-11-24.jsonl").exists()
    assert stats.events(1)[0]["name"] == "casino.test"  # the status page still sees the block


def test_lines_go_to_the_file_of_their_day(tmp_path) -> None:
    clock = Clock(DAY2 - 12 * 3600 - 0.5)  # 23:59:59.5
    q, _ = qlog(tmp_path, clock)
    q.blocked(name_to_wire("a.test"), 1, None, 1, "p", cats)
    clock.t += 1
    q.blocked(name_to_wire("b.test"), 1, None, 1, "p", cats)
    q.flush()
    assert [x["name"] for x in lines(log_file(tmp_path, DAY1))] == ["a.test"]
    assert [x["name"] for x in lines(log_file(tmp_path, DAY2))] == ["b.test"]


def test_a_flood_is_cut_to_the_line_budget(tmp_path) -> None:
    clock = Clock(DAY1)
    q, stats = qlog(tmp_path, clock)
    n = int(LINE_BURST) + 1000
    for i in range(n):
        q.blocked(name_to_wire(f"n{i}.test"), 1, "10.0.0.1", 1, "p", cats)
    q.flush()
    log = stats.totals(cats)["log"]
    assert log["written"] == LINE_BURST and log["dropped"] == 1000
    assert len(log_file(tmp_path, DAY1).read_text().splitlines()) == LINE_BURST


def test_unwritable_log_degrades_and_recovers(tmp_path) -> None:
    clock = Clock(DAY1)
    q, stats = qlog(tmp_path, clock)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "queries-2026-11-24.jsonl").mkdir()  # cannot be opened for writing, even by root
    q.blocked(name_to_wire("a.test"), 1, None, 1, "p", cats)
    q.flush()  # must not raise
    log = stats.totals(cats)["log"]
    assert log["errors"] == 1 and log["written"] == 0 and log["last_errno"] != 0
    assert log["last_error_ts"] == int(DAY1)
    clock.t += 1
    q.blocked(name_to_wire("b.test"), 1, None, 1, "p", cats)
    q.flush()  # within the retry period: counted, not tried
    assert stats.totals(cats)["log"]["errors"] == 2
    (tmp_path / "logs" / "queries-2026-11-24.jsonl").rmdir()
    clock.t += RETRY_PERIOD
    q.blocked(name_to_wire("c.test"), 1, None, 1, "p", cats)
    q.flush()
    assert [x["name"] for x in lines(log_file(tmp_path, DAY1))] == ["c.test"]


def test_file_size_limit_is_an_error_not_a_crash(tmp_path) -> None:
    """RLIMIT_FSIZE: without ignoring SIGXFSZ the write would kill the worker."""
    code = f"""
import resource, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from pathlib import Path
from appliance.config.log import LogConfig
from appliance.observe.querylog import ClientPrivacy, QueryLog, ignore_file_size_signal
from appliance.observe.stats import SharedStats
from filters.names import name_to_wire
ignore_file_size_signal()
resource.setrlimit(resource.RLIMIT_FSIZE, (300, 300))
s = SharedStats.create(3)
q = QueryLog(Path({str(tmp_path)!r}), LogConfig(), ClientPrivacy({str(tmp_path)!r}, "none"), s.slot(0))
for i in range(20):
    q.blocked(name_to_wire(f"name{{i}}.casino.test"), 1, None, 1, "p", lambda m: [])
    q.flush()
t = s.totals(lambda m: [])["log"]
print(t["written"], t["errors"], t["last_errno"])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    written, errors, errno_ = map(int, out.stdout.split())
    assert 0 < written < 20 and errors > 0 and errno_ in (27, 28)  # EFBIG (or a short write)
    for line in (log_dir(tmp_path) / f"queries-{datetime.now(UTC):%Y-%m-%d}.jsonl").read_text().splitlines():
        if line:
            json.loads(line) if line.endswith("}") else None  # whole lines, or one torn at the end


def test_retention_deletes_old_files_and_keys(tmp_path) -> None:
    d = log_dir(tmp_path)
    (d / "keys").mkdir(parents=True)
    for day in range(10, 25):
        (d / f"queries-2026-11-{day:02d}.jsonl").write_text("{}\n")
    for day in (22, 23, 24):
        (d / "keys" / f"client-2026-11-{day}.key").write_bytes(b"k" * 32)
    (d / "keys" / ".2026-11-20.abcd1234").write_bytes(b"k")
    (d / "notes.txt").write_text("not ours")
    gone = enforce_retention(tmp_path, 7, DAY1)
    assert sorted(p.name for p in d.glob("queries-*")) == [f"queries-2026-11-{x}.jsonl" for x in range(18, 25)]
    assert [p.name for p in (d / "keys").iterdir()] == ["client-2026-11-24.key"]
    assert (d / "notes.txt").exists() and len(gone) == 8 + 3
    assert enforce_retention(tmp_path / "nothing-here", 7, DAY1) == []


def test_log_config_keys(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("log: {queries: off, clients: ip, retention_days: 30}\n")
    cfg = load_config(f)
    assert (cfg.log.queries, cfg.log.clients, cfg.log.retention_days) == ("off", "ip", 30)
    assert load_config(tmp_path / "c.yaml", "state_dir: x\n").log == LogConfig("blocked", "hash", 7)
    f.write_text("log:\n  queries: some\n  clients: mac\n  retention_days: 0\n  colour: red\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    for text in (f"{f}:2:12: log.queries must be one of all, blocked, off",
                 f"{f}:3:12: log.clients must be one of hash, none, ip",
                 f"{f}:4:19: log.retention_days must be a whole number from 1 to 366",
                 f"{f}:5:3: unknown key log.colour"):
        assert text in msg, msg


def test_fast_path_batches_are_logged_from_their_masks(tmp_path) -> None:
    import numpy as np

    clock = Clock(DAY1)
    q, stats = qlog(tmp_path, clock)
    rx = np.zeros((4, 512), np.uint8)
    rxlen = np.zeros(4, np.int64)
    masks = np.array([1, 0, 1, 0], np.uint64)
    for i, name in enumerate(["a.casino.test", "school.test", "b.casino.test", "c.casino.test"]):
        pkt = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + name_to_wire(name) + b"\x00\x1c\x00\x01"
        rx[i, :len(pkt)] = np.frombuffer(pkt, np.uint8)
        rxlen[i] = len(pkt)
    q.fast_blocked(rx, rxlen, masks, 4, lambda i: f"10.0.0.{i}", lambda c: "students", cats)
    q.flush()
    got = lines(log_file(tmp_path, DAY1))
    assert [(g["name"], g["qtype"], g["policy"]) for g in got] == [("a.casino.test", "AAAA", "students"),
                                                                     ("b.casino.test", "AAAA", "students")]
    assert got[1]["client"] == q.privacy("10.0.0.2")
    assert [e["name"] for e in stats.events(5)] == ["b.casino.test", "a.casino.test"]
    # Out of budget: the rest of a batch is counted in one go, not parsed.
    q._tokens = 0.0
    masks[:] = 1
    q.fast_blocked(rx, rxlen, masks, 4, lambda i: None, lambda c: "students", cats)
    assert stats.totals(cats)["log"]["dropped"] == 4


def test_blocked_queries_never_seen_by_the_log_count_as_dropped(tmp_path) -> None:
    clock = Clock(DAY1)
    q, stats = qlog(tmp_path, clock)
    q.account(100)  # the baseline: what the process had counted before (a restarted worker)
    q.blocked(name_to_wire("a.test"), 1, None, 1, "p", cats)
    q.account(100 + 1 + 40)  # 40 more blocked by the fast path while the log had no budget
    assert stats.totals(cats)["log"]["dropped"] == 40
    q.account(141)
    assert stats.totals(cats)["log"]["dropped"] == 40
