"""From a fresh clone to the first filtered answer, as a new user meets it: the README's first
set-up command, timed, then a second (warm) start of the same checkout.

    python -m benchmarks.first_start [--runs N]

Each run clones this repository (its committed HEAD) into a temporary directory, runs the
README's first ```sh block there with a fresh state directory (XDG_STATE_HOME) and asks
127.0.0.1:5353 for a name the demo bundle blocks until the answer is NXDOMAIN. "warm" stops
that service (SIGINT) and starts `.venv/bin/schoolgate run` again in the same checkout: the
venv, the demo bundle and numba's cache (next to the sources) are there then. pip takes its
packages from whatever index and cache this machine has; say which when recording figures.
Needs port 5353 free. Run it on a quiet machine: the figures are wall-clock seconds.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks._common import ROOT, machine

BLOCKED = "www.0-casino.info"  # in the demo bundle's gambling excerpt
PORT = 5353
DEADLINE = 600.0


def readme_first_command() -> str:
    return re.findall(r"```sh\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)[0]


def _query(qid: int) -> bytes:
    name = b"".join(bytes([len(p)]) + p.encode() for p in BLOCKED.split(".")) + b"\x00"
    return qid.to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + name + b"\x00\x01\x00\x01"


def wait_blocked(proc: subprocess.Popen, t0: float) -> float:
    """Seconds from ``t0`` until 127.0.0.1:PORT answers NXDOMAIN for BLOCKED."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        qid = 0
        while time.monotonic() - t0 < DEADLINE:
            if proc.poll() is not None:
                raise SystemExit(f"the command exited with {proc.returncode}")
            qid = (qid + 1) & 0xFFFF
            try:
                s.sendto(_query(qid), ("127.0.0.1", PORT))
                data = s.recv(4096)
            except OSError:
                time.sleep(0.05)
                continue
            if int.from_bytes(data[:2], "big") == qid and data[3] & 0x0F == 3:
                return time.monotonic() - t0
    raise SystemExit(f"no blocked answer within {DEADLINE:g} s")


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def one_run(tmp: Path) -> tuple[float, float]:
    clone = tmp / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = dict(os.environ, XDG_STATE_HOME=str(tmp / "state"))
    env.pop("NUMBA_CACHE_DIR", None)
    env.pop("SCHOOLGATE_RESOLV_CONF", None)
    log = open(tmp / "first.log", "wb")
    t0 = time.monotonic()
    proc = subprocess.Popen(["bash", "-c", readme_first_command()], cwd=clone, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        first = wait_blocked(proc, t0)
    finally:
        stop(proc)
    log2 = open(tmp / "warm.log", "wb")
    t0 = time.monotonic()
    proc = subprocess.Popen([str(clone / ".venv" / "bin" / "schoolgate"), "run"], cwd=clone, env=env,
                            stdout=log2, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        warm = wait_blocked(proc, t0)
    finally:
        stop(proc)
    return first, warm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    print(machine())
    print(f"command: {readme_first_command()}")
    rows = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="sg-first-") as d:
            first, warm = one_run(Path(d))
        rows.append((first, warm))
        print(f"run {i + 1}: fresh clone -> first blocked answer {first:.1f} s; warm start -> {warm:.2f} s")
    print(f"best: first {min(r[0] for r in rows):.1f} s, warm {min(r[1] for r in rows):.2f} s; "
          f"worst: first {max(r[0] for r in rows):.1f} s, warm {max(r[1] for r in rows):.2f} s")


if __name__ == "__main__":
    main()
