"""Shared fixtures: where the shared real-world data lives, and skipping when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Real public lists (UT1, The Block List Project, StevenBlack, HaGeZi, DoH resolvers), the
# Public Suffix List, pcaps with the names tshark finds in them, and DNS fuzz seeds: too big
# and too mixed in licence to commit. docs/testing.md, "Shared test data" describes the set.
SHARED_DATA = Path(os.environ.get("SCHOOLGATE_SHARED_DATA") or ROOT.parent / "shared" / "data")
# A config without dns.upstreams forwards to the host's resolvers (``upstreams: system``);
# in tests to none, so that no query leaves the loopback addresses a test chose. Set here,
# so every `schoolgate` a test starts inherits it.
os.environ["SCHOOLGATE_RESOLV_CONF"] = str(ROOT / "tests" / "resolv.conf")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """SHARED_DATA (real public lists, pcaps); tests using it skip when it is absent."""
    if not (SHARED_DATA / "lists").is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA} (set SCHOOLGATE_SHARED_DATA to a copy "
                    "of the public lists and pcaps: docs/testing.md, \"Shared test data\")")
    return SHARED_DATA


# Hypothesis: no per-example deadline and no "too slow" health check. Both are wall-clock
# limits (200 ms an example by default) that fail on a loaded machine without anything being
# wrong; speed belongs in benchmarks/. Settings a test gives explicitly still win.
try:
    from hypothesis import HealthCheck, settings
except ImportError:  # hypothesis is in the test extra; the tests using it import it themselves
    pass
else:
    settings.register_profile("schoolgate", deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("schoolgate")
