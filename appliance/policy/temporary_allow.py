"""An admin's temporary allows: a name unblocked under one policy (or all) until a time.

One JSON file, ``<state_dir>/temporary-allow.json``, written atomically (temporary file,
fsync, rename) under an flock so that two writers (the web page, the CLI) never lose each
other's entries. Readers never lock: they see the old file or the new one.

    {"version": 1, "entries": [{"name": "video.example", "policy": "students",
      "until": "2024-05-01T12:00:00Z", "by": "admin", "created": "2024-05-01T11:00:00Z"}]}

Semantics: an entry allows the name and every name below it (as a local allow entry does,
docs/matching.md) under its policy — ``"*"`` meaning every policy — from when it is written
until ``until``. Every DNS serving process looks at the file each WATCH_PERIOD (0.5 s; a
stat, and a read only when it changed) and rebuilds its policy tables when the set of
active entries changes, including when one expires (appliance/policy/state.py).
Expired entries are dropped at the next write.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from filters.errors import EnvironmentFault, InputError, Where
from filters.names import normalise_pattern
from signatures._atomic import write_atomic

__all__ = ["TemporaryAllow", "ALL_POLICIES", "FILE", "add", "active", "remove", "read_all", "MAX_ENTRIES"]

FILE = "temporary-allow.json"
_LOCK = "temporary-allow.lock"
ALL_POLICIES = "*"
# Each entry becomes a local-overlay entry in every DNS process; a few thousand keep a
# rebuild under a few milliseconds. More is a mistake (or an attack through the web page).
MAX_ENTRIES = 5000
_FORMAT = 1


@dataclass(frozen=True)
class TemporaryAllow:
    name: str  # canonical domain name (lower case, A-labels, no trailing dot)
    policy: str  # a policy name, or "*" for every policy
    until: datetime  # aware, UTC
    by: str  # who allowed it (the admin's name, for the status page)
    created: datetime  # aware, UTC

    def to_json(self) -> dict:
        return {"name": self.name, "policy": self.policy, "until": _text(self.until), "by": self.by,
                "created": _text(self.created)}


def _utc(t: datetime) -> datetime:
    """Aware UTC, whole seconds; naive datetimes are taken as UTC."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).replace(microsecond=0)


def _text(t: datetime) -> str:
    return _utc(t).isoformat().replace("+00:00", "Z")


def _parse_time(text: object) -> datetime:
    if not isinstance(text, str):
        raise ValueError("not a time")
    return _utc(datetime.fromisoformat(text.replace("Z", "+00:00")))


def _path(state_dir: str | Path) -> Path:
    return Path(state_dir) / FILE


def read_all(state_dir: str | Path) -> list[TemporaryAllow]:
    """Every entry in the file, expired or not. A missing file is none; a damaged one is
    read as none too (it is replaced whole at the next write) — entries that cannot be
    read are skipped, never half-applied."""
    try:
        data = json.loads(_path(state_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    items = data.get("entries") if isinstance(data, dict) else None
    out = []
    for item in items if isinstance(items, list) else []:
        try:
            out.append(TemporaryAllow(normalise_pattern(str(item["name"]))[0], str(item["policy"]),
                                      _parse_time(item["until"]), str(item.get("by", "")),
                                      _parse_time(item.get("created", item["until"]))))
        except (KeyError, TypeError, ValueError):
            continue  # BadNameError is a ValueError
    return out


def active(state_dir: str | Path, now: datetime) -> list[TemporaryAllow]:
    """The entries allowing at ``now`` (until strictly after now)."""
    now = _utc(now) if now.tzinfo is None else now
    return [e for e in read_all(state_dir) if e.until > now]


class _Locked:
    """flock on a sibling lock file for a read-modify-write of the entries."""

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / _LOCK

    def __enter__(self) -> None:
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise EnvironmentFault(f"cannot open {self.path}: {exc}", Where(str(self.path))) from exc
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _write(state_dir: str | Path, entries: list[TemporaryAllow]) -> None:
    path = _path(state_dir)
    body = {"version": _FORMAT, "entries": [e.to_json() for e in entries]}
    try:
        write_atomic(path, (json.dumps(body, indent=1, sort_keys=True) + "\n").encode())
    except OSError as exc:
        raise EnvironmentFault(f"cannot write temporary allows: {exc}", Where(str(path))) from exc


def add(state_dir: Path, name: str, policy: str, until: datetime, by: str, now: datetime) -> TemporaryAllow:
    """Allow ``name`` (and the names below it) under ``policy`` ("*": all) until ``until``.

    The name is validated (BadNameError; a leading ``*.`` or ``.`` is ignored: an entry
    always covers the names below). An entry for the same name and policy is replaced;
    expired entries are dropped. InputError for an empty policy, an ``until`` not after
    ``now``, or too many entries."""
    canonical = normalise_pattern(name)[0]
    if not isinstance(policy, str) or not policy.strip():
        raise InputError("a temporary allow needs a policy name, or \"*\" for every policy")
    now, until = _utc(now), _utc(until)
    if until <= now:
        raise InputError(f"a temporary allow must end in the future (until {_text(until)}, now {_text(now)})")
    entry = TemporaryAllow(canonical, policy.strip(), until, str(by), now)
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    with _Locked(state_dir):
        kept = [e for e in read_all(state_dir) if e.until > now and (e.name, e.policy) != (canonical, entry.policy)]
        if len(kept) >= MAX_ENTRIES:
            raise InputError(f"at most {MAX_ENTRIES} temporary allows at a time")
        _write(state_dir, kept + [entry])
    return entry


def remove(state_dir: Path, name: str, policy: str) -> bool:
    """Remove the entry for ``name`` under ``policy``; False when there was none."""
    try:
        canonical = normalise_pattern(name)[0]
    except InputError:
        return False
    if not _path(state_dir).exists():
        return False
    with _Locked(state_dir):
        entries = read_all(state_dir)
        kept = [e for e in entries if (e.name, e.policy) != (canonical, policy)]
        if len(kept) == len(entries):
            return False
        _write(state_dir, kept)
    return True
