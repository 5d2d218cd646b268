"""The schoolgate command: build and lookup as docs/publishing.md ("Building a bundle") and
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
from tests.bundles import make_bundle

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


def test_lookup_answers_addresses_from_the_bundles_cidr_lists(demo_bundle: Path) -> None:
    # The demo's doh category lists resolver addresses (lists/doh-ips.txt): v4, v6 and the
    # v4-mapped form a dual-stack socket reports match them; an unlisted address is allowed.
    code, out, err = run("lookup", "--bundle", str(demo_bundle), "8.8.8.8", "2606:4700:4700::1111",
                         "::ffff:1.1.1.1", "192.0.2.1", "dns.google")
    assert code == 0, err
    assert out.splitlines() == [
        "8.8.8.8: BLOCK [doh] rule 8.8.8.8/32 from doh: lists/doh-ips.txt",
        "2606:4700:4700::1111: BLOCK [doh] rule 2606:4700:4700::1111/128 from doh: lists/doh-ips.txt",
        "::ffff:1.1.1.1: BLOCK [doh] rule 1.1.1.1/32 from doh: lists/doh-ips.txt",
        "192.0.2.1: allow",
        "dns.google: BLOCK [doh] rule dns.google from doh: lists/ut1-doh",
    ]
    code, out, _ = run("lookup", "--bundle", str(demo_bundle), "--json", "8.8.8.8", "192.0.2.1")
    assert [json.loads(line) for line in out.splitlines()] == [
        {"name": "8.8.8.8", "verdict": "block", "categories": ["doh"], "rule": "8.8.8.8/32",
         "source": "doh: lists/doh-ips.txt", "sources": ["doh: lists/doh-ips.txt"]},
        {"name": "192.0.2.1", "verdict": "allow", "categories": [], "rule": None, "source": None, "sources": []},
    ]


def test_lookup_addresses_under_a_policy_with_allow_cidrs(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle", 1, cidrs=("198.51.100.0/24", "2001:db8::/32"),
                         allow_cidrs=("198.51.100.128/25",))
    cfg = tmp_path / "schoolgate.yaml"
    cfg.write_text(f"bundle: {bundle}\npolicies:\n  students: {{block: [gambling]}}\n  staff: {{block: []}}\n")
    addresses = ("198.51.100.7", "198.51.100.200", "2001:db8::1", "203.0.113.1")

    def rows(policy: str) -> list[tuple]:
        code, out, err = run("lookup", "--config", str(cfg), "--policy", policy, "--json", *addresses)
        assert code == 0 and err == "", err
        return [(r["name"], r["verdict"], r["categories"], r["rule"], r["sources"])
                for r in map(json.loads, out.splitlines())]
    assert rows("students") == [
        ("198.51.100.7", "block", ["gambling"], "198.51.100.0/24", ["gambling: gambling-ips.txt"]),
        # the allow CIDR is more specific than the block: it wins, and is the why
        ("198.51.100.200", "allow", ["gambling"], "198.51.100.128/25", ["allow: allow-ips.txt"]),
        ("2001:db8::1", "block", ["gambling"], "2001:db8::/32", ["gambling: gambling-ips.txt"]),
        ("203.0.113.1", "allow", [], None, []),
    ]
    # staff blocks nothing: listed, but not blocked (doh is blocked, and these are not doh)
    assert [r[1:4] for r in rows("staff")][0] == ("allow", ["gambling"], None)
    code, out, _ = run("lookup", "--config", str(cfg), "--policy", "students", "198.51.100.7", "casino.test")
    assert out.splitlines() == ["198.51.100.7: BLOCK [gambling] rule 198.51.100.0/24 from gambling: gambling-ips.txt",
                                "casino.test: BLOCK [gambling] rule casino.test from gambling: gambling.txt"]


def test_an_error_before_any_answer_comes_without_the_demo_note(demo_bundle: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "schoolgate.yaml"
    cfg.write_text(f"bundle: {demo_bundle}\npolicies:\n  students: {{block: [gambling]}}\n")
    code, out, err = run("lookup", "--config", str(cfg), "--policy", "nobody", "x.test")
    assert (code, out) == (2, "")
    assert err.splitlines() == [f"schoolgate: error: no policy 'nobody' in {cfg} (have: students)"]
    code, out, err = run("lookup", "--config", str(cfg), "--policy", "students", "x.test")
    assert code == 0 and out == "x.test: allow\n"
    assert err.startswith("schoolgate: note: answers come from the DEMO bundle")


def test_build_errors_exit_2_with_position(tmp_path: Path) -> None:
    bad = tmp_path / "s.yaml"
    bad.write_text("version: 1\ncategories:\n  a: {sources: [{path: x, format: zip}]}\n")
    code, _, err = run("signatures", "build", str(bad), "-o", str(tmp_path / "o"))
    assert code == 2
    assert f"{bad}:3:" in err and "unknown format 'zip'" in err
    assert not (tmp_path / "o").exists()


def test_build_rejects_file_lists_every_rejected_line(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("".join(f"bad_{i}..x\n" for i in range(30)) + "good.test\n")
    (tmp_path / "s.yaml").write_text("version: 1\ncategories:\n  a: {sources: [{path: l.txt, format: domains}]}\n"
                                     "canaries: {block: [good.test]}\n")
    code, out, err = run("signatures", "build", str(tmp_path / "s.yaml"), "-o", str(tmp_path / "b"),
                         "--rejects", str(tmp_path / "rej.tsv"), "--json")
    assert code == 0
    assert json.loads(out)["counts"]["rejected"] == 30
    assert err.count("empty label") == 20 and "10 more rejected lines" in err
    rows = (tmp_path / "rej.tsv").read_text().splitlines()
    assert len(rows) == 30 and rows[29].split("\t")[1:3] == ["30", "empty label"]


def test_build_refuses_up_front_what_publish_would_refuse(tmp_path: Path) -> None:
    # No block canary: publish (and every device) refuses the bundle; build says so first,
    # with the same reason, and writes nothing.
    (tmp_path / "l.txt").write_text("casino.test\n")
    src = tmp_path / "s.yaml"
    for canaries in ("", "canaries: {allow: [example.org]}\n"):
        src.write_text("version: 1\ncategories:\n  a: {sources: [{path: l.txt, format: domains}]}\n" + canaries)
        code, out, err = run("signatures", "build", str(src), "-o", str(tmp_path / "b"), "-q")
        assert (code, out) == (2, "")
        assert err.startswith(f"schoolgate: error: {src}: no block canaries: the bundle cannot show that it "
                              "blocks anything"), err
        assert "add canaries: {block: [names it lists]} to SOURCES.yaml" in err
        assert not (tmp_path / "b").exists()
    # the reason is publish's own (signatures/bundle.py canary_problem)
    from signatures.bundle import canary_problem
    assert err.strip().endswith(canary_problem({}))


def test_console_script_is_installed_and_runs(demo_bundle: Path) -> None:
    exe = shutil.which("schoolgate") or str(Path(sys.executable).parent / "schoolgate")
    if not Path(exe).exists():
        pytest.skip("schoolgate console script not installed (pip install -e . first)")
    p = subprocess.run([exe, "lookup", "--bundle", str(demo_bundle), "--json", "dns.google"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["verdict"] == "block"
