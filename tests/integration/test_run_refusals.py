"""`schoolgate run` refusing to start: the error names what and where (the listen address,
its protocol and who holds it; the config line), comes first and alone — nothing installed,
created or logged before it — and the exit status says which kind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dnsservers import free_port
from tests.wait import DEADLINE

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def run(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance.cli", "run", "--config", str(config)],
                          capture_output=True, text=True, cwd=ROOT, timeout=DEADLINE)


def config(tmp: Path, port: int, extra: str = "") -> Path:
    # No bundle configured nor active: a start would install the demo bundle under state/.
    cfg = tmp / "schoolgate.yaml"
    cfg.write_text(f'state_dir: {tmp / "state"}\ndns:\n  listen: ["127.0.0.1:{port}"]\n{extra}')
    return cfg


def test_a_udp_port_held_by_this_process_is_named_with_the_holder(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
        held.bind(("127.0.0.1", port))
        p = run(config(tmp_path, port))
    assert p.returncode == 1, p.stderr
    me = Path("/proc/self/comm").read_text().strip()
    assert p.stderr.splitlines() == [
        f"schoolgate: error: cannot listen on 127.0.0.1:{port}/udp: address already in use "
        f"(held by process {os.getpid()} {me})"]
    assert not (tmp_path / "state").exists()  # refused before the demo bundle is installed


def test_a_tcp_port_held_by_another_process_names_its_pid(tmp_path: Path) -> None:
    port = free_port()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import socket, sys\ns = socket.socket()\n"
         f"s.bind(('127.0.0.1', {port}))\ns.listen(1)\nprint('ready', flush=True)\nsys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        p = run(config(tmp_path, port))
    finally:
        holder.kill()
        holder.wait()
    assert p.returncode == 1, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith(f"schoolgate: error: cannot listen on 127.0.0.1:{port}/tcp: address already "
                               f"in use (held by process {holder.pid} "), lines


def test_an_unknown_category_is_refused_before_the_demo_is_installed(tmp_path: Path) -> None:
    cfg = config(tmp_path, free_port(), "policies:\n  p: {block: [nosuch]}\n")
    p = run(cfg)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"schoolgate: error: {cfg}:5:") \
        and "unknown category 'nosuch'" in lines[0], p.stderr
    assert not (tmp_path / "state").exists()
