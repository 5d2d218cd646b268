"""A short mutation campaign over every flow extractor (benchmarks/fuzz_extractors.py runs
the long one): seeds from the shared captures, nothing may raise outside PacketError."""

from __future__ import annotations

import random

from benchmarks.fuzz_extractors import campaign, mutate, seeds


def test_short_campaign_from_capture_seeds(shared_data) -> None:
    pool = seeds(shared_data / "pcaps", limit=1500)
    assert len(pool) > 500  # the captures were read: real hellos, Initials, DNS, HTTP
    st = campaign(20_000, seed=11, pool=pool)
    assert st["inputs"] == 20_000 and st["failures"] == 0


def test_mutations_change_inputs() -> None:
    rng = random.Random(3)
    base = bytes(range(200))
    assert sum(mutate(rng, base, [base]) != base for _ in range(100)) > 90
