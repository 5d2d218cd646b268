"""What an attacker (or a broken publisher) would serve: metadata signed by whatever keys
they hold, with none of the publisher's own checks. Tests only."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, MetaFile, TargetFile
from tuf.api.serialization.json import JSONSerializer

from signatures.repository import EXPIRY, TARGET_NAME, load_repo, write_metadata

_SER = JSONSerializer(compact=False)


def sign_with(md: Metadata, signers: Iterable[Signer]) -> Metadata:
    md.signatures.clear()
    for s in signers:
        md.sign(s, append=True)
    return md


def forge_release(repo: Path, archive: Path, version: int, now: datetime, *,
                  targets: Iterable[Signer], snapshot: Iterable[Signer],
                  timestamp: Iterable[Signer]) -> None:
    """Publish ``archive`` as bundle ``version``, each role signed by the given signers only."""
    state = load_repo(repo)
    tf = TargetFile.from_file(TARGET_NAME, str(archive), ["sha256"])
    tf.unrecognized_fields["custom"] = {"version": version}
    shutil.copyfile(archive, repo / "targets" / f"{tf.hashes['sha256']}.{TARGET_NAME}")
    t = state.targets.signed
    t.targets = {TARGET_NAME: tf}
    t.version += 1
    t.expires = now + EXPIRY["targets"]
    sign_with(state.targets, targets)
    write_metadata(repo, state.targets)
    s = state.snapshot.signed
    s.version += 1
    s.expires = now + EXPIRY["snapshot"]
    s.meta["targets.json"] = MetaFile.from_data(t.version, state.targets.to_bytes(_SER), ["sha256"])
    sign_with(state.snapshot, snapshot)
    write_metadata(repo, state.snapshot)
    ts = state.timestamp.signed
    ts.version += 1
    ts.expires = now + EXPIRY["timestamp"]
    ts.snapshot_meta = MetaFile.from_data(s.version, state.snapshot.to_bytes(_SER), ["sha256"])
    sign_with(state.timestamp, timestamp)
    write_metadata(repo, state.timestamp)
