"""One update run on the appliance: fetch, verify, activate — or keep the last good bundle.

    refresh TUF metadata (signatures/updater.py, over appliance/updates/fetcher.py)
    → the offered bundle.tar target; its signed version must be above the active one
    → download (length and hash checked by TUF) into STATE/downloads
    → safe unpack into STATE/staging (signatures/archive.py)
    → manifest hashes, version, expiry, arrays mapped, canary self-test
    → rename into STATE/bundles/<version>-<sha8>, switch `current` atomically
    → keep the newest N bundle directories

Any failure leaves `current` untouched; the outcome (and the error, in words) is written
to STATE/update-state.json for `schoolgate status` and the web page. Clock, jitter and
the fetcher are injectable; see appliance/updates/state.py for the directory layout.
"""

from __future__ import annotations

import fcntl
import os
import random
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tuf.api import exceptions as tuf_exc
from tuf.ngclient.fetcher import FetcherInterface

from appliance.config.load import UpdatesConfig
from appliance.updates.fetcher import HttpFetcher
from appliance.updates.state import (
    BUNDLES,
    JITTER,
    STATE_FILE,
    active_bundle_dir,
    bundle_dir_name,
    list_bundles,
    parse_bundle_dir_name,
    read_update_state,
    set_current,
    write_update_state,
)
from filters.errors import (
    BundleError,
    EnvironmentFault,
    InputError,
    SchoolgateError,
    SignatureError,
    UpdateError,
    Where,
)
from signatures._atomic import fsync_dir
from signatures.archive import unpack_bundle
from signatures.bundle import open_bundle
from signatures.compile import rfc3339
from signatures.updater import TufClient, UpdateLimits, verify_unpacked

__all__ = ["UpdateOutcome", "update_once", "recover_state_dir", "JITTER"]

RESULTS = ("updated", "up-to-date", "refused", "failed")
# python-tuf's UnsignedMetadataError when no signature verifies: "timestamp was signed by 0/1 keys"
_SIGNED_BY_NONE = re.compile(r"\bsigned by 0/\d+ keys\b")
Accept = Callable[[Path], "str | None"]


@dataclass
class UpdateOutcome:
    result: str  # one of RESULTS
    active_version: int | None
    offered_version: int | None = None
    error: str | None = None
    bundle_dir: str | None = None
    bytes_downloaded: int = 0

    @property
    def ok(self) -> bool:
        return self.result in ("updated", "up-to-date")


class _Lock:
    """An exclusive flock on STATE/update.lock: the scheduler and a manual run never overlap."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "update.lock"

    def __enter__(self) -> _Lock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise UpdateError("another update is running", Where(str(self.path))) from None
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # closing drops the lock


def recover_state_dir(state_dir: Path) -> None:
    """Remove what an interrupted run left: partial downloads, staging, temp pointers, the
    temporary files of atomic writes (ours: ``.update-state.json.*.tmp``; ngclient's:
    ``tuf/tmp*``). Runs under the update lock, so none of these is anyone's work in progress.

    Never touches ``bundles/current`` or the directory it names.
    """
    for sub in ("downloads", "staging"):
        shutil.rmtree(state_dir / sub, ignore_errors=True)
        (state_dir / sub).mkdir(parents=True, exist_ok=True)
    bundles = state_dir / BUNDLES
    bundles.mkdir(parents=True, exist_ok=True)
    for p in bundles.iterdir():
        if p.name.startswith("."):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
    for pattern in (f".{STATE_FILE}.*.tmp", "tuf/tmp*"):
        for p in state_dir.glob(pattern):
            if p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)


def _active(state_dir: Path) -> tuple[int, str | None, int]:
    """(version, dir name, version floor) of the active bundle; (0, None, 0) without one.

    A new bundle must be above the floor. It is the active version — or one less when the
    active bundle no longer opens, so that a damaged bundle can be replaced by a fresh copy
    of the same version, but never by an older one.
    """
    d = active_bundle_dir(state_dir)
    if d is None:
        return 0, None, 0
    version = parse_bundle_dir_name(d.name) or 0
    try:
        b = open_bundle(d)
        b.verify_files(exact=True)
        return b.version, d.name, b.version
    except (SchoolgateError, TypeError, ValueError, OSError):
        return version, d.name, version - 1


def _prune(state_dir: Path, keep: int) -> None:
    active = active_bundle_dir(state_dir)
    dirs = list_bundles(state_dir)
    for _, name in dirs[: max(0, len(dirs) - keep)]:
        if active is None or name != active.name:
            shutil.rmtree(state_dir / BUNDLES / name, ignore_errors=True)


def _run(state_dir: Path, cfg: UpdatesConfig, fetcher: FetcherInterface, now: datetime,
         limits: UpdateLimits, outcome: UpdateOutcome, floor: int, accept: Accept | None) -> None:
    trusted_root = _read_root(cfg.trusted_root)
    client = TufClient(state_dir / "tuf", cfg.repository, trusted_root, fetcher, now=now, limits=limits)
    try:
        offer = client.check()
    except SignatureError as exc:
        raise _wrong_root(exc, cfg) from exc
    if offer is None:
        raise BundleError("the repository lists no bundle yet")
    outcome.offered_version = offer.version
    active_version = outcome.active_version or 0
    if offer.version == active_version and floor == active_version:
        outcome.result = "up-to-date"
        return
    if offer.version <= floor:
        raise BundleError(f"repository offers bundle version {offer.version}, older than the "
                          f"active {active_version} (rollback refused)")
    name = bundle_dir_name(offer.version, offer.sha256)
    archive = client.download(offer, state_dir / "downloads" / f"{name}.tar")
    staging = state_dir / "staging" / name
    unpack_bundle(archive, staging)
    verify_unpacked(staging, offered_version=offer.version, active_version=floor, now=now)
    reason = accept(staging) if accept is not None else None
    if reason:
        raise InputError(f"bundle version {offer.version}: {reason}", Where(cfg.repository))
    # The active bundle failed its checks (floor below it): it is replaced, and removed after.
    damaged = outcome.bundle_dir if floor < active_version else None
    if (state_dir / BUNDLES / name).exists() and damaged and damaged.startswith(name):
        # A fresh copy of the damaged bundle gets a name of its own, so that `current`
        # names a complete directory at every instant.
        name = next(f"{name}-{n}" for n in range(2, 10000)
                    if f"{name}-{n}" != damaged and not (state_dir / BUNDLES / f"{name}-{n}").exists())
    final = state_dir / BUNDLES / name
    if final.exists():  # a verified copy left by an interrupted run; not the active one
        shutil.rmtree(final)
    os.replace(staging, final)
    fsync_dir(state_dir / BUNDLES)
    set_current(state_dir, name)
    if damaged:
        shutil.rmtree(state_dir / BUNDLES / damaged, ignore_errors=True)
    archive.unlink(missing_ok=True)
    outcome.result, outcome.active_version, outcome.bundle_dir = "updated", offer.version, name


def _wrong_root(exc: SignatureError, cfg: UpdatesConfig) -> SignatureError:
    """``exc`` with the likely cause when not one signature is by a key the trusted root
    names (python-tuf: "root was signed by 0/2 keys"): the device trusts another
    repository's root, and which file that is."""
    cause = exc.__cause__
    if not (isinstance(cause, tuf_exc.UnsignedMetadataError) and _SIGNED_BY_NONE.search(str(cause))):
        return exc
    return SignatureError(f"{exc.message}: not one of its signatures is by a key the trusted root names, so "
                          f"updates.trusted_root: {cfg.trusted_root} probably does not belong to the "
                          f"repository {cfg.repository} (or the metadata is forged)", exc.where)


def _read_root(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read trusted root: {exc.strerror}", Where(str(path))) from exc
    if len(data) > UpdateLimits().root_max_length:
        raise InputError("trusted root is larger than any root we sign", Where(str(path)))
    return data


def update_once(state_dir: str | Path, cfg: UpdatesConfig, *, now: datetime | None = None,
                fetcher: FetcherInterface | None = None, limits: UpdateLimits = UpdateLimits(),
                rand: Callable[[], float] = random.random,
                monotonic: Callable[[], float] = time.monotonic, accept: Accept | None = None) -> UpdateOutcome:
    """Run one update check against ``cfg.repository`` and record it in update-state.json.

    Never raises for a refused or failed update — the outcome says what happened; raises
    only when the state directory itself cannot be used (EnvironmentFault) or another
    update holds the lock (UpdateError). ``accept``: a last check of the verified bundle
    directory against what the appliance needs (its config's categories): a reason refuses
    it, None lets it activate.
    """
    state = Path(state_dir)
    now = (now or datetime.now(UTC)).astimezone(UTC)
    try:
        state.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EnvironmentFault(f"cannot create state directory: {exc}", Where(str(state))) from exc
    with _Lock(state):
        recover_state_dir(state)
        version, name, floor = _active(state)
        outcome = UpdateOutcome("failed", version or None, bundle_dir=name)
        if fetcher is None:
            fetcher = HttpFetcher(deadline=monotonic() + cfg.timeout, max_bytes=limits.bundle_max_length,
                                  spool_dir=state / "downloads", clock=monotonic, repository=cfg.repository)
        try:
            _run(state, cfg, fetcher, now, limits, outcome, floor, accept)
        except SchoolgateError as exc:
            outcome.result = "refused" if isinstance(exc, InputError) else "failed"
            outcome.error = str(exc)
        except Exception as exc:  # a bug of ours: record it, then let it surface
            outcome.result, outcome.error = "failed", f"internal error: {exc!r}"
            _record(state, cfg, outcome, now, rand)
            raise
        finally:
            outcome.bytes_downloaded = getattr(fetcher, "bytes_received", 0)
            recover_state_dir(state)  # staging and downloads hold nothing worth keeping
        if outcome.result == "updated":
            _prune(state, cfg.keep)
        _record(state, cfg, outcome, now, rand)
    return outcome


def _record(state: Path, cfg: UpdatesConfig, outcome: UpdateOutcome, now: datetime,
            rand: Callable[[], float]) -> None:
    previous = read_update_state(state)
    delay = cfg.interval * (1 + JITTER * (2 * rand() - 1))
    active = active_bundle_dir(state)
    record = {
        "repository": cfg.repository,
        "active_version": outcome.active_version,
        "active_bundle": str(active) if active else None,
        "last_check": rfc3339(now),
        "last_result": outcome.result,
        "last_error": outcome.error,
        "last_success": rfc3339(now) if outcome.ok else previous.get("last_success"),
        "last_update": rfc3339(now) if outcome.result == "updated" else previous.get("last_update"),
        "offered_version": outcome.offered_version,
        "next_check": rfc3339(now + timedelta(seconds=delay)),
        "bytes_downloaded": outcome.bytes_downloaded,
    }
    write_update_state(state, record)
