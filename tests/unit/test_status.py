"""`schoolgate status`: what it reads from the state directory and how it shows it; and the
DEMO label on lookup and the run state file."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

import appliance.observe.status as status_mod
from appliance.bundles.select import install_demo
from appliance.cli import main
from appliance.config.load import load_config
from appliance.updates.state import clear_run_state, pid_alive, read_run_state, write_run_state
from appliance.updates.updater import update_once
from signatures.keys import Keyring, generate_keys
from signatures.repository import publish
from tests.bundles import make_bundle


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture()
def site(tmp_path: Path) -> Path:
    now = datetime.now(UTC)
    keys, repo = tmp_path / "keys", tmp_path / "repo"
    generate_keys(keys)
    publish(repo, make_bundle(tmp_path / "b1", 1, now=now), Keyring(keys), now)
    cfg = tmp_path / "sg.yaml"
    cfg.write_text(f'state_dir: state\nupdates:\n  repository: "{repo.as_uri()}/"\n'
                   f"  trusted_root: {repo / 'metadata' / 'root.json'}\n  interval: 30m\n")
    return cfg


def fields(text: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def test_nothing_yet(site: Path) -> None:
    code, out, _ = run("status", "--config", str(site))
    assert code == 0
    f = fields(out)
    assert f["running"] == "no" and f["bundle"].startswith("none yet") and f["last check"] == "never"
    st = json.loads(run("status", "--json", "--config", str(site))[1])
    assert st["running"] is False and st["bundle"] is None and st["demo"] is False
    assert st["updates"]["configured"] and st["updates"]["interval_s"] == 1800


def test_demo_then_signed(site: Path) -> None:
    cfg = load_config(site)
    install_demo(cfg.state_dir)
    st = json.loads(run("status", "--json", "--config", str(site))[1])
    assert st["demo"] is True and st["bundle"]["how"] == "demo" and st["bundle"]["version"] == 1
    assert st["demo_install"]["last_result"] == "updated"
    assert "the DEMO bundle" in run("status", "--config", str(site))[1]
    update_once(cfg.state_dir, cfg.updates)
    st = json.loads(run("status", "--json", "--config", str(site))[1])
    assert st["demo"] is False and st["bundle"]["how"] == "active" and st["bundle"]["domains"] == 3
    u = st["updates"]
    assert u["last_result"] == "updated" and u["active_version"] == 1 and u["last_error"] is None
    assert u["next_check"] > u["last_check"]
    text = run("status", "--config", str(site))[1]
    assert "version 1 (the active signed bundle)" in text and "last error" not in text


def test_a_failed_check_shows_its_error(site: Path) -> None:
    cfg = load_config(site)
    update_once(cfg.state_dir, cfg.updates)
    (site.parent / "repo" / "metadata" / "timestamp.json").write_text("{}")
    update_once(cfg.state_dir, cfg.updates)
    text = run("status", "--config", str(site))[1]
    f = fields(text)
    assert f["last check"].endswith("refused") and "metadata refused" in f["last error"]
    assert "version 1 (the active signed bundle)" in text


def test_running_reads_run_json(site: Path, monkeypatch) -> None:
    cfg = load_config(site)
    update_once(cfg.state_dir, cfg.updates)
    write_run_state(cfg.state_dir, {"pid": 12345, "started": "2026-11-24T12:00:00Z", "workers": 2,
                                    "listen": ["127.0.0.1:53"], "bundle": {
                                        "path": "/x/bundles/0-00000000", "version": 0, "demo": True,
                                        "how": "demo", "since": "2026-11-24T12:00:00Z"}})
    monkeypatch.setattr(status_mod, "pid_alive", lambda pid: pid == 12345)
    st = json.loads(run("status", "--json", "--config", str(site))[1])
    assert st["running"] and st["pid"] == 12345 and st["serving"]["version"] == 0 and st["demo"]
    text = run("status", "--config", str(site))[1]
    assert "yes, pid 12345" in text and "2 worker(s)" in text
    assert "the appliance swaps to it shortly" in text  # activated (v1) but still serving v0
    monkeypatch.setattr(status_mod, "pid_alive", lambda pid: False)  # a stale run.json
    assert json.loads(run("status", "--json", "--config", str(site))[1])["running"] is False


def test_run_state_file_and_pid_check(tmp_path: Path) -> None:
    write_run_state(tmp_path, {"pid": os.getpid()})
    clear_run_state(tmp_path, os.getpid() + 1)  # not ours: left alone
    assert read_run_state(tmp_path)["pid"] == os.getpid()
    clear_run_state(tmp_path, os.getpid())
    assert read_run_state(tmp_path) == {}
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert not pid_alive(sleeper.pid)  # alive, but not a schoolgate
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not pid_alive(None) and not pid_alive(-1) and not pid_alive(True)


def test_lookup_says_when_answers_come_from_the_demo(site: Path, monkeypatch) -> None:
    cfg = load_config(site)
    code, _, err = run("lookup", "--config", str(site), "casino.test")
    assert code == 2 and "no active bundle" in err
    install_demo(cfg.state_dir)
    code, out, err = run("lookup", "--config", str(site), "www.0-casino.info")
    assert code == 0 and out.startswith("www.0-casino.info: BLOCK") and "DEMO bundle" in err
    update_once(cfg.state_dir, cfg.updates)
    code, out, err = run("lookup", "--config", str(site), "casino.test")
    assert code == 0 and "BLOCK" in out and err == ""
    # without --config: what `schoolgate run` without one would serve
    monkeypatch.setenv("XDG_STATE_HOME", str(site.parent / "xdg"))
    code, _, err = run("lookup", "x.test")
    assert code == 2 and "run `schoolgate run` once" in err


def test_dns_counters_from_counters_json(tmp_path: Path) -> None:
    """The "dns" section: what the running appliance last wrote to counters.json, with the
    query log's state (degraded when a write failed within the last minute)."""
    import errno as errno_mod

    from appliance.observe.querylog import ClientPrivacy
    from appliance.observe.stats import SharedStats

    cfg_file = tmp_path / "sg.yaml"
    cfg_file.write_text("state_dir: state\nlog: {clients: none}\n")
    cfg = load_config(cfg_file)
    assert status_mod.collect_status(cfg)["dns"] is None  # never ran
    stats = SharedStats.create(3)
    stats.privacy = ClientPrivacy(cfg.state_dir, "none")
    s = stats.slot(0)
    s.add("queries", 12)
    s.count_blocked(1)
    s.record_event("dns", "casino.test", 1, "default", "10.0.0.1", "block")
    s.add("log_errors", 4)
    s.set("log_last_errno", errno_mod.ENOSPC)
    cfg.state_dir.mkdir()
    status_mod.write_counters(cfg.state_dir, stats, lambda m: ["gambling"] if m & 1 else [], "2026-11-24T00:00:00Z")
    s.set("log_last_error_ts", int(datetime.now(UTC).timestamp()))
    st = status_mod.collect_status(cfg)["dns"]
    assert st["queries"] == 12 and st["blocked"] == 1 and st["blocked_by_category"] == {"gambling": 1}
    assert st["top_blocked"] == [["casino.test", 1]] and st["since"] == "2026-11-24T00:00:00Z"
    assert st["query_log"]["errors"] == 4 and st["query_log"]["degraded"] is None  # no error time yet
    assert st["query_log"]["clients"] == "none" and not st["live"]
    status_mod.write_counters(cfg.state_dir, stats, lambda m: ["gambling"], "2026-11-24T00:00:00Z")
    st = status_mod.collect_status(cfg)
    assert "ENOSPC" in st["dns"]["query_log"]["degraded"]
    text = fields(status_mod.format_status(st))
    assert text["dns"].startswith("12 queries, 1 blocked (gambling 1)")
    assert "DEGRADED: ENOSPC" in text["query log"]
    # A new run carries the counts over.
    again = SharedStats.create(3)
    assert status_mod.seed_counters(cfg.state_dir, again) == "2026-11-24T00:00:00Z"
    assert again.totals(lambda m: ["gambling"])["queries"] == 12
