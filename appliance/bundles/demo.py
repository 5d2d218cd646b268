"""Build, sign and publish the demo bundle shipped in the repository.

    python -m appliance.bundles.demo            # publish the next version into config/demo/repo
    python -m appliance.bundles.demo --fresh    # new keys, new repository, new trusted root

    config/demo/sources.yaml              what it is compiled from (``demo: true``)
    config/demo/keys-DEMO-NOT-SECRET/     the signing keys: PUBLIC, committed on purpose
    config/demo/repo/                     the TUF repository (metadata/, targets/)
    config/demo/trust/root.json           the root `schoolgate run` trusts for the demo

**The demo keys are committed, labelled as not secret.** Anyone can rebuild the demo and the
chain of trust stays the same, so an installed demo takes a rebuilt one as an ordinary update.
Regenerating keys on every build would change the trusted root each time and strand every
installed copy. Their signatures prove nothing — everyone holds the keys — which is exactly
what a demo is; a district replaces repository, keys and trusted root (docs/publishing.md,
"The demo bundle, and replacing it"), and the demo only ever lands in ``<state_dir>/demo``, never the real
state directory.

**Ten-year metadata.** A repository in git is not re-signed every few hours by cron, so the
usual lifetimes (timestamp 1 day, see signatures/repository.EXPIRY) would expire it the day
after it is committed. With public keys there is no freeze attack to bound, so the demo's
roles last ten years, as does the bundle (``expires_days`` in sources.yaml).

The repository is kept small: only the current snapshot, targets and bundle archive stay
(root versions are all kept: devices walk them in order).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from appliance.bundles.select import DEMO_KEYS, DEMO_REPO, DEMO_ROOT, DEMO_SOURCES
from filters.errors import InputError, SchoolgateError, Where
from signatures._atomic import write_atomic
from signatures.bundle import write_bundle
from signatures.compile import compile_sources
from signatures.keys import ROLES, Keyring, generate_keys
from signatures.repository import TARGET_NAME, PublishResult, load_repo, publish
from signatures.sources import load_sources

__all__ = ["DEMO_EXPIRY", "build_demo", "main"]

DEMO_EXPIRY = {role: timedelta(days=3650) for role in ROLES}


def _random_key() -> tuple[int, int]:
    import secrets

    return secrets.randbits(64), secrets.randbits(64)


def build_demo(*, now: datetime, sources: Path = DEMO_SOURCES, keys: Path = DEMO_KEYS,
               repo: Path = DEMO_REPO, trust: Path = DEMO_ROOT, fresh: bool = False,
               version: int | None = None) -> PublishResult:
    """Compile ``sources`` and publish it as the next demo version (see the module doc)."""

    spec = load_sources(sources)
    if not spec.demo:
        raise InputError("the demo sources must say demo: true", Where(str(sources)))
    if fresh:
        for d in (keys, repo):
            shutil.rmtree(d, ignore_errors=True)
    if not any(keys.glob("*.pem")):
        generate_keys(keys)
        (keys / "README.md").write_text(_KEYS_README)
    state = load_repo(repo)
    published = state.bundle_version if state else 0
    version = version or max(spec.version, published + 1)
    compiled = compile_sources(replace(spec, version=version), now=now, new_key=_random_key)
    with tempfile.TemporaryDirectory(prefix="demo-bundle.") as tmp:
        bundle = write_bundle(Path(tmp) / "bundle", compiled.arrays, compiled.manifest)
        result = publish(repo, bundle, Keyring(keys), now, expiry=DEMO_EXPIRY)
    _prune(repo)
    trust.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(trust, (repo / "metadata" / "root.json").read_bytes())
    return result


def _prune(repo: Path) -> None:
    """Drop every snapshot/targets version and bundle archive but the current ones."""
    state = load_repo(repo)
    assert state is not None
    keep = {f"{state.snapshot.signed.version}.snapshot.json", f"{state.targets.signed.version}.targets.json"}
    for p in (repo / "metadata").glob("*.json"):
        if p.name.endswith((".snapshot.json", ".targets.json")) and p.name not in keep:
            p.unlink()
    t = state.bundle_target
    current = f"{t.hashes['sha256']}.{TARGET_NAME}" if t else None
    for p in (repo / "targets").iterdir():
        if p.name != current:
            p.unlink()


_KEYS_README = """\
# DEMO KEYS — NOT SECRET

These are the signing keys of schoolgate's demo repository (`config/demo/repo`). They are
committed on purpose so that anyone can rebuild the demo (`python -m appliance.bundles.demo`);
a signature made with them proves nothing. Never use them, or the demo's `trust/root.json`,
for a real deployment: run `schoolgate signatures keygen` for keys of your own (see
docs/publishing.md, "The demo bundle, and replacing it").
"""


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m appliance.bundles.demo",
                                description="rebuild and re-sign the demo bundle in config/demo")
    p.add_argument("--fresh", action="store_true",
                   help="new demo keys and a new repository (installed demos then need a reinstall)")
    p.add_argument("--version", type=int, help="bundle version (default: one above the published)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        r = build_demo(now=datetime.now(UTC), fresh=args.fresh, version=args.version)
    except SchoolgateError as exc:
        print(f"demo_bundle: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, InputError) else 1
    size = sum(f.stat().st_size for f in DEMO_REPO.rglob("*") if f.is_file())
    if args.json:
        print(json.dumps({"version": r.version, "target": r.target_url_path, "length": r.length,
                          "repository_bytes": size}))
    else:
        print(f"demo bundle version {r.version} published in {DEMO_REPO} ({r.length:,}-byte archive, "
              f"{size:,} bytes in all); trusted root: {DEMO_ROOT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
