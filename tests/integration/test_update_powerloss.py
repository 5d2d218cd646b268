"""Power loss during an update: `schoolgate update --once` as a subprocess against
a real HTTP repository on 127.0.0.1, killed with SIGKILL at random points of the download,
the unpack, the verification and the activation — at least 50 times.

After every kill the state directory must hold a valid active bundle (it opens, every file
matches the manifest, the canary self-test passes), and a later `update --once` must
succeed and leave no debris. The repository serves the bundle through a delay hook
(RepoServer's "paced" fault) so that the download lasts long enough to be hit.

Most runs are forked by tests/updater_zygote.py, which has done the imports once: they run
`appliance.cli.main(["update", "--once", ...])` exactly as the console script does, without
~0.6 s of interpreter start that writes nothing (the test prints how long its 50 kills took:
a loaded machine takes longer, which is not a failure); every tenth run is a fresh
`python -m appliance.cli update --once`.
"""

from __future__ import annotations

import io
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.updates.state import active_bundle_dir, bundle_dir_name
from signatures.bundle import open_bundle
from signatures.keys import Keyring, generate_keys
from signatures.repository import load_repo, publish
from tests.bundles import make_bundle
from tests.dnsservers import ROOT
from tests.repo_server import Fault, RepoServer

pytestmark = pytest.mark.slow

KILLS = 50
MAX_RUNS = 10 * KILLS  # runs before giving up: a kill lands in most of them
# ~2.3 MB of bundle: 200k names. Served at 64 KiB per 8 ms (~8 MB/s), the download takes
# ~0.3 s; unpack, verification and the self-test follow in ~0.1 s.
EXTRA_NAMES = 200_000
PACE = Fault("paced", interval=0.008)
DOWNLOAD_S = 0.3
# Where each kill is aimed (rotating): a random instant of the run, or a random delay after
# a marker of a phase is seen (server-side request, files appearing in the state dir).
PHASES = ("anywhere", "download", "unpack", "verify", "activate")
FRESH_EVERY = 10  # every tenth run is a fresh interpreter, killed anywhere (imports included)


class ForkedRun:
    """One `update --once` forked by the zygote (its grandchild: polled through the zygote)."""

    def __init__(self, zygote: subprocess.Popen) -> None:
        self.z = zygote
        zygote.stdin.write(b"run\n")
        zygote.stdin.flush()
        self.pid = int(zygote.stdout.readline())
        self.code: int | None = None

    def poll(self, timeout: float = 0.0) -> int | None:
        if self.code is None and select.select([self.z.stdout], [], [], timeout)[0]:
            line = self.z.stdout.readline().split()
            assert line[0] == b"exit", line
            self.code = int(line[1])
        return self.code

    def kill(self) -> bool:
        """SIGKILL the run; False when it had already exited (it won the race)."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            self.poll(30)
            return False
        assert self.poll(30) is not None
        return self.code != 0

    def finish(self) -> int:
        code = self.poll(60)
        assert code is not None
        return code


class FreshRun:
    def __init__(self, argv: list[str]) -> None:
        self.p = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def poll(self) -> int | None:
        return self.p.poll()

    def kill(self) -> bool:
        """SIGKILL the run; False when it had already exited (it won the race)."""
        if self.p.poll() is not None:
            return False
        self.p.kill()
        return self.p.wait(30) != 0

    def finish(self) -> int:
        return self.p.wait(60)


def _update_cli(config: Path) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["update", "--once", "--config", str(config)], out, err)
    return code, out.getvalue() + err.getvalue()


def _check_valid(state: Path) -> int:
    """The state after a kill: an active bundle that opens, verifies and self-tests."""
    d = active_bundle_dir(state)
    assert d is not None, f"no active bundle: {sorted(p.name for p in (state / 'bundles').iterdir())}"
    b = open_bundle(d)
    b.verify_files(exact=True)
    b.self_test()
    return b.version


def _debris(state: Path) -> list[str]:
    left = [str(p) for sub in ("downloads", "staging") for p in (state / sub).iterdir()]
    left += [str(p) for p in state.glob(".*.tmp")] + [str(p) for p in state.glob("tuf/tmp*")]
    left += [str(p) for p in (state / "bundles").iterdir() if p.name.startswith(".")]
    return left


def _wait(cond, run, limit: float) -> bool:
    """Poll ``cond`` every millisecond until it holds (True) or the run ends (False)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if cond():
            return True
        if run.poll() is not None:
            return False
        time.sleep(0.001)
    return False


def test_kill_9_during_updates_never_leaves_an_invalid_state(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    keys, repo, state = tmp_path / "keys", tmp_path / "repo", tmp_path / "state"
    generate_keys(keys)
    publish(repo, make_bundle(tmp_path / "b1", 1, now=now), Keyring(keys), now)
    shutil.copyfile(repo / "metadata" / "root.json", tmp_path / "root.json")
    server = RepoServer(repo)
    config = tmp_path / "schoolgate.yaml"
    config.write_text(f'state_dir: state\nupdates:\n  repository: "{server.url}"\n'
                      "  trusted_root: root.json\n  interval: 1h\n  timeout: 60s\n")
    zygote = subprocess.Popen([sys.executable, "-m", "tests.updater_zygote", str(config), str(tmp_path / "b1")],
                              cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    try:
        code, text = _update_cli(config)
        assert code == 0, text
        pristine = tmp_path / "pristine"
        shutil.copytree(state, pristine, symlinks=True)
        big = make_bundle(tmp_path / "b2", 2, now=now,
                          extra=tuple(f"n{i}.k{i % 977}.test" for i in range(EXTRA_NAMES)))
        publish(repo, big, Keyring(keys), datetime.now(UTC))
        target = load_repo(repo).bundle_target
        name = bundle_dir_name(2, target.hashes["sha256"])
        assert target.length > 2_000_000
        server.fault("/targets/*", PACE)
        assert zygote.stdout.readline() == b"ready\n"

        rng = random.Random(int(os.environ.get("SG_POWERLOSS_SEED", "0")) or None)
        argv = [sys.executable, "-m", "appliance.cli", "update", "--once", "--config", str(config)]
        kills, finished, after = Counter(), 0, Counter()
        full = {}  # kind -> seconds of a whole run, measured by the first of each left alone
        t_start = time.monotonic()
        i = forked = 0
        while sum(kills.values()) < KILLS:
            assert i < MAX_RUNS, f"only {sum(kills.values())} kills in {i} runs: {dict(kills)}"
            shutil.rmtree(state)
            shutil.copytree(pristine, state, symlinks=True)
            kind = "fresh" if i % FRESH_EVERY == 1 else "forked"
            phase = (("anywhere" if kind == "fresh" else PHASES[forked % len(PHASES)])
                     if kind in full else None)
            i += 1
            forked += kind == "forked"
            seen = len(server.fetched("/targets/*"))
            t0 = time.monotonic()
            run = FreshRun(argv) if kind == "fresh" else ForkedRun(zygote)
            hit = False
            if phase == "anywhere":
                hit = not _wait(lambda: False, run, rng.uniform(0.0, full[kind]))
            elif phase == "download":
                hit = _wait(lambda seen=seen: len(server.fetched("/targets/*")) > seen, run, 30)
                hit = hit and not _wait(lambda: False, run, rng.uniform(0, DOWNLOAD_S))
            elif phase == "unpack":
                hit = _wait(lambda: (state / "staging" / name).exists(), run, 30)
                hit = hit and not _wait(lambda: False, run, rng.uniform(0, 0.01))
            elif phase == "verify":
                hit = _wait(lambda: (state / "staging" / name / "manifest.json").exists(), run, 30)
                # verify + self-test of 2.3 MB with the kernels loaded: ~10-20 ms
                hit = hit and not _wait(lambda: False, run, rng.uniform(0, 0.015))
            elif phase == "activate":
                hit = _wait(lambda: (state / "bundles" / name).exists(), run, 30)
                hit = hit and not _wait(lambda: False, run, rng.uniform(0, 0.004))
            if hit and run.poll() is None and run.kill():
                kills[f"{kind}:{phase}"] += 1
            else:
                assert run.finish() == 0
                finished += 1
                full.setdefault(kind, time.monotonic() - t0)
            after[_check_valid(state)] += 1
            # ... and the next update succeeds, cleaning up after the killed one
            server.clear()
            code, text = _update_cli(config)
            server.fault("/targets/*", PACE)
            assert code == 0, text
            assert _check_valid(state) == 2
            assert _debris(state) == []
        took = time.monotonic() - t_start
        print(f"{sum(kills.values())} kills ({dict(sorted(kills.items()))}), {finished} runs finished, "
              f"in {took:.1f} s (whole runs: {', '.join(f'{k} {v:.2f} s' for k, v in full.items())}); "
              f"active version after the kill: {dict(after)}")
        assert after[1] > 0 and after[2] > 0  # kills landed both before and after activation
        assert any(k.startswith("fresh:") for k in kills)
    finally:
        zygote.stdin.close()
        zygote.wait(30)
        server.close()
