"""schoolgate vs dnsmasq (and unbound, when installed) under dnsperf, same list, in one run.

    python -m benchmarks.dns [--list FILE ...] [--limit N] [--duration S] [--repeat N] [--clients N]
                             [--qps N] [--latency-qps N] [--workers N] [--python-path] [--no-unbound] [--baseline DIR]

Every server gets the same list (default: the first 1 M names of every shared list in a
plain-name format): schoolgate as a compiled bundle, dnsmasq as an ``--addn-hosts`` file
(``0.0.0.0 name``), unbound as ``local-zone: "name." always_null``. All forward to one
upstream dnsmasq that serves ``*.allowed.test``, so the "cached" mix measures each server's
cache. Mixes: ``blocked`` (names sampled from the list), ``cached`` (1,000 allowed names,
warmed up first), ``mixed`` (half each). Per server and mix: qps, average latency, lost
queries, server CPU-seconds during the measured run (utime + stime from /proc/<pid>/stat,
summed over the process and its children, with the user/system split), queries answered
per CPU-second; then latency percentiles from a second dnsperf run at a fixed offered load
(``--latency-qps``, the same for every server; dnsperf -v reports each query's latency).
Per server: RSS and PSS (smaps_rollup, summed over its processes) after the mixes, and
start-up time to the first answer (schoolgate runs with development-only packages hidden,
as on the appliance: see DEV_ONLY). The servers run back to back, ``--repeat`` times in turn
(the machine is shared: interleaving spreads other load over all of them); the tables show
medians. dnsperf runs on the same 2 cores, so qps saturates near the client's own limit;
queries per server CPU-second is the fairer figure. Ratios are against dnsmasq.

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


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU-seconds of ``pid`` and its descendants."""
    user = system = 0
    for p in tree(pid):
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            user += int(f[11])  # utime, stime (fields 14, 15)
            system += int(f[12])
        except (OSError, IndexError):
            pass
    return user / _TICK, system / _TICK


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
    wire = b"".join(bytes((len(label),)) + label.encode() for label in name.split(".")) + b"\x00"
    q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + wire + b"\x00\x01\x00\x01"
    t0 = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.05)
        while time.monotonic() - t0 < timeout:
            s.sendto(q, ("127.0.0.1", port))
            try:
                s.recv(4096)
                return time.monotonic() - t0
            except OSError:
                time.sleep(0.01)
    raise RuntimeError(f"no answer on port {port} within {timeout} s")


def dnsperf(port: int, qfile: Path, seconds: float, clients: int, qps: int, verbose: bool = False) -> dict:
    argv = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(qfile), "-l", str(seconds),
            "-c", str(clients), "-q", "200", "-t", "2"]
    argv += (["-Q", str(qps)] if qps else []) + (["-v"] if verbose else [])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout

    def num(pattern: str) -> float:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else float("nan")
    r = {"sent": int(num(r"Queries sent:\s+(\d+)")), "completed": int(num(r"Queries completed:\s+(\d+)")),
         "lost": int(num(r"Queries lost:\s+(\d+)")), "qps": num(r"Queries per second:\s+([\d.]+)"),
         "latency_ms": num(r"Average Latency \(s\):\s+([\d.]+)") * 1000}
    if verbose:  # "> NOERROR name A 0.000123" per answered query
        lat = sorted(float(t) for line in out.splitlines() if line.startswith("> ")
                     for t in line.rsplit(None, 1)[1:] if t[:1].isdigit())
        for q, key in ((0.5, "p50_ms"), (0.99, "p99_ms"), (0.999, "p999_ms")):
            r[key] = lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan")
    return r


def read_names(paths: list[Path], limit: int) -> list[str]:
    seen: dict[str, None] = {}
    for p in paths:
        for line in p.read_text(errors="replace").splitlines():
            parts = line.split("#", 1)[0].split()
            if not parts:
                continue
            name = parts[-1].lower().rstrip(".")  # hosts lines: the name is last
            # IPv4 addresses in domain lists are CIDR entries for the bundle, not names.
            if _NAME.match(name) and not name.endswith(".allowed.test") and not name.rsplit(".", 1)[1].isdigit():
                seen[name] = None
                if len(seen) >= limit:
                    return list(seen)
    return list(seen)


def default_lists() -> list[Path]:
    """Every shared list in a plain-name format (domains or hosts): UT1 first, then The Block
    List Project, StevenBlack and HaGeZi — together just over the 1 M-name target."""
    lists = SHARED_DATA / "lists"
    found = sorted((lists / "ut1").glob("*/domains"))
    for sub in ("blocklistproject/plain", "blocklistproject/hosts", "stevenblack", "hagezi-2022/domains",
                "hagezi-2022/hosts"):
        found += sorted(p for p in (lists / sub).rglob("*")
                        if p.is_file() and not p.name.upper().startswith(("LICENSE", "SNAPSHOT", "README")))
    return found or [ROOT / "config" / "demo" / "lists" / "ut1-gambling" / "domains"]


class Server:
    def __init__(self, name: str, argv: list[str], port: int, log: Path, env: dict | None = None,
                 cwd: Path = ROOT) -> None:
        self.name, self.port = name, port
        self._log = open(log, "wb")
        t0 = time.monotonic()
        self.p = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  cwd=cwd, env={**os.environ, **(env or {})})
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


def unbound_config(tmp: Path, port: int, up_port: int) -> Path:
    """unbound with every listed name as an ``always_null`` local zone (0.0.0.0 / ::, as
    dnsmasq's hosts file and schoolgate's null mode answer), forwarding the rest to the same
    upstream, one thread, the same cache size in entries as the others, no DNSSEC."""
    conf = tmp / f"unbound-{port}.conf"
    conf.write_text(f"""server:
  interface: 127.0.0.1
  port: {port}
  do-ip6: no
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{tmp}"
  pidfile: ""
  use-syslog: no
  verbosity: 0
  num-threads: 1
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: no
  module-config: "iterator"
  msg-cache-size: 4m
  rrset-cache-size: 8m
  include: "{tmp / 'unbound-zones.conf'}"
forward-zone:
  name: "."
  forward-addr: 127.0.0.1@{up_port}
""")
    return conf


# Packages of the development venv that numba imports when present but the appliance image
# does not install (numba.misc.coverage_support imports coverage: ~5 MB per process).
DEV_ONLY = ("coverage",)


def hide_dev_packages(tmp: Path) -> Path:
    """A directory to put first on schoolgate's PYTHONPATH in which DEV_ONLY packages fail to
    import, so the servers' memory is measured as on the appliance."""
    d = tmp / "hide-dev"
    for name in DEV_ONLY:
        (d / name).mkdir(parents=True, exist_ok=True)
        (d / name / "__init__.py").write_text(
            f"raise ImportError('{name}: not on the appliance (benchmarks/dns.py)')\n")
    return d


def median(xs: list[float]) -> float:
    xs = sorted(x for x in xs if x == x)
    if not xs:
        return float("nan")
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


def measure(srv: Server, port: int, mixes: list[str], tmp: Path, args) -> list[dict]:
    out = []
    for mix in mixes:
        qfile = tmp / f"{mix}.q"
        dnsperf(port, qfile, 2, args.clients, args.qps)  # warm caches and JIT
        u0, s0 = cpu_seconds(srv.p.pid)
        r = dnsperf(port, qfile, args.duration, args.clients, args.qps)
        u1, s1 = cpu_seconds(srv.p.pid)
        lat = dnsperf(port, qfile, args.latency_seconds, args.clients, args.latency_qps, verbose=True)
        cpu = (u1 - u0) + (s1 - s0)
        out.append({"mix": mix, "qps": r["qps"], "latency_ms": r["latency_ms"], "lost": r["lost"],
                    "cpu_s": cpu, "user_s": u1 - u0, "sys_s": s1 - s0,
                    "q_per_cpu_s": r["completed"] / cpu if cpu else float("nan"),
                    "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"], "p999_ms": lat["p999_ms"],
                    "lat_lost": lat["lost"]})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", type=Path, action="append", help="domain or hosts lists (default: shared UT1)")
    ap.add_argument("--limit", type=int, default=1_000_000, help="at most this many names")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    ap.add_argument("--repeat", type=int, default=3, help="rounds of every server; medians are shown")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--qps", type=int, default=0, help="offered load (0: as fast as dnsperf can)")
    ap.add_argument("--latency-qps", type=int, default=20000, help="offered load of the latency run")
    ap.add_argument("--latency-seconds", type=float, default=3.0)
    ap.add_argument("--mix", action="append", choices=("blocked", "cached", "mixed"))
    ap.add_argument("--workers", type=int, default=1, help="schoolgate dns.workers")
    ap.add_argument("--no-unbound", action="store_true", help="leave unbound out even when installed")
    ap.add_argument("--python-path", action="store_true",
                    help="also schoolgate with dns.fast_path: false (the plain asyncio loop)")
    ap.add_argument("--baseline", type=Path, metavar="DIR",
                    help="also the schoolgate of another checkout (e.g. `git worktree add DIR <commit>`), "
                         "run the same way, as schoolgate-baseline: a change measured against its parent "
                         "in one run")
    args = ap.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop every server started here.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    for tool in ("dnsperf", "dnsmasq"):
        if shutil.which(tool) is None:
            print(f"needs {tool} (apt-get install dnsperf dnsmasq)", file=sys.stderr)
            return 2
    mixes = args.mix or ["blocked", "cached", "mixed"]
    rng = random.Random(42)
    with tempfile.TemporaryDirectory(prefix="sg-bench-") as td:
        tmp = Path(td)
        names = read_names(args.list or default_lists(), args.limit)
        (tmp / "list.txt").write_text("".join(n + "\n" for n in names))
        (tmp / "hosts").write_text("".join(f"0.0.0.0 {n}\n" for n in names))
        (tmp / "sources.yaml").write_text(  # `signatures build` wants a block canary
            "version: 1\nexpires_days: 30\ncategories:\n  bench: {sources: [{path: list.txt, format: domains}]}\n"
            f"canaries: {{block: ['{names[0]}']}}\n")
        t0 = time.monotonic()
        # In a child process: this one must not map numba's libraries while the servers'
        # memory is measured (PSS divides shared pages among every process mapping them).
        subprocess.run([sys.executable, "-m", "appliance.cli", "signatures", "build", str(tmp / "sources.yaml"),
                        "-o", str(tmp / "bundle")], check=True, cwd=ROOT, capture_output=True)
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
        results: dict[str, list[dict]] = {}
        servers: dict[str, dict] = {}
        try:
            variants = [("schoolgate", True)] + ([("schoolgate-python", False)] if args.python_path else [])
            variants += [("schoolgate-baseline", True)] if args.baseline else []
            trees = {"schoolgate-baseline": args.baseline.resolve()} if args.baseline else {}
            for name, fast in variants:
                (tmp / f"{name}.yaml").write_text(
                    f"state_dir: {tmp}/state-{name}\nbundle: {tmp}/bundle\n"
                    f"dns: {{listen: ['127.0.0.1:{{port}}'], upstreams: ['127.0.0.1:{up_port}'], "
                    f"block_mode: 'null', rate_limit: 0, cache_size: 10000, workers: {args.workers}, "
                    f"fast_path: {'true' if fast else 'false'}}}\n"
                    "policies: {default: {block: [bench]}}\n")
            others = ["dnsmasq"] + (["unbound"] if shutil.which("unbound") and not args.no_unbound else [])
            if "unbound" in others:
                (tmp / "unbound-zones.conf").write_text("".join(f'local-zone: "{n}." always_null\n' for n in names))
            for rep in range(args.repeat):
                order = [n for n, _ in variants] + others
                if rep % 2:
                    order.reverse()  # alternate who goes first
                for name in order:
                    port = free_port()
                    if name == "dnsmasq":
                        cmd = ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                               f"--addn-hosts={tmp / 'hosts'}", f"--server=127.0.0.1#{up_port}",
                               "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={port}",
                               "--pid-file=", "--cache-size=10000", "--log-facility=/dev/null"] \
                            + (["--user=root"] if os.geteuid() == 0 else [])
                    elif name == "unbound":
                        cmd = ["unbound", "-d", "-c", str(unbound_config(tmp, port, up_port))]
                    else:
                        cfg = tmp / f"{name}-{rep}.yaml"
                        cfg.write_text((tmp / f"{name}.yaml").read_text().replace("{port}", str(port)))
                        cmd = [sys.executable, "-m", "appliance.cli", "run", "--config", str(cfg)]
                    tree_dir = trees.get(name, ROOT)
                    srv = Server(name, cmd, port, tmp / f"{name}-{rep}.log", cwd=tree_dir,
                                 env=None if name in others else
                                 {"PYTHONPATH": f"{tree_dir}{os.pathsep}{hide_dev_packages(tmp)}"})
                    try:
                        for r in measure(srv, port, mixes, tmp, args):
                            results.setdefault(name, []).append(r)
                        rss, pss = memory_mib(srv.p.pid)
                        servers.setdefault(name, []).append({"startup_s": srv.startup, "rss_mib": rss,
                                                             "pss_mib": pss, "procs": len(tree(srv.p.pid))})
                    finally:
                        srv.stop()
        finally:
            upstream.stop()
    print(f"# DNS: schoolgate vs {' and '.join(others)} — {machine()}")
    print(f"# {len(names):,} names (bundle compiled in {compile_s:.1f} s), dnsperf -c {args.clients} -q 200 "
          f"-l {args.duration:g}" + (f" -Q {args.qps}" if args.qps else "")
          + f"; latency percentiles at -Q {args.latency_qps}; schoolgate workers: {args.workers}; "
          f"medians of {args.repeat} rounds\n")
    rows = []
    agg: dict[tuple[str, str], dict] = {}
    for name, rs in results.items():
        for mix in mixes:
            mine = [r for r in rs if r["mix"] == mix]
            a = {k: median([r[k] for r in mine]) for k in mine[0] if k != "mix"}
            agg[(name, mix)] = a
            rows.append({"server": name, "mix": mix, "qps": f"{a['qps']:,.0f}", "lat_avg_ms": f"{a['latency_ms']:.3f}",
                         "lost": f"{a['lost']:.0f}", "cpu_s": f"{a['cpu_s']:.2f}",
                         "user/sys": f"{a['user_s']:.2f}/{a['sys_s']:.2f}", "q_per_cpu_s": f"{a['q_per_cpu_s']:,.0f}",
                         "p50_ms": f"{a['p50_ms']:.3f}", "p99_ms": f"{a['p99_ms']:.3f}",
                         "p99.9_ms": f"{a['p999_ms']:.3f}"})
    print(table(rows, ["server", "mix", "qps", "lat_avg_ms", "lost", "cpu_s", "user/sys", "q_per_cpu_s",
                       "p50_ms", "p99_ms", "p99.9_ms"]))
    print()
    mem = []
    for name, ss in servers.items():
        mem.append({"server": name, "processes": f"{median([s['procs'] for s in ss]):.0f}",
                    "rss_mib": f"{median([s['rss_mib'] for s in ss]):.0f}",
                    "pss_mib": f"{median([s['pss_mib'] for s in ss]):.0f}",
                    "startup_s": f"{median([s['startup_s'] for s in ss]):.2f}"})
    print(table(mem, ["server", "processes", "rss_mib", "pss_mib", "startup_s"]))
    print()
    ratios = []
    dm_rss = median([s["rss_mib"] for s in servers.get("dnsmasq", [])])
    for name in [n for n in results if n not in others]:
        sg_pss = median([s["pss_mib"] for s in servers[name]])
        for mix in mixes:
            sg, dm = agg.get((name, mix)), agg.get(("dnsmasq", mix))
            if sg and dm and dm["qps"] and dm["q_per_cpu_s"]:
                ratios.append({"server": name, "mix": mix, "qps ratio": f"{sg['qps'] / dm['qps']:.2f}",
                               "q/CPU-s ratio": f"{sg['q_per_cpu_s'] / dm['q_per_cpu_s']:.2f}",
                               "PSS / dnsmasq RSS": f"{sg_pss / dm_rss:.2f}"})
    print(table(ratios, ["server", "mix", "qps ratio", "q/CPU-s ratio", "PSS / dnsmasq RSS"]))
    if args.baseline:
        print()
        vs = []
        for mix in mixes:
            new, old = agg.get(("schoolgate", mix)), agg.get(("schoolgate-baseline", mix))
            if new and old and old["q_per_cpu_s"]:
                vs.append({"mix": mix, "q/CPU-s": f"{new['q_per_cpu_s']:,.0f}",
                           "baseline q/CPU-s": f"{old['q_per_cpu_s']:,.0f}",
                           "change": f"{(new['q_per_cpu_s'] / old['q_per_cpu_s'] - 1) * 100:+.1f} %"})
        print(f"# schoolgate ({ROOT}) against schoolgate-baseline ({args.baseline})")
        print(table(vs, ["mix", "q/CPU-s", "baseline q/CPU-s", "change"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
