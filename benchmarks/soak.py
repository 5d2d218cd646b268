"""Soak: the whole appliance on the gateway test bed (tests/integration/testbed.py) under a
steady query load from the students' and the staff network for a long time; RSS and PSS of
every appliance process sampled throughout. Target: RSS growth < 5 % over ≥ 30 min.

    sudo python -m benchmarks.soak --minutes 30            # the real run (root: namespaces)
    sudo python -m benchmarks.soak --minutes 2 --json       # what CI's test does, roughly

The query mix (testbed.soak_names): a tenth blocked names, the rest 20,000 distinct allowed
names (twice the cache), so the cache churns and the upstream is asked all the time. The
growth is measured from the end of the warm-up (caches full, arenas settled) to the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

__all__ = ["soak", "main"]


def soak(minutes: float, qps: int = 600, warmup: float = 60.0, sample_every: float = 30.0,
         quiet: bool = False) -> dict:
    from tests.integration.testbed import gateway_bed, run_soak

    # The query log (all queries) lands on the bed's tmpfs: ~150 B a query.
    size_mb = int(256 + 2 * qps * (minutes * 60 + warmup) * 160 / 1e6)
    with tempfile.TemporaryDirectory(prefix="sg-soak-") as tmp:
        with gateway_bed(Path(tmp) / "bed", rate=(max(5000, 4 * qps), max(10000, 8 * qps)),
                         tmpfs_size=f"{size_mb}m") as bed:
            return run_soak(bed, minutes * 60, qps=qps, warmup=warmup, sample_every=sample_every,
                            progress=None if quiet else (lambda m: print(m, file=sys.stderr, flush=True)))


def summary(r: dict) -> str:
    rows = [("duration", f"{r['seconds'] / 60:.1f} min after {r['warmup']:.0f} s warm-up"),
            ("load", f"{r['qps_per_network']} q/s from each of 2 networks, {r['sent']:,} queries"),
            ("lost", f"{r['lost']:,}"),
            ("processes", f"{r['processes'][0]} -> {r['processes'][1]}"),
            ("RSS", f"{r['rss_first_kb'] / 1024:.1f} -> {r['rss_last_kb'] / 1024:.1f} MiB "
                    f"(peak {r['rss_peak_kb'] / 1024:.1f}), growth {r['rss_growth_pct']:+.2f} %"),
            ("PSS growth", f"{r['pss_growth_pct']:+.2f} %"),
            ("verdict", "PASS" if r["rss_growth_pct"] < 5 and r["alive"] else "FAIL")]
    return "\n".join(f"{k + ':':<11} {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="measured duration (default 30)")
    ap.add_argument("--qps", type=int, default=600, help="queries per second from each network")
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds before the first sample")
    ap.add_argument("--sample-every", type=float, default=30.0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    r = soak(a.minutes, a.qps, a.warmup, a.sample_every, quiet=a.json)
    print(json.dumps(r) if a.json else summary(r))
    return 0 if r["rss_growth_pct"] < 5 and r["alive"] else 1


if __name__ == "__main__":
    sys.exit(main())
