"""Project invariants: the README's commands, CI entry and layering."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _sh_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)


def test_readme_opens_with_two_setup_commands() -> None:
    blocks = _sh_blocks()
    assert len(blocks) >= 2
    run_cmd, test_cmd = blocks[0], blocks[1]
    assert "\n" not in run_cmd and "\n" not in test_cmd
    assert "schoolgate" in run_cmd and "pytest" in test_cmd


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = ROOT / ".ci" / "run"
    assert ci.stat().st_mode & 0o111, ".ci/run must be executable"
    script = ci.read_text()
    extract = re.search(r"cmd=\$\((.*)\)\n", script).group(1)
    got = subprocess.run(["bash", "-c", extract], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert got == _sh_blocks()[1]


def test_layers_point_one_way() -> None:
    def imports(pkg: str) -> set[str]:
        found = set()
        for py in (ROOT / pkg).rglob("*.py"):
            for m in re.finditer(r"^\s*(?:from|import)\s+(\w+)", py.read_text(), re.M):
                found.add(m.group(1))
        return found
    assert not imports("filters") & {"signatures", "appliance"}
    assert "appliance" not in imports("signatures")


# An upper bound on wall-clock time in a test fails on a loaded or slow machine and says
# nothing about correctness: speed belongs in benchmarks/. Lower bounds ("it waited at least
# the timeout") are fine, and waits poll a condition up to a generous deadline.
_WALL_CLOCK_UPPER_BOUND = [
    re.compile(r"assert[^#]*\b(seconds|elapsed|took|duration|wall|late)\b[^#]*<"),
    re.compile(r"assert[^#]*\b(monotonic|perf_counter|time)\(\)[^#]*<"),
    re.compile(r"\bTIME_LIMIT\b|\bBUDGET_S\b"),
]


def test_no_test_asserts_a_wall_clock_upper_bound() -> None:
    found = []
    for py in sorted((ROOT / "tests").rglob("*.py")):
        if py.resolve() == Path(__file__).resolve():
            continue
        for n, line in enumerate(py.read_text().splitlines(), 1):
            if any(rx.search(line) for rx in _WALL_CLOCK_UPPER_BOUND):
                found.append(f"{py.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, "wall-clock upper bounds in tests (move them to benchmarks/):\n" + "\n".join(found)
