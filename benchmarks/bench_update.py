"""Bundle activation benchmark: verify + map + self-test + swap of a big bundle.

    python -m benchmarks.bench_update [--domains N] [--markdown FILE]

A synthetic bundle (1,000,000 domains by default, benchmarks/bench_matcher.synthetic_domains)
is compiled, signed and published into a TUF repository served over HTTP on 127.0.0.1, then:

- activation, step by step, on the unpacked bundle as the updater leaves it in staging/:
  verify (sha256 and size of every file against the manifest), map (open the manifest and
  mmap the arrays), self-test (map every table, check the canaries), swap (build the matcher
  and policies for the running config and replace the pipeline reference, as a serving
  process does). "Fresh process" is what a just-started updater pays (numba kernels loaded
  from the on-disk cache); "warm" is the best of 5 in a process that has done it before —
  the serving process's swap is always warm.
- one whole `update_once` over HTTP on loopback (metadata, download, unpack, activation,
  state written), from an empty state directory and then to the next version.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks._common import machine, run_python, table
from benchmarks.bench_matcher import synthetic_domains

TARGET_S = 1.0  # activation of a 1 M-domain bundle < 1 s (a swap must not be noticed)


def _key() -> tuple[int, int]:
    return secrets.randbits(64), secrets.randbits(64)


def make_bundle(work: Path, names: list[str], version: int) -> Path:
    from signatures.bundle import write_bundle
    from signatures.compile import compile_sources
    from signatures.sources import load_sources

    src = work / f"src{version}"
    src.mkdir(parents=True, exist_ok=True)
    (src / "listed.txt").write_text("\n".join(names) + "\n")
    (src / "sources.yaml").write_text(
        f"version: {version}\nexpires_days: 30\n"
        "categories:\n  gambling: {sources: [{path: listed.txt, format: domains}]}\n"
        f"canaries: {{block: [{names[0]}, www.{names[-1]}], allow: [example.org]}}\n")
    c = compile_sources(load_sources(src / "sources.yaml"), now=datetime.now(UTC), new_key=_key)
    return write_bundle(work / f"bundle{version}", c.arrays, c.manifest)


# The steps, as code run both in a fresh interpreter and in this one.
_STEPS = r"""
import json, sys, time
from pathlib import Path
from appliance.config.load import load_config
from appliance.dns.cache import WireCache
from appliance.dns.pipeline import Pipeline
from appliance.bundles.select import FoundBundle
from appliance.compose import build
from signatures.bundle import open_bundle

def activate(path, config):
    t = [time.perf_counter()]
    b = open_bundle(path); b.verify_files(exact=True); t.append(time.perf_counter())
    b = open_bundle(path); t.append(time.perf_counter())
    b.self_test(); t.append(time.perf_counter())
    built = build(load_config(config), FoundBundle(Path(path), "active"))
    holder = {"pipeline": Pipeline(built.matcher, built.policies, WireCache(10, 0))}  # the swap itself
    t.append(time.perf_counter())
    return [t[i + 1] - t[i] for i in range(4)]
"""


def measure_activation(bundle: Path, config: Path) -> tuple[list[float], list[float]]:
    code = _STEPS + f"\nprint(json.dumps(activate({str(bundle)!r}, {str(config)!r})))\n"
    fresh = json.loads(run_python(code).strip().splitlines()[-1])
    ns: dict = {}
    exec(_STEPS, ns)
    ns["activate"](str(bundle), str(config))
    warm = [min(col) for col in zip(*(ns["activate"](str(bundle), str(config)) for _ in range(5)))]
    return fresh, warm


def run(n_domains: int) -> str:
    from appliance.config.load import load_config
    from appliance.updates.updater import update_once
    from signatures.archive import unpack_bundle
    from signatures.keys import Keyring, generate_keys
    from signatures.repository import load_repo, publish
    from tests.repo_server import RepoServer

    work = Path(tempfile.mkdtemp(prefix="bench-update."))
    try:
        t0 = time.perf_counter()
        names = synthetic_domains(n_domains)
        b1 = make_bundle(work, names, 1)
        b2 = make_bundle(work, names[1:] + ["new-in-v2.test"], 2)
        build_s = time.perf_counter() - t0
        generate_keys(work / "keys")
        kr = Keyring(work / "keys")
        publish(work / "repo", b1, kr, datetime.now(UTC))
        shutil.copyfile(work / "repo" / "metadata" / "root.json", work / "root.json")
        server = RepoServer(work / "repo")
        config = work / "config.yaml"
        config.write_text(f'state_dir: state\nupdates:\n  repository: "{server.url}"\n'
                          "  trusted_root: root.json\n  timeout: 10m\n")
        cfg = load_config(config)
        try:
            rows_e2e = []
            for label, bundle in (("first install (v1)", None), ("next version (v2)", b2)):
                if bundle is not None:
                    publish(work / "repo", bundle, kr, datetime.now(UTC))
                t = time.perf_counter()
                o = update_once(cfg.state_dir, cfg.updates)
                took = time.perf_counter() - t
                assert o.result == "updated", o.error
                rows_e2e.append({"update_once over HTTP": label, "seconds": f"{took:.3f}",
                                 "bytes downloaded": f"{o.bytes_downloaded:,}"})
            target = load_repo(work / "repo").bundle_target
            archive = work / "repo" / "targets" / f"{target.hashes['sha256']}.bundle.tar"
            staged = work / "staged"
            t = time.perf_counter()
            unpack_bundle(archive, staged)
            unpack_s = time.perf_counter() - t
            fresh, warm = measure_activation(staged, config)
        finally:
            server.close()
        steps = ["verify (sha256 of every file)", "map (manifest + mmap)", "self-test (tables, canaries)",
                 "swap (matcher, policies, pipeline)"]
        rows = [{"step": s, "fresh process (ms)": f"{f * 1000:.1f}", "warm (ms)": f"{w * 1000:.1f}"}
                for s, f, w in zip(steps, fresh, warm)]
        rows.append({"step": "**activation total**", "fresh process (ms)": f"**{sum(fresh) * 1000:.1f}**",
                     "warm (ms)": f"**{sum(warm) * 1000:.1f}**"})
        met = "met" if sum(fresh) < TARGET_S else "NOT met"
        size = sum(p.stat().st_size for p in staged.iterdir())
        return "\n".join([
            f"Machine: {machine()}", "",
            f"**{n_domains:,} synthetic domains**: bundle {size:,} bytes in {len(list(staged.iterdir()))} "
            f"files, archive {target.length:,} bytes; two versions compiled in {build_s:.1f} s; "
            f"unpack (with fsync) {unpack_s * 1000:.0f} ms.", "",
            table(rows, ["step", "fresh process (ms)", "warm (ms)"]), "",
            f"Target: activation < {TARGET_S:g} s — {met} ({sum(fresh) * 1000:.0f} ms in a fresh process).", "",
            table(rows_e2e, ["update_once over HTTP", "seconds", "bytes downloaded"]),
        ])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--domains", type=int, default=1_000_000)
    ap.add_argument("--markdown", help="also write the tables to this file")
    args = ap.parse_args(argv)
    text = run(args.domains)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
