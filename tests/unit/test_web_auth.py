"""appliance/web/auth.py: scrypt hashes, sessions, CSRF, login throttle."""

from __future__ import annotations

import pytest

from appliance.web.auth import (
    LOCKOUT,
    LOGIN_FAILURES,
    SESSION_IDLE,
    SESSION_MAX,
    LoginThrottle,
    PasswordHashError,
    SessionStore,
    csrf_ok,
    hash_password,
    parse_password_hash,
    verify_password,
)

N = 2 ** 12  # the minimum cost: fast tests


def test_hash_and_verify() -> None:
    h = hash_password("s3cret pass", n=N)
    assert h.startswith(f"scrypt${N}$8$1$")
    assert verify_password("s3cret pass", h)
    assert not verify_password("s3cret pasS", h)
    assert not verify_password("", h)
    assert hash_password("x", n=N) != hash_password("x", n=N)  # random salt


def test_known_vector() -> None:
    # RFC 7914 §12 test vector 2 (N=1024 is below our floor, so compare the KDF directly).
    import hashlib

    dk = hashlib.scrypt(b"password", salt=b"NaCl", n=1024, r=8, p=16, dklen=64)
    assert dk.hex().startswith("fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b373162")


@pytest.mark.parametrize("bad", ["", "bcrypt$1$2$3$4$5", "scrypt$1000$8$1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43,
                                 f"scrypt${2**21}$8$1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43,
                                 f"scrypt${N}$8$1$AAAA$" + "A" * 43, f"scrypt${N}$8$1$!!!$" + "A" * 43,
                                 f"scrypt${N}$x$1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43,
                                 f"scrypt${N}$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAA"])
def test_bad_hashes(bad: str) -> None:
    with pytest.raises(PasswordHashError):
        parse_password_hash(bad)
    assert not verify_password("anything", bad)


def test_sessions_expire_idle_and_absolute() -> None:
    store = SessionStore()
    tok, s = store.create("admin", 0.0)
    assert store.get(tok, 10.0) is s
    assert store.get(tok + "x", 10.0) is None and store.get(None, 0) is None and store.get("", 0) is None
    assert store.get(tok, 10.0 + SESSION_IDLE + 1) is None  # idle too long
    assert store.get(tok, 20.0) is None  # and gone for good
    tok, s = store.create("admin", 0.0)
    t = 0.0
    while t + SESSION_IDLE / 2 < SESSION_MAX:
        t += SESSION_IDLE / 2
        assert store.get(tok, t) is s
    assert store.get(tok, SESSION_MAX + 1) is None
    tok, s = store.create("admin", 0.0)
    store.drop(tok)
    assert store.get(tok, 1.0) is None


def test_csrf() -> None:
    store = SessionStore()
    _, s = store.create("admin", 0.0)
    _, other = store.create("admin", 0.0)
    assert csrf_ok(s, s.csrf)
    assert not csrf_ok(s, other.csrf)
    assert not csrf_ok(s, "")
    assert not csrf_ok(s, None)
    assert not csrf_ok(None, s.csrf)
    assert not csrf_ok(s, s.csrf + "é")


def test_throttle_locks_out_and_unlocks() -> None:
    t = LoginThrottle()
    for i in range(LOGIN_FAILURES - 1):
        t.failed("10.0.0.1", float(i))
        assert t.retry_after("10.0.0.1", float(i)) == 0
    t.failed("10.0.0.1", 10.0)
    assert t.retry_after("10.0.0.1", 11.0) > 0
    assert t.retry_after("10.0.0.2", 11.0) == 0  # another address is not locked
    assert t.retry_after("10.0.0.1", 10.0 + LOCKOUT + 1) == 0


def test_throttle_global_cap() -> None:
    t = LoginThrottle(global_failures=10)
    for i in range(10):
        t.failed(f"10.0.1.{i}", 1.0)
    assert t.retry_after("10.9.9.9", 2.0) > 0
    assert t.retry_after("10.9.9.9", 1.0 + t.window + 1) == 0
