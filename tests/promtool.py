"""``promtool check metrics`` (Prometheus's own linter) as a test assertion."""

from __future__ import annotations

import shutil
import subprocess

import pytest

__all__ = ["promtool_check"]


def promtool_check(body: bytes) -> None:
    """``promtool check metrics`` on a /metrics body: exit 0 and nothing on stdout or stderr
    (its lint findings — a counter without _total, a non-base unit, no help — are printed)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not on PATH (Debian package prometheus; CI installs it)")
    out = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=120,
                         check=False)
    assert (out.returncode, out.stdout.decode(), out.stderr.decode()) == (0, "", ""), body.decode()
