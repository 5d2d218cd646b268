"""Signed updates against a real HTTP server on 127.0.0.1: the happy paths and the classic
attacks on an update client (tampered or unsigned files, wrong or revoked keys, rollback,
freeze, mix-and-match, endless data, slow retrieval, malicious archives). Each attack must
be refused with a clear error in update-state.json, and the last good bundle must stay
active and keep answering lookups."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata

from appliance.cli import main
from appliance.config.load import load_config
from appliance.updates.updater import update_once
from signatures.archive import pack_bundle
from signatures.keys import Keyring, generate_key, generate_keys
from signatures.repository import add_bundle_archive, publish, write_metadata
from tests.bundles import edit_manifest, make_bundle
from tests.forge import forge_release, sign_with
from tests.repo_server import Fault, RepoServer


def _now() -> datetime:
    return datetime.now(UTC)


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


@dataclass
class Site:
    """A publisher (keys, repository), the server in front of it, and one appliance."""

    tmp: Path
    keys: Path
    repo: Path
    server: RepoServer
    config: Path
    state: Path

    @property
    def keyring(self) -> Keyring:
        return Keyring(self.keys)

    def bundle(self, version: int, **kw) -> Path:
        return make_bundle(self.tmp / "built" / f"v{version}", version, now=_now(), **kw)

    def publish(self, version: int, now: datetime | None = None) -> None:
        publish(self.repo, self.bundle(version), self.keyring, now or _now())

    def sign_archive(self, archive: Path, version: int) -> None:
        """The legitimate publisher's keys sign whatever this archive is."""
        add_bundle_archive(self.repo, archive, version, self.keyring, _now())

    def update(self) -> tuple[int, str, str]:
        return run("update", "--once", "--config", str(self.config))

    def update_at(self, now: datetime):
        cfg = load_config(self.config)
        return update_once(cfg.state_dir, cfg.updates, now=now)

    def status(self) -> dict:
        return json.loads((self.state / "update-state.json").read_text())

    def verdicts(self, *names: str) -> dict[str, str]:
        code, out, err = run("lookup", "--config", str(self.config), "--json", *names)
        assert code == 0, err
        return {r["name"]: r["verdict"] for r in map(json.loads, out.splitlines())}

    def assert_still_serving(self, version: int) -> None:
        """The last good bundle is active, on disk and answering."""
        assert self.status()["active_version"] == version
        assert (self.state / "bundles" / "current").resolve().name.startswith(f"{version}-")
        v = self.verdicts("casino.test", f"v{version}.test", f"v{version + 1}.test", "example.org")
        assert v == {"casino.test": "block", f"v{version}.test": "block",
                     f"v{version + 1}.test": "allow", "example.org": "allow"}

    def assert_refused(self, code: int, err: str, *needles: str) -> str:
        st = self.status()
        print(f"{st['last_result']}: {st['last_error']}")  # shown when a test fails (and with -rP)
        assert code == 1, err
        assert st["last_result"] in ("refused", "failed")
        for n in needles:
            assert n in st["last_error"], st["last_error"]
            assert n in err
        assert not list((self.state / "staging").iterdir())
        assert not list((self.state / "downloads").iterdir())
        return st["last_error"]


@pytest.fixture()
def site(tmp_path: Path):
    keys, repo, state = tmp_path / "keys", tmp_path / "repo", tmp_path / "state"
    generate_keys(keys)
    server = RepoServer(repo)
    config = tmp_path / "schoolgate.yaml"
    site = Site(tmp_path, keys, repo, server, config, state)
    site.publish(1)
    # The device ships the root of the day it was imaged: 1.root.json, not the newest one.
    shutil.copyfile(repo / "metadata" / "1.root.json", tmp_path / "trusted-root.json")
    config.write_text(f"""\
state_dir: state
updates:
  repository: "{server.url}"
  trusted_root: trusted-root.json
  interval: 1h
  timeout: 3s
  keep: 3
""")
    code, out, err = site.update()
    assert code == 0, err
    assert out.strip() == "updated to bundle version 1"
    try:
        yield site
    finally:
        server.close()


# ---------------------------------------------------------------- happy paths

def test_first_install(site: Site) -> None:
    st = site.status()
    assert st["last_result"] == "updated" and st["last_error"] is None
    assert st["active_version"] == 1 and st["offered_version"] == 1
    assert st["last_check"] == st["last_success"] == st["last_update"]
    nxt = datetime.fromisoformat(st["next_check"]) - datetime.fromisoformat(st["last_check"])
    assert timedelta(minutes=53) <= nxt <= timedelta(minutes=67)  # 1 h ± 10 % jitter
    current = site.state / "bundles" / "current"
    assert current.is_symlink() and "/" not in str(current.readlink())
    assert (site.state / "tuf" / "root.json").exists()
    site.assert_still_serving(1)


def test_update_to_a_newer_version(site: Site) -> None:
    site.publish(2)
    code, out, err = site.update()
    assert (code, out.strip()) == (0, "updated to bundle version 2"), err
    site.assert_still_serving(2)
    assert site.status()["last_result"] == "updated"


def test_nothing_new_is_a_no_op_without_downloading_the_bundle(site: Site) -> None:
    before = len(site.server.fetched("/targets/*"))
    code, out, err = site.update()
    assert (code, out.strip(), err) == (0, "up to date at bundle version 1", "")
    assert len(site.server.fetched("/targets/*")) == before
    st = site.status()
    assert st["last_result"] == "up-to-date" and st["bytes_downloaded"] < 4096
    site.assert_still_serving(1)


def test_old_bundles_are_pruned_to_keep(site: Site) -> None:
    for v in range(2, 6):
        site.publish(v)
        assert site.update()[0] == 0
    names = sorted(p.name for p in (site.state / "bundles").iterdir() if p.name != "current")
    assert [n.split("-")[0] for n in names] == ["3", "4", "5"]
    site.assert_still_serving(5)
    # the publisher keeps only the recent bundle files, too
    assert len(list((site.repo / "targets").iterdir())) == 3


def test_json_output_and_exit_status(site: Site) -> None:
    code, out, _ = run("update", "--once", "--json", "--config", str(site.config))
    assert code == 0
    assert json.loads(out) == {"result": "up-to-date", "active_version": 1, "offered_version": 1,
                               "error": None, "bytes_downloaded": json.loads(out)["bytes_downloaded"]}


# ---------------------------------------------------------------- attacks

def test_tampered_bundle(site: Site) -> None:
    site.publish(2)
    newest = max((site.repo / "targets").glob("*.bundle.tar"), key=lambda p: p.stat().st_mtime)
    data = bytearray(newest.read_bytes())
    data[2000] ^= 0x01  # one bit, inside an array
    site.server.replace(f"/targets/{newest.name}", bytes(data))
    code, _, err = site.update()
    site.assert_refused(code, err, "hash differs from the signed metadata")
    site.assert_still_serving(1)


def test_tampered_metadata(site: Site) -> None:
    site.publish(2)
    ts = json.loads((site.repo / "metadata" / "timestamp.json").read_bytes())
    ts["signed"]["expires"] = "2099-01-01T00:00:00Z"  # extend it, keep the old signature
    site.server.replace("/metadata/timestamp.json", json.dumps(ts).encode())
    code, _, err = site.update()
    site.assert_refused(code, err, "signature check failed")
    site.assert_still_serving(1)
    # a tampered snapshot is caught by the hash the timestamp pins
    site.server.clear()
    snap = max((site.repo / "metadata").glob("*.snapshot.json"), key=lambda p: int(p.name.split(".")[0]))
    doc = json.loads(snap.read_bytes())
    doc["signed"]["expires"] = "2099-01-01T00:00:00Z"
    site.server.replace(f"/metadata/{snap.name}", json.dumps(doc, indent=1).encode())
    code, _, err = site.update()
    site.assert_refused(code, err, "length or hash differs")
    site.assert_still_serving(1)


def test_unsigned_metadata(site: Site) -> None:
    site.publish(2)
    ts = json.loads((site.repo / "metadata" / "timestamp.json").read_bytes())
    ts["signatures"] = []
    site.server.replace("/metadata/timestamp.json", json.dumps(ts).encode())
    code, _, err = site.update()
    site.assert_refused(code, err, "signature check failed", "timestamp")
    site.assert_still_serving(1)


def test_wrong_key(site: Site) -> None:
    generate_keys(site.tmp / "evil")  # a full set of keys the device has never heard of
    evil = Keyring(site.tmp / "evil")

    def signer(role: str) -> list:
        return [evil.signer(evil.by_role(role)[0].keyid)]

    archive = pack_bundle(site.bundle(2, extra=("school-homework.test",)), site.tmp / "evil.tar")
    forge_release(site.repo, archive, 2, _now(), targets=signer("targets"),
                  snapshot=signer("snapshot"), timestamp=signer("timestamp"))
    code, _, err = site.update()
    site.assert_refused(code, err, "signature check failed")
    site.assert_still_serving(1)


def test_below_threshold_root(site: Site) -> None:
    """A new root signed by one of the three root keys (threshold two) is refused."""
    kr = site.keyring
    root = Metadata.from_bytes((site.repo / "metadata" / "root.json").read_bytes())
    evil = generate_key(site.tmp / "evil", "targets")
    root.signed.version += 1
    for keyid in list(root.signed.roles["targets"].keyids):
        root.signed.revoke_key(keyid, "targets")
    root.signed.add_key(evil.key, "targets")  # what a thief with one root key would do
    sign_with(root, [kr.signer(kr.by_role("root")[0].keyid)])
    write_metadata(site.repo, root)
    code, _, err = site.update()
    site.assert_refused(code, err, "signature check failed", "root")
    site.assert_still_serving(1)


def test_rollback_of_metadata(site: Site) -> None:
    old = site.tmp / "repo-at-v1"
    shutil.copytree(site.repo, old)
    site.publish(2)
    assert site.update()[0] == 0
    site.server.root = old  # a mirror serving yesterday's repository
    code, _, err = site.update()
    site.assert_refused(code, err, "rollback refused")
    site.assert_still_serving(2)


def test_rollback_of_the_bundle_even_when_signed(site: Site) -> None:
    """A publisher key signing an older bundle (stolen, or a mistake) does not roll devices back."""
    site.publish(2)
    older = pack_bundle(site.bundle(1, extra=("older.test",)), site.tmp / "older.tar")
    assert site.update()[0] == 0
    site.sign_archive(older, 1)
    code, _, err = site.update()
    site.assert_refused(code, err, "older than the active 2 (rollback refused)")
    site.assert_still_serving(2)
    # the signed version claim is checked against the manifest inside, too
    site.sign_archive(older, 3)
    code, _, err = site.update()
    site.assert_refused(code, err, "manifest says version 1 but the signed metadata says 3")
    site.assert_still_serving(2)


def test_freeze_expired_timestamp_served_forever(site: Site) -> None:
    site.publish(2)  # never seen: the mirror keeps serving what it had
    frozen = site.tmp / "frozen"
    shutil.copytree(site.repo, frozen)
    site.server.root = frozen
    o = site.update_at(_now() + timedelta(days=2))
    assert (o.result, o.active_version) == ("refused", 1)
    st = site.status()
    assert "expired" in st["last_error"] and "freeze" in st["last_error"]
    site.assert_still_serving(1)


def test_mix_and_match(site: Site) -> None:
    site.publish(2)
    md = site.repo / "metadata"
    newest = max(int(p.name.split(".")[0]) for p in md.glob("*.targets.json"))
    # the new snapshot, but the previous targets under the new name
    site.server.replace(f"/metadata/{newest}.targets.json", (md / f"{newest - 1}.targets.json").read_bytes())
    code, _, err = site.update()
    site.assert_refused(code, err, "length or hash differs")
    site.assert_still_serving(1)


def test_endless_data(site: Site) -> None:
    site.server.fault("/metadata/timestamp.json", Fault("endless"))
    code, _, err = site.update()
    site.assert_refused(code, err, "more than")  # stopped at the size limit, not at the deadline
    site.assert_still_serving(1)
    # an endless bundle stops at its signed length
    site.server.clear()
    site.publish(2)
    site.server.fault("/targets/*", Fault("endless"))
    code, _, err = site.update()
    site.assert_refused(code, err, "more than")
    site.assert_still_serving(1)


def test_an_announced_oversize_body_is_refused_unread(site: Site) -> None:
    site.server.fault("/metadata/timestamp.json", Fault("huge-length"))
    code, _, err = site.update()
    site.assert_refused(code, err, "announces 1,099,511,627,776 bytes; at most 16,384 are allowed")
    site.assert_still_serving(1)


def test_slow_retrieval_is_bounded_by_the_deadline(site: Site) -> None:
    site.publish(2)
    site.server.fault("/targets/*", Fault("slow", interval=0.05))  # 20 B/s: hours for a bundle
    t0 = time.monotonic()
    code, _, err = site.update()
    took = time.monotonic() - t0
    site.assert_refused(code, err, "too slow or past its deadline")
    assert took > 2.5  # it gave the download the config's timeout (3 s) before refusing
    site.assert_still_serving(1)


def test_slow_retrieval_of_headers_is_bounded_too(site: Site) -> None:
    site.server.fault("/metadata/timestamp.json", Fault("slow-headers", interval=0.1))
    t0 = time.monotonic()
    code, _, err = site.update()
    took = time.monotonic() - t0
    site.assert_refused(code, err, "deadline passed")
    assert took > 2.5  # the config's timeout (3 s)
    site.assert_still_serving(1)


def _evil_tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for ti, data in members:
            if data is not None:
                ti.size = len(data)
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _member(name: str, data: bytes | None = b"x", kind: bytes = tarfile.REGTYPE, link: str = ""):
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = kind, link
    return ti, data


@pytest.mark.parametrize("attack, message", [
    ("traversal", "climbs out of the bundle"),
    ("absolute", "absolute path"),
    ("symlink", "symbolic link"),
    ("bomb", "not an uncompressed tar"),
    ("oversize", "the cap is"),
])
def test_malicious_archive_signed_by_the_real_key(site: Site, attack: str, message: str) -> None:
    good = site.bundle(2)
    files = [_member(p.name, p.read_bytes()) for p in sorted(good.iterdir())]
    if attack == "traversal":
        data = _evil_tar(files + [_member("../../escaped.txt", b"pwned")])
    elif attack == "absolute":
        data = _evil_tar(files + [_member(str(site.tmp / "escaped.txt"), b"pwned")])
    elif attack == "symlink":
        data = _evil_tar([_member("manifest.json", None, tarfile.SYMTYPE, str(site.tmp / "escaped.txt"))] + files)
    elif attack == "bomb":
        data = gzip.compress(_evil_tar(files + [_member("zeros.npy", bytes(32 << 20))]))
    else:
        # a header claiming 300 MiB (over the per-file cap) on a short, signed archive
        buf = io.BytesIO()
        t = tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT)
        for ti, body in files:
            ti.size = len(body)
            t.addfile(ti, io.BytesIO(body))
        huge = tarfile.TarInfo("huge.npy")
        huge.size = 300 << 20
        data = buf.getvalue() + huge.tobuf(tarfile.GNU_FORMAT) + bytes(8192)
    (site.tmp / "evil.tar").write_bytes(data)
    site.sign_archive(site.tmp / "evil.tar", 2)
    code, _, err = site.update()
    site.assert_refused(code, err, message)
    assert not (site.tmp / "escaped.txt").exists() and not (site.state / "escaped.txt").exists()
    site.assert_still_serving(1)


def test_bad_canary_bundle_is_never_activated(site: Site) -> None:
    b = site.bundle(2)
    edit_manifest(b, canaries={"block": ["casino.test", "not-listed.test"], "allow": ["example.org"]})
    publish(site.repo, b, site.keyring, _now(), self_test=False)  # a publisher bug ships it
    code, _, err = site.update()
    site.assert_refused(code, err, "canary self-test failed: not-listed.test should be blocked")
    site.assert_still_serving(1)


def test_root_rotation_is_accepted(site: Site) -> None:
    generate_key(site.keys, "root")
    code, out, err = run("signatures", "rotate-key", "--role", "root", "--add", "root-4",
                         "--revoke", "root-1", "--repo", str(site.repo), "--keys", str(site.keys))
    assert code == 0, err
    assert "new root version 2" in out
    site.publish(2)
    code, out, err = site.update()
    assert (code, out.strip()) == (0, "updated to bundle version 2"), err
    trusted = Metadata.from_bytes((site.state / "tuf" / "root.json").read_bytes())
    assert trusted.signed.version == 2
    site.assert_still_serving(2)


def test_revoked_key_is_refused(site: Site) -> None:
    kr = site.keyring
    old_targets = kr.signer(kr.by_role("targets")[0].keyid)
    generate_key(site.keys, "targets")
    code, _, err = run("signatures", "rotate-key", "--role", "targets", "--add", "targets-2",
                       "--revoke", "targets-1", "--repo", str(site.repo), "--keys", str(site.keys))
    assert code == 0, err
    assert site.update()[0] == 0  # the device learns the new root
    # whoever kept targets-1 (and the online keys) signs a bundle of their own
    kr = site.keyring
    archive = pack_bundle(site.bundle(2, extra=("wikipedia.org",)), site.tmp / "evil.tar")
    forge_release(site.repo, archive, 2, _now(), targets=[old_targets],
                  snapshot=[kr.signer(kr.by_role("snapshot")[0].keyid)],
                  timestamp=[kr.signer(kr.by_role("timestamp")[0].keyid)])
    code, _, err = site.update()
    site.assert_refused(code, err, "signature check failed", "targets")
    site.assert_still_serving(1)
