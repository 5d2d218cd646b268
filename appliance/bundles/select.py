"""What the appliance falls back on: the embedded default config and the signed demo bundle.

Never fail open: when the config names no bundle and no signed bundle is active
in the state directory, the demo bundle shipped in ``config/demo/repo`` (a TUF repository
signed with the public demo keys, see appliance/bundles/demo.py) is installed into
``<state_dir>/demo`` — a state directory of its own, through the same updater as a real
repository (file:// URL, the trusted root in ``config/demo/trust/root.json``) — and served,
labelled DEMO wherever it shows.

The demo gets its own state directory so that it never becomes the rollback floor of the
district's real repository (a real bundle 1 must not be refused because demo bundle 3 was
active) and its TUF metadata never mixes with the real ones. A real bundle, once active,
always wins over the demo.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

from appliance.config.defaults import REPO_CONFIG
from appliance.config.load import Config, UpdatesConfig
from appliance.updates.state import active_bundle_dir
from filters.errors import BundleError, InputError, UpdateError, Where
from signatures.bundle import Bundle, open_bundle

__all__ = ["DEMO_DIR", "DEMO_SOURCES", "DEMO_REPO", "DEMO_ROOT",
           "DEMO_KEYS", "DEMO_STATE", "demo_updates", "demo_state_dir",
           "install_demo", "FoundBundle", "resolve_bundle", "select_bundle", "open_selected"]

log = logging.getLogger("schoolgate")

DEMO_DIR = REPO_CONFIG / "demo"
DEMO_SOURCES = DEMO_DIR / "sources.yaml"
DEMO_REPO = DEMO_DIR / "repo"
DEMO_ROOT = DEMO_DIR / "trust" / "root.json"
DEMO_KEYS = DEMO_DIR / "keys-DEMO-NOT-SECRET"
DEMO_STATE = "demo"  # <state_dir>/demo
# Reading a ~100 kB repository from local disk takes milliseconds; a minute covers a
# Pi's SD card under heavy load.
DEMO_TIMEOUT = 60


def demo_updates() -> UpdatesConfig:
    """The demo repository as an ``updates:`` section: a file:// URL and the shipped root."""
    return UpdatesConfig(DEMO_REPO.as_uri() + "/", DEMO_ROOT, timeout=DEMO_TIMEOUT, keep=1)


def demo_state_dir(state_dir: Path) -> Path:
    return state_dir / DEMO_STATE


def install_demo(state_dir: Path) -> Path:
    """Install (or check, and refresh from a newer shipped copy) the demo bundle under
    ``<state_dir>/demo`` with the updater; its directory. Raises UpdateError if it cannot."""
    # python-tuf and cryptography take ~1 s to import: only when the demo must be installed.
    from appliance.updates.updater import update_once

    if not DEMO_ROOT.is_file():
        raise InputError("no bundle configured or active, and the demo repository is missing",
                         Where(str(DEMO_ROOT)))
    demo = demo_state_dir(state_dir)
    if active_bundle_dir(demo) is None:
        log.warning("no signed bundle active in %s: installing the DEMO bundle from %s", state_dir, DEMO_REPO)
    outcome = update_once(demo, demo_updates())
    path = active_bundle_dir(demo)
    if not outcome.ok or path is None:
        raise UpdateError(f"cannot install the demo bundle: {outcome.error}", Where(str(DEMO_REPO)))
    return path


class FoundBundle(NamedTuple):
    """A bundle directory and how it was chosen: configured | active | demo."""

    path: Path
    how: str


def resolve_bundle(cfg: Config) -> FoundBundle | None:
    """(bundle directory, how it was chosen) without side effects: the config's bundle
    ("configured"), else the signed one active in the state directory ("active"), else an
    installed demo ("demo"); None when there is none of these yet."""
    if cfg.bundle:
        return FoundBundle(cfg.bundle, "configured")
    active = active_bundle_dir(cfg.state_dir)
    if active is not None:
        return FoundBundle(active, "active")
    demo = active_bundle_dir(demo_state_dir(cfg.state_dir))
    return FoundBundle(demo, "demo") if demo is not None else None


def select_bundle(cfg: Config) -> FoundBundle:
    """As :func:`resolve_bundle`, installing the demo bundle when nothing else is there."""
    found = resolve_bundle(cfg)
    if found is not None and found.how != "demo":
        return found
    return FoundBundle(install_demo(cfg.state_dir), "demo")


def open_selected(cfg: Config) -> tuple[Bundle, str]:
    """Open the bundle :func:`select_bundle` picks. An active signed bundle that no longer
    opens (a damaged disk) gives way to the demo bundle until an update replaces it, rather
    than leaving the network unfiltered or the service down."""
    path, how = select_bundle(cfg)
    try:
        return open_bundle(path), how
    except BundleError as exc:
        if how != "active":
            raise
        log.error("the active bundle cannot be opened (%s): serving the DEMO bundle until an "
                  "update replaces it", exc)
        return open_bundle(install_demo(cfg.state_dir)), "demo"
