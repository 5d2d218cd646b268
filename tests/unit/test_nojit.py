"""The kernel tests once more with NUMBA_DISABLE_JIT=1 (docs/architecture.md, Conventions).

With the JIT off the njit kernels run as plain Python: the same property tests then check
the kernels' Python semantics (numba and CPython must agree on them), and coverage can see
inside the kernels. The run happens in a subprocess because numba reads the variable at
import. Example counts are kept small through SCHOOLGATE_HYPOTHESIS_EXAMPLES, which the
domain and SipHash test modules read; the CIDR and keyword modules size themselves for
pure Python (``PURE_PYTHON`` there). How long the runs take is not asserted (a loaded machine
is slower, not wrong); the subprocess timeout only stops a run that hangs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = Path(__file__).resolve().parent
KERNEL_TEST_FILES = [
    "test_siphash.py",
    "test_domain_matcher.py",
    "test_cidr_matcher.py",  # if present
    "test_keyword_scanner.py",  # if present
    "test_select_kernels.py",  # the inspect fast path's DNS question reader
]
NOJIT_EXAMPLES = 50
# Line coverage of the domain kernels reached by the pure-Python run.
MIN_DOMAIN_KERNEL_COVERAGE = 90.0
HANG_TIMEOUT = 1800.0  # seconds: a run that hangs, not a slow one (each takes ~15 s on a quiet 2-core machine)


@pytest.mark.slow
def test_kernel_tests_pass_without_jit(tmp_path: Path) -> None:
    files = [str(UNIT / f) for f in KERNEL_TEST_FILES if (UNIT / f).exists()]
    env = dict(os.environ, NUMBA_DISABLE_JIT="1",
               SCHOOLGATE_HYPOTHESIS_EXAMPLES=str(NOJIT_EXAMPLES),
               COVERAGE_FILE=str(tmp_path / ".coverage"))
    have_coverage = importlib.util.find_spec("coverage") is not None
    runner = [sys.executable, "-m"]
    if have_coverage:
        runner += ["coverage", "run", "--source=filters", "-m"]
    cmd = runner + [
        "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
        # uint64 wrap-around is SipHash's arithmetic; numpy scalars warn about it
        "-W", "ignore:overflow encountered:RuntimeWarning",
        *files,
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_TIMEOUT)
    seconds = time.perf_counter() - t0
    tail = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, tail
    summary = proc.stdout.strip().splitlines()[-1]
    assert " passed" in summary and not re.search(r"\d+ (failed|errors?)\b", summary), tail
    print(f"NUMBA_DISABLE_JIT=1 run of {len(files)} files: {summary} ({seconds:.1f}s)")

    if not have_coverage:
        pytest.skip("coverage is not installed: kernel line coverage not measured "
                    "(pip install 'schoolgate[test]')")
    out = tmp_path / "coverage.json"
    rep = subprocess.run(
        [sys.executable, "-m", "coverage", "json", "-q", "-o", str(out),
         "--include=*/filters/_domain_kernels.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert rep.returncode == 0, rep.stdout + rep.stderr
    files_cov = json.loads(out.read_text())["files"]
    (name, data), = files_cov.items()
    pct = data["summary"]["percent_covered"]
    missing = data["missing_lines"]
    print(f"line coverage of {name} without the JIT: {pct:.1f}% (missing lines {missing})")
    assert pct >= MIN_DOMAIN_KERNEL_COVERAGE, (pct, missing)


# The DNS fast path's kernels, once more as plain Python (their own run: the differential
# tests against the pipeline take longer than the matcher's). Fuzz packets and examples
# are scaled down by test_dns_fast.py itself when it sees NUMBA_DISABLE_JIT.
MIN_DNS_KERNEL_COVERAGE = 90.0


@pytest.mark.slow
def test_dns_kernel_tests_pass_without_jit(tmp_path: Path) -> None:
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", SCHOOLGATE_HYPOTHESIS_EXAMPLES="40",
               COVERAGE_FILE=str(tmp_path / ".coverage"))
    have_coverage = importlib.util.find_spec("coverage") is not None
    runner = [sys.executable, "-m"] + (["coverage", "run", "--source=filters", "-m"] if have_coverage else [])
    cmd = runner + ["pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                    "-W", "ignore:overflow encountered:RuntimeWarning", str(UNIT / "test_dns_fast.py")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_TIMEOUT)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    print(f"NUMBA_DISABLE_JIT=1 run of test_dns_fast.py: {proc.stdout.strip().splitlines()[-1]} ({seconds:.1f}s)")
    if not have_coverage:
        pytest.skip("coverage is not installed: kernel line coverage not measured")
    out = tmp_path / "coverage.json"
    rep = subprocess.run([sys.executable, "-m", "coverage", "json", "-q", "-o", str(out),
                          "--include=*/filters/_dns_kernel*.py"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    files = json.loads(out.read_text())["files"]  # the batch module and its parts
    assert len(files) >= 6, sorted(files)
    covered = sum(d["summary"]["covered_lines"] for d in files.values())
    statements = sum(d["summary"]["num_statements"] for d in files.values())
    pct = 100.0 * covered / statements
    missing = {name: d["missing_lines"] for name, d in files.items() if d["missing_lines"]}
    print(f"line coverage of the DNS kernels without the JIT: {pct:.1f}% (missing lines {missing})")
    assert pct >= MIN_DNS_KERNEL_COVERAGE, (pct, missing)
