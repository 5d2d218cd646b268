"""Shared fixtures: where the shared real-world data lives, and skipping when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real public lists, pcaps); tests using it skip when it is absent."""
    if not (SHARED_DATA / "lists").is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA} (see ../shared/data/README.md)")
    return SHARED_DATA
