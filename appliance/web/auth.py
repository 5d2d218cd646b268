"""Admin authentication: scrypt password hashes, sessions, CSRF tokens, login throttling.

No I/O and no clock of its own (``now`` is a parameter), so every rule is unit-tested.

**Password hashes** (``web.admin_password_hash``, scrypt) are made, parsed and verified in
appliance/config/passwords.py, where the config loader checks them too; they are
re-exported here for the login.

**Sessions** live in the web process's memory only (a restart logs every admin out, which is
the safe direction). The cookie carries 32 random bytes; the table is keyed by their SHA-256,
so a memory dump of the table cannot be replayed as cookies. Idle timeout 30 min, absolute 12 h.
Each session has its own CSRF token (32 random bytes), put in every form as a hidden field
and compared with ``hmac.compare_digest``. The login form, before any session exists, uses a
double-submit token (a random cookie echoed in the form).

**Throttling**: per client address, LOGIN_FAILURES failures within LOGIN_WINDOW lock that
address out for LOCKOUT; all addresses together are capped at GLOBAL_FAILURES per window
(many addresses guessing), and a locked-out address gets 429 without a scrypt being run.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import deque
from dataclasses import dataclass, field

from appliance.config.passwords import MIN_N, PasswordHashError, hash_password, parse_password_hash, verify_password

__all__ = ["PasswordHashError", "hash_password", "parse_password_hash", "verify_password", "MIN_N",
           "Session", "SessionStore", "LoginThrottle", "csrf_ok", "SESSION_IDLE", "SESSION_MAX",
           "LOGIN_FAILURES", "LOGIN_WINDOW", "LOCKOUT", "GLOBAL_FAILURES"]

SESSION_IDLE = 30 * 60.0
SESSION_MAX = 12 * 3600.0
# An admin session table bigger than this is an attack (every login makes one): oldest go.
MAX_SESSIONS = 64
LOGIN_FAILURES, LOGIN_WINDOW, LOCKOUT = 5, 300.0, 900.0
GLOBAL_FAILURES = 50
# Addresses remembered by the throttle; beyond this the oldest are forgotten (a flood of
# spoofed-looking addresses cannot grow the process).
MAX_TRACKED = 4096


@dataclass
class Session:
    user: str
    csrf: str
    created: float
    last_seen: float


def _key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    def __init__(self) -> None:
        self._by_key: dict[str, Session] = {}

    def create(self, user: str, now: float) -> tuple[str, Session]:
        """A new session; returns (cookie token, session)."""
        if len(self._by_key) >= MAX_SESSIONS:
            oldest = min(self._by_key, key=lambda k: self._by_key[k].last_seen)
            del self._by_key[oldest]
        token = secrets.token_urlsafe(32)
        s = Session(user, secrets.token_urlsafe(32), now, now)
        self._by_key[_key(token)] = s
        return token, s

    def get(self, token: str | None, now: float) -> Session | None:
        if not token or len(token) > 128:
            return None
        k = _key(token)
        s = self._by_key.get(k)
        if s is None:
            return None
        if now - s.last_seen > SESSION_IDLE or now - s.created > SESSION_MAX:
            del self._by_key[k]
            return None
        s.last_seen = now
        return s

    def drop(self, token: str | None) -> None:
        if token:
            self._by_key.pop(_key(token), None)

    def __len__(self) -> int:
        return len(self._by_key)


def csrf_ok(session: Session | None, given: str | None) -> bool:
    """The form's token equals the session's (constant time); False without either."""
    if session is None or not given:
        return False
    return hmac.compare_digest(session.csrf.encode(), given.encode("utf-8", "replace"))


@dataclass
class LoginThrottle:
    """Failed logins per address and in total, over a sliding window (see module doc)."""

    failures: int = LOGIN_FAILURES
    window: float = LOGIN_WINDOW
    lockout: float = LOCKOUT
    global_failures: int = GLOBAL_FAILURES
    _per: dict[str, deque] = field(default_factory=dict)
    _locked: dict[str, float] = field(default_factory=dict)
    _all: deque = field(default_factory=deque)

    def retry_after(self, addr: str, now: float) -> float:
        """Seconds until ``addr`` may try again; 0 when it may try now."""
        until = self._locked.get(addr, 0.0)
        if until > now:
            return until - now
        self._locked.pop(addr, None)
        while self._all and now - self._all[0] > self.window:
            self._all.popleft()
        if len(self._all) >= self.global_failures:
            return self.window - (now - self._all[0])
        return 0.0

    def failed(self, addr: str, now: float) -> None:
        q = self._per.get(addr)
        if q is None:
            if len(self._per) >= MAX_TRACKED:
                self._per.pop(next(iter(self._per)))
            q = self._per[addr] = deque()
        q.append(now)
        while q and now - q[0] > self.window:
            q.popleft()
        self._all.append(now)
        if len(q) >= self.failures:
            self._locked[addr] = now + self.lockout
            q.clear()
            if len(self._locked) > MAX_TRACKED:
                self._locked.pop(next(iter(self._locked)))

    def succeeded(self, addr: str) -> None:
        self._per.pop(addr, None)
