"""Signing keys for the TUF repository: Ed25519 via cryptography, one pair of files per key.

A keys directory holds, per key, ``<role>-<n>.pem`` (the private key, PKCS#8 PEM, mode
0600, optionally encrypted with a passphrase) and ``<role>-<n>.pub.json`` (the public key
as TUF metadata spells it, with its keyid). Which key signs for which role is decided by
the repository's root metadata, matched by keyid; the file name only tells people what a
key was made for. So keys can be split across directories: the three root keys live on
offline media (two of them are needed to sign a new root), while the targets, snapshot and
timestamp keys sit on the publishing machine.

Nothing here overwrites a private key: new key files are linked into place only if the
name is free.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from securesystemslib.signer import CryptoSigner, SSlibKey

from filters.errors import EnvironmentFault, InputError, Where
from signatures._atomic import fsync_dir

__all__ = [
    "ROLES",
    "DEFAULT_KEY_COUNTS",
    "ROOT_THRESHOLD",
    "KeyInfo",
    "Keyring",
    "generate_keys",
    "generate_key",
]

ROLES = ("root", "targets", "snapshot", "timestamp")
# Three root keys, two of which must sign a new root: one lost or stolen root key neither
# locks the publisher out nor lets a thief rotate the trust anchor (TUF spec §6.1).
DEFAULT_KEY_COUNTS = {"root": 3, "targets": 1, "snapshot": 1, "timestamp": 1}
ROOT_THRESHOLD = 2
PRIVATE_MODE = 0o600
_NAME = re.compile(r"(root|targets|snapshot|timestamp)-([0-9]{1,4})")


@dataclass(frozen=True)
class KeyInfo:
    name: str  # e.g. root-2
    role: str  # the role the key was generated for
    key: SSlibKey

    @property
    def keyid(self) -> str:
        return self.key.keyid


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` atomically, refusing to replace an existing file (temp, fsync, link)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)  # before any secret is written
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)  # fails with EEXIST instead of clobbering
    finally:
        os.unlink(tmp)


def _public_json(info: KeyInfo) -> bytes:
    doc = {"name": info.name, "role": info.role, "keyid": info.keyid, "key": info.key.to_dict()}
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def _next_name(keys_dir: Path, role: str) -> str:
    used = [int(m.group(2)) for p in keys_dir.glob(f"{role}-*.pub.json")
            if (m := _NAME.fullmatch(p.name[: -len(".pub.json")])) and m.group(1) == role]
    return f"{role}-{max(used, default=0) + 1}"


def generate_key(keys_dir: str | Path, role: str, passphrase: bytes | None = None) -> KeyInfo:
    """Create one new Ed25519 key for ``role`` as the next free ``<role>-<n>`` in ``keys_dir``."""
    if role not in ROLES:
        raise InputError(f"unknown role {role!r} (roles: {', '.join(ROLES)})")
    out = Path(keys_dir)
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = _next_name(out, role)
        private = Ed25519PrivateKey.generate()
        enc = (serialization.BestAvailableEncryption(passphrase) if passphrase
               else serialization.NoEncryption())
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
        info = KeyInfo(name, role, SSlibKey.from_crypto(private.public_key()))
        _write_new(out / f"{name}.pem", pem, PRIVATE_MODE)
        _write_new(out / f"{name}.pub.json", _public_json(info), 0o644)
        fsync_dir(out)
    except FileExistsError as exc:
        raise EnvironmentFault("key file already exists; not overwriting it", Where(str(exc.filename or out))) from exc
    except OSError as exc:
        raise EnvironmentFault(f"cannot write key: {exc}", Where(str(out))) from exc
    return info


def generate_keys(keys_dir: str | Path, passphrase: bytes | None = None,
                  counts: dict[str, int] | None = None) -> list[KeyInfo]:
    """Create a fresh set of keys (3 root, 1 each for targets, snapshot, timestamp).

    Refused when ``keys_dir`` already holds keys: a second set beside the first would
    make it unclear which keys a new repository trusts.
    """
    out = Path(keys_dir)
    if out.is_dir() and any(out.glob("*.pem")):
        raise InputError("directory already holds keys; to add one, use keygen --role ROLE",
                         Where(str(out)))
    return [generate_key(out, role, passphrase)
            for role, n in (counts or DEFAULT_KEY_COUNTS).items() for _ in range(n)]


class Keyring:
    """The keys in one or more directories: public keys by name, signers on demand.

    Private keys are read (and decrypted) only when a role they belong to must sign.
    """

    def __init__(self, *dirs: str | Path, passphrase: bytes | None = None) -> None:
        self.passphrase = passphrase
        self.keys: dict[str, KeyInfo] = {}
        self._pem: dict[str, Path] = {}
        for d in map(Path, dirs):
            if not d.is_dir():
                raise InputError("keys directory not found", Where(str(d)))
            for pub in sorted(d.glob("*.pub.json")):
                info = _load_public(pub)
                self.keys[info.name] = info
                if (pem := d / f"{info.name}.pem").exists():
                    self._pem[info.keyid] = pem

    def by_role(self, role: str) -> list[KeyInfo]:
        """Keys generated for ``role`` (by file name), in name order."""
        return sorted((k for k in self.keys.values() if k.role == role),
                      key=lambda k: int(k.name.rsplit("-", 1)[1]))

    def get(self, name: str) -> KeyInfo:
        if name not in self.keys:
            raise InputError(f"no key named {name!r} (have: {', '.join(sorted(self.keys)) or 'none'})")
        return self.keys[name]

    def name_of(self, keyid: str) -> str:
        return next((k.name for k in self.keys.values() if k.keyid == keyid), keyid[:12])

    def has_private(self, keyid: str) -> bool:
        return keyid in self._pem

    def signer(self, keyid: str) -> CryptoSigner:
        """A signer for ``keyid`` (InputError when its private key is absent or unreadable)."""
        pem_path = self._pem.get(keyid)
        info = next((k for k in self.keys.values() if k.keyid == keyid), None)
        if pem_path is None or info is None:
            raise InputError(f"no private key for {self.name_of(keyid)}")
        where = Where(str(pem_path))
        try:
            data = pem_path.read_bytes()
            private = serialization.load_pem_private_key(data, self.passphrase)
        except TypeError:
            # cryptography: a password was given for a plain key, or none for an encrypted one
            if self.passphrase:
                return self._load_plain(data, info, where)
            raise InputError("key is encrypted; give its passphrase (--passphrase-env VAR)", where) from None
        except ValueError as exc:
            raise InputError(f"cannot decrypt or parse key (wrong passphrase?): {exc}", where) from None
        except (OSError, UnsupportedAlgorithm) as exc:
            raise InputError(f"cannot read key: {exc}", where) from exc
        return self._signer(private, info, where)

    def _load_plain(self, data: bytes, info: KeyInfo, where: Where) -> CryptoSigner:
        try:
            return self._signer(serialization.load_pem_private_key(data, None), info, where)
        except (TypeError, ValueError) as exc:
            raise InputError(f"cannot parse key: {exc}", where) from None

    @staticmethod
    def _signer(private: object, info: KeyInfo, where: Where) -> CryptoSigner:
        if not isinstance(private, Ed25519PrivateKey):
            raise InputError("not an Ed25519 private key", where)
        try:
            return CryptoSigner(private, info.key)
        except Exception as exc:  # securesystemslib KeyMismatchError and friends
            raise InputError(f"private key does not match {info.name}.pub.json: {exc}", where) from exc


def _load_public(path: Path) -> KeyInfo:
    where = Where(str(path))
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        name, role = doc["name"], doc["role"]
        key = SSlibKey.from_dict(doc["keyid"], dict(doc["key"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"not a public key file: {exc}", where) from exc
    if not _NAME.fullmatch(name) or name.rsplit("-", 1)[0] != role or path.name != f"{name}.pub.json":
        raise InputError(f"public key file names a different key ({name!r})", where)
    if key.keytype != "ed25519" or key.scheme != "ed25519":
        raise InputError(f"only ed25519 keys are used, not {key.keytype}/{key.scheme}", where)
    try:
        raw = Ed25519PublicKey.from_public_bytes(bytes.fromhex(key.keyval["public"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise InputError(f"bad public key value: {exc}", where) from None
    if SSlibKey.from_crypto(raw).keyid != key.keyid:  # the keyid is the hash of the key
        raise InputError("keyid does not match the public key", where)
    return KeyInfo(name, role, key)
