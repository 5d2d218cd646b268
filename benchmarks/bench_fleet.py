"""Fleet simulation: 1,000 appliances updating from one repository on 127.0.0.1.

    python -m benchmarks.bench_fleet [--appliances N] [--domains N] [--procs N] [--markdown FILE]

Each simulated appliance is a state directory of its own, updated by the real
``appliance.updates.updater.update_once`` over HTTP (the real fetcher, TUF client, unpacker and
self-test) from one repository served by tests/repo_server.py on 127.0.0.1. A process pool
runs ``--procs`` of them at a time (the GIL would serialise threads). Three rounds:

1. first install — every appliance starts empty and installs version 1;
2. next version — version 2 is published (same size, one name changed) and every
   appliance updates to it;
3. nothing new — every appliance checks again: what a routine poll costs.

Reported per round: bytes downloaded per appliance (metadata and bundle), wall time,
updates per second, requests the server saw, and the set of versions the fleet ends on
(it must be exactly one). Appliances keep one bundle (``keep: 1``) to bound the disk used.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from benchmarks._common import machine, table
from benchmarks.bench_matcher import synthetic_domains
from benchmarks.bench_update import make_bundle

TARGET_WALL_S = 180.0  # target for the whole run: three rounds of 1,000 updates within 3 min


def _update(job: tuple[str, str, str]) -> dict:
    """One appliance's update check (runs in a pool process)."""
    from appliance.config.load import UpdatesConfig
    from appliance.updates.updater import update_once

    state, url, root = job
    t = time.perf_counter()
    o = update_once(state, UpdatesConfig(url, Path(root), interval=3600, timeout=300, keep=1))
    return {"result": o.result, "version": o.active_version, "bytes": o.bytes_downloaded,
            "error": o.error, "seconds": time.perf_counter() - t}


def _warm(_: int) -> int:
    """Import and load the numba kernels once per pool process, outside the timing."""
    from appliance.updates.updater import update_once  # noqa: F401
    from signatures.bundle import open_bundle  # noqa: F401  (numpy, numba, tuf: the imports)
    return os.getpid()


def run(n: int, n_domains: int, procs: int) -> tuple[str, float]:
    from signatures.keys import Keyring, generate_keys
    from signatures.repository import load_repo, publish
    from tests.repo_server import RepoServer

    work = Path(tempfile.mkdtemp(prefix="bench-fleet."))
    t_all = time.perf_counter()
    try:
        names = synthetic_domains(n_domains)
        b1 = make_bundle(work, names, 1)
        b2 = make_bundle(work, names[1:] + ["new-in-v2.test"], 2)
        generate_keys(work / "keys")
        kr = Keyring(work / "keys")
        publish(work / "repo", b1, kr, datetime.now(UTC))
        root = work / "root.json"
        shutil.copyfile(work / "repo" / "metadata" / "root.json", root)
        rows = []
        ctx = multiprocessing.get_context("spawn")  # no fork of a process running a server thread
        with ProcessPoolExecutor(procs, mp_context=ctx) as pool:
            list(pool.map(_warm, range(procs * 4)))
            server = RepoServer(work / "repo")
            try:
                jobs = [(str(work / "fleet" / f"a{i:04d}"), server.url, str(root)) for i in range(n)]
                for label, publish_next in (("first install (v1)", None), ("next version (v2)", b2),
                                            ("nothing new", None)):
                    if publish_next is not None:
                        publish(work / "repo", publish_next, kr, datetime.now(UTC))
                    bundle_len = load_repo(work / "repo").bundle_target.length
                    seen = len(server.requests)
                    t = time.perf_counter()
                    out = list(pool.map(_update, jobs, chunksize=8))
                    wall = time.perf_counter() - t
                    rows.append(_row(label, out, wall, bundle_len, len(server.requests) - seen))
            finally:
                server.close()
        total = time.perf_counter() - t_all
        text = "\n".join([
            f"Machine: {machine()}", "",
            f"**{n:,} appliances, {procs} at a time**; bundle of {n_domains:,} synthetic domains "
            f"({bundle_len:,}-byte archive); total run {total:.0f} s (target < {TARGET_WALL_S:.0f} s).", "",
            table(rows, ["round", "ok", "versions at the end", "bytes/appliance", "of which metadata",
                         "p50 s/update", "wall s", "updates/s", "requests"]),
        ])
        return text, total
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _row(label: str, out: list[dict], wall: float, bundle_len: int, requests: int) -> dict:
    ok = [o for o in out if o["result"] in ("updated", "up-to-date")]
    errors = sorted({o["error"] for o in out if o["error"]})
    if errors:
        print(f"{label}: {len(errors)} distinct errors, e.g. {errors[0]}", file=sys.stderr)
    nbytes = [o["bytes"] for o in out]
    fetched_bundle = [b >= bundle_len for b in nbytes]
    meta = [b - (bundle_len if f else 0) for b, f in zip(nbytes, fetched_bundle)]
    versions = sorted({o["version"] for o in out}, key=lambda v: (v is None, v))
    spread = f" ({min(nbytes):,}-{max(nbytes):,})" if min(nbytes) != max(nbytes) else ""
    return {"round": label, "ok": f"{len(ok):,}/{len(out):,}",
            "versions at the end": ", ".join(str(v) for v in versions),
            "bytes/appliance": f"{statistics.mean(nbytes):,.0f}{spread}",
            "of which metadata": f"{statistics.mean(meta):,.0f}",
            "p50 s/update": f"{statistics.median(o['seconds'] for o in out):.3f}",
            "wall s": f"{wall:.1f}", "updates/s": f"{len(out) / wall:,.0f}", "requests": f"{requests:,}"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--appliances", type=int, default=1000)
    ap.add_argument("--domains", type=int, default=100_000, help="bundle size (default ~1.1 MB)")
    ap.add_argument("--procs", type=int, default=max(2, 2 * (os.cpu_count() or 1)),
                    help="appliances updating at once (pool processes)")
    ap.add_argument("--markdown", help="also write the table to this file")
    args = ap.parse_args(argv)
    text, total = run(args.appliances, args.domains, args.procs)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0 if total < TARGET_WALL_S else 1


if __name__ == "__main__":
    sys.exit(main())
