"""Small real bundles for tests: compiled from a tiny SOURCES.yaml, written to disk."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from pathlib import Path

from signatures.bundle import write_bundle
from signatures.compile import compile_sources
from signatures.sources import load_sources

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
BLOCKED = "casino.test"  # listed in every test bundle (category gambling)
ALLOWED = "example.org"  # never listed


def make_bundle(out: Path, version: int, *, now: datetime = NOW, expires_days: int = 30,
                extra: tuple[str, ...] = (), cidrs: tuple[str, ...] = (),
                allow_cidrs: tuple[str, ...] = (), categories: dict[str, tuple[str, ...]] | None = None) -> Path:
    """Compile a bundle of ``version`` blocking casino.test (+ ``extra`` names) into ``out``.

    Each version also blocks ``v<version>.test``, so a test can tell which one is active.
    ``cidrs``: addresses and CIDRs gambling also lists (gambling-ips.txt); ``allow_cidrs``:
    the allow list's (allow-ips.txt); ``categories``: more categories and their names.
    """
    src = out.with_name(out.name + ".src")
    src.mkdir(parents=True, exist_ok=True)
    names = [BLOCKED, f"v{version}.test", *extra]
    (src / "gambling.txt").write_text("".join(n + "\n" for n in names))
    (src / "allow.txt").write_text("fine.casino.test\n")
    (src / "gambling-ips.txt").write_text("".join(c + "\n" for c in cidrs))
    (src / "allow-ips.txt").write_text("".join(c + "\n" for c in allow_cidrs))
    ips = ", {path: gambling-ips.txt, format: cidr}" if cidrs else ""
    allow_ips = ", {path: allow-ips.txt, format: cidr}" if allow_cidrs else ""
    more = ""
    for cat, listed in (categories or {}).items():
        (src / f"{cat}.txt").write_text("".join(n + "\n" for n in listed))
        more += f"  {cat}: {{sources: [{{path: {cat}.txt, format: domains, licence: CC0-1.0, attribution: tests}}]}}\n"
    (src / "sources.yaml").write_text(f"""\
version: {version}
expires_days: {expires_days}
categories:
  gambling: {{sources: [{{path: gambling.txt, format: domains, licence: CC0-1.0, attribution: tests}}{ips}]}}
{more}allow: [{{path: allow.txt, format: domains}}{allow_ips}]
canaries: {{block: [{BLOCKED}, www.{BLOCKED}], allow: [{ALLOWED}, fine.{BLOCKED}]}}
""")
    c = compile_sources(load_sources(src / "sources.yaml"), now=now,
                        new_key=lambda: (secrets.randbits(64), secrets.randbits(64)))
    return write_bundle(out, c.arrays, c.manifest)


def edit_manifest(bundle: Path, **changes) -> None:
    """Change manifest fields in place (the file hashes stay valid: the manifest is not listed)."""
    m = json.loads((bundle / "manifest.json").read_text())
    m.update(changes)
    (bundle / "manifest.json").write_text(json.dumps(m, indent=1, sort_keys=True))
