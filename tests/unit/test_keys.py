"""Signing keys: file modes, passphrases, and never overwriting a private key."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from filters.errors import InputError
from signatures.keys import Keyring, generate_key, generate_keys


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_keygen_writes_six_keys_with_private_files_0600(tmp_path: Path) -> None:
    old = os.umask(0)  # even a careless umask must not widen a private key's mode
    try:
        keys = generate_keys(tmp_path / "k")
    finally:
        os.umask(old)
    assert [k.name for k in keys] == ["root-1", "root-2", "root-3", "targets-1", "snapshot-1", "timestamp-1"]
    assert len({k.keyid for k in keys}) == 6
    for k in keys:
        assert _mode(tmp_path / "k" / f"{k.name}.pem") == 0o600
        assert _mode(tmp_path / "k" / f"{k.name}.pub.json") == 0o644
        pub = json.loads((tmp_path / "k" / f"{k.name}.pub.json").read_text())
        assert pub["keyid"] == k.keyid and pub["key"]["keytype"] == "ed25519"
    assert _mode(tmp_path / "k") == 0o700
    assert [p.name for p in (tmp_path / "k").iterdir() if p.name.startswith(".")] == []


def test_passphrase_round_trip(tmp_path: Path) -> None:
    (info,) = generate_keys(tmp_path, passphrase=b"correct horse", counts={"targets": 1})
    assert b"ENCRYPTED PRIVATE KEY" in (tmp_path / "targets-1.pem").read_bytes()
    signer = Keyring(tmp_path, passphrase=b"correct horse").signer(info.keyid)
    sig = signer.sign(b"payload")
    info.key.verify_signature(sig, b"payload")  # raises if it does not verify
    with pytest.raises(InputError, match="encrypted; give its passphrase"):
        Keyring(tmp_path).signer(info.keyid)
    with pytest.raises(InputError, match="wrong passphrase"):
        Keyring(tmp_path, passphrase=b"wrong").signer(info.keyid)


def test_plain_keys_load_even_when_a_passphrase_is_given(tmp_path: Path) -> None:
    (info,) = generate_keys(tmp_path, counts={"snapshot": 1})
    assert b"BEGIN PRIVATE KEY" in (tmp_path / "snapshot-1.pem").read_bytes()
    Keyring(tmp_path, passphrase=b"unused").signer(info.keyid).sign(b"x")


def test_keys_are_never_overwritten(tmp_path: Path) -> None:
    generate_keys(tmp_path)
    before = (tmp_path / "root-1.pem").read_bytes()
    with pytest.raises(InputError, match="already holds keys"):
        generate_keys(tmp_path)
    assert (tmp_path / "root-1.pem").read_bytes() == before
    new = generate_key(tmp_path, "targets")
    assert new.name == "targets-2" and _mode(tmp_path / "targets-2.pem") == 0o600
    assert generate_key(tmp_path, "root").name == "root-4"
    with pytest.raises(InputError, match="unknown role"):
        generate_key(tmp_path, "admin")


def test_keyring_finds_keys_by_role_and_across_directories(tmp_path: Path) -> None:
    generate_keys(tmp_path / "all")
    offline = tmp_path / "usb"
    offline.mkdir()
    for n in ("root-1", "root-2", "root-3"):
        for ext in (".pem", ".pub.json"):
            shutil.move(tmp_path / "all" / f"{n}{ext}", offline / f"{n}{ext}")
    online = Keyring(tmp_path / "all")
    assert online.by_role("root") == [] and len(online.by_role("targets")) == 1
    both = Keyring(tmp_path / "all", offline)
    assert [k.name for k in both.by_role("root")] == ["root-1", "root-2", "root-3"]
    assert all(both.has_private(k.keyid) for k in both.keys.values())
    with pytest.raises(InputError, match="no key named 'root-9'"):
        both.get("root-9")


def test_public_only_keys_have_no_signer(tmp_path: Path) -> None:
    (info,) = generate_keys(tmp_path, counts={"root": 1})
    (tmp_path / "root-1.pem").unlink()
    kr = Keyring(tmp_path)
    assert not kr.has_private(info.keyid)
    with pytest.raises(InputError, match="no private key for root-1"):
        kr.signer(info.keyid)


def test_mismatched_or_forged_key_files_are_refused(tmp_path: Path) -> None:
    a, b = generate_keys(tmp_path, counts={"targets": 2})
    (tmp_path / "targets-1.pem").write_bytes((tmp_path / "targets-2.pem").read_bytes())
    with pytest.raises(InputError, match="does not match targets-1.pub.json"):
        Keyring(tmp_path).signer(a.keyid)
    doc = json.loads((tmp_path / "targets-2.pub.json").read_text())
    (tmp_path / "targets-2.pub.json").write_text(json.dumps(dict(doc, keyid=a.keyid)))
    with pytest.raises(InputError, match="keyid does not match"):
        Keyring(tmp_path)
    doc["name"] = "root-1"
    (tmp_path / "targets-2.pub.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="names a different key"):
        Keyring(tmp_path)
    (tmp_path / "targets-2.pub.json").write_text("{not json")
    with pytest.raises(InputError, match="not a public key file"):
        Keyring(tmp_path)
    with pytest.raises(InputError, match="keys directory not found"):
        Keyring(tmp_path / "absent")
