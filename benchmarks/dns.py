"""schoolgate vs dnsmasq under dnsperf, same block list and query file, in one run.

    python -m benchmarks.dns [--list FILE ...] [--limit N] [--duration S] [--clients N] [--qps N]

Both servers get the same list: schoolgate as a compiled bundle, dnsmasq as an
``--addn-hosts`` file (``0.0.0.0 name``). Both forward to one upstream dnsmasq that serves
``*.allowed.test``, so the "cached" mix measures each server's cache. Mixes: ``blocked``
(names sampled from the list), ``cached`` (1,000 allowed names, warmed up first), ``mixed``
(half each). Per server and mix: qps, average latency, lost queries, server CPU-seconds
during the measured run (utime + stime from /proc/<pid>/stat, summed over the process and
its children), queries answered per CPU-second, RSS and PSS (smaps_rollup, summed), and
start-up time to the first answer. dnsperf runs on the same 2 cores, so qps saturates near
the client's own limit; queries per server CPU-second is the fairer figure.

Loopback only. Every process started here is stopped by its pid.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import ROOT, SHARED_DATA, machine, table

_TICK = os.sysconf("SC_CLK_TCK")
_NAME = re.compile(r"^[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})+$")


def free_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                    t.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port")


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (workers)."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def cpu_seconds(pid: int) -> float:
    total = 0
    for p in tree(pid):
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])  # utime, stime (fields 14, 15)
        except (OSError, IndexError):
            pass
    return total / _TICK


def memory_mib(pid: int) -> tuple[float, float]:
    rss = pss = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                key, _, rest = line.partition(":")
                if key == "Rss":
                    rss += int(rest.split()[0])
                elif key == "Pss":
                    pss += int(rest.split()[0])
        except OSError:
            pass
    return rss / 1024, pss / 1024


def wait_answer(port: int, name: str, timeout: float) -> float:
    """Seconds until 127.0.0.1:port answers an A query for ``name``."""
    from filters.names import name_to_wire

    q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + name_to_wire(name) + b"\x00\x01\x00\x01"
    t0 = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() - t0 < timeout:
            s.sendto(q, ("127.0.0.1", port))
            try:
                s.recv(4096)
                return time.monotonic() - t0
            except OSError:
                time.sleep(0.05)
    raise RuntimeError(f"no answer on port {port} within {timeout} s")


def dnsperf(port: int, qfile: Path, seconds: float, clients: int, qps: int) -> dict:
    argv = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(qfile), "-l", str(seconds),
            "-c", str(clients), "-q", "200", "-t", "2"] + (["-Q", str(qps)] if qps else [])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    def num(pattern: str) -> float:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else float("nan")
    return {"sent": int(num(r"Queries sent:\s+(\d+)")), "completed": int(num(r"Queries completed:\s+(\d+)")),
            "lost": int(num(r"Queries lost:\s+(\d+)")), "qps": num(r"Queries per second:\s+([\d.]+)"),
            "latency_ms": num(r"Average Latency \(s\):\s+([\d.]+)") * 1000}


def read_names(paths: list[Path], limit: int) -> list[str]:
    seen: dict[str, None] = {}
    for p in paths:
        for line in p.read_text(errors="replace").splitlines():
            parts = line.split("#", 1)[0].split()
            if not parts:
                continue
            name = parts[-1].lower().rstrip(".")  # hosts lines: the name is last
            if _NAME.match(name) and not name.endswith(".allowed.test"):
                seen[name] = None
                if len(seen) >= limit:
                    return list(seen)
    return list(seen)


def default_lists() -> list[Path]:
    ut1 = sorted((SHARED_DATA / "lists" / "ut1").glob("*/domains"))
    return ut1 or [ROOT / "config" / "demo" / "lists" / "ut1-gambling" / "domains"]


class Server:
    def __init__(self, name: str, argv: list[str], port: int, log: Path, env: dict | None = None) -> None:
        self.name, self.port = name, port
        self._log = open(log, "wb")
        t0 = time.monotonic()
        self.p = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  cwd=ROOT, env={**os.environ, **(env or {})})
        try:
            wait_answer(port, "probe.allowed.test", 300)
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"{name} did not start:\n{log.read_text()[-2000:]}") from None
        self.startup = time.monotonic() - t0

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        self._log.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", type=Path, action="append", help="domain or hosts lists (default: shared UT1)")
    ap.add_argument("--limit", type=int, default=1_000_000, help="at most this many names")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--qps", type=int, default=0, help="offered load (0: as fast as dnsperf can)")
    ap.add_argument("--mix", action="append", choices=("blocked", "cached", "mixed"))
    ap.add_argument("--workers", type=int, default=1, help="schoolgate dns.workers")
    args = ap.parse_args(argv)
    for tool in ("dnsperf", "dnsmasq"):
        if shutil.which(tool) is None:
            print(f"needs {tool} (apt-get install dnsperf dnsmasq)", file=sys.stderr)
            return 2
    mixes = args.mix or ["blocked", "cached", "mixed"]
    from datetime import datetime, timezone

    from signatures.bundle import write_bundle
    from signatures.compile import compile_sources
    from signatures.sources import load_sources

    rng = random.Random(42)
    with tempfile.TemporaryDirectory(prefix="sg-bench-") as td:
        tmp = Path(td)
        names = read_names(args.list or default_lists(), args.limit)
        (tmp / "list.txt").write_text("".join(n + "\n" for n in names))
        (tmp / "hosts").write_text("".join(f"0.0.0.0 {n}\n" for n in names))
        (tmp / "sources.yaml").write_text(
            "version: 1\nexpires_days: 30\ncategories:\n  bench: {sources: [{path: list.txt, format: domains}]}\n")
        t0 = time.monotonic()
        c = compile_sources(load_sources(tmp / "sources.yaml"), now=datetime.now(timezone.utc),
                            new_key=lambda: (rng.getrandbits(64), rng.getrandbits(64)))
        write_bundle(tmp / "bundle", c.arrays, c.manifest)
        compile_s = time.monotonic() - t0
        sample = rng.sample(names, min(len(names), 100_000))
        allowed = [f"n{i}.allowed.test" for i in range(1000)]
        files = {"blocked": sample, "cached": allowed,
                 "mixed": [x for pair in zip(sample, allowed * 100) for x in pair]}
        for mix, qnames in files.items():
            (tmp / f"{mix}.q").write_text("".join(f"{n} A\n" for n in qnames))

        up_port = free_port()
        upstream = Server("upstream", ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                                       "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={up_port}",
                                       "--pid-file=", "--address=/allowed.test/192.0.2.10",
                                       "--local-ttl=3600", "--log-facility=/dev/null"]
                          + (["--user=root"] if os.geteuid() == 0 else []), up_port, tmp / "up.log")
        rows = []
        try:
            sg_port, dm_port = free_port(), free_port()
            (tmp / "sg.yaml").write_text(
                f"state_dir: {tmp}/state\nbundle: {tmp}/bundle\n"
                f"dns: {{listen: ['127.0.0.1:{sg_port}'], upstreams: ['127.0.0.1:{up_port}'], "
                f"block_mode: 'null', rate_limit: 0, cache_size: 10000, workers: {args.workers}}}\n"
                "policies: {default: {block: [bench]}}\n")
            servers = [
                ("schoolgate", [sys.executable, "-m", "appliance.cli", "run", "--config", str(tmp / "sg.yaml")], sg_port),
                ("dnsmasq", ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                             f"--addn-hosts={tmp / 'hosts'}", f"--server=127.0.0.1#{up_port}",
                             "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={dm_port}",
                             "--pid-file=", "--cache-size=10000", "--log-facility=/dev/null"]
                 + (["--user=root"] if os.geteuid() == 0 else []), dm_port),
            ]
            for name, cmd, port in servers:
                srv = Server(name, cmd, port, tmp / f"{name}.log")
                try:
                    for mix in mixes:
                        dnsperf(port, tmp / f"{mix}.q", 2, args.clients, args.qps)  # warm caches and JIT
                        cpu0 = cpu_seconds(srv.p.pid)
                        r = dnsperf(port, tmp / f"{mix}.q", args.duration, args.clients, args.qps)
                        cpu = cpu_seconds(srv.p.pid) - cpu0
                        rss, pss = memory_mib(srv.p.pid)
                        rows.append({"server": name, "mix": mix, "qps": f"{r['qps']:,.0f}",
                                     "latency_ms": f"{r['latency_ms']:.3f}", "lost": r["lost"],
                                     "cpu_s": f"{cpu:.2f}", "q_per_cpu_s": f"{r['completed'] / cpu:,.0f}" if cpu else "-",
                                     "rss_mib": f"{rss:.0f}", "pss_mib": f"{pss:.0f}", "startup_s": f"{srv.startup:.2f}",
                                     "_qps": r["qps"], "_qpc": r["completed"] / cpu if cpu else 0.0, "_pss": pss,
                                     "_rss": rss})
                finally:
                    srv.stop()
        finally:
            upstream.stop()
    print(f"# DNS: schoolgate vs dnsmasq — {machine()}")
    print(f"# {len(names):,} names (bundle compiled in {compile_s:.1f} s), dnsperf -c {args.clients} "
          f"-l {args.duration:g}" + (f" -Q {args.qps}" if args.qps else "")
          + f", schoolgate workers: {args.workers}\n")
    cols = ["server", "mix", "qps", "latency_ms", "lost", "cpu_s", "q_per_cpu_s", "rss_mib", "pss_mib", "startup_s"]
    print(table(rows, cols))
    print()
    ratios = []
    for mix in mixes:
        sg = next((r for r in rows if r["server"] == "schoolgate" and r["mix"] == mix), None)
        dm = next((r for r in rows if r["server"] == "dnsmasq" and r["mix"] == mix), None)
        if sg and dm and dm["_qps"] and dm["_qpc"]:
            ratios.append({"mix": mix, "qps ratio": f"{sg['_qps'] / dm['_qps']:.2f}",
                           "q/CPU-s ratio": f"{sg['_qpc'] / dm['_qpc']:.2f}",
                           "PSS / dnsmasq RSS": f"{sg['_pss'] / dm['_rss']:.2f}"})
    print(table(ratios, ["mix", "qps ratio", "q/CPU-s ratio", "PSS / dnsmasq RSS"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
