"""Admin authentication: scrypt password hashes, sessions, CSRF tokens, login throttling.

No I/O and no clock of its own (``now`` is a parameter), so every rule is unit-tested.

**Password hash format** (one string in ``web.admin_password_hash``)::

    scrypt$<N>$<r>$<p>$<salt, base64>$<derived key, base64>

made by ``schoolgate web hash-password``. N is a power of two; 128·N·r bytes of memory per
check (2**15 · 8 → 32 MB: a Pi 3 checks in ~0.3 s, a guessing GPU pays the same memory per
try). Verification derives the key with the stored parameters and compares with
``hmac.compare_digest`` (constant time).

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

import base64
import binascii
import hashlib
import hmac
import secrets
from collections import deque
from dataclasses import dataclass, field

__all__ = ["PasswordHashError", "hash_password", "parse_password_hash", "verify_password",
           "Session", "SessionStore", "LoginThrottle", "csrf_ok", "SESSION_IDLE", "SESSION_MAX",
           "LOGIN_FAILURES", "LOGIN_WINDOW", "LOCKOUT", "GLOBAL_FAILURES"]

DEFAULT_N, DEFAULT_R, DEFAULT_P = 2 ** 15, 8, 1
# Parameters accepted from a config: below 2**12 a check is too cheap to slow guessing;
# above 2**20 (1 GB at r=8) a Pi cannot run it.
MIN_N, MAX_N, MAX_R, MAX_P = 2 ** 12, 2 ** 20, 32, 16
SALT_BYTES, KEY_BYTES = 16, 32
SESSION_IDLE = 30 * 60.0
SESSION_MAX = 12 * 3600.0
# An admin session table bigger than this is an attack (every login makes one): oldest go.
MAX_SESSIONS = 64
LOGIN_FAILURES, LOGIN_WINDOW, LOCKOUT = 5, 300.0, 900.0
GLOBAL_FAILURES = 50
# Addresses remembered by the throttle; beyond this the oldest are forgotten (a flood of
# spoofed-looking addresses cannot grow the process).
MAX_TRACKED = 4096


class PasswordHashError(ValueError):
    """A password hash string that is not in our format (the message says what is wrong)."""


@dataclass(frozen=True)
class _Hash:
    n: int
    r: int
    p: int
    salt: bytes
    key: bytes


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _derive(password: bytes, h: _Hash) -> bytes:
    return hashlib.scrypt(password, salt=h.salt, n=h.n, r=h.r, p=h.p, dklen=len(h.key),
                          maxmem=128 * h.n * h.r * h.p + (1 << 20))


def hash_password(password: str, *, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P,
                  salt: bytes | None = None) -> str:
    """A new hash string for ``password`` (random salt unless given)."""
    if not password:
        raise PasswordHashError("the password is empty")
    h = _Hash(n, r, p, salt if salt is not None else secrets.token_bytes(SALT_BYTES), b"\0" * KEY_BYTES)
    _check(h)
    key = _derive(password.encode(), h)
    return f"scrypt${n}${r}${p}${_b64(h.salt)}${_b64(key)}"


def _check(h: _Hash) -> None:
    if not MIN_N <= h.n <= MAX_N or h.n & (h.n - 1):
        raise PasswordHashError(f"N must be a power of two from {MIN_N} to {MAX_N}")
    if not 1 <= h.r <= MAX_R or not 1 <= h.p <= MAX_P:
        raise PasswordHashError(f"r must be 1..{MAX_R} and p 1..{MAX_P}")
    if len(h.salt) < 8:
        raise PasswordHashError("the salt must be at least 8 bytes")
    if not 16 <= len(h.key) <= 64:
        raise PasswordHashError("the derived key must be 16 to 64 bytes")


def parse_password_hash(text: str) -> _Hash:
    parts = text.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise PasswordHashError("expected scrypt$N$r$p$salt$key")
    if not all(x.isdigit() for x in parts[1:4]):
        raise PasswordHashError("N, r and p must be whole numbers")
    try:
        salt, key = _unb64(parts[4]), _unb64(parts[5])
    except (binascii.Error, ValueError):
        raise PasswordHashError("salt and key must be base64") from None
    h = _Hash(int(parts[1]), int(parts[2]), int(parts[3]), salt, key)
    _check(h)
    return h


def verify_password(password: str, stored: str) -> bool:
    """Does ``password`` match ``stored``? (Constant-time comparison of the derived keys.)"""
    try:
        h = parse_password_hash(stored)
    except PasswordHashError:
        return False
    return hmac.compare_digest(_derive(password.encode("utf-8", "surrogatepass"), h), h.key)


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
