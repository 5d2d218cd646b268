"""The publisher's TUF repository: plain static files any web server or CDN can serve.

Layout (consistent snapshots, TUF spec §5.5; python-tuf's examples/repository is the model)::

    REPO/metadata/1.root.json, 2.root.json, ...  every root version (clients walk them in order)
    REPO/metadata/root.json                      the newest root: the file devices trust
    REPO/metadata/N.targets.json                 lists the one target, bundle.tar
    REPO/metadata/N.snapshot.json                pins the targets version, length and hash
    REPO/metadata/timestamp.json                 pins the snapshot; the only file rewritten
    REPO/targets/<sha256>.bundle.tar             the bundle archive (see archive.py)

**One target with a fixed name, ``bundle.tar``.** ngclient has no public call to list
targets, and a fixed name keeps targets metadata one entry long. With consistent snapshots
each bundle still gets its own URL (its hash prefix), so a CDN never serves a stale one.
The bundle version is in the target's ``custom`` field (``{"version": N, ...}``) so a
device that is up to date learns it without downloading the bundle; after download the
manifest inside must agree with it.

Versioned files are written first and ``timestamp.json`` last, each atomically, so a client
polling during a publish sees the old repository or the new one. Time is a parameter.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from filters.errors import BundleError, EnvironmentFault, InputError, SignatureError, Where
from signatures._atomic import fsync_dir, write_atomic
from signatures.archive import pack_bundle
from signatures.bundle import open_bundle
from signatures.keys import DEFAULT_KEY_COUNTS, ROLES, ROOT_THRESHOLD, Keyring

__all__ = [
    "TARGET_NAME", "EXPIRY", "RepoState", "PublishResult", "load_repo", "init_repo",
    "publish", "add_bundle_archive", "refresh", "rotate_keys", "write_metadata", "parse_rfc3339",
]

TARGET_NAME = "bundle.tar"
# How long each role's signature stays valid. Shorter means a stolen or replayed file is
# useful for less time; longer means fewer signing sessions.
EXPIRY = {
    # Root keys are offline and signing needs two people with their media: once a year,
    # which also makes the publisher review who holds them.
    "root": timedelta(days=365),
    # Re-signed with every bundle; three months carries a district through the summer
    # holidays when nothing is published.
    "targets": timedelta(days=91),
    # Re-signed by `refresh` (daily cron); a week survives a broken cron over a long weekend.
    "snapshot": timedelta(days=7),
    # Bounds a freeze attack: a mirror replaying old metadata can hide a new bundle for at
    # most a day. `refresh` from cron re-signs it every few hours.
    "timestamp": timedelta(days=1),
}
# `refresh` re-signs targets (with the online targets key) once it expires within this.
TARGETS_RENEW_WITHIN = timedelta(days=14)
# `refresh` warns when root expires within this; renewing it needs the offline keys.
ROOT_WARN_WITHIN = timedelta(days=30)
# Bundle files kept in targets/: a device that fetched the previous snapshot a moment ago
# may still be downloading its bundle, so the last few stay; older ones are unreferenced.
KEEP_TARGET_FILES = 3
_SERIALIZER = JSONSerializer(compact=False)


@dataclass
class RepoState:
    root: Metadata[Root]
    targets: Metadata[Targets]
    snapshot: Metadata[Snapshot]
    timestamp: Metadata[Timestamp]

    @property
    def bundle_target(self) -> TargetFile | None:
        return self.targets.signed.targets.get(TARGET_NAME)

    @property
    def bundle_version(self) -> int:
        t = self.bundle_target
        return int(t.custom["version"]) if t is not None and isinstance(t.custom, dict) else 0


@dataclass
class PublishResult:
    version: int
    target_url_path: str  # relative to REPO/targets/
    length: int
    sha256: str
    versions: dict[str, int] = field(default_factory=dict)  # role -> metadata version
    warnings: list[str] = field(default_factory=list)


def parse_rfc3339(value: object) -> datetime:
    """A manifest time (``2026-11-24T12:00:00Z``) as an aware datetime (BundleError if bad)."""
    try:
        t = datetime.fromisoformat(str(value))
    except ValueError:
        raise BundleError(f"bad time in manifest: {value!r}") from None
    if t.tzinfo is None:
        raise BundleError(f"manifest time without a zone: {value!r}")
    return t


def _read_md(path: Path) -> Metadata:
    try:
        return Metadata.from_bytes(path.read_bytes())
    except FileNotFoundError:
        raise InputError("repository file missing", Where(str(path))) from None
    except (OSError, DeserializationError) as exc:
        raise SignatureError(f"unreadable metadata: {exc}", Where(str(path))) from exc


def load_repo(repo_dir: str | Path) -> RepoState | None:
    """The current repository state, or None when REPO has no metadata/root.json yet."""
    md = Path(repo_dir) / "metadata"
    if not (md / "root.json").exists():
        return None
    root = _read_md(md / "root.json")
    timestamp = _read_md(md / "timestamp.json")
    snapshot = _read_md(md / f"{timestamp.signed.snapshot_meta.version}.snapshot.json")
    targets = _read_md(md / f"{snapshot.signed.meta['targets.json'].version}.targets.json")
    return RepoState(root, targets, snapshot, timestamp)


def write_metadata(repo_dir: str | Path, md: Metadata) -> Path:
    """Write one metadata file atomically under REPO/metadata, named as consistent snapshots need."""
    role, version = md.signed.type, md.signed.version
    out = Path(repo_dir) / "metadata"
    data = md.to_bytes(_SERIALIZER)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if role == Timestamp.type:
            path = out / "timestamp.json"
        else:
            path = out / f"{version}.{role}.json"
        write_atomic(path, data)
        if role == Root.type:
            write_atomic(out / "root.json", data)
    except OSError as exc:
        raise EnvironmentFault(f"cannot write metadata: {exc}", Where(str(out))) from exc
    return path


def _sign(md: Metadata, role: str, delegators: Iterable[Root], keyring: Keyring) -> None:
    """Sign ``md`` with every private key we hold for ``role`` in each of ``delegators``.

    Refuses (InputError) unless each delegator's threshold can be met, so the repository is
    never left holding metadata that clients would reject.
    """
    delegators = list(delegators)
    md.signatures.clear()
    signed: set[str] = set()
    for root in delegators:
        r = root.roles[role]
        have = [k for k in r.keyids if keyring.has_private(k)]
        if len(have) < r.threshold:
            names = ", ".join(keyring.name_of(k) for k in r.keyids)
            raise InputError(
                f"signing {role} needs {r.threshold} of its keys ({names}) but the private key of "
                f"only {len(have)} is in the keys directory")
        for keyid in have:
            if keyid not in signed:
                md.sign(keyring.signer(keyid), append=True)
                signed.add(keyid)
    payload = md.signed_bytes
    for root in delegators:
        root.verify_delegate(role, payload, md.signatures)  # our own check, same code as clients


def _bump(signed: Signed, role: str, now: datetime, expiry: Mapping[str, timedelta]) -> None:
    signed.version += 1
    signed.expires = now + expiry[role]


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC)


def init_repo(repo_dir: str | Path, keyring: Keyring, now: datetime,
              expiry: Mapping[str, timedelta] = EXPIRY) -> RepoState:
    """Create a repository: root v1 naming the keyring's keys by role, empty targets.

    ``expiry`` (role -> lifetime) replaces EXPIRY for every signature made here; only the
    demo repository, whose keys are public anyway, uses another one."""
    now = _utc(now)
    repo = Path(repo_dir)
    if (repo / "metadata").exists() and any((repo / "metadata").iterdir()):
        raise InputError("metadata/ exists but holds no root.json; refusing to start over",
                         Where(str(repo / "metadata")))
    for sub in ("targets", "snapshot", "timestamp"):
        if not any(keyring.has_private(k.keyid) for k in keyring.by_role(sub)):
            raise InputError(f"no private {sub} key in the keys directory (run signatures keygen)")
    root = Root(expires=now + expiry["root"], consistent_snapshot=True)
    for role in ROLES:
        keys = keyring.by_role(role)
        if not keys:
            raise InputError(f"no {role} key in the keys directory (run signatures keygen)")
        for k in keys:
            root.add_key(k.key, role)
        wanted = ROOT_THRESHOLD if role == "root" else 1
        root.roles[role].threshold = min(wanted, len(keys))
    if len(keyring.by_role("root")) < DEFAULT_KEY_COUNTS["root"]:
        raise InputError(f"a new repository needs {DEFAULT_KEY_COUNTS['root']} root keys "
                         f"(threshold {ROOT_THRESHOLD})")
    state = RepoState(Metadata(root), Metadata(Targets(expires=now + expiry["targets"])),
                      Metadata(Snapshot(expires=now + expiry["snapshot"])),
                      Metadata(Timestamp(expires=now + expiry["timestamp"])))
    _sign(state.root, "root", [root], keyring)
    try:
        (repo / "targets").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EnvironmentFault(f"cannot create repository: {exc}", Where(str(repo))) from exc
    write_metadata(repo, state.root)
    _commit(repo, state, keyring, now, targets_changed=True, bump=False, expiry=expiry)
    return state


def _commit(repo: Path, state: RepoState, keyring: Keyring, now: datetime, *,
            targets_changed: bool, bump: bool = True, expiry: Mapping[str, timedelta] = EXPIRY) -> None:
    """Sign and write targets (if changed), then snapshot, then timestamp."""
    root = state.root.signed
    if targets_changed:
        if bump:
            _bump(state.targets.signed, "targets", now, expiry)
        _sign(state.targets, "targets", [root], keyring)
        write_metadata(repo, state.targets)
    targets_bytes = state.targets.to_bytes(_SERIALIZER)
    snap = state.snapshot.signed
    if bump:
        _bump(snap, "snapshot", now, expiry)
    # Length and hash as well as the version: a mirror cannot pair this snapshot with any
    # other targets file (mix-and-match), and the client knows how many bytes to accept.
    snap.meta["targets.json"] = MetaFile.from_data(state.targets.signed.version, targets_bytes, ["sha256"])
    _sign(state.snapshot, "snapshot", [root], keyring)
    write_metadata(repo, state.snapshot)
    ts = state.timestamp.signed
    if bump:
        _bump(ts, "timestamp", now, expiry)
    ts.snapshot_meta = MetaFile.from_data(snap.version, state.snapshot.to_bytes(_SERIALIZER), ["sha256"])
    _sign(state.timestamp, "timestamp", [root], keyring)
    write_metadata(repo, state.timestamp)


def publish(repo_dir: str | Path, bundle_dir: str | Path, keyring: Keyring, now: datetime, *,
            self_test: bool = True, expiry: Mapping[str, timedelta] = EXPIRY) -> PublishResult:
    """Add the built bundle at ``bundle_dir`` to the repository (creating it on first use).

    The bundle is verified (file hashes; with ``self_test``, its canaries) and must carry a
    version greater than the one published: a device refuses anything else anyway.
    """
    now = _utc(now)
    bundle = open_bundle(bundle_dir)
    bundle.verify_files(exact=True)
    if self_test:
        bundle.self_test()
    expires = bundle.manifest.get("expires")
    if parse_rfc3339(expires) <= now:
        raise BundleError(f"bundle expired at {expires}; rebuild it", Where(str(bundle_dir)))
    repo = Path(repo_dir)
    state = load_repo(repo) or init_repo(repo, keyring, now, expiry)
    if bundle.version <= state.bundle_version:
        raise BundleError(f"bundle version {bundle.version} is not newer than the published "
                          f"version {state.bundle_version}; raise version: in SOURCES.yaml",
                          Where(str(Path(bundle_dir) / "manifest.json")))
    fd, tmp = tempfile.mkstemp(prefix=".bundle.", suffix=".tar", dir=_targets_dir(repo))
    os.close(fd)
    try:
        pack_bundle(bundle_dir, tmp)
        custom = {"expires": expires, "created": bundle.manifest.get("created")}
        if bundle.demo:
            custom["demo"] = True
        return add_bundle_archive(repo, tmp, bundle.version, keyring, now, custom=custom, expiry=expiry)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _targets_dir(repo: Path) -> Path:
    d = repo / "targets"
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EnvironmentFault(f"cannot create {d}: {exc}") from exc
    return d


def add_bundle_archive(repo_dir: str | Path, archive: str | Path, version: int, keyring: Keyring,
                       now: datetime, custom: dict | None = None,
                       expiry: Mapping[str, timedelta] = EXPIRY) -> PublishResult:
    """Sign ``archive`` as the repository's bundle target, claiming bundle ``version``.

    No check of the archive's content or of the version order: :func:`publish` does those.
    Tests use this directly to sign what a compromised or buggy publisher would.
    """
    now = _utc(now)
    repo = Path(repo_dir)
    state = load_repo(repo)
    if state is None:
        raise InputError("no repository here yet (publish a bundle to create one)", Where(str(repo)))
    tdir = _targets_dir(repo)
    tf = TargetFile.from_file(TARGET_NAME, str(archive), ["sha256"])
    sha = tf.hashes["sha256"]
    tf.unrecognized_fields["custom"] = {"version": version, **(custom or {})}
    url_path = f"{sha}.{TARGET_NAME}"
    try:
        shutil.copyfile(archive, tdir / f".{url_path}.tmp")
        with open(tdir / f".{url_path}.tmp", "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tdir / f".{url_path}.tmp", tdir / url_path)
        fsync_dir(tdir)
    except OSError as exc:
        raise EnvironmentFault(f"cannot write target: {exc}", Where(str(tdir))) from exc
    state.targets.signed.targets = {TARGET_NAME: tf}
    _commit(repo, state, keyring, now, targets_changed=True, expiry=expiry)
    _prune_targets(repo, state)
    return PublishResult(version, url_path, tf.length, sha, _versions(state))


def _versions(state: RepoState) -> dict[str, int]:
    return {r: getattr(state, r).signed.version for r in ROLES}


def _prune_targets(repo: Path, state: RepoState) -> None:
    keep: set[str] = set()
    newest = state.targets.signed.version
    for v in range(max(1, newest - KEEP_TARGET_FILES + 1), newest + 1):
        try:
            md = Metadata[Targets].from_bytes((repo / "metadata" / f"{v}.targets.json").read_bytes())
        except (OSError, DeserializationError):
            continue
        keep.update(f"{t.hashes['sha256']}.{name}" for name, t in md.signed.targets.items())
    for p in (repo / "targets").glob(f"*.{TARGET_NAME}"):
        if p.name not in keep:
            p.unlink(missing_ok=True)


def refresh(repo_dir: str | Path, keyring: Keyring, now: datetime) -> PublishResult:
    """Re-sign snapshot and timestamp with new versions and expiry (run from cron).

    Targets are re-signed too when they expire within TARGETS_RENEW_WITHIN; a root close to
    expiry is only warned about, since its keys are offline.
    """
    now = _utc(now)
    repo = Path(repo_dir)
    state = load_repo(repo)
    if state is None:
        raise InputError("no repository here yet (publish a bundle to create one)", Where(str(repo)))
    warnings = []
    renew = state.targets.signed.expires - now < TARGETS_RENEW_WITHIN
    if renew and not any(keyring.has_private(k) for k in state.root.signed.roles["targets"].keyids):
        warnings.append(f"targets metadata expires {state.targets.signed.expires:%Y-%m-%d} and no "
                        "targets key is here to renew it")
        renew = False
    if state.root.signed.expires - now < ROOT_WARN_WITHIN:
        warnings.append(f"root metadata expires {state.root.signed.expires:%Y-%m-%d}: sign a new "
                        "root with the offline root keys (signatures rotate-key --role root)")
    _commit(repo, state, keyring, now, targets_changed=renew)
    t = state.bundle_target
    return PublishResult(state.bundle_version, f"{t.hashes['sha256']}.{TARGET_NAME}" if t else "",
                         t.length if t else 0, t.hashes["sha256"] if t else "", _versions(state), warnings)


def rotate_keys(repo_dir: str | Path, keyring: Keyring, role: str, now: datetime, *,
                add: Iterable[str] = (), revoke: Iterable[str] = (),
                threshold: int | None = None) -> PublishResult:
    """Change the keys of ``role`` in a new root version, then re-sign what they sign.

    ``add`` and ``revoke`` are key names from the keyring (``targets-2``). The new root is
    signed by the old root's threshold *and* the new one's (TUF spec §5.3.4), so devices
    accept it and can check every later root. A revoked key's signatures stop counting at
    once: its role's metadata is re-signed with the remaining keys.
    """
    now = _utc(now)
    if role not in ROLES:
        raise InputError(f"unknown role {role!r} (roles: {', '.join(ROLES)})")
    repo = Path(repo_dir)
    state = load_repo(repo)
    if state is None:
        raise InputError("no repository here yet (publish a bundle to create one)", Where(str(repo)))
    old_root = Metadata.from_bytes(state.root.to_bytes()).signed  # a deep copy: we edit the live one
    new = state.root.signed
    add, revoke = list(add), list(revoke)
    if not add and not revoke and threshold is None:
        raise InputError("nothing to change: give --add, --revoke or --threshold")
    for name in add:
        new.add_key(keyring.get(name).key, role)
    for name in revoke:
        keyid = keyring.get(name).keyid if name in keyring.keys else name
        if keyid not in new.roles[role].keyids:
            raise InputError(f"{name} is not a {role} key of this repository")
        new.revoke_key(keyid, role)
    if threshold is not None:
        new.roles[role].threshold = threshold
    r = new.roles[role]
    if r.threshold < 1 or len(r.keyids) < r.threshold:
        raise InputError(f"{role} would have {len(r.keyids)} key(s) for a threshold of {r.threshold}")
    _bump(new, "root", now, EXPIRY)
    _sign(state.root, "root", [old_root, new], keyring)
    write_metadata(repo, state.root)
    _commit(repo, state, keyring, now, targets_changed=(role == "targets"))
    return PublishResult(state.bundle_version, "", 0, "", _versions(state))
