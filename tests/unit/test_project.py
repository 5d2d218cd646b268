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


# The repository explains itself: no comment, docstring, test message or doc sends the reader
# to a document outside it (a design note, a style guide, an issue tracker, a task brief) or
# to files beside the checkout. The rules those stood for are written in docs/ and README.md;
# a reference points there, or states the reason itself. The patterns are spelled so that
# they do not match their own source.
_SELF_CONTAINED = ("appliance", "signatures", "filters", "tests", "benchmarks", "docs", "config", "image",
                   "README.md", "pyproject.toml")
_NOT_CHECKED = ("config/demo/repo", "image/out", "tests/artifacts")  # signed metadata; build output
_SKIPPED_DIRS = {"__pycache__", ".hypothesis", ".pytest_cache"}
_OUTSIDE_REFERENCE = re.compile(
    r"DESIGN\.md|STYLE\.md|\bissues?\s#?\d|\bhelper\sbrief\b|\bper\sthe\sbrief\b|\bthe\sissue's\b"
    r"|\blater\sissue\b|\.\./shared",
    re.IGNORECASE,
)
# The one allowed mention of the directory beside the checkout: the documented default of
# SCHOOLGATE_SHARED_DATA, in README.md, on the line that names the variable.
_SHARED_DATA_DEFAULT = f"`{Path('..', 'shared', 'data').as_posix()}`"  # built, so it does not match itself


def _allowed_outside_reference(rel: str, line: str) -> bool:
    return rel == "README.md" and "SCHOOLGATE_SHARED_DATA" in line and _SHARED_DATA_DEFAULT in line


def _text_files() -> list[Path]:
    out = []
    for name in _SELF_CONTAINED:
        top = ROOT / name
        for p in sorted(top.rglob("*")) if top.is_dir() else [top]:
            rel = p.relative_to(ROOT).as_posix()
            if not p.is_file() or _SKIPPED_DIRS & set(p.relative_to(ROOT).parts):
                continue
            if any(rel == d or rel.startswith(d + "/") for d in _NOT_CHECKED):
                continue
            out.append(p)
    return out


def test_no_reference_points_outside_the_repository() -> None:
    found = []
    files = _text_files()
    assert any(p.name == "matching.md" for p in files) and len(files) > 100
    for p in files:
        raw = p.read_bytes()
        if b"\0" in raw[:8192]:
            continue  # binary
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue  # binary
        rel = p.relative_to(ROOT).as_posix()
        for n, line in enumerate(text.splitlines(), 1):
            if _OUTSIDE_REFERENCE.search(line) and not _allowed_outside_reference(rel, line):
                found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, ("references to documents outside the repository (point to docs/ or README.md, "
                       "or say the reason itself):\n" + "\n".join(found))


def test_the_shared_data_allowance_is_used_once() -> None:
    """The allowance above covers exactly one line, and the code honours the variable."""
    readme = (ROOT / "README.md").read_text().splitlines()
    assert sum(_allowed_outside_reference("README.md", line) for line in readme) == 1
    conftest = (ROOT / "tests" / "conftest.py").read_text()
    assert 'os.environ.get("SCHOOLGATE_SHARED_DATA")' in conftest
    assert 'os.environ.get("SCHOOLGATE_SHARED_DATA")' in (ROOT / "benchmarks" / "_common.py").read_text()


def test_the_image_pins_every_dependency() -> None:
    """image/build.sh installs exactly the versions in image/constraints.txt: a dependency
    added to pyproject.toml without a pin there would fail the image build (or float)."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0].lower().replace("_", "-") for d in deps}
    pins = {line.split("==")[0].strip().lower().replace("_", "-")
            for line in (ROOT / "image" / "constraints.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")}
    assert wanted - pins == set(), f"not pinned in image/constraints.txt: {sorted(wanted - pins)}"
