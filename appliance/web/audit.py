"""The append-only audit log and the unblock-request store (JSON lines in the state dir).

``<state_dir>/audit.jsonl``: one object per admin action (login, failed login, logout,
update now, temporary allow, unblock decision) and per view of the query log / events, with
who, from where and when. Opened with O_APPEND for every record and never rewritten or
truncated by the appliance: each record is one ``write`` of one line (under PIPE_BUF-sized
records the kernel appends it whole, so concurrent writers cannot interleave halves). Past
AUDIT_MAX_BYTES the file is rotated once to ``audit.jsonl.1`` (renamed, not rewritten) so a
flood of failed logins cannot fill the disk; the rotation itself is the first record of the
new file.

``<state_dir>/unblock-requests.jsonl``: requests from the block page and the admins'
decisions on them, appended the same way; the current state is the fold of the records.
New requests are refused (the block page says so) once the file holds UNBLOCK_MAX_BYTES.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

__all__ = ["AUDIT_FILE", "UNBLOCK_FILE", "AUDIT_MAX_BYTES", "UNBLOCK_MAX_BYTES", "append_record",
           "audit", "read_audit", "UnblockStore", "MAX_REASON"]

AUDIT_FILE = "audit.jsonl"
UNBLOCK_FILE = "unblock-requests.jsonl"
# ~50k records of ~300 B: years of admin actions; a failed-login flood (throttled to
# GLOBAL_FAILURES per 5 min) needs months to get here.
AUDIT_MAX_BYTES = 16 << 20
# ~4k requests of ~250 B: far more than admins review; a class spamming the form stops here.
UNBLOCK_MAX_BYTES = 1 << 20
MAX_REASON = 500
# Records longer than this are cut (PIPE_BUF, the size Linux appends atomically to a pipe,
# is also a sane bound for one audit line).
MAX_RECORD = 4096


def append_record(path: Path, record: dict) -> None:
    """Append one JSON line with O_APPEND (never rewrites the file)."""
    line = json.dumps(record, sort_keys=True, ensure_ascii=True)
    if len(line) >= MAX_RECORD:
        record = {k: (v[:200] if isinstance(v, str) else v) for k, v in record.items()}
        line = json.dumps(dict(record, truncated=True), sort_keys=True, ensure_ascii=True)[:MAX_RECORD - 1]
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def audit(state_dir: Path, now: str, action: str, by: str, client: str, **details: object) -> None:
    path = Path(state_dir) / AUDIT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if path.stat().st_size >= AUDIT_MAX_BYTES:
            os.replace(path, path.with_name(AUDIT_FILE + ".1"))
            append_record(path, {"ts": now, "action": "audit-rotated", "by": "system", "client": ""})
    except FileNotFoundError:
        pass
    append_record(path, {"ts": now, "action": action, "by": by, "client": client, **details})


def read_audit(state_dir: Path, limit: int = 200) -> tuple[list[dict], bytes]:
    """(newest ``limit`` records newest first, the whole file's bytes for download)."""
    try:
        data = (Path(state_dir) / AUDIT_FILE).read_bytes()
    except OSError:
        return [], b""
    out = []
    for line in data.splitlines()[-limit:]:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out[::-1], data


class UnblockStore:
    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / UNBLOCK_FILE

    def full(self) -> bool:
        try:
            return self.path.stat().st_size >= UNBLOCK_MAX_BYTES
        except OSError:
            return False

    def add(self, now: str, name: str, reason: str, category: str, policy: str, rule: str | None) -> str | None:
        """Store a request; returns its id, or None when the store is full."""
        if self.full():
            return None
        rid = secrets.token_hex(6)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        append_record(self.path, {"type": "request", "id": rid, "ts": now, "name": name[:253],
                                  "reason": reason[:MAX_REASON], "category": category, "policy": policy,
                                  "rule": rule})
        return rid

    def decide(self, now: str, rid: str, decision: str, by: str, detail: str = "") -> None:
        append_record(self.path, {"type": "decision", "id": rid, "ts": now, "decision": decision,
                                  "by": by, "detail": detail})

    def all(self) -> list[dict]:
        """Every request, newest first, each with its decision (None while pending)."""
        try:
            data = self.path.read_bytes()
        except OSError:
            return []
        reqs: dict[str, dict] = {}
        for line in data.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
                continue
            if rec.get("type") == "request":
                reqs[rec["id"]] = dict(rec, decision=None)
            elif rec.get("type") == "decision" and rec["id"] in reqs:
                reqs[rec["id"]].update(decision=rec.get("decision"), decided_by=rec.get("by"),
                                       decided=rec.get("ts"), detail=rec.get("detail"))
        return list(reqs.values())[::-1]

    def get(self, rid: str) -> dict | None:
        return next((r for r in self.all() if r["id"] == rid), None)
