"""The state directory's layout and its atomic pointer.

    STATE/update-state.json          active version, last check/result/error, next check
    STATE/run.json                   written by a running `schoolgate run`: pid, bundle served
    STATE/demo/                      the demo bundle's own state directory (same layout)
    STATE/update.lock                one updater at a time (flock)
    STATE/tuf/                       ngclient's trusted metadata (root history, timestamp, ...)
    STATE/downloads/                 bundle archives being downloaded (emptied every run)
    STATE/staging/                   archives being unpacked and verified (emptied every run)
    STATE/bundles/<version>-<sha8>/  verified bundles, the last N kept
    STATE/bundles/current            symlink to the active one, e.g. "7-1a2b3c4d"

``current`` is a relative symlink replaced with one rename, so after a power cut it names
the old bundle or the new one, and bundle directories are complete before they are named.
Readers resolve it once and open the resolved directory: following ``current`` file by
file could mix two bundles if it flips mid-open.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path
from typing import TypeGuard

from filters.errors import EnvironmentFault, Where
from signatures._atomic import fsync_dir, write_atomic

__all__ = [
    "JITTER",
    "BUNDLES", "CURRENT", "STATE_FILE", "bundle_dir_name", "parse_bundle_dir_name",
    "active_bundle_dir", "set_current", "list_bundles", "read_update_state", "write_update_state",
    "RUN_FILE", "write_run_state", "read_run_state", "clear_run_state", "pid_alive",
]

BUNDLES = "bundles"
CURRENT = "current"
STATE_FILE = "update-state.json"
# Each device waits interval × (1 ± JITTER) between update checks: a fleet booted together
# (after a power cut at the district) spreads its polls instead of hitting the repository at
# once. Here, not in appliance/updates/updater.py, so that the scheduler inside every serving process
# can read it without importing the update machinery (tuf, cryptography, urllib3: ~6 MB).
JITTER = 0.1
RUN_FILE = "run.json"
# <version>-<sha8>, and "-<n>" when a fresh copy replaces a damaged active bundle of that name
_DIR_NAME = re.compile(r"([1-9][0-9]{0,17})-([0-9a-f]{8})(?:-[0-9]{1,4})?")


def bundle_dir_name(version: int, sha256: str) -> str:
    """``<version>-<first 8 hex of the archive's sha256>``: sorted by version, unique per content."""
    return f"{version}-{sha256[:8]}"


def parse_bundle_dir_name(name: str) -> int | None:
    m = _DIR_NAME.fullmatch(name)
    return int(m.group(1)) if m else None


def active_bundle_dir(state_dir: str | Path) -> Path | None:
    """The directory ``current`` points at, or None when there is no valid pointer."""
    bundles = Path(state_dir) / BUNDLES
    try:
        target = os.readlink(bundles / CURRENT)
    except (FileNotFoundError, NotADirectoryError, OSError):
        return None
    # Only a sibling named like ours: the pointer never leads outside bundles/.
    if parse_bundle_dir_name(target) is None or not (bundles / target).is_dir():
        return None
    return bundles / target


def set_current(state_dir: str | Path, name: str) -> None:
    """Point ``current`` at ``bundles/<name>`` atomically (temp symlink, rename, fsync)."""
    if parse_bundle_dir_name(name) is None:
        raise ValueError(f"not a bundle directory name: {name!r}")
    bundles = Path(state_dir) / BUNDLES
    tmp = bundles / f".{CURRENT}.{secrets.token_hex(4)}"
    try:
        os.symlink(name, tmp)
        os.replace(tmp, bundles / CURRENT)
        fsync_dir(bundles)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise EnvironmentFault(f"cannot switch the active bundle: {exc}", Where(str(bundles))) from exc


def list_bundles(state_dir: str | Path) -> list[tuple[int, str]]:
    """(version, name) of every bundle directory, oldest first."""
    bundles = Path(state_dir) / BUNDLES
    if not bundles.is_dir():
        return []
    found = [(v, p.name) for p in bundles.iterdir()
             if (v := parse_bundle_dir_name(p.name)) is not None and p.is_dir() and not p.is_symlink()]
    return sorted(found)


def read_update_state(state_dir: str | Path) -> dict:
    """The last written update state ({} when none or unreadable: it is only a report)."""
    return _read_json(Path(state_dir) / STATE_FILE)


def write_update_state(state_dir: str | Path, state: dict) -> None:
    path = Path(state_dir) / STATE_FILE
    try:
        write_atomic(path, (json.dumps(state, indent=1, sort_keys=True) + "\n").encode())
    except OSError as exc:
        raise EnvironmentFault(f"cannot write update state: {exc}", Where(str(path))) from exc


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_run_state(state_dir: str | Path, record: dict) -> None:
    """What the running appliance serves (pid, bundle, since when), for `schoolgate status`."""
    path = Path(state_dir) / RUN_FILE
    try:
        write_atomic(path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
    except OSError as exc:
        raise EnvironmentFault(f"cannot write run state: {exc}", Where(str(path))) from exc


def read_run_state(state_dir: str | Path) -> dict:
    return _read_json(Path(state_dir) / RUN_FILE)


def clear_run_state(state_dir: str | Path, pid: int) -> None:
    """Remove run.json if it is still ours (a newer run may have replaced it)."""
    path = Path(state_dir) / RUN_FILE
    if read_run_state(state_dir).get("pid") == pid:
        path.unlink(missing_ok=True)


def pid_alive(pid: object) -> TypeGuard[int]:
    """Is ``pid`` a running schoolgate? (A pid left by a killed run may have been reused by
    an unrelated process: its command line must name us.)"""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, someone else's (status run as another user)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the signal check
    return b"schoolgate" in cmdline or b"appliance.cli" in cmdline
