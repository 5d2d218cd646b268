"""The device's side of TUF: find, download and verify a bundle, given a fetcher.

python-tuf's ngclient does the TUF client workflow (root rotation, rollback and freeze
protection, signature thresholds, lengths and hashes); this module sets its byte caps,
injects the clock, translates its exceptions into ours, and adds what TUF cannot know:
the bundle's own checks after download (see :func:`verify_unpacked`). Network I/O is the
fetcher's business (``appliance/updates/fetcher.py``); the state directory is ``appliance/updates/updater.py``'s.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import TargetFile
from tuf.ngclient import Updater, UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface

from filters.errors import BundleError, EnvironmentFault, SchoolgateError, SignatureError, UpdateError, Where
from signatures.archive import MAX_ARCHIVE_BYTES
from signatures.bundle import Bundle, open_bundle
from signatures.repository import TARGET_NAME, parse_rfc3339

__all__ = ["UpdateLimits", "Offer", "TufClient", "verify_unpacked", "translate_errors"]


@dataclass(frozen=True)
class UpdateLimits:
    """Byte caps for every download (an "endless data" attack stops at these)."""

    # Counted from the configured trusted root on every run (ngclient walks the cached chain
    # again from there): 32 root versions is decades of yearly renewals; a district that
    # rotates more often ships its devices a newer trusted root.
    max_root_rotations: int = 32
    # Our repositories delegate nothing; ngclient counts the top-level targets role too.
    max_delegations: int = 1
    # Our root with a handful of Ed25519 keys is ~3 KB; 64 KiB allows dozens of keys.
    root_max_length: int = 64 << 10
    # Our timestamp is ~560 B and never grows (one entry).
    timestamp_max_length: int = 16 << 10
    # Used only when the timestamp gives no length (ours always does): one entry, ~560 B.
    snapshot_max_length: int = 64 << 10
    # Used only when the snapshot gives no length (ours always does): one target, ~700 B.
    targets_max_length: int = 256 << 10
    # The signed length is what counts; this refuses a signed but absurd one before download.
    bundle_max_length: int = MAX_ARCHIVE_BYTES

    def tuf_config(self) -> UpdaterConfig:
        return UpdaterConfig(
            max_root_rotations=self.max_root_rotations, max_delegations=self.max_delegations,
            root_max_length=self.root_max_length, timestamp_max_length=self.timestamp_max_length,
            snapshot_max_length=self.snapshot_max_length, targets_max_length=self.targets_max_length,
            app_user_agent="schoolgate")


@dataclass(frozen=True)
class Offer:
    """What the repository offers: its bundle target and the version it claims."""

    target: TargetFile
    version: int

    @property
    def sha256(self) -> str:
        return self.target.hashes["sha256"]


def _translate(exc: Exception, what: str) -> SchoolgateError | None:
    if isinstance(exc, tuf_exc.ExpiredMetadataError):
        return SignatureError(f"{what}: repository metadata has expired ({exc}); a mirror may be "
                              "replaying old files (freeze attack) or the publisher stopped refreshing")
    if isinstance(exc, tuf_exc.BadVersionNumberError):
        return SignatureError(f"{what}: metadata version went backwards (rollback refused): {exc}")
    if isinstance(exc, tuf_exc.UnsignedMetadataError):
        return SignatureError(f"{what}: signature check failed: {exc}")
    if isinstance(exc, tuf_exc.LengthOrHashMismatchError):
        return SignatureError(f"{what}: length or hash differs from the signed metadata: {exc}")
    if isinstance(exc, tuf_exc.RepositoryError):
        return SignatureError(f"{what}: repository metadata refused: {exc}")
    if isinstance(exc, tuf_exc.DownloadLengthMismatchError):
        return UpdateError(f"{what}: server sent more than allowed: {exc}")
    if isinstance(exc, tuf_exc.SlowRetrievalError):
        return UpdateError(f"{what}: download too slow or past its deadline: {exc}")
    if isinstance(exc, tuf_exc.DownloadHTTPError):
        return UpdateError(f"{what}: HTTP status {exc.status_code}: {exc}")
    if isinstance(exc, tuf_exc.DownloadError):
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, SchoolgateError):  # the fetcher's own words: python-tuf wrapped them
            return type(cause)(cause.message, cause.where)
        said = cause is not None and str(cause) in str(exc)  # the fetcher's message quotes it already
        return UpdateError(f"{what}: download failed: {exc}" + (f" ({cause})" if cause and not said else ""))
    if isinstance(exc, OSError):
        return EnvironmentFault(f"{what}: {exc}")
    return None


@contextlib.contextmanager
def translate_errors(what: str, fetcher: FetcherInterface | None = None) -> Iterator[None]:
    """python-tuf's exceptions → ours, once, at this boundary (docs/architecture.md, Conventions).

    A fetcher with a ``last_url`` attribute lets the message name the file at fault (TUF's
    own messages do not).
    """
    try:
        yield
    except SchoolgateError:
        raise
    except Exception as exc:
        url = getattr(fetcher, "last_url", None)
        mapped = _translate(exc, f"{what} ({url})" if url else what)
        if mapped is None:
            raise
        raise mapped from exc


class TufClient:
    """One update check: ngclient over ``metadata_dir`` with our caps and clock.

    ``trusted_root`` is the root shipped with the device (config ``updates.trusted_root``):
    it is the anchor every run starts from, whatever is cached; later roots cached in
    ``metadata_dir`` are re-verified from it each time.
    """

    def __init__(self, metadata_dir: str | Path, repo_url: str, trusted_root: bytes,
                 fetcher: FetcherInterface, *, now: datetime,
                 limits: UpdateLimits = UpdateLimits()) -> None:
        base = repo_url if repo_url.endswith("/") else repo_url + "/"
        self.limits = limits
        self._fetcher = fetcher
        with translate_errors("trusted root"):
            Path(metadata_dir).mkdir(parents=True, exist_ok=True)
            try:
                self._updater = Updater(str(metadata_dir), base + "metadata/", None, base + "targets/",
                                        fetcher, limits.tuf_config(), bootstrap=trusted_root)
            except ValueError as exc:  # a root that does not even parse
                raise SignatureError(f"trusted root unusable: {exc}") from exc
        # ngclient reads the wall clock once, when the trusted set is built; expiry checks
        # (freeze attacks) must use our injected clock instead. No public API sets it.
        trusted = getattr(self._updater, "_trusted_set", None)
        if trusted is None or not hasattr(trusted, "reference_time"):
            raise EnvironmentFault("this python-tuf has no Updater._trusted_set.reference_time; "
                                   "cannot inject the clock")
        trusted.reference_time = now.astimezone(UTC)

    def check(self) -> Offer | None:
        """Refresh metadata and return the offered bundle (None if the repository has none)."""
        with translate_errors("metadata", self._fetcher):
            self._updater.refresh()
            target = self._updater.get_targetinfo(TARGET_NAME)
        if target is None:
            return None
        custom = target.custom if isinstance(target.custom, dict) else {}
        version = custom.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise BundleError(f"{TARGET_NAME} target carries no bundle version in its custom field")
        if "sha256" not in target.hashes:
            raise SignatureError(f"{TARGET_NAME} target has no sha256 hash")
        return Offer(target, version)

    def download(self, offer: Offer, dest: str | Path) -> Path:
        """Download the offered bundle to ``dest``; length and hash verified by TUF."""
        if offer.target.length > self.limits.bundle_max_length:
            raise BundleError(f"offered bundle is {offer.target.length:,} bytes; the cap is "
                              f"{self.limits.bundle_max_length:,}")
        with translate_errors("bundle download", self._fetcher):
            return Path(self._updater.download_target(offer.target, str(dest)))


def verify_unpacked(path: str | Path, *, offered_version: int | None, active_version: int,
                    now: datetime) -> Bundle:
    """Everything a bundle must pass after TUF and the safe unpacker, before activation.

    Manifest hashes (and no unlisted files), the version (equal to what the signed metadata
    claimed, and strictly above the active one: a rollback is refused even when TUF is
    satisfied), expiry, every table mapped, and the canary self-test.
    """
    where = Where(str(path))
    bundle = open_bundle(path)
    bundle.verify_files(exact=True)
    try:
        version = bundle.version
    except (TypeError, ValueError):
        raise BundleError(f"manifest version is not an integer: {bundle.manifest['version']!r}", where) from None
    if offered_version is not None and version != offered_version:
        raise SignatureError(f"manifest says version {version} but the signed metadata says "
                             f"{offered_version}", where)
    if version <= active_version:
        raise BundleError(f"bundle version {version} is not newer than the active version "
                          f"{active_version} (rollback refused)", where)
    expires = parse_rfc3339(bundle.manifest.get("expires"))
    if expires <= now:
        raise BundleError(f"bundle expired at {bundle.manifest.get('expires')}", where)
    bundle.self_test()
    return bundle
