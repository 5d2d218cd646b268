"""Where the appliance finds what it ships with: the repo's config/ directory, the embedded
default config (``schoolgate run`` with no ``--config``) and the per-user state directory."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["REPO_CONFIG", "DEFAULT_CONFIG", "user_state_dir"]

REPO_CONFIG = Path(__file__).resolve().parents[2] / "config"
DEFAULT_CONFIG = REPO_CONFIG / "default.yaml"


def user_state_dir() -> Path:
    """State for a run without a config: $XDG_STATE_HOME/schoolgate or ~/.local/state/schoolgate
    (the XDG Base Directory spec's place for state that outlives a run)."""
    base = os.environ.get("XDG_STATE_HOME") or ""
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "schoolgate"
