"""The schoolgate command: build and lookup as README.md ("What works today") and
docs/matching.md ("The why") describe them."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.cli import main

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "config" / "demo" / "sources.yaml"


def run(*argv: str, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "bundle"
    code, stdout, stderr = run("signatures", "build", str(DEMO), "-o", str(out))
    assert code == 0, stderr
    assert "bundle version 1 written" in stdout
    assert "[1/5] gambling: lists/ut1-gambling" in stderr
    return out


def test_lookup_json_one_object_per_line(demo_bundle: Path) -> None:
    code, out, _ = run("lookup", "--bundle", str(demo_bundle), "--json",
                       "WWW.0-Casino.Info.", "example.org", "wikipedia.org")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["name"] for r in rows] == ["www.0-casino.info", "example.org", "wikipedia.org"]
    assert rows[0] == {
        "name": "www.0-casino.info", "verdict": "block", "categories": ["gambling"],
        "rule": "0-casino.info", "source": "gambling: lists/ut1-gambling",
        "sources": ["gambling: lists/ut1-gambling"],
    }
    assert rows[1]["verdict"] == "allow" and rows[1]["source"] == "allow: lists/local-allow.txt"
    assert rows[2]["verdict"] == "allow" and rows[2]["rule"] is None


def test_lookup_reads_names_from_stdin(demo_bundle: Path, monkeypatch) -> None:
    code, out, _ = run("lookup", "--bundle", str(demo_bundle), "-",
                       stdin="dns.google\n\n# a comment\nexample.org\n", monkeypatch=monkeypatch)
    assert code == 0
    assert out.splitlines() == [
        "dns.google: BLOCK [doh] rule dns.google from doh: lists/ut1-doh",
        "example.org: allow rule example.org from allow: lists/local-allow.txt",
    ]


def test_lookup_bad_name_exits_2_but_answers_the_rest(demo_bundle: Path) -> None:
    code, out, err = run("lookup", "--bundle", str(demo_bundle), "a b", "dns.google")
    assert code == 2
    assert "a b: error: bad character ' '" in err
    assert out.startswith("dns.google: BLOCK")


def test_lookup_with_config_policy_and_local_lists(demo_bundle: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "schoolgate.yaml"
    cfg.write_text(f"""\
bundle: {demo_bundle}
policies:
  students: {{block: [gambling]}}
  staff: {{block: []}}
local:
  block: [homework-cheats.test]
  allow: [dns.google]
""")
    def verdicts(policy: str) -> dict[str, str]:
        code, out, err = run("lookup", "--config", str(cfg), "--policy", policy, "--json",
                             "0-casino.info", "dns.google", "x.homework-cheats.test")
        assert code == 0, err
        return {r["name"]: r["verdict"] for r in map(json.loads, out.splitlines())}
    assert verdicts("students") == {"0-casino.info": "block", "dns.google": "allow",
                                    "x.homework-cheats.test": "block"}
    assert verdicts("staff") == {"0-casino.info": "allow", "dns.google": "allow",
                                 "x.homework-cheats.test": "block"}
    code, _, err = run("lookup", "--config", str(cfg), "--policy", "nobody", "x.test")
    assert code == 2 and "no policy 'nobody'" in err


def test_build_errors_exit_2_with_position(tmp_path: Path) -> None:
    bad = tmp_path / "s.yaml"
    bad.write_text("version: 1\ncategories:\n  a: {sources: [{path: x, format: zip}]}\n")
    code, _, err = run("signatures", "build", str(bad), "-o", str(tmp_path / "o"))
    assert code == 2
    assert f"{bad}:3:" in err and "unknown format 'zip'" in err
    assert not (tmp_path / "o").exists()


def test_build_rejects_file_lists_every_rejected_line(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("".join(f"bad_{i}..x\n" for i in range(30)) + "good.test\n")
    (tmp_path / "s.yaml").write_text("version: 1\ncategories:\n  a: {sources: [{path: l.txt, format: domains}]}\n")
    code, out, err = run("signatures", "build", str(tmp_path / "s.yaml"), "-o", str(tmp_path / "b"),
                         "--rejects", str(tmp_path / "rej.tsv"), "--json")
    assert code == 0
    assert json.loads(out)["counts"]["rejected"] == 30
    assert err.count("empty label") == 20 and "10 more rejected lines" in err
    rows = (tmp_path / "rej.tsv").read_text().splitlines()
    assert len(rows) == 30 and rows[29].split("\t")[1:3] == ["30", "empty label"]


def test_console_script_is_installed_and_runs(demo_bundle: Path) -> None:
    exe = shutil.which("schoolgate") or str(Path(sys.executable).parent / "schoolgate")
    if not Path(exe).exists():
        pytest.skip("schoolgate console script not installed (pip install -e . first)")
    p = subprocess.run([exe, "lookup", "--bundle", str(demo_bundle), "--json", "dns.google"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["verdict"] == "block"
