"""Domain matcher benchmark: schoolgate's compiled table vs a plain Python set of names.

    python -m benchmarks.bench_matcher [--quick] [--markdown FILE]

Workloads: the real UT1 category lists plus StevenBlack's unified hosts (from
the shared test data, SCHOOLGATE_SHARED_DATA; skipped when absent) and a synthetic 1,000,000-domain list. For each:
compile time, bytes per domain (array bytes / entries) and process memory (RSS and PSS
growth in a fresh process), load time, single-lookup latency and batch names/s on 3-5-label
names, half of them below listed names. The peer is the obvious Python design: a ``set`` of
listed names and a loop over a query's suffixes.
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from benchmarks._common import SHARED_DATA, best_of, machine, run_python, table
from filters.catalog import ALL_CATEGORIES
from filters.names import name_to_wire
from signatures.bundle import open_bundle, write_bundle
from signatures.compile import compile_sources
from signatures.sources import load_sources

_TLDS = ["com", "net", "org", "info", "fr", "de", "io", "co.uk", "xyz", "online"]
_ALPHA = "abcdefghijklmnopqrstuvwxyz0123456789"


def _label(rng: random.Random) -> str:
    return "".join(rng.choices(_ALPHA, k=rng.randint(3, 12)))


def synthetic_domains(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < n:
        depth = rng.choices((0, 1, 2), weights=(70, 25, 5))[0]
        out.add(".".join([_label(rng) for _ in range(depth + 1)] + [rng.choice(_TLDS)]))
    return sorted(out)


def query_names(listed: list[str], n: int, seed: int = 2) -> list[str]:
    """3-5-label names: half below a listed name (hits), half below unlisted names."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 2 == 0:
            base = rng.choice(listed)
        else:
            base = _label(rng) + "-x." + rng.choice(_TLDS)
        labels = base.count(".") + 1
        need = max(0, rng.randint(3, 5) - labels)
        out.append(".".join([_label(rng) for _ in range(need)] + [base]))
    return out


def _key() -> tuple[int, int]:
    return secrets.randbits(64), secrets.randbits(64)


# -- the peer -----------------------------------------------------------------------------
def reference_lookup(names: set[str], q: str) -> bool:
    labels = q.split(".")
    return any(".".join(labels[i:]) in names for i in range(len(labels)))


# -- memory in fresh processes ----------------------------------------------------------------
_MEM_OURS = """
import json, numpy as np
from benchmarks._common import memory_kib
from signatures.bundle import open_bundle
from filters.catalog import ALL_CATEGORIES
warm = open_bundle({demo!r}).domain_matcher(); warm.match("x.test", ALL_CATEGORIES)
before = memory_kib()
m = open_bundle({bundle!r}).domain_matcher()
for a in m.table.arrays().values(): int(np.asarray(a).sum())   # touch every page
m.match("www.example.com", ALL_CATEGORIES)
after = memory_kib()
print(json.dumps({{k: after[k] - before[k] for k in after}}))
"""

_MEM_SET = """
import json
from benchmarks._common import memory_kib
before = memory_kib()
names = set(open({path!r}).read().split())
after = memory_kib()
print(json.dumps({{k: after[k] - before[k] for k in after}}))
"""


def measure(label: str, sources_yaml: Path, names_file: Path, listed: list[str],
            n_batch: int, n_ref: int, demo_bundle: Path, workdir: Path) -> dict:
    t0 = time.perf_counter()
    compiled = compile_sources(load_sources(sources_yaml), now=datetime.now(UTC), new_key=_key)
    bundle_dir = write_bundle(workdir / f"bundle-{label}", compiled.arrays, compiled.manifest)
    compile_s = time.perf_counter() - t0
    n_domains = compiled.manifest["counts"]["domains"]
    domain_bytes = sum(a.nbytes for k, a in compiled.arrays.items() if k.startswith("domain_"))
    del compiled

    load_s = best_of(lambda: open_bundle(bundle_dir).domain_matcher(), 5)
    m = open_bundle(bundle_dir).domain_matcher()
    pm = m.policy_mask(ALL_CATEGORIES)

    queries = query_names(listed, n_batch)
    wires = [name_to_wire(q) for q in queries]
    buf = np.frombuffer(b"".join(wires), dtype=np.uint8)
    starts = np.zeros(len(wires), dtype=np.int64)
    np.cumsum([len(w) for w in wires[:-1]], out=starts[1:])
    m.match_wire_batch(buf, starts, ALL_CATEGORIES)
    wire_batch_s = best_of(lambda: m.match_wire_batch(buf, starts, ALL_CATEGORIES), 3)
    text_batch_s = best_of(lambda: m.match_batch(queries, ALL_CATEGORIES), 3)
    ours = m.match_wire_batch(buf, starts, ALL_CATEGORIES).blocked

    sample = wires[:20000]
    single_wire_s = best_of(lambda: [m.match_wire(w, 0, pm) for w in sample], 3) / len(sample)
    single_str_s = best_of(lambda: [m.match(q, ALL_CATEGORIES) for q in queries[:20000]], 3) / 20000

    t0 = time.perf_counter()
    ref_set = set(listed)
    ref_build_s = time.perf_counter() - t0
    rq = queries[:n_ref]
    ref_s = best_of(lambda: [reference_lookup(ref_set, q) for q in rq], 3)
    ref_verdicts = np.array([reference_lookup(ref_set, q) for q in rq])
    disagreements = int((ref_verdicts != ours[:n_ref]).sum())
    ref_single_s = ref_s / len(rq)

    mem_ours = json.loads(run_python(_MEM_OURS.format(demo=str(demo_bundle), bundle=str(bundle_dir))))
    mem_set = json.loads(run_python(_MEM_SET.format(path=str(names_file))))
    return {
        "workload": label,
        "domains": n_domains,
        "compile_s": compile_s,
        "ref_build_s": ref_build_s,
        "bytes_per_domain": domain_bytes / n_domains,
        "rss_per_domain": mem_ours["rss"] * 1024 / n_domains,
        "pss_per_domain": mem_ours["pss"] * 1024 / n_domains,
        "ref_rss_per_domain": mem_set["rss"] * 1024 / n_domains,
        "load_ms": load_s * 1e3,
        "single_wire_us": single_wire_s * 1e6,
        "single_str_us": single_str_s * 1e6,
        "ref_single_us": ref_single_s * 1e6,
        "batch_wire_per_s": n_batch / wire_batch_s,
        "batch_text_per_s": n_batch / text_batch_s,
        "ref_per_s": len(rq) / ref_s,
        "disagreements": disagreements,
        "checked": len(rq),
    }


def first_run_compile_seconds() -> dict:
    """Import + first lookup with an empty numba cache, then with the cache warm."""
    code = ("import time; t=time.perf_counter(); from filters.domain_matcher import DomainMatcher;"
            "from filters.domain_builder import DomainSetBuilder; from filters.catalog import Catalog;"
            "b=DomainSetBuilder(); b.add(['a.test'],0); t_,c=b.build([1],[False],lambda:(1,2));"
            "m=DomainMatcher(t_,c,Catalog(('x',),('s',))); m.match('www.a.test',1);"
            "m.match_batch(['b.a.test'],1); print(time.perf_counter()-t)")
    with tempfile.TemporaryDirectory() as cache:
        cold = float(run_python(code, env={"NUMBA_CACHE_DIR": cache}))
        warm = float(run_python(code, env={"NUMBA_CACHE_DIR": cache}))
    return {"cold_s": cold, "warm_s": warm}


def _ut1_sources(tmp: Path) -> tuple[Path, Path, list[str]] | None:
    ut1 = SHARED_DATA / "lists" / "ut1"
    if not ut1.is_dir():
        return None
    cats = sorted(p.name for p in ut1.iterdir() if (p / "domains").is_file())
    lines = ["version: 1", "categories:"]
    # UT1 has 71 categories and a bundle holds 63 (uint64 masks, one bit for local lists):
    # the surplus share one category here.
    own, rest = cats[:61], cats[61:]
    for c in own:
        lines.append(f"  {c.lower().replace('_', '-')}: {{sources: [{{path: {ut1 / c}, format: ut1}}]}}")
    lines.append("  ut1-other: {sources: [" + ", ".join(f"{{path: {ut1 / c}, format: ut1}}" for c in rest) + "]}")
    hosts = SHARED_DATA / "lists" / "stevenblack" / "hosts0"
    lines.append(f"  stevenblack: {{sources: [{{path: {hosts}, format: hosts}}]}}")
    y = tmp / "real.yaml"
    y.write_text("\n".join(lines) + "\n")
    names: set[str] = set()
    for c in cats:
        names.update(line.strip().lower() for line in (ut1 / c / "domains").read_text(errors="replace").split("\n")
                     if line.strip() and not line.startswith("#") and not line[0].isdigit())
    names.update(line.split()[-1].lower() for line in hosts.read_text().splitlines()
                 if line.strip() and not line.startswith("#"))
    names_file = tmp / "real-names.txt"
    listed = sorted(names)
    names_file.write_text("\n".join(listed) + "\n")
    return y, names_file, listed


def run(quick: bool = False) -> tuple[list[dict], dict]:
    n_syn = 100_000 if quick else 1_000_000
    n_batch = 200_000 if quick else 1_000_000
    n_ref = 100_000
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        demo = compile_sources(load_sources(Path(__file__).parent.parent / "config/demo/sources.yaml"),
                               now=datetime.now(UTC), new_key=_key)
        demo_dir = write_bundle(tmp / "demo", demo.arrays, demo.manifest)
        real = _ut1_sources(tmp)
        if real:
            rows.append(measure("UT1 (all) + StevenBlack", *real, n_batch, n_ref, demo_dir, tmp))
        else:
            print(f"note: {SHARED_DATA} absent; real-list workload skipped", file=sys.stderr)
        syn = synthetic_domains(n_syn)
        (tmp / "syn.txt").write_text("\n".join(syn) + "\n")
        (tmp / "syn.yaml").write_text("version: 1\ncategories:\n"
                                      f"  syn: {{sources: [{{path: {tmp / 'syn.txt'}, format: domains}}]}}\n")
        rows.append(measure(f"synthetic {n_syn:,}", tmp / "syn.yaml", tmp / "syn.txt", syn,
                            n_batch, n_ref, demo_dir, tmp))
    return rows, first_run_compile_seconds()


def render(rows: list[dict], jit: dict) -> str:
    out = []
    for r in rows:
        out.append(f"**{r['workload']}** — {r['domains']:,} domains; {r['disagreements']} disagreements "
                   f"with the set reference on {r['checked']:,} queries")
        out.append("")
        out.append(table([
            {"measure": "compile (s)", "schoolgate": f"{r['compile_s']:.2f}",
             "Python set": f"{r['ref_build_s']:.2f} (set only, no parsing)", "ratio": ""},
            {"measure": "array bytes / domain", "schoolgate": f"{r['bytes_per_domain']:.2f}", "Python set": "",
             "ratio": ""},
            {"measure": "RSS growth / domain (B)", "schoolgate": f"{r['rss_per_domain']:.1f}",
             "Python set": f"{r['ref_rss_per_domain']:.1f}",
             "ratio": f"{r['ref_rss_per_domain'] / r['rss_per_domain']:.1f}x less"},
            {"measure": "PSS growth / domain (B)", "schoolgate": f"{r['pss_per_domain']:.1f}", "Python set": "",
             "ratio": ""},
            {"measure": "load (ms)", "schoolgate": f"{r['load_ms']:.2f}", "Python set": "", "ratio": ""},
            {"measure": "single lookup, wire QNAME (µs)", "schoolgate": f"{r['single_wire_us']:.2f}",
             "Python set": f"{r['ref_single_us']:.2f}",
             "ratio": f"{r['ref_single_us'] / r['single_wire_us']:.2f}x faster"},
            {"measure": "single lookup, str + why (µs)", "schoolgate": f"{r['single_str_us']:.2f}",
             "Python set": f"{r['ref_single_us']:.2f}", "ratio": ""},
            {"measure": "batch, wire (names/s)", "schoolgate": f"{r['batch_wire_per_s'] / 1e6:.2f} M",
             "Python set": f"{r['ref_per_s'] / 1e6:.2f} M", "ratio": f"{r['batch_wire_per_s'] / r['ref_per_s']:.1f}x"},
            {"measure": "batch, str list (names/s)", "schoolgate": f"{r['batch_text_per_s'] / 1e6:.2f} M",
             "Python set": f"{r['ref_per_s'] / 1e6:.2f} M", "ratio": f"{r['batch_text_per_s'] / r['ref_per_s']:.1f}x"},
        ], ["measure", "schoolgate", "Python set", "ratio"]))
        out.append("")
    out.append(f"numba first run (empty cache: compile every kernel, then one lookup): {jit['cold_s']:.1f} s; "
               f"later starts with `cache=True`: {jit['warm_s']:.2f} s.")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100k synthetic domains (smoke run)")
    ap.add_argument("--markdown", help="also write the table to this file")
    args = ap.parse_args(argv)
    rows, jit = run(args.quick)
    text = f"Machine: {machine()}\n\n" + render(rows, jit)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
