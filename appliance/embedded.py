"""What the appliance falls back on: the embedded default config and the demo bundle.

Never fail open (issue 4): when no signed bundle is active in the state directory and the
config names none, the demo lists shipped in config/demo/ are compiled into
``<state_dir>/embedded-bundle`` and served, and the log says so.
"""

from __future__ import annotations

import logging
import os
import secrets
from datetime import datetime, timezone
from pathlib import Path

from appliance.config import Config
from filters.errors import BundleError, InputError

__all__ = ["REPO_CONFIG", "DEFAULT_CONFIG", "DEMO_SOURCES", "EMBEDDED_BUNDLE", "user_state_dir",
           "ensure_embedded_bundle", "select_bundle"]

log = logging.getLogger("schoolgate")

REPO_CONFIG = Path(__file__).resolve().parent.parent / "config"
DEFAULT_CONFIG = REPO_CONFIG / "default.yaml"
DEMO_SOURCES = REPO_CONFIG / "demo" / "sources.yaml"
EMBEDDED_BUNDLE = "embedded-bundle"


def user_state_dir() -> Path:
    """State for a run without a config: $XDG_STATE_HOME/schoolgate or ~/.local/state/schoolgate
    (the XDG Base Directory spec's place for state that outlives a run)."""
    base = os.environ.get("XDG_STATE_HOME") or ""
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "schoolgate"


def ensure_embedded_bundle(state_dir: Path) -> Path:
    """The demo bundle in ``state_dir``, compiled on first use (a second or so)."""
    from signatures.bundle import open_bundle, write_bundle
    from signatures.compile import compile_sources
    from signatures.sources import load_sources

    out = state_dir / EMBEDDED_BUNDLE
    try:
        open_bundle(out)
        return out
    except BundleError:
        pass
    if not DEMO_SOURCES.is_file():
        raise InputError(f"no bundle configured or active, and the demo lists are missing ({DEMO_SOURCES})")
    log.warning("no bundle active in %s: compiling the embedded demo bundle into %s", state_dir, out)
    compiled = compile_sources(load_sources(DEMO_SOURCES), now=datetime.now(timezone.utc),
                               new_key=lambda: (secrets.randbits(64), secrets.randbits(64)))
    return write_bundle(out, compiled.arrays, compiled.manifest)


def select_bundle(cfg: Config) -> tuple[Path, str]:
    """(bundle directory, how it was chosen): the config's, else the active signed one, else
    the embedded demo bundle."""
    if cfg.bundle:
        return cfg.bundle, "configured"
    active = cfg.bundle_path()
    if (active / "manifest.json").is_file():
        return active, "active"
    return ensure_embedded_bundle(cfg.state_dir), "embedded"
