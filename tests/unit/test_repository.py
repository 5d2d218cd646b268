"""The publisher's TUF repository: layout, versions, expiry, refresh and key rotation."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata

from filters.errors import BundleError, InputError
from signatures.keys import Keyring, generate_key, generate_keys
from signatures.repository import EXPIRY, TARGET_NAME, load_repo, publish, refresh, rotate_keys
from tests.bundles import edit_manifest, make_bundle

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


@pytest.fixture()
def keys(tmp_path: Path) -> Path:
    generate_keys(tmp_path / "keys")
    return tmp_path / "keys"


def _bundle(tmp: Path, version: int, **kw) -> Path:
    return make_bundle(tmp / f"b{version}", version, now=kw.pop("now", T0), **kw)


def _md(repo: Path, name: str) -> Metadata:
    return Metadata.from_bytes((repo / "metadata" / name).read_bytes())


def _verify_chain(repo: Path) -> None:
    """Every file verifies the way a client checks it (signatures, thresholds, pins)."""
    root = _md(repo, "root.json").signed
    ts = _md(repo, "timestamp.json")
    root.verify_delegate("timestamp", ts.signed_bytes, ts.signatures)
    snap_raw = (repo / "metadata" / f"{ts.signed.snapshot_meta.version}.snapshot.json").read_bytes()
    ts.signed.snapshot_meta.verify_length_and_hashes(snap_raw)
    snap = Metadata.from_bytes(snap_raw)
    root.verify_delegate("snapshot", snap.signed_bytes, snap.signatures)
    meta = snap.signed.meta["targets.json"]
    t_raw = (repo / "metadata" / f"{meta.version}.targets.json").read_bytes()
    meta.verify_length_and_hashes(t_raw)
    targets = Metadata.from_bytes(t_raw)
    root.verify_delegate("targets", targets.signed_bytes, targets.signatures)
    for name, tf in targets.signed.targets.items():
        with open(repo / "targets" / f"{tf.hashes['sha256']}.{name}", "rb") as f:
            tf.verify_length_and_hashes(f)


def test_first_publish_creates_the_repository(tmp_path: Path, keys: Path) -> None:
    repo = tmp_path / "repo"
    r = publish(repo, _bundle(tmp_path, 4), Keyring(keys), T0)
    assert r.version == 4 and r.target_url_path == f"{r.sha256}.{TARGET_NAME}"
    assert sorted(p.name for p in (repo / "metadata").iterdir()) == [
        "1.root.json", "1.snapshot.json", "1.targets.json", "2.snapshot.json", "2.targets.json",
        "root.json", "timestamp.json"]
    assert (repo / "metadata" / "root.json").read_bytes() == (repo / "metadata" / "1.root.json").read_bytes()
    assert [p.name for p in (repo / "targets").iterdir()] == [r.target_url_path]
    root = _md(repo, "root.json").signed
    assert root.consistent_snapshot and root.roles["root"].threshold == 2
    assert len(root.roles["root"].keyids) == 3
    assert [root.roles[x].threshold for x in ("targets", "snapshot", "timestamp")] == [1, 1, 1]
    state = load_repo(repo)
    assert state.bundle_version == 4 and state.bundle_target.custom["version"] == 4
    for role in ("root", "targets", "snapshot", "timestamp"):
        assert getattr(state, role).signed.expires == T0 + EXPIRY[role]
    _verify_chain(repo)


def test_versions_must_increase(tmp_path: Path, keys: Path) -> None:
    repo, kr = tmp_path / "repo", Keyring(keys)
    publish(repo, _bundle(tmp_path, 2), kr, T0)
    for v in (2, 1):
        with pytest.raises(BundleError, match=f"version {v} is not newer than the published version 2"):
            publish(repo, _bundle(tmp_path, v), kr, T0)
    r = publish(repo, _bundle(tmp_path, 3), kr, T0 + timedelta(hours=1))
    assert r.versions == {"root": 1, "targets": 3, "snapshot": 3, "timestamp": 3}
    _verify_chain(repo)


def test_publish_checks_the_bundle_itself(tmp_path: Path, keys: Path) -> None:
    repo, kr = tmp_path / "repo", Keyring(keys)
    old = _bundle(tmp_path, 1, now=T0 - timedelta(days=40))  # expires_days 30
    with pytest.raises(BundleError, match="bundle expired at"):
        publish(repo, old, kr, T0)
    assert not repo.exists()  # nothing created for a bundle that cannot be published
    bad = _bundle(tmp_path, 2)
    edit_manifest(bad, canaries={"block": ["unlisted.test"]})
    with pytest.raises(BundleError, match="canary self-test failed"):
        publish(repo, bad, kr, T0)
    edit_manifest(bad, canaries={})
    with pytest.raises(BundleError, match="no block canaries"):
        publish(repo, bad, kr, T0)
    (bad / "stray.txt").write_text("not in the manifest")
    with pytest.raises(BundleError, match="files not listed in the manifest: stray.txt"):
        publish(repo, bad, kr, T0)


def test_refresh_resigns_snapshot_and_timestamp(tmp_path: Path, keys: Path) -> None:
    repo, kr = tmp_path / "repo", Keyring(keys)
    publish(repo, _bundle(tmp_path, 1), kr, T0)
    later = T0 + timedelta(hours=20)
    r = refresh(repo, kr, later)
    assert r.versions == {"root": 1, "targets": 2, "snapshot": 3, "timestamp": 3} and r.warnings == []
    state = load_repo(repo)
    assert state.timestamp.signed.expires == later + EXPIRY["timestamp"]
    assert state.snapshot.signed.expires == later + EXPIRY["snapshot"]
    assert state.targets.signed.expires == T0 + EXPIRY["targets"]  # untouched
    _verify_chain(repo)
    # close to its expiry, targets is renewed too; close to root's, a warning
    late = T0 + EXPIRY["targets"] - timedelta(days=3)
    r = refresh(repo, kr, late)
    assert r.versions["targets"] == 3
    assert load_repo(repo).targets.signed.expires == late + EXPIRY["targets"]
    r = refresh(repo, kr, T0 + EXPIRY["root"] - timedelta(days=10))
    assert any("root metadata expires" in w for w in r.warnings)
    _verify_chain(repo)


def test_refresh_needs_only_the_online_keys(tmp_path: Path, keys: Path) -> None:
    repo = tmp_path / "repo"
    publish(repo, _bundle(tmp_path, 1), Keyring(keys), T0)
    for n in ("root-1", "root-2", "root-3"):
        (keys / f"{n}.pem").unlink()  # root keys go back into the safe
    refresh(repo, Keyring(keys), T0 + timedelta(hours=6))
    publish(repo, _bundle(tmp_path, 2), Keyring(keys), T0 + timedelta(hours=7))
    _verify_chain(repo)
    with pytest.raises(InputError, match="no repository here yet"):
        refresh(tmp_path / "nowhere", Keyring(keys), T0)


def test_creating_a_repository_needs_two_root_keys(tmp_path: Path, keys: Path) -> None:
    for n in ("root-2", "root-3"):
        (keys / f"{n}.pem").unlink()
    with pytest.raises(InputError, match=r"signing root needs 2 of its keys .* only 1"):
        publish(tmp_path / "repo", _bundle(tmp_path, 1), Keyring(keys), T0)
    assert not (tmp_path / "repo" / "metadata" / "root.json").exists()


def test_root_rotation_is_signed_by_old_and_new_thresholds(tmp_path: Path, keys: Path) -> None:
    repo = tmp_path / "repo"
    publish(repo, _bundle(tmp_path, 1), Keyring(keys), T0)
    generate_key(keys, "root")
    kr = Keyring(keys)
    r = rotate_keys(repo, kr, "root", T0 + timedelta(days=1), add=["root-4"], revoke=["root-1"])
    assert r.versions["root"] == 2
    v1, v2 = _md(repo, "1.root.json"), _md(repo, "2.root.json")
    assert (repo / "metadata" / "root.json").read_bytes() == (repo / "metadata" / "2.root.json").read_bytes()
    result = v2.signed.get_root_verification_result(v1.signed, v2.signed_bytes, v2.signatures)
    assert result.verified
    assert kr.get("root-1").keyid not in v2.signed.roles["root"].keyids
    assert kr.get("root-4").keyid in v2.signed.roles["root"].keyids
    _verify_chain(repo)


def test_root_rotation_without_the_old_threshold_is_refused(tmp_path: Path, keys: Path) -> None:
    repo = tmp_path / "repo"
    publish(repo, _bundle(tmp_path, 1), Keyring(keys), T0)
    for n in ("root-2", "root-3"):
        (keys / f"{n}.pem").unlink()
    generate_key(keys, "root")
    generate_key(keys, "root")
    with pytest.raises(InputError, match="signing root needs 2"):
        rotate_keys(repo, Keyring(keys), "root", T0, add=["root-4", "root-5"], revoke=["root-2", "root-3"])
    assert not (repo / "metadata" / "2.root.json").exists()


def test_targets_key_rotation_resigns_targets(tmp_path: Path, keys: Path) -> None:
    repo = tmp_path / "repo"
    publish(repo, _bundle(tmp_path, 1), Keyring(keys), T0)
    generate_key(keys, "targets")
    kr = Keyring(keys)
    r = rotate_keys(repo, kr, "targets", T0, add=["targets-2"], revoke=["targets-1"])
    assert r.versions == {"root": 2, "targets": 3, "snapshot": 3, "timestamp": 3}
    t = load_repo(repo).targets
    assert set(t.signatures) == {kr.get("targets-2").keyid}
    _verify_chain(repo)
    # targets-1 is now useless to a thief, and publishing goes on with targets-2
    publish(repo, _bundle(tmp_path, 2), kr, T0)
    _verify_chain(repo)


@pytest.mark.parametrize("kw, message", [
    ({}, "nothing to change"),
    ({"revoke": ["root-1"]}, "is not a targets key"),
    ({"threshold": 2}, "1 key\\(s\\) for a threshold of 2"),
    ({"add": ["root-9"]}, "no key named 'root-9'"),
])
def test_bad_rotations_are_refused(tmp_path: Path, keys: Path, kw: dict, message: str) -> None:
    repo = tmp_path / "repo"
    publish(repo, _bundle(tmp_path, 1), Keyring(keys), T0)
    with pytest.raises(InputError, match=message):
        rotate_keys(repo, Keyring(keys), "targets", T0, **kw)
    assert not (repo / "metadata" / "2.root.json").exists()


def test_old_bundle_files_are_pruned(tmp_path: Path, keys: Path) -> None:
    repo, kr = tmp_path / "repo", Keyring(keys)
    paths = [publish(repo, _bundle(tmp_path, v), kr, T0).target_url_path for v in range(1, 6)]
    assert sorted(p.name for p in (repo / "targets").iterdir()) == sorted(paths[-3:])


def test_metadata_is_deterministic_json(tmp_path: Path, keys: Path) -> None:
    repo = tmp_path / "repo"
    publish(repo, _bundle(tmp_path, 1), Keyring(keys), T0)
    doc = json.loads((repo / "metadata" / "timestamp.json").read_text())
    assert doc["signed"]["expires"] == "2026-11-25T12:00:00Z"
    assert doc["signed"]["meta"]["snapshot.json"]["length"] > 0
    shutil.rmtree(repo)
