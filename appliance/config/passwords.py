"""The admin password hash format (``web.admin_password_hash``): make, parse and check one.

**Format** (one string)::

    scrypt$<N>$<r>$<p>$<salt, base64>$<derived key, base64>

made by ``schoolgate web hash-password``. N is a power of two; 128·N·r bytes of memory per
check (2**15 · 8 → 32 MB: a Pi 3 checks in ~0.3 s, a guessing GPU pays the same memory per
try). Verification derives the key with the stored parameters and compares with
``hmac.compare_digest`` (constant time).

It lives with the config because the config loader checks the hash (appliance/config/web.py)
and the config must not import the web package; the web login (appliance/web/auth.py) and
the CLI (appliance/web/cli.py) import it from here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass

__all__ = ["PasswordHashError", "hash_password", "parse_password_hash", "verify_password",
           "DEFAULT_N", "DEFAULT_R", "DEFAULT_P", "MIN_N", "MAX_N", "MAX_R", "MAX_P", "SALT_BYTES", "KEY_BYTES"]

DEFAULT_N, DEFAULT_R, DEFAULT_P = 2 ** 15, 8, 1
# Parameters accepted from a config: below 2**12 a check is too cheap to slow guessing;
# above 2**20 (1 GB at r=8) a Pi cannot run it.
MIN_N, MAX_N, MAX_R, MAX_P = 2 ** 12, 2 ** 20, 32, 16
SALT_BYTES, KEY_BYTES = 16, 32


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
