"""The publisher and updater commands: keygen, publish, refresh, rotate-key, update, and
lookup on the active bundle (a file:// repository; HTTP is in tests/integration)."""

from __future__ import annotations

import io
import json
import re
import stat
from pathlib import Path

import pytest

from appliance.cli import main
from tests.bundles import make_bundle
from tests.dnsservers import free_port

ROOT = Path(__file__).resolve().parents[2]


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture()
def publisher(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("SG_PASS", "s3cret phrase")
    code, out, err = run("signatures", "keygen", "--out", str(tmp_path / "keys"), "--passphrase-env", "SG_PASS")
    assert code == 0, err
    assert out.count(": ") == 6 and "keep root-* offline" in out
    return tmp_path


def test_publish_refresh_rotate_and_update(publisher: Path) -> None:
    t = publisher
    keys = ("--keys", str(t / "keys"), "--passphrase-env", "SG_PASS")
    assert stat.S_IMODE((t / "keys" / "timestamp-1.pem").stat().st_mode) == 0o600
    code, out, err = run("signatures", "publish", str(make_bundle(t / "b1", 1)), "--repo", str(t / "repo"), *keys)
    assert code == 0, err
    assert out.startswith("published bundle version 1 as targets/") and "metadata/root.json" in out
    # lines for reading, no Python dict
    lines = out.splitlines()
    assert len(lines) == 3 and re.fullmatch(
        r"published bundle version 1 as targets/[0-9a-f]{64}\.bundle\.tar \([0-9,]+ bytes\)", lines[0]), lines
    assert lines[1:] == ["metadata versions: root 1, targets 2, snapshot 2, timestamp 2",
                         f"devices trust {t / 'repo' / 'metadata' / 'root.json'} (their updates.trusted_root)"]
    assert "{" not in out
    code, out, _ = run("signatures", "refresh", "--repo", str(t / "repo"), *keys)
    assert (code, out) == (0, "re-signed snapshot and timestamp\n"
                              "metadata versions: root 1, targets 2, snapshot 3, timestamp 3\n")
    code, out, _ = run("signatures", "refresh", "--repo", str(t / "repo"), *keys, "--json")
    assert code == 0 and json.loads(out)["metadata_versions"] == {
        "root": 1, "targets": 2, "snapshot": 4, "timestamp": 4}
    code, _, err = run("signatures", "publish", str(make_bundle(t / "b1b", 1)), "--repo", str(t / "repo"), *keys)
    assert code == 2 and "version 1 is not newer than the published version 1" in err

    cfg = t / "gw.yaml"
    cfg.write_text(f"state_dir: state\nupdates: {{repository: 'file://{t / 'repo'}', "
                   "trusted_root: repo/metadata/1.root.json}\n")
    code, _, err = run("lookup", "--config", str(cfg), "casino.test")
    assert code == 2 and "no active bundle" in err and "update --once" in err
    code, out, err = run("update", "--once", "--config", str(cfg))
    assert (code, out, err) == (0, "updated to bundle version 1\n", "")
    code, out, _ = run("lookup", "--config", str(cfg), "--json", "www.casino.test", "v1.test", "example.org")
    assert [json.loads(x)["verdict"] for x in out.splitlines()] == ["block", "block", "allow"]

    code, out, err = run("signatures", "keygen", "--out", str(t / "keys"), "--role", "targets",
                         "--passphrase-env", "SG_PASS")
    assert code == 0 and out.startswith("targets-2: "), err
    code, out, err = run("signatures", "rotate-key", "--role", "targets", "--add", "targets-2",
                         "--revoke", "targets-1", "--repo", str(t / "repo"), *keys)
    assert code == 0 and "new root version 2" in out, err
    code, _, err = run("signatures", "publish", str(make_bundle(t / "b2", 2)), "--repo", str(t / "repo"), *keys)
    assert code == 0, err
    code, out, err = run("update", "--once", "--json", "--config", str(cfg))
    assert code == 0, err
    assert json.loads(out)["result"] == "updated" and json.loads(out)["active_version"] == 2


def test_key_and_config_errors_exit_2(publisher: Path, monkeypatch) -> None:
    t = publisher
    b = make_bundle(t / "b1", 1)
    code, _, err = run("signatures", "publish", str(b), "--repo", str(t / "repo"), "--keys", str(t / "keys"))
    assert code == 2 and "encrypted; give its passphrase" in err
    monkeypatch.setenv("SG_PASS", "wrong")
    code, _, err = run("signatures", "publish", str(b), "--repo", str(t / "repo"), "--keys", str(t / "keys"),
                       "--passphrase-env", "SG_PASS")
    assert code == 2 and "wrong passphrase" in err
    code, _, err = run("signatures", "keygen", "--out", str(t / "k2"), "--passphrase-env", "UNSET_VAR_XYZ")
    assert code == 2 and "UNSET_VAR_XYZ" in err
    code, _, err = run("signatures", "keygen", "--out", str(t / "keys"))
    assert code == 2 and "already holds keys" in err
    (t / "gw.yaml").write_text("state_dir: state\n")
    code, _, err = run("update", "--once", "--config", str(t / "gw.yaml"))
    assert code == 2 and "no updates: section" in err


def test_a_refused_update_exits_1_with_the_reason(publisher: Path, monkeypatch) -> None:
    t = publisher
    keys = ("--keys", str(t / "keys"), "--passphrase-env", "SG_PASS")
    assert run("signatures", "publish", str(make_bundle(t / "b1", 1)), "--repo", str(t / "repo"), *keys)[0] == 0
    other = t / "other"
    run("signatures", "keygen", "--out", str(other / "keys"))
    run("signatures", "publish", str(make_bundle(t / "o1", 1)), "--repo", str(other / "repo"),
        "--keys", str(other / "keys"))
    cfg = t / "gw.yaml"
    # trusting the wrong publisher's root: nothing from this repository verifies
    cfg.write_text(f"state_dir: state\nupdates: {{repository: 'file://{t / 'repo'}', "
                   f"trusted_root: {other / 'repo' / 'metadata' / 'root.json'}}}\n")
    code, out, err = run("update", "--once", "--config", str(cfg))
    assert code == 1 and out == ""
    assert "schoolgate: update refused: metadata" in err and "signature check failed" in err
    hint = (f"not one of its signatures is by a key the trusted root names, so updates.trusted_root: "
            f"{other / 'repo' / 'metadata' / 'root.json'} probably does not belong to the repository "
            f"file://{t / 'repo'} (or the metadata is forged)")
    assert "timestamp was signed by 0/1 keys: " + hint in err
    st = json.loads((t / "state" / "update-state.json").read_text())
    assert st["last_result"] == "refused" and st["active_version"] is None
    assert hint in st["last_error"]  # what status and the web page show
    # A repository whose root has moved on: its 2.root.json is checked first
    assert run("signatures", "keygen", "--out", str(t / "keys"), "--role", "targets",
               "--passphrase-env", "SG_PASS")[0] == 0
    assert run("signatures", "rotate-key", "--role", "targets", "--add", "targets-2",
               "--repo", str(t / "repo"), *keys)[0] == 0
    code, _, err = run("update", "--once", "--config", str(cfg))
    assert code == 1 and "2.root.json): signature check failed: root was signed by 0/2 keys: " + hint in err, err


def test_an_unreachable_repository_is_one_clear_message(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there: the connection is refused
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"state_dir: state\nupdates: {{repository: 'http://127.0.0.1:{port}/', "
                   f"trusted_root: {ROOT / 'config' / 'demo' / 'trust' / 'root.json'}}}\n")
    code, out, err = run("update", "--once", "--config", str(cfg))
    assert (code, out) == (1, "")
    assert err == ("schoolgate: update failed: cannot reach the update repository "
                   f"http://127.0.0.1:{port}/: connection refused\n")
    st = json.loads((tmp_path / "state" / "update-state.json").read_text())
    assert st["last_result"] == "failed" and st["last_error"].count("refused") == 1
