"""Counters shared by DNS workers, the query log, counters.json and `schoolgate status`,
end to end: `schoolgate run` with two workers, dnsmasq as upstream, dnspython clients from
many source ports (so SO_REUSEPORT spreads them over both workers), all on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

pytest.importorskip("dns", reason="needs dnspython (pip install -e '.[test]')")
import dns.message  # noqa: E402
import dns.query  # noqa: E402
import dns.rcode  # noqa: E402

from tests.bundles import make_bundle  # noqa: E402
from tests.dnsservers import ROOT, free_port, need_tools, start_dnsmasq, start_schoolgate  # noqa: E402
from tests.wait import DEADLINE  # noqa: E402

pytestmark = pytest.mark.slow

CONFIG = """\
state_dir: {tmp}/state
bundle: {tmp}/bundle
dns:
  listen: ["127.0.0.1:{port}"]
  upstreams: ["127.0.0.1:{upstream}"]
  upstream_timeout: 500ms
  rate_limit: 0
  workers: {workers}
  fast_path: {fast}
policies:
  default: {{block: [gambling]}}
{log}
"""


def write_config(tmp: Path, port: int, upstream: int, workers: int = 2, fast: bool = True, log: str = "") -> Path:
    cfg = tmp / "schoolgate.yaml"
    cfg.write_text(CONFIG.format(tmp=tmp, port=port, upstream=upstream, workers=workers,
                                 fast="true" if fast else "false", log=log))
    return cfg


def status(cfg: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "appliance.cli", "status", "--json", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def send_from_many_ports(port: int, names: list[str]) -> int:
    """Each query from a fresh socket (a new source port); returns how many were answered."""
    answered = 0
    for name in names:
        q = dns.message.make_query(name, "A")
        try:
            dns.query.udp(q, "127.0.0.1", port=port, timeout=10)
            answered += 1
        except dns.exception.Timeout:
            pass
    return answered


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    need_tools("dnsmasq")
    tmp = tmp_path_factory.mktemp("obs")
    make_bundle(tmp / "bundle", 3)
    up_port, port = free_port(), free_port()
    upstream = start_dnsmasq(tmp, up_port)
    yield {"tmp": tmp, "port": port, "up_port": up_port}
    upstream.stop()


def test_two_workers_count_every_query_once(env) -> None:
    tmp, port = env["tmp"], env["port"]
    cfg = write_config(tmp, port, env["up_port"], workers=2)
    sg = start_schoolgate(cfg, tmp, port, name="sg-counters")
    try:
        sg.signal(signal.SIGUSR1)
        before = wait_for(lambda: sg.records("counters"), DEADLINE, "the first counters line")[-1]["counters"]
        names = ([f"n{i}.casino.test" for i in range(150)] + [f"w{i}.allowed.test" for i in range(100)]
                 + ["allowed.test"] * 150)
        assert send_from_many_ports(port, names) == len(names)
        sg.signal(signal.SIGUSR1)
        after = wait_for(lambda: sg.records("counters")[1:], DEADLINE, "the second counters line")[-1]["counters"]
        assert after["queries"] - before["queries"] == len(names)
        assert after["blocked"] - before["blocked"] == 150
        assert after["blocked_by_category"]["gambling"] - before["blocked_by_category"].get("gambling", 0) == 150
        assert after["forwarded"] - before["forwarded"] >= 101  # at least every distinct allowed name
        assert after["cache_hits"] - before["cache_hits"] >= 140
        assert after["upstream_latency_ms"]["0"]["queries"] >= 101
        # counters.json (written every 5 s by the supervisor) feeds `schoolgate status`.
        st = wait_for(lambda: (s := status(cfg))["dns"] and s["dns"]["queries"] == after["queries"] and s, DEADLINE,
                      "counters.json to catch up")
        assert st["dns"]["blocked"] == after["blocked"] and st["dns"]["live"]
        # Blocks answered by the fast path reach the top-blocked table (its per-packet masks).
        top = dict(st["dns"]["top_blocked"])
        assert len(top) == 20 and all(k.endswith(".casino.test") and v == 1 for k, v in top.items())
        # ... and the query log, from both workers, with one client hash (one key per day).
        got = wait_for(lambda: len(log_lines(tmp / "state")) >= 150 and log_lines(tmp / "state"), DEADLINE, "log lines")
        assert sorted(x["name"] for x in got) == sorted(names[:150])
        assert len({x["client"] for x in got}) == 1 and got[0]["client"] != "127.0.0.1"
    finally:
        assert sg.stop() == 0, sg.text()[-3000:]
    # At stop each worker logs its own counts: both served, and they add up to the total.
    final = [r["counters"] for r in sg.records("counters") if "this_worker" in r["counters"]]
    mine = [r["this_worker"]["queries"] for r in final]
    assert len(mine) == 2 and all(n > 0 for n in mine), mine
    assert sum(mine) == final[-1]["queries"]
    # The counts survive a restart (counters.json is read back at start).
    total = json.loads((tmp / "state" / "counters.json").read_text())["totals"]["queries"]
    assert total == final[-1]["queries"]
    sg = start_schoolgate(cfg, tmp, port, name="sg-counters-2")
    try:
        st = wait_for(lambda: (s := status(cfg))["dns"] and s["dns"]["queries"] > total and s, DEADLINE, "a report")
        assert st["dns"]["blocked"] >= 150
        assert st["dns"]["since"] == json.loads((tmp / "state" / "counters.json").read_text())["since"]
    finally:
        assert sg.stop() == 0, sg.text()[-3000:]


def tcp_ask(port: int, name: str, source: str = "127.0.0.1") -> dns.message.Message:
    return dns.query.tcp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=10, source=source)


def log_lines(state: Path) -> list[dict]:
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    path = state / "logs" / f"queries-{day}.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")]


def test_query_log_keeps_no_raw_client_address(env) -> None:
    tmp, port = env["tmp"] / "qlog", env["port"]
    tmp.mkdir()
    cfg = write_config(tmp.parent, port, env["up_port"], workers=2, fast=False)
    cfg = cfg.rename(tmp / "schoolgate.yaml")
    cfg.write_text(cfg.read_text().replace(f"{tmp.parent}/state", f"{tmp}/state"))
    state = tmp / "state"
    old = state / "logs" / "queries-2000-01-01.jsonl"
    old.parent.mkdir(parents=True)
    old.write_text('{"name": "old"}\n')
    sg = start_schoolgate(cfg, tmp, port, name="sg-qlog")
    try:
        assert not old.exists()  # the retention job ran at start
        for i in range(20):
            tcp_ask(port, f"q{i}.casino.test", source="127.0.0.7")
        assert tcp_ask(port, "allowed.test", source="127.0.0.7").rcode() == dns.rcode.NOERROR
        got = wait_for(lambda: [x for x in log_lines(state) if x["name"].endswith("casino.test")], DEADLINE,
                       "log lines")
        got = wait_for(lambda: len(log_lines(state)) >= 20 and log_lines(state), DEADLINE, "all log lines")
        assert sorted(x["name"] for x in got) == sorted(f"q{i}.casino.test" for i in range(20))  # blocked only
        assert {x["client"] for x in got} == {got[0]["client"]} and len(got[0]["client"]) == 16
        text = "".join(p.read_text() for p in (state / "logs").glob("*.jsonl"))
        assert "127.0.0.7" not in text
        st = status(cfg)
        assert st["dns"]["query_log"]["mode"] == "blocked" and st["dns"]["query_log"]["clients"] == "hash"
    finally:
        assert sg.stop() == 0, sg.text()[-3000:]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tiny tmpfs (a full disk) needs root")
def test_full_disk_degrades_logging_and_dns_goes_on(env) -> None:
    tmp, port = env["tmp"] / "full", env["port"]
    tmp.mkdir()
    state = tmp / "state"
    logs = state / "logs"
    logs.mkdir(parents=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(logs)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        cfg = tmp / "schoolgate.yaml"
        cfg.write_text(CONFIG.format(tmp=tmp, port=port, upstream=env["up_port"], workers=1, fast="false", log="")
                       .replace(f"bundle: {tmp}/bundle", f"bundle: {env['tmp']}/bundle"))
        sg = start_schoolgate(cfg, tmp, port, name="sg-full")
        try:
            # ~200 B a line: 32 kB is full after ~160 lines; send far more. One line first,
            # then bursts of 100, each once the log has flushed what came before (or the disk
            # is full): some lines are written, the flushes after them fail.
            asked = answered = 0

            def on_disk() -> int:
                return sum(f.stat().st_size for f in logs.glob("*.jsonl"))

            for n in (1, 100, 100, 100, 100, 100, 99):
                size = on_disk()
                for _ in range(n):
                    r = tcp_ask(port, f"long-name-to-fill-the-disk-{asked:04d}.casino.test")
                    asked += 1
                    answered += r.rcode() == dns.rcode.NXDOMAIN  # blocked (block_mode nxdomain)
                wait_for(lambda: on_disk() > size or os.statvfs(logs).f_bavail == 0, DEADLINE,  # noqa: B023
                         "a flush of the query log")
            assert answered == asked == 600  # filtering never stopped
            assert tcp_ask(port, "allowed.test").rcode() == dns.rcode.NOERROR
            st = wait_for(lambda: (s := status(cfg))["dns"] and s["dns"]["query_log"]["errors"] and s, DEADLINE,
                          "the log errors in status")
            q = st["dns"]["query_log"]
            assert q["written"] > 0 and q["errors"] > 0 and "ENOSPC" in (q["degraded"] or "")
            text = subprocess.run([sys.executable, "-m", "appliance.cli", "status", "--config", str(cfg)],
                                  capture_output=True, text=True, timeout=60, cwd=ROOT).stdout
            assert "DEGRADED" in text
        finally:
            assert sg.stop() == 0, sg.text()[-3000:]
    finally:
        subprocess.run(["umount", str(logs)], check=False, timeout=30)
