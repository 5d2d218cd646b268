"""The appliance's update state: the `current` pointer, recovery, and update runs against a
file:// repository (the same code path as HTTP, minus the sockets; those are in
tests/integration/test_update_attacks.py)."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.config.load import UpdatesConfig
from appliance.updates.state import active_bundle_dir, list_bundles, set_current
from appliance.updates.updater import _Lock, recover_state_dir, update_once
from filters.errors import UpdateError
from signatures.archive import pack_bundle
from signatures.keys import Keyring, generate_keys
from signatures.repository import add_bundle_archive, publish
from tests.bundles import make_bundle

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def test_current_pointer_is_replaced_atomically(tmp_path: Path) -> None:
    for name in ("3-aaaaaaaa", "4-bbbbbbbb"):
        (tmp_path / "bundles" / name).mkdir(parents=True)
    assert active_bundle_dir(tmp_path) is None
    set_current(tmp_path, "3-aaaaaaaa")
    set_current(tmp_path, "4-bbbbbbbb")
    assert active_bundle_dir(tmp_path) == tmp_path / "bundles" / "4-bbbbbbbb"
    assert os.readlink(tmp_path / "bundles" / "current") == "4-bbbbbbbb"
    assert sorted(p.name for p in (tmp_path / "bundles").iterdir()) == ["3-aaaaaaaa", "4-bbbbbbbb", "current"]
    assert list_bundles(tmp_path) == [(3, "3-aaaaaaaa"), (4, "4-bbbbbbbb")]
    with pytest.raises(ValueError):
        set_current(tmp_path, "../../etc")


@pytest.mark.parametrize("target", ["../../etc", "/etc", "9-cccccccc", "not-a-bundle"])
def test_a_pointer_that_leads_elsewhere_is_no_pointer(tmp_path: Path, target: str) -> None:
    (tmp_path / "bundles" / "not-a-bundle").mkdir(parents=True)
    os.symlink(target, tmp_path / "bundles" / "current")
    assert active_bundle_dir(tmp_path) is None


def test_recovery_removes_leftovers_but_not_the_active_bundle(tmp_path: Path) -> None:
    (tmp_path / "bundles" / "3-aaaaaaaa").mkdir(parents=True)
    set_current(tmp_path, "3-aaaaaaaa")
    (tmp_path / "staging" / "4-bbbbbbbb").mkdir(parents=True)
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "4-bbbbbbbb.tar").write_bytes(b"partial")
    os.symlink("4-bbbbbbbb", tmp_path / "bundles" / ".current.1234")
    (tmp_path / "bundles" / ".3-aaaaaaaa.tmp").mkdir()
    (tmp_path / ".update-state.json.k3j4.tmp").write_text("{")  # a killed atomic write
    (tmp_path / "tuf").mkdir()
    (tmp_path / "tuf" / "tmpx8a1").write_text("{")  # ngclient's, likewise
    (tmp_path / "tuf" / "timestamp.json").write_text("{}")
    recover_state_dir(tmp_path)
    assert [p.name for p in tmp_path.glob(".*.tmp")] == [] and [p.name for p in (tmp_path / "tuf").iterdir()] == [
        "timestamp.json"]
    assert list((tmp_path / "staging").iterdir()) == [] and list((tmp_path / "downloads").iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "bundles").iterdir()) == ["3-aaaaaaaa", "current"]
    assert active_bundle_dir(tmp_path).name == "3-aaaaaaaa"


@pytest.fixture()
def repo(tmp_path: Path) -> tuple[Path, Keyring, UpdatesConfig]:
    generate_keys(tmp_path / "keys")
    kr = Keyring(tmp_path / "keys")
    publish(tmp_path / "repo", make_bundle(tmp_path / "b1", 1, now=T0), kr, T0)
    shutil.copyfile(tmp_path / "repo" / "metadata" / "1.root.json", tmp_path / "trusted-root.json")
    cfg = UpdatesConfig(f"file://{tmp_path / 'repo'}", tmp_path / "trusted-root.json",
                        interval=3600, timeout=60, keep=2)
    return tmp_path / "repo", kr, cfg


def test_update_runs_record_their_outcome(tmp_path: Path, repo) -> None:
    repo_dir, kr, cfg = repo
    state = tmp_path / "state"
    o = update_once(state, cfg, now=T0, rand=lambda: 0.0)
    assert (o.result, o.active_version, o.error) == ("updated", 1, None)
    st = json.loads((state / "update-state.json").read_text())
    assert st["next_check"] == "2026-11-24T12:54:00Z"  # 1 h - 10 % jitter
    o = update_once(state, cfg, now=T0 + timedelta(minutes=5), rand=lambda: 1.0)
    assert o.result == "up-to-date" and o.bytes_downloaded < 4096
    st = json.loads((state / "update-state.json").read_text())
    assert st["next_check"] == "2026-11-24T13:11:00Z"  # 1 h + 10 %
    assert st["last_update"] == "2026-11-24T12:00:00Z" and st["last_check"] == "2026-11-24T12:05:00Z"


def test_an_expired_bundle_is_refused_by_the_device_clock(tmp_path: Path, repo) -> None:
    repo_dir, kr, cfg = repo
    state = tmp_path / "state"
    assert update_once(state, cfg, now=T0).result == "updated"
    archive = pack_bundle(make_bundle(tmp_path / "b2", 2, now=T0, expires_days=1), tmp_path / "b2.tar")
    add_bundle_archive(repo_dir, archive, 2, kr, T0 + timedelta(hours=30))
    o = update_once(state, cfg, now=T0 + timedelta(hours=31))
    assert o.result == "refused" and "bundle expired at 2026-11-25T12:00:00Z" in o.error
    assert o.active_version == 1 and active_bundle_dir(state).name.startswith("1-")


def test_an_update_never_runs_twice_at_once(tmp_path: Path, repo) -> None:
    _, _, cfg = repo
    state = tmp_path / "state"
    state.mkdir()
    with _Lock(state):
        with pytest.raises(UpdateError, match="another update is running"):
            update_once(state, cfg, now=T0)


def test_a_damaged_active_bundle_is_replaced_by_the_same_version(tmp_path: Path, repo) -> None:
    _, _, cfg = repo
    state = tmp_path / "state"
    assert update_once(state, cfg, now=T0).result == "updated"
    active = active_bundle_dir(state)
    (active / "domain_fps.npy").write_bytes(b"bit rot")
    o = update_once(state, cfg, now=T0)
    assert o.result == "updated" and o.active_version == 1
    fresh = active_bundle_dir(state)
    assert fresh.name == active.name + "-2" and (fresh / "domain_fps.npy").read_bytes() != b"bit rot"
    assert not active.exists()  # `current` moved in one rename; then the damaged copy went
    (fresh / "manifest.json").write_text("{}")
    o = update_once(state, cfg, now=T0)
    assert o.result == "updated" and active_bundle_dir(state).name == active.name
    assert [n for _, n in list_bundles(state)] == [active.name]


def test_an_unreachable_repository_fails_and_keeps_the_bundle(tmp_path: Path, repo) -> None:
    repo_dir, _, cfg = repo
    state = tmp_path / "state"
    assert update_once(state, cfg, now=T0).result == "updated"
    shutil.rmtree(repo_dir / "metadata")
    o = update_once(state, cfg, now=T0)
    assert o.result == "failed" and "not found" in o.error and o.active_version == 1
    st = json.loads((state / "update-state.json").read_text())
    assert st["last_success"] == "2026-11-24T12:00:00Z" and st["last_error"] == o.error
