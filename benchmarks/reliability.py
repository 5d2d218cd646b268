"""The reliability table, from one command: the gateway scenarios and faults (the
pytest modules on the namespace test bed), a flood at several times the measured capacity,
and a soak — then one table, optionally appended to benchmarks/RESULTS.md.

    sudo python -m benchmarks.reliability                      # soak 30 min (~40 min in all)
    sudo python -m benchmarks.reliability --soak-minutes 2     # a quick look
    sudo python -m benchmarks.reliability --append             # add the table to RESULTS.md

Needs root (network namespaces), dnsmasq, dnsperf, dig, curl, nft and faketime (tests/setup.sh
installs them). Run it on a quiet machine: the flood shares the cores with the appliance.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

from benchmarks._common import ROOT, machine

__all__ = ["run_tests", "flood", "main"]

MODULES = {"scenarios": "tests/integration/test_gateway_scenarios.py",
           "faults": "tests/integration/test_gateway_faults.py"}


def run_tests(metrics: Path) -> dict:
    """Run the scenario and fault modules; per module: passed, failed, skipped (with reasons)."""
    out: dict = {}
    for kind, module in MODULES.items():
        xml = metrics.with_name(f"{kind}.xml")
        env = dict(os.environ, SCHOOLGATE_RELIABILITY_METRICS=str(metrics))
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", module,
                        f"--junitxml={xml}"], cwd=ROOT, env=env, timeout=1800,
                       stdout=subprocess.DEVNULL if not os.environ.get("VERBOSE") else None)
        res = {"passed": [], "failed": [], "skipped": []}
        if xml.exists():
            for case in ET.parse(xml).iter("testcase"):
                name = case.get("name", "?")
                if case.find("skipped") is not None:
                    res["skipped"].append((name, (case.find("skipped").get("message") or "")[:120]))
                elif case.find("failure") is not None or case.find("error") is not None:
                    res["failed"].append(name)
                else:
                    res["passed"].append(name)
        out[kind] = res
    return out


def flood(seconds: float) -> dict:
    from tests.integration.testbed import gateway_bed, measure_capacity, run_flood

    with tempfile.TemporaryDirectory(prefix="sg-flood-") as tmp:
        with gateway_bed(Path(tmp) / "bed") as bed:
            capacity = measure_capacity(bed, seconds=3.0)
            return run_flood(bed, capacity, seconds=seconds)


def read_metrics(path: Path) -> dict:
    got: dict = {}
    if path.exists():
        for line in path.read_text().splitlines():
            m = json.loads(line)
            got[m.pop("metric")] = m
    return got


def table(tests: dict, fl: dict, soak: dict, metrics: dict) -> str:
    def count(kind: str) -> str:
        r = tests[kind]
        n = len(r["passed"]) + len(r["failed"])
        text = f"{len(r['passed'])}/{n}"
        if r["failed"]:
            text += f" (failed: {', '.join(r['failed'])})"
        if r["skipped"]:
            text += f"; {len(r['skipped'])} skipped (feature absent: {', '.join(s for s, _ in r['skipped'])})"
        return text

    lost = [f"flood, staff {fl['staff_failed']}/{fl['staff_asked']}",
            f"soak {soak['lost']}/{soak['sent']:,}"]
    for key, label in (("update_swap", "signature update"), ("worker_kill", "kill -9 of a worker"),
                       ("disk_full", "disk full"), ("update_slow", "slow update server")):
        if key in metrics:
            lost.append(f"{label} {metrics[key]['failed']}/{metrics[key]['queries']}")
    mb = fl["mem_before"]["pss_kb"] / 1024, fl["mem_after"]["pss_kb"] / 1024
    rows = [
        ("scenarios passed", count("scenarios"), "all"),
        ("faults survived", count("faults"), "all"),
        ("flood rate held", f"{fl['flood_factor']}x capacity: {fl['flood_rate']:,} q/s offered from one "
                            f"student address ({fl['flooders']} flooders) vs {fl['capacity_qps']:,} q/s answered "
                            f"at full speed; staff answered {fl['staff_answered']}/{fl['staff_asked']}; "
                            f"PSS {mb[0]:.1f} -> {mb[1]:.1f} MiB", ">= 5x, staff answered, memory bounded"),
        ("queries lost", "; ".join(lost), "0 (a killed worker: its socket buffer)"),
        ("RSS over the soak", f"{soak['rss_first_kb'] / 1024:.1f} -> {soak['rss_last_kb'] / 1024:.1f} MiB "
                              f"({soak['rss_growth_pct']:+.2f} %) over {soak['seconds'] / 60:.0f} min, "
                              f"{2 * soak['qps_per_network']} q/s, {soak['processes'][1]} processes", "< 5 %"),
    ]
    w = [max(len(r[i]) for r in rows + [("measure", "result", "target")]) for i in range(3)]
    lines = [f"| {'measure':<{w[0]}} | {'result':<{w[1]}} | {'target':<{w[2]}} |",
             f"|{'-' * (w[0] + 2)}|{'-' * (w[1] + 2)}|{'-' * (w[2] + 2)}|"]
    lines += [f"| {a:<{w[0]}} | {b:<{w[1]}} | {c:<{w[2]}} |" for a, b, c in rows]
    return "\n".join(lines)


def append_results(text: str, soak_minutes: float) -> None:
    """Add the table to RESULTS.md: a dated run under the Reliability section (created once)."""
    path = ROOT / "benchmarks" / "RESULTS.md"
    head = "## Reliability — `sudo python -m benchmarks.reliability`"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = f"\n### {stamp}: soak {soak_minutes:g} min\n\n{machine()}.\n\n{text}\n"
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    if head not in existing:
        body = (f"\n{head}\n\nThe whole appliance on the gateway test bed (client, staff, gateway and "
                "internet network namespaces: tests/integration/testbed.py).\n" + body)
    with open(path, "a", encoding="utf-8") as f:
        f.write(body)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--soak-minutes", type=float, default=30.0)
    ap.add_argument("--soak-qps", type=int, default=600)
    ap.add_argument("--flood-seconds", type=float, default=10.0)
    ap.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    ap.add_argument("--json", action="store_true", help="print every number as JSON too")
    a = ap.parse_args(argv)
    from benchmarks.soak import soak

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sg-reliability-") as tmp:
        metrics = Path(tmp) / "metrics.jsonl"
        print("scenarios and faults ...", file=sys.stderr, flush=True)
        tests = run_tests(metrics)
        print("flood ...", file=sys.stderr, flush=True)
        fl = flood(a.flood_seconds)
        print(f"soak ({a.soak_minutes:g} min) ...", file=sys.stderr, flush=True)
        sk = soak(a.soak_minutes, a.soak_qps, warmup=min(60.0, 10 + a.soak_minutes * 10),
                  sample_every=min(30.0, max(5.0, a.soak_minutes * 3)), quiet=True)
        m = read_metrics(metrics)
    text = table(tests, fl, sk, m)
    print(text)
    print(f"({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    if a.json:
        print(json.dumps({"tests": tests, "flood": fl, "soak": {k: v for k, v in sk.items() if k != "samples"},
                          "metrics": m}, default=str))
    if a.append:
        append_results(text, a.soak_minutes)
    ok = not tests["scenarios"]["failed"] and not tests["faults"]["failed"] and sk["rss_growth_pct"] < 5
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
