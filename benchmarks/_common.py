"""Helpers shared by the benchmarks: machine description, memory readings, tables."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The real public lists and captures the tests use too (tests/conftest.py, docs/testing.md,
# "Shared test data"); benchmarks that need them say so and fall back or skip when they are absent.
SHARED_DATA = Path(os.environ.get("SCHOOLGATE_SHARED_DATA") or ROOT.parent / "shared" / "data")


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numba
    import numpy

    return (f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}, "
            f"Python {platform.python_version()}, numba {numba.__version__}, numpy {numpy.__version__}")


def memory_kib() -> dict[str, int]:
    """RSS and PSS of this process in KiB (PSS splits shared pages among their users)."""
    out = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            out[key.lower()] = int(rest.split()[0])
    return out


def run_python(code: str, env: dict | None = None, timeout: float = 600) -> str:
    """Run code in a fresh interpreter (for memory and cold-start figures); its stdout."""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, **(env or {})}, cwd=ROOT)
    if p.returncode:
        raise RuntimeError(p.stderr)
    return p.stdout


def best_of(fn, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def table(rows: list[dict], columns: list[str]) -> str:
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    head = "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)) + " |"
            for r in rows]
    return "\n".join([head, sep, *body])
