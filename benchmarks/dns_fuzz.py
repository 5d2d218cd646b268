"""Hostile packets through the DNS fast path's batch kernel: no crash over a million.

    python -m benchmarks.dns_fuzz [--packets 1000000] [--check 20000] [--boundscheck] [--seed N]

Packets: the shared fuzz seeds (dns-fuzz/ of the shared test data), the malformed set of the tests,
real queries, their mutations (truncations, byte flips), random bytes, lying counts
(tests/dnsdata.hostile_packets). They go through the kernel in batches of 64, with the rate
limiter on and a filled cache, as the server runs it. ``--check N``: the first N also go
through the Python pipeline, whose outcome must match (answer bytes, drop or hand-over).
``--boundscheck``: numba compiled with bounds checks (NUMBA_BOUNDSCHECK=1, in a separate
cache directory), so an out-of-range index raises instead of reading memory — the kernels
index without checks in production. Prints a small table; exit 1 on any failure.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import ROOT, machine, table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--check", type=int, default=20_000, help="also through the Python pipeline")
    ap.add_argument("--boundscheck", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    if args.boundscheck and os.environ.get("NUMBA_BOUNDSCHECK") != "1":
        with tempfile.TemporaryDirectory(prefix="sg-fuzz-cache-") as cache:
            env = dict(os.environ, NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=cache)
            return subprocess.run([sys.executable, "-m", "benchmarks.dns_fuzz", *(argv or sys.argv[1:])],
                                  env=env, cwd=ROOT).returncode

    from filters.dns_fast import ACT_DROP, ACT_PYTHON, ACT_SEND
    from signatures.bundle import open_bundle
    from tests.bundles import make_bundle
    from tests.dnsdata import hostile_packets, query
    from tests.unit.test_dns_fast import ALLOWED, BLOCKED, CLIENTS, Twin, upstream_answer

    with tempfile.TemporaryDirectory(prefix="sg-fuzz-") as td:
        bundle = make_bundle(Path(td) / "bundle", 3, extra=("ads.example",))
        matcher = open_bundle(bundle).domain_matcher().with_local(block=["local-block.test"])
        twin = Twin(matcher, rate=1e6, burst=1e6, max_clients=64)  # limiter on, never empty
        twin.check([query(n) for n in ALLOWED[:8]], ["127.0.0.1"] * 8, upstream_answer)  # a filled cache
        rng = random.Random(args.seed)
        real = [query(n, t, edns=e, do=e) for n in BLOCKED + ALLOWED for t in (1, 28, 255) for e in (False, True)]
        outcomes = {ACT_SEND: 0, ACT_DROP: 0, ACT_PYTHON: 0}
        done = checked = mismatches = 0
        gen = kernel = 0.0
        f = twin.fast
        while done < args.packets:
            t0 = time.perf_counter()
            corpus = hostile_packets(rng, min(64 * 1024, args.packets - done), real)
            gen += time.perf_counter() - t0
            t0 = time.perf_counter()
            for i in range(0, len(corpus), 64):
                chunk = corpus[i:i + 64]
                clients = [CLIENTS[(done + i + k) % len(CLIENTS)] for k in range(len(chunk))]
                if checked < args.check:
                    try:
                        twin.check(chunk, clients, upstream_answer)
                    except AssertionError as exc:
                        mismatches += 1
                        print(f"mismatch: {exc}", file=sys.stderr)
                    checked += len(chunk)
                    continue
                out = twin.batch.run_packets(chunk, clients, twin.tables, f.cache.arrays, f.limiter.arrays,
                                             f.counters.fast, twin.clock())
                for o in out:
                    outcomes[ACT_SEND if isinstance(o, bytes) else o] += 1
                twin.clock.t += 0.001
            kernel += time.perf_counter() - t0
            done += len(corpus)
    rows = [{"packets": f"{done:,}", "checked vs pipeline": f"{checked:,}", "mismatches": mismatches,
             "answered": f"{outcomes[ACT_SEND]:,}", "dropped": f"{outcomes[ACT_DROP]:,}",
             "to Python": f"{outcomes[ACT_PYTHON]:,}", "crashes": 0,
             "run s": f"{kernel:.1f}", "generate s": f"{gen:.1f}",
             "boundscheck": os.environ.get("NUMBA_BOUNDSCHECK") == "1"}]
    print(f"# DNS fast path fuzz — {machine()}\n")
    print(table(rows, list(rows[0])))
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
