"""Real servers for integration tests: schoolgate and dnsmasq as subprocesses on 127.0.0.1.

Only loopback addresses are ever used. Every wait is bounded; every process started here is
stopped by its own pid when the test is done.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.wait import DEADLINE

ROOT = Path(__file__).resolve().parent.parent


def need_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (as root, tests/setup.sh installs them)")


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host`` right now."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(fam, socket.SOCK_DGRAM) as u:
            u.bind((host, 0))
            port = u.getsockname()[1]
            try:
                with socket.socket(fam, socket.SOCK_STREAM) as t:
                    t.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def have_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class Proc:
    def __init__(self, argv: list[str], log: Path, env: dict | None = None) -> None:
        self.log = log
        self._f = open(log, "wb")
        self.p = subprocess.Popen(argv, stdout=self._f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env=env, cwd=ROOT)

    @property
    def pid(self) -> int:
        return self.p.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def records(self, msg: str | None = None) -> list[dict]:
        """The JSON log records written so far (only those whose msg is ``msg``, if given);
        lines that are not JSON objects (a traceback) are skipped."""
        out = []
        for line in self.text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and (msg is None or rec.get("msg") == msg):
                out.append(rec)
        return out

    def signal(self, sig: int) -> None:
        self.p.send_signal(sig)

    def stop(self, timeout: float = DEADLINE) -> int | None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        self._f.close()
        return self.p.returncode


def start_dnsmasq(tmp: Path, port: int, ttl: int = 300) -> Proc:
    """dnsmasq answering a small test zone, no upstream of its own, loopback only."""
    need_tools("dnsmasq")
    argv = ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll",
            "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={port}", "--pid-file=",
            "--address=/allowed.test/192.0.2.10", "--address=/nx.test/",
            "--host-record=promo.casino.test,192.0.2.66", "--cname=innocent.test,promo.casino.test",
            f"--local-ttl={ttl}", "--log-queries", f"--log-facility={tmp / f'dnsmasq-{port}.log'}"]
    if os.geteuid() == 0:
        argv.append("--user=root")  # else it drops to a user that cannot write our log
    p = Proc(argv, tmp / f"dnsmasq-{port}.out")
    wait_answer(port, "allowed.test", timeout=DEADLINE, proc=p)
    return p


def start_schoolgate(config: Path, tmp: Path, port: int, name: str = "schoolgate",
                     env: dict | None = None) -> Proc:
    e = dict(os.environ, **(env or {}))
    e.setdefault("XDG_STATE_HOME", str(tmp / "xdg"))
    argv = [sys.executable, "-m", "appliance.cli", "run"] + (["--config", str(config)] if config else [])
    p = Proc(argv, tmp / f"{name}.log", e)
    wait_answer(port, "readiness.probe.test", timeout=DEADLINE, proc=p)
    return p


def wait_answer(port: int, name: str, timeout: float, proc: Proc | None = None) -> None:
    """Poll until something answers a query for ``name`` on 127.0.0.1:port."""
    import dns.message
    import dns.query

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.p.poll() is not None:
            raise RuntimeError(f"server exited with {proc.p.returncode}:\n{proc.text()[-3000:]}")
        try:
            dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=1.5)
            return
        except Exception:
            time.sleep(0.05)
    raise RuntimeError(f"nothing answered on 127.0.0.1:{port} within {timeout} s"
                       + (f":\n{proc.text()[-3000:]}" if proc else ""))
