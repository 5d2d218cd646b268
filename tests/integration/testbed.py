"""The gateway test bed for the reliability tests: the whole appliance as a school would run it, inside
network namespaces this module creates and always removes.

    client  10.10.0.2/24 (students) ─┐                       ┌─ internet 10.99.0.2/24
    staff   10.20.0.2/24 ────────────┼─ gateway ─────────────┤   dnsmasq :53 (the test zone)
                                     │  10.10.0.1 10.20.0.1  │   HTTPS :443 on .10 .11 .53
                                     │  10.99.0.1, forwarding │   TUF repository http://10.99.0.80:8000/
                                     │  `schoolgate run` (DNS on :53, workers, updates, web...)

Everything is real: `schoolgate run` in the gateway namespace with its own config and a
state directory on a small tmpfs (so a test can fill it), dnsmasq as the upstream, python
ssl servers for several names, a TUF repository built with `schoolgate signatures keygen`
and `publish` and served over HTTP with injectable faults (tests/repo_server.py), and
clients in the client and staff namespaces: dig, curl and dnspython (a thread of the test
process enters a namespace with setns(2): a network namespace is per thread on Linux, so
the sockets it opens live there while the rest of the process stays where it was).

Use it as a pytest fixture (``bed``, module scope: the scenarios of one module share a
bed) or as a plain context manager (:func:`gateway_bed`, for benchmarks/). Teardown —
fixture finalizer, ``with`` exit and atexit, whichever comes first — stops every process
it started, deletes the namespaces (tests/integration/netns.py) and unmounts the tmpfs.
Every wait is bounded. Traffic goes only to addresses inside these namespaces.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import io
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.netns import DEADLINE, Namespace, cleanup_stale, namespaces, require_netns, veth, wait_for
from tests.repo_server import RepoServer
from tests.tlscerts import self_signed

__all__ = ["Bed", "gateway_bed", "bed", "enter_netns", "QueryLoop", "flood", "dnsperf", "measure_capacity",
           "run_flood", "run_soak", "reload_config", "soak_names",
           "CLIENT_GW", "STAFF_GW", "CLIENT_IP", "STAFF_IP", "RESOLVER", "REPO_ADDR", "HTTPS_ADDRS",
           "FAKETIME_LIB", "feature_skip", "record_metric"]

ROOT = Path(__file__).resolve().parents[2]
CLIENT_GW, CLIENT_IP = "10.10.0.1", "10.10.0.2"
STAFF_GW, STAFF_IP = "10.20.0.1", "10.20.0.2"
INET_GW, RESOLVER = "10.99.0.1", "10.99.0.2"
REPO_ADDR, REPO_PORT = "10.99.0.80", 8000
WEB_PORT = 8080
# The HTTPS servers: one address per site, as a CDN would give them.
HTTPS_ADDRS = {"www.allowed.test": "10.99.0.10", "casino.test": "10.99.0.11",
               "doh.resolver.test": "10.99.0.53"}
SAFE_ZONE = {  # SafeSearch endpoints answered by the test zone (never the real ones)
    "www.google.com": "10.99.0.30", "forcesafesearch.google.com": "10.99.0.31",
    "www.youtube.com": "10.99.0.32", "restrict.youtube.com": "10.99.0.33",
    "restrictmoderate.youtube.com": "10.99.0.34", "www.bing.com": "10.99.0.35",
    "strict.bing.com": "10.99.0.36", "duckduckgo.com": "10.99.0.37", "safe.duckduckgo.com": "10.99.0.38",
}
STALE_NAME, STALE_ADDR = "stale.test", "10.99.0.12"  # answered with TTL 1 (the serve-stale test)
TMPFS_SIZE = "48m"  # the state directory's "disk": bundles of the bed are a few kB each
FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
# libfaketime 0.9.10 with FAKETIME_DONT_FAKE_MONOTONIC=1 (needed: with a faked monotonic
# clock, condition-variable waits hang) fails clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME),
# which CPython's time.sleep uses, with EINVAL. The faked process gets this sitecustomize,
# which sleeps with select() instead; nothing else changes.
_FAKETIME_SHIM = """\
import select, time
def _sleep(seconds):
    select.select([], [], [], max(0.0, seconds))
time.sleep = _sleep
"""
_START_TIMEOUT = DEADLINE  # a cold numba cache on a loaded 2-core machine takes its time
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

# Every bed still open, for atexit (a test process killed by pytest's -x or Ctrl-C).
_OPEN: list[Bed] = []


def record_metric(name: str, **values: object) -> None:
    """Append one measurement to $SCHOOLGATE_RELIABILITY_METRICS (JSON lines), when set:
    benchmarks/reliability.py runs the scenario tests and reads what they measured."""
    path = os.environ.get("SCHOOLGATE_RELIABILITY_METRICS")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"metric": name, **values}, default=str) + "\n")


def feature_skip(reason: str) -> None:
    """Skip a scenario whose feature is not in the tree yet (the reason names the piece)."""
    pytest.skip(f"feature absent: {reason}")


@contextlib.contextmanager
def enter_netns(ns: Namespace | str) -> Iterator[None]:
    """Run the body with this thread inside ``ns``: sockets opened meanwhile live there."""
    name = ns.name if isinstance(ns, Namespace) else ns
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
        try:
            yield
        finally:
            if _libc.setns(own, _CLONE_NEWNET) != 0:  # never leave a pytest thread elsewhere
                os._exit(70)
    finally:
        os.close(target)
        os.close(own)


# --------------------------------------------------------------------------- servers


# The servers wait this long before the TLS handshake: a real server is at least a WAN round
# trip away, which is the time the gateway has to judge a ClientHello before the server's
# reply reaches the client (namespaces on one host have no such delay, and this kernel has
# no netem to add one). docs/flows.md, "Limits" states the limit.
WAN_DELAY = 0.05


class HttpsServers:
    """Python ssl servers, one per address, each answering any request with a small 200."""

    def __init__(self, ns: Namespace, addrs: list[str], cert: Path, key: Path) -> None:
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(cert, key)
        self.stop = threading.Event()
        self.socks = []
        with enter_netns(ns):
            for a in addrs:
                self.socks.append(socket.create_server((a, 443), reuse_port=False))
        self.threads = [threading.Thread(target=self._serve, args=(s,), daemon=True) for s in self.socks]
        for t in self.threads:
            t.start()

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            try:
                conn.settimeout(3)
                time.sleep(WAN_DELAY)
                tls = self.ctx.wrap_socket(conn, server_side=True)
                tls.recv(65536)
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
                tls.close()
            except OSError:
                pass
            finally:
                conn.close()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(2)
        for s in self.socks:
            s.close()


def dnsmasq_argv(log: Path) -> list[str]:
    """The upstream resolver: a test zone, no upstream of its own, on the internet side only."""
    argv = ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll",
            f"--listen-address={RESOLVER}", "--bind-interfaces", "--port=53", "--pid-file=", "--user=root",
            "--address=/test/10.99.0.10", "--address=/nx.test/", "--local-ttl=60",
            "--cache-size=0", "--log-queries", f"--log-facility={log}"]
    for name, addr in [("casino.test", HTTPS_ADDRS["casino.test"]), ("www.casino.test", HTTPS_ADDRS["casino.test"]),
                       ("doh.resolver.test", HTTPS_ADDRS["doh.resolver.test"]), *SAFE_ZONE.items()]:
        argv.append(f"--host-record={name},{addr}")
    argv.append(f"--host-record={STALE_NAME},{STALE_ADDR},1")
    return argv


# --------------------------------------------------------------------------- bundles


def sources_yaml(dir: Path, version: int, extra: tuple[str, ...] = (), expires_days: int = 30) -> Path:
    """SOURCES.yaml of the bed's bundles: gambling (casino.test and v<version>.test, so a
    test can tell versions apart) and doh (a name and the DoH server's address)."""
    dir.mkdir(parents=True, exist_ok=True)
    (dir / "gambling.txt").write_text("".join(n + "\n" for n in ("casino.test", f"v{version}.test", *extra)))
    (dir / "doh.txt").write_text("doh.resolver.test\n")
    (dir / "doh-ips.txt").write_text(f"{HTTPS_ADDRS['doh.resolver.test']}/32\n")
    (dir / "allow.txt").write_text("fine.casino.test\n")
    src = dir / "sources.yaml"
    src.write_text(f"""\
version: {version}
expires_days: {expires_days}
categories:
  gambling: {{sources: [{{path: gambling.txt, format: domains, licence: CC0-1.0, attribution: testbed}}]}}
  doh:
    sources:
      - {{path: doh.txt, format: domains, licence: CC0-1.0, attribution: testbed}}
      - {{path: doh-ips.txt, format: cidr, licence: CC0-1.0, attribution: testbed}}
allow: [{{path: allow.txt, format: domains}}]
canaries: {{block: [casino.test], allow: [example.org]}}
""")
    return src


def cli(*argv: str) -> tuple[int, str, str]:
    """The `schoolgate` command, in this process (the same entry point as the console script)."""
    from appliance.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


# --------------------------------------------------------------------------- the bed


@dataclass
class Bed:
    root: Path
    client: Namespace
    staff: Namespace
    gateway: Namespace
    internet: Namespace
    workers: int = 2
    rate: tuple[int, int] = (500, 1000)  # per-client qps, burst
    extra_config: str = ""
    tmpfs_size: str = TMPFS_SIZE
    state: Path = field(init=False)
    config: Path = field(init=False)
    keys: Path = field(init=False)
    repo: Path = field(init=False)
    version: int = 0
    proc: subprocess.Popen | None = None
    upstream: subprocess.Popen | None = None
    repo_server: RepoServer | None = None
    https: HttpsServers | None = None
    starts: int = 0
    features: dict = field(default_factory=dict)
    _closed: bool = False

    def __post_init__(self) -> None:
        self.state = self.root / "state"
        self.config = self.root / "schoolgate.yaml"
        self.keys = self.root / "keys"
        self.repo = self.root / "repo"
        self.log_dir = self.root / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)

    # ----- setup

    def build_network(self) -> None:
        gw = self.gateway
        _, self.client_dev = veth(self.client, gw, f"{CLIENT_IP}/24", f"{CLIENT_GW}/24")
        _, self.staff_dev = veth(self.staff, gw, f"{STAFF_IP}/24", f"{STAFF_GW}/24")
        _, inet_dev = veth(gw, self.internet, f"{INET_GW}/24", f"{RESOLVER}/24")
        for addr in [*HTTPS_ADDRS.values(), REPO_ADDR, STALE_ADDR, *SAFE_ZONE.values()]:
            self.internet.run("ip", "addr", "add", f"{addr}/24", "dev", inet_dev)
        self.client.run("ip", "route", "add", "default", "via", CLIENT_GW)
        self.staff.run("ip", "route", "add", "default", "via", STAFF_GW)
        for net in ("10.10.0.0/24", "10.20.0.0/24"):
            self.internet.run("ip", "route", "add", net, "via", INET_GW)
        gw.run("sysctl", "-qw", "net.ipv4.ip_forward=1")

    def mount_state(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        # The source names our pid, so that a later run can unmount what a killed one left.
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.tmpfs_size},mode=0755",
                        f"{_MOUNT_TAG}{os.getpid()}", str(self.state)], check=True, capture_output=True, timeout=10)
        self._mounted = True

    def start_upstream(self) -> None:
        self.upstream = self.internet.popen(dnsmasq_argv(self.log_dir / "dnsmasq-queries.log"),
                                            stdout=open(self.log_dir / "dnsmasq.out", "ab"),
                                            stderr=subprocess.STDOUT)
        wait_for(lambda: self._resolves_upstream(), DEADLINE, "dnsmasq in the internet namespace")

    def _resolves_upstream(self) -> bool:
        import dns.message
        import dns.query

        if self.upstream is not None and self.upstream.poll() is not None:
            raise AssertionError(f"dnsmasq exited: {(self.log_dir / 'dnsmasq.out').read_text()[-2000:]}")
        try:
            with enter_netns(self.gateway):
                dns.query.udp(dns.message.make_query("probe.test", "A"), RESOLVER, timeout=0.5)
            return True
        except Exception:
            return False

    def start_servers(self) -> None:
        cert, key = self_signed(self.root, sorted({*HTTPS_ADDRS, "www.casino.test"}), prefix="https-")
        self.cert = cert
        self.https = HttpsServers(self.internet, sorted(set(HTTPS_ADDRS.values())), cert, key)
        self.open_repo()

    def open_repo(self) -> RepoServer:
        """(Re)start the repository's HTTP server (after :meth:`close_repo`: "update server down")."""
        if self.repo_server is not None:
            return self.repo_server
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                with enter_netns(self.internet):
                    self.repo_server = RepoServer(self.repo, host=REPO_ADDR, port=REPO_PORT)
                return self.repo_server
            except OSError:  # the old listener's port still in TIME_WAIT-ish state
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def close_repo(self) -> None:
        if self.repo_server is not None:
            self.repo_server.close()
            self.repo_server = None

    def init_repository(self) -> None:
        code, _, err = cli("signatures", "keygen", "--out", str(self.keys))
        assert code == 0, err
        self.publish(1)
        (self.root / "root.json").write_bytes((self.repo / "metadata" / "root.json").read_bytes())

    def build_bundle(self, version: int, extra: tuple[str, ...] = (), expires_days: int = 30) -> Path:
        src = sources_yaml(self.root / "sources" / f"v{version}", version, extra, expires_days)
        out = self.root / "bundles" / f"v{version}"
        code, _, err = cli("signatures", "build", str(src), "-o", str(out), "-q")
        assert code == 0, err
        return out

    def publish(self, version: int, extra: tuple[str, ...] = ()) -> None:
        """Build and publish bundle ``version`` with the project's own commands."""
        bundle = self.build_bundle(version, extra)
        code, out, err = cli("signatures", "publish", str(bundle), "--repo", str(self.repo), "--keys", str(self.keys))
        assert code == 0, err + out
        self.version = max(self.version, version)

    # ----- config

    def config_text(self, *, rate: tuple[int, int] | None = None, extra: str | None = None,
                    policies: str | None = None) -> str:
        qps, burst = rate or self.rate
        rate_yaml = "0" if qps == 0 else f"{{qps: {qps}, burst: {burst}}}"
        return f"""\
# The gateway test bed's appliance (tests/integration/testbed.py)
state_dir: {self.state}
dns:
  listen: ["{CLIENT_GW}:53", "{STAFF_GW}:53", "127.0.0.1:53"]
  upstreams: ["{RESOLVER}:53"]
  upstream_timeout: 400ms
  stale_ttl: 4s
  block_mode: nxdomain
  rate_limit: {rate_yaml}
  workers: {self.workers}
networks:
  students: {{cidrs: [10.10.0.0/24], policy: students}}
  staff: {{cidrs: [10.20.0.0/24], policy: staff}}
policies:
{policies if policies is not None else self.policies_yaml()}
updates:
  repository: "http://{REPO_ADDR}:{REPO_PORT}/"
  trusted_root: root.json
  interval: 1h
  timeout: 5s
{self.extra_config if extra is None else extra}"""

    def policies_yaml(self) -> str:
        return ("  students: {block: [gambling, doh]}\n"
                "  staff: {block: [doh]}\n"
                "  default: {block: [gambling, doh]}")

    def write_config(self, text: str | None = None) -> None:
        self.config.write_text(text if text is not None else self.config_text())

    def accepts(self, text: str) -> list[str]:
        """Errors the config loader reports for ``text`` (an empty list: it is accepted)."""
        from appliance.config.load import ConfigErrors, load_config

        probe = self.root / "probe.yaml"
        probe.write_text(text)
        try:
            load_config(probe)
        except ConfigErrors as exc:
            return [str(e) for e in exc.errors]
        except Exception as exc:  # noqa: BLE001 - a loader bug is also "not accepted"
            return [repr(exc)]
        return []

    def optional_sections(self) -> dict[str, str]:
        """Config sections of features that may or may not be in the tree yet."""
        return {
            # the status page and /api/status, reachable from the staff network
            "web": f'web:\n  listen: "{STAFF_GW}:{WEB_PORT}"\n',
            # live flow inspection on the students' side, nftables enforcement
            "flows": (f"flows:\n  enabled: true\n  interface: {self.client_dev}\n  mode: enforce\n"
                      "  block_dot: true\n  block_doh_addresses: true\n"),
            # the query log with every query (the privacy test looks for raw addresses)
            "log": "log:\n  queries: all\n  clients: hash\n",
        }

    def detect_optional(self) -> None:
        """Keep the sections the appliance accepts today (features other helpers are
        building): the bed is the whole appliance as far as it exists."""
        kept = []
        for name, text in self.optional_sections().items():
            self.features[name] = not self.accepts(self.config_text(extra=text))
            if self.features[name]:
                kept.append(text)
        self.extra_config = "".join(kept)

    # ----- the appliance

    def start(self, env: dict | None = None, wait: bool = True) -> subprocess.Popen:
        """Start `schoolgate run` in the gateway namespace; wait until it answers clients."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        e = dict(os.environ)
        e.update(env or {})
        log = open(self.log_dir / f"schoolgate-{self.starts}.log", "wb")
        self.proc = self.gateway.popen([sys.executable, "-m", "appliance.cli", "run", "--config", str(self.config)],
                                       stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=e)
        log.close()
        if wait:
            self.wait_ready()
        return self.proc

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"schoolgate-{self.starts}.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = _START_TIMEOUT) -> None:
        def ready() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                raise AssertionError(f"schoolgate exited ({self.proc.returncode if self.proc else None}):\n"
                                     f"{self.log()[-4000:]}")
            if len(self.worker_pids()) < (self.workers if self.workers > 1 else 0):
                return False
            return self.answers("staff", "readiness.probe.test", timeout=0.5) is not None \
                and self.answers("client", "readiness.probe.test", timeout=0.5) is not None
        try:
            wait_for(ready, timeout, "schoolgate to answer in the gateway namespace", period=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log()[-4000:]}") from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        if self.proc is None:
            return None
        code = self.gateway.stop(self.proc, sig, timeout)
        return code

    def kill_all(self) -> None:
        """kill -9 of the whole appliance: every process in its process group (a power cut
        as the processes see it; systemd's KillMode=control-group does the same)."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        wait_for(lambda: not self.appliance_pids(), DEADLINE, "every appliance process to be gone")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ensure_running(self) -> None:
        """Bring the bed back to its normal state after a test that broke something."""
        self.resume_upstream()
        if self.repo_server is None:
            self.open_repo()
        self.repo_server.clear()
        if not self.running() or not self.answers("staff", "health.probe.test", timeout=1.0):
            if self.running():
                self.stop()
            for pid in self.appliance_pids():  # orphans of a killed supervisor
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.write_config()
            self.start()

    # ----- processes and memory

    def appliance_pids(self) -> list[int]:
        """Every `schoolgate run` process (supervisor, workers, web child) in the gateway
        namespace — orphans of a killed supervisor included; not the updater child."""
        out = []
        for pid in self.gateway.pids():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"appliance.cli" in cmd and b"run" in cmd:
                out.append(pid)
        return sorted(out)

    def owner_pid(self) -> int | None:
        from appliance.updates.state import read_run_state

        pid = read_run_state(self.state).get("pid")
        return pid if isinstance(pid, int) else None

    def worker_pids(self) -> list[int]:
        """The supervisor's DNS workers (children running `run`, forked: same command line)."""
        if self.proc is None or self.workers <= 1:
            return []
        return [p for p in self.appliance_pids() if _ppid(p) == self.proc.pid and _is_worker(p)]

    def children(self) -> list[int]:
        """Every process the supervisor started and still has (workers, web, capture), not
        the updater child."""
        if self.proc is None:
            return []
        return sorted(p for p in self.gateway.pids() if _ppid(p) == self.proc.pid
                      and b"update" not in Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0"))

    def memory(self) -> dict:
        """RSS and PSS (kB) summed over the appliance's processes."""
        rss = pss = 0
        pids = self.appliance_pids()
        for pid in pids:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        return {"processes": len(pids), "rss_kb": rss, "pss_kb": pss}

    def faketime_env(self, faketime: str) -> dict:
        """Environment running the appliance (and its updater child) under libfaketime:
        ``faketime`` is FAKETIME's value, e.g. ``+400d`` or ``@2026-11-23 07:59:52``."""
        if not FAKETIME_LIB.exists():
            pytest.skip("needs libfaketime (apt-get install faketime; as root, tests/setup.sh installs it)")
        shim = self.root / "faketime-shim"
        shim.mkdir(exist_ok=True)
        (shim / "sitecustomize.py").write_text(_FAKETIME_SHIM)
        return {"LD_PRELOAD": str(FAKETIME_LIB), "FAKETIME": faketime, "FAKETIME_DONT_FAKE_MONOTONIC": "1",
                "PYTHONPATH": os.pathsep.join([str(shim), str(ROOT)])}

    # ----- signals and status

    def signal_owner(self, sig: int) -> None:
        pid = self.owner_pid()
        assert pid is not None, "run.json names no running appliance"
        os.kill(pid, sig)

    def check_update_now(self) -> None:
        """SIGUSR2 to the owner named in run.json (the "update now" contract)."""
        self.signal_owner(signal.SIGUSR2)

    def status(self) -> dict:
        code, out, err = cli("status", "--json", "--config", str(self.config))
        assert code == 0, err
        return json.loads(out)

    def api_status(self, timeout: float = 3.0) -> dict | None:
        """GET /api/status from the staff network (None when the web page is not there)."""
        import urllib.request

        if not self.features.get("web"):
            return None
        try:
            with enter_netns(self.staff):
                with urllib.request.urlopen(f"http://{STAFF_GW}:{WEB_PORT}/api/status", timeout=timeout) as r:
                    return json.loads(r.read())
        except OSError:
            return None

    def wait_status(self, pred: Callable[[dict], bool], timeout: float, what: str) -> dict:
        return wait_for(lambda: (lambda s: s if pred(s) else None)(self.status()), timeout, what, period=0.1)

    # ----- the upstream

    def pause_upstream(self) -> None:
        """Upstream down: dnsmasq stops answering (SIGSTOP), queries time out silently."""
        assert self.upstream is not None
        os.kill(self.upstream.pid, signal.SIGSTOP)

    def resume_upstream(self) -> None:
        if self.upstream is not None and self.upstream.poll() is None:
            os.kill(self.upstream.pid, signal.SIGCONT)

    # ----- clients

    def server_for(self, who: str) -> str:
        return {"client": CLIENT_GW, "staff": STAFF_GW, "gateway": "127.0.0.1"}[who]

    def ns(self, who: str) -> Namespace:
        return {"client": self.client, "staff": self.staff, "gateway": self.gateway,
                "internet": self.internet}[who]

    def ask(self, who: str, name: str, rdtype: str = "A", *, tcp: bool = False, timeout: float = 5.0,
            server: str | None = None):
        """One dnspython query from ``who``'s namespace; raises on timeout (5 s: a stub resolver's
        patience, and plenty for a loaded machine)."""
        import dns.message
        import dns.query

        q = dns.message.make_query(name, rdtype)
        with enter_netns(self.ns(who)):
            host = server or self.server_for(who)
            if tcp:
                return dns.query.tcp(q, host, port=53, timeout=timeout)
            return dns.query.udp(q, host, port=53, timeout=timeout)

    def answers(self, who: str, name: str, rdtype: str = "A", timeout: float = 2.0):
        try:
            return self.ask(who, name, rdtype, timeout=timeout)
        except Exception:  # noqa: BLE001 - a timeout or an unreadable answer: no answer
            return None

    def rcode(self, who: str, name: str, rdtype: str = "A") -> str:
        import dns.rcode

        return dns.rcode.to_text(self.ask(who, name, rdtype).rcode())

    def dig(self, who: str, *args: str) -> str:
        return self.ns(who).run("dig", f"@{self.server_for(who)}", "+tries=1", "+time=2", *args,
                                check=False, timeout=15).stdout

    def curl(self, who: str, name: str, addr: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
        """HTTPS to ``name`` at ``addr`` (default: its server's address) from ``who``'s network."""
        addr = addr or HTTPS_ADDRS.get(name) or HTTPS_ADDRS["casino.test" if "casino" in name else "www.allowed.test"]
        return self.ns(who).run("curl", "-sS", "--max-time", str(timeout), "--cacert", str(self.cert),
                                "--resolve", f"{name}:443:{addr}", f"https://{name}/", check=False,
                                timeout=timeout + 10)

    # ----- teardown

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self.resume_upstream()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.stop(timeout=15)
        for pid in self.appliance_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.close_repo()
        if self.https is not None:
            with contextlib.suppress(Exception):
                self.https.close()
        for ns in (self.client, self.staff, self.gateway, self.internet):
            with contextlib.suppress(Exception):
                ns.close()
        if getattr(self, "_mounted", False):
            subprocess.run(["umount", "-l", str(self.state)], capture_output=True, timeout=10)
            self._mounted = False
        with contextlib.suppress(ValueError):
            _OPEN.remove(self)


_MOUNT_TAG = "sgbed-"


def cleanup_stale_mounts() -> list[str]:
    """Unmount state tmpfs of beds whose test process is gone (killed before its teardown)."""
    gone = []
    for line in Path("/proc/mounts").read_text().splitlines():
        src, target = line.split()[:2]
        if src.startswith(_MOUNT_TAG) and src[len(_MOUNT_TAG):].isdigit() \
                and not Path(f"/proc/{src[len(_MOUNT_TAG):]}").exists():
            subprocess.run(["umount", "-l", target.replace("\\040", " ")], capture_output=True, timeout=10)
            gone.append(target)
    return gone


def _ppid(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(stat[stat.rindex(")") + 2:].split()[1])


def _is_worker(pid: int) -> bool:
    """A DNS worker (rather than, say, the web child): it holds a UDP socket on port 53."""
    try:
        inodes = set()
        for line in Path(f"/proc/{pid}/net/udp").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[1].endswith(":0035"):
                inodes.add(cols[9])
        for fd in os.listdir(f"/proc/{pid}/fd"):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return True
    except OSError:
        return False
    return False


@contextlib.contextmanager
def gateway_bed(root: Path, *, workers: int = 2, rate: tuple[int, int] = (500, 1000),
                start: bool = True, tmpfs_size: str = TMPFS_SIZE) -> Iterator[Bed]:
    """A whole gateway bed under ``root``; torn down on exit (and at interpreter exit)."""
    require_netns("dnsmasq", "dig", "curl", "nft")  # nft: the bed runs flow enforcement
    cleanup_stale()
    cleanup_stale_mounts()
    root.mkdir(parents=True, exist_ok=True)
    with namespaces("client", "staff", "gateway", "internet") as (cl, st, gw, inet):
        bed = Bed(root, cl, st, gw, inet, workers=workers, rate=rate, tmpfs_size=tmpfs_size)
        _OPEN.append(bed)
        try:
            bed.build_network()
            bed.mount_state()
            bed.start_upstream()
            bed.init_repository()
            bed.start_servers()
            bed.detect_optional()
            bed.write_config()
            # Install the first signed bundle with the real updater before the first start
            # (what `run` would do at once, minus the demo bundle's install meanwhile).
            res = gw.run(sys.executable, "-m", "appliance.cli", "update", "--once", "--config", str(bed.config),
                         check=False, timeout=120)
            assert res.returncode == 0, res.stderr + res.stdout
            if start:
                bed.start()
            yield bed
        finally:
            bed.close()


@atexit.register
def _close_all() -> None:
    for bed in list(_OPEN):
        with contextlib.suppress(Exception):
            bed.close()


@pytest.fixture(scope="module")
def bed(tmp_path_factory) -> Iterator[Bed]:
    """One gateway bed for the scenarios of a module (module scope keeps CI time down)."""
    with gateway_bed(tmp_path_factory.mktemp("gatewaybed")) as b:
        yield b


# --------------------------------------------------------------------------- load


@dataclass
class QueryLoop:
    """dnspython queries from one namespace in a thread, paced at ``rate`` per second; every
    answer and failure counted (a failure: timeout, unreadable answer, SERVFAIL/REFUSED)."""

    bed: Bed
    who: str
    names: tuple[str, ...]
    rate: float = 200.0
    timeout: float = 5.0  # a stub resolver's patience: a query unanswered that long has failed
    sent: int = 0
    failed: list[str] = field(default_factory=list)
    answers: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    stopping: threading.Event = field(default_factory=threading.Event)

    def start(self) -> QueryLoop:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        import dns.message
        import dns.query
        import dns.rcode

        server = self.bed.server_for(self.who)
        with enter_netns(self.bed.ns(self.who)):
            t0, i = time.monotonic(), 0
            while not self.stopping.is_set():
                name = self.names[i % len(self.names)]
                i += 1
                self.sent += 1
                try:
                    r = dns.query.udp(dns.message.make_query(name, "A"), server, port=53, timeout=self.timeout)
                    rcode = dns.rcode.to_text(r.rcode())
                except Exception as exc:  # noqa: BLE001
                    self.failed.append(f"{time.monotonic() - t0:.2f}s {name}: {exc!r}")
                    continue
                if rcode not in ("NOERROR", "NXDOMAIN"):
                    self.failed.append(f"{time.monotonic() - t0:.2f}s {name}: {rcode}")
                verdict = "block" if rcode == "NXDOMAIN" else "allow"
                self.answers.setdefault(name, []).append((time.monotonic(), verdict))
                ahead = t0 + i / self.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)

    def last(self, name: str) -> str | None:
        got = self.answers.get(name)
        return got[-1][1] if got else None

    @property
    def answered(self) -> int:
        return sum(len(v) for v in self.answers.values())

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(self.timeout + 3)


def dnsperf(bed: Bed, who: str, names: list[str], seconds: float, *, qps: int | None = None,
            clients: int = 4, outstanding: int = 200, timeout: float = 1.0) -> dict:
    """dnsperf from ``who``'s namespace against the gateway; the numbers it prints."""
    qfile = bed.root / f"queries-{who}.txt"
    qfile.write_text("".join(f"{n} A\n" for n in names))
    argv = ["dnsperf", "-s", bed.server_for(who), "-p", "53", "-d", str(qfile), "-l", str(seconds),
            "-c", str(clients), "-q", str(outstanding), "-t", f"{timeout:g}", "-O", "suppress=timeout"]
    if qps:
        argv += ["-Q", str(qps)]
    res = bed.ns(who).run(*argv, check=False, timeout=seconds + 30)
    return parse_dnsperf(res.stdout)


def parse_dnsperf(text: str) -> dict:
    out: dict = {}
    for line in text.splitlines():
        line = line.strip()
        for key, label in (("sent", "Queries sent:"), ("completed", "Queries completed:"),
                           ("lost", "Queries lost:"), ("qps", "Queries per second:"),
                           ("seconds", "Run time (s):")):
            if line.startswith(label):
                out[key] = float(line[len(label):].split()[0])
    return out


FLOOD_SCRIPT = r"""
import json, os, socket, struct, sys, threading, time
server, rate, seconds, nsock = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
names = sys.argv[5:]
def q(name, qid):
    wire = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + wire + b"\0\1\0\1"
pkts = [q(names[i % len(names)], i & 0xFFFF) for i in range(4096)]
socks = []
for _ in range(nsock):  # several source ports: the kernel spreads them over the workers
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    s.connect((server, 53)); s.setblocking(False); socks.append(s)
got = [0]; stop = threading.Event()
def recv():
    import selectors
    sel = selectors.DefaultSelector()
    for s in socks: sel.register(s, selectors.EVENT_READ)
    while not stop.is_set():
        for key, _ in sel.select(0.1):
            try:
                while True:
                    key.fileobj.recv(4096); got[0] += 1
            except (BlockingIOError, ConnectionRefusedError):
                pass
t = threading.Thread(target=recv, daemon=True); t.start()
sent = errs = 0; t0 = time.monotonic(); end = t0 + seconds; i = 0
while True:
    now = time.monotonic()
    if now >= end: break
    due = int((now - t0) * rate)
    while sent < due:
        s = socks[i % nsock]
        for _ in range(min(64, due - sent)):
            try:
                s.send(pkts[i & 4095]); sent += 1
            except (BlockingIOError, ConnectionRefusedError):
                errs += 1; break
            i += 1
        i += 1
        if time.monotonic() >= end: break
    else:
        time.sleep(0.0005)
took = time.monotonic() - t0
time.sleep(1.0); stop.set(); t.join(2)
print(json.dumps({"sent": sent, "answered": got[0], "seconds": round(took, 3), "rate": round(sent / took),
                  "send_errors": errs}))
"""


def flood(bed: Bed, who: str, names: list[str], rate: float, seconds: float, sockets: int = 8) -> subprocess.Popen:
    """A UDP query flood at ``rate`` per second from ``who``'s namespace (a subprocess);
    ``.communicate()`` gives one JSON line: sent, answered, seconds, rate, send_errors."""
    return bed.ns(who).popen([sys.executable, "-c", FLOOD_SCRIPT, bed.server_for(who), str(rate), str(seconds),
                              str(sockets), *names], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# --------------------------------------------------------------------------- load runs
# (shared by tests/integration/test_gateway_load.py and benchmarks/reliability.py, soak.py)

FLOOD_NAMES = ["casino.test", "www.casino.test", "www.allowed.test", "a.allowed.test", "b.allowed.test",
               "doh.resolver.test", "use-application-dns.net"]
# What one Python flooder process sends here (~150 k/s measured, asked for less so that each
# keeps its pace); the flood is split over as many as needed, at most _MAX_FLOODERS.
_FLOODER_PPS, _MAX_FLOODERS = 120_000, 6


def reload_config(bed: Bed, text: str, timeout: float = DEADLINE) -> None:
    """Write ``text`` as the config and SIGHUP; wait until the appliance says it reloaded."""
    n = bed.log().count("config reloaded")
    bed.write_config(text)
    bed.signal_owner(signal.SIGHUP)
    wait_for(lambda: bed.log().count("config reloaded") > n, timeout, "the config to be reloaded")


def measure_capacity(bed: Bed, seconds: float = 2.0, names: list[str] = FLOOD_NAMES) -> float:
    """Answered queries per second with nothing holding the appliance back: dnsperf from the
    students' network with rate limiting switched off for the measurement (SIGHUP), then on."""
    for n in names:
        bed.answers("client", n)  # cached: the flood mix is answered from cache and templates
    reload_config(bed, bed.config_text(rate=(0, 0)))
    try:
        res = dnsperf(bed, "client", names, seconds, clients=4, outstanding=200)
    finally:
        reload_config(bed, bed.config_text())
    return float(res.get("qps", 0.0))


def run_flood(bed: Bed, capacity: float, *, factor: float = 5.5, seconds: float = 6.0,
              staff_rate: float = 100.0) -> dict:
    """A flood at ``factor`` × ``capacity`` from the students' network (several flooder
    processes, one source address) while a staff client asks at ``staff_rate``; memory of
    the appliance before and after. Returns every number the report needs."""
    for n in FLOOD_NAMES:
        bed.answers("staff", n)
    mem_before = bed.memory()
    n = max(1, min(_MAX_FLOODERS, -(-int(capacity * factor) // _FLOODER_PPS)))
    procs = [flood(bed, "client", FLOOD_NAMES, capacity * factor / n, seconds) for _ in range(n)]
    staff = QueryLoop(bed, "staff", ("casino.test", "www.allowed.test", "staff.allowed.test"), rate=staff_rate).start()
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=seconds + 30)
            outs.append(json.loads(out) if out.strip() else {"sent": 0, "answered": 0, "rate": 0, "error": err[-300:]})
    finally:
        staff.stop()
    mem_after = bed.memory()
    sent = sum(o["sent"] for o in outs)
    offered = sum(o["rate"] for o in outs)
    return {"capacity_qps": round(capacity), "flooders": n, "flood_sent": sent, "flood_rate": offered,
            "flood_factor": round(offered / capacity, 2) if capacity else None,
            "flood_answered": sum(o["answered"] for o in outs), "seconds": seconds,
            "staff_asked": staff.sent, "staff_answered": staff.answered, "staff_failed": len(staff.failed),
            "staff_failures": staff.failed[:5], "rate_limit": bed.rate, "workers": bed.workers,
            "mem_before": mem_before, "mem_after": mem_after, "alive": bed.running()}


def soak_names(count: int = 20_000) -> list[str]:
    """The soak's query mix: a tenth blocked, the rest spread over ``count`` allowed names
    (more than the cache holds, so it churns as a school's day of browsing does)."""
    blocked = ["casino.test", "www.casino.test", "doh.resolver.test"]
    out = []
    for i in range(count):
        out.append(blocked[i % 3] if i % 10 == 0 else f"n{i}.soak.allowed.test")
    return out


def run_soak(bed: Bed, seconds: float, *, qps: int = 800, warmup: float = 30.0, sample_every: float = 10.0,
             progress: Callable[[str], None] | None = None, timeout: float = 2.0) -> dict:
    """Steady queries from both networks (dnsperf, ``qps`` each) for ``warmup`` + ``seconds``;
    RSS/PSS of the appliance sampled every ``sample_every`` s after the warm-up. A query not
    answered within ``timeout`` counts as lost."""
    names = soak_names()
    runs = {}
    threads = []
    total = warmup + seconds
    for who in ("client", "staff"):
        def go(who=who) -> None:
            # 2 s by default (benchmarks/soak.py): a stub resolver's patience is 5 s
            runs[who] = dnsperf(bed, who, names, total, qps=qps, clients=4, outstanding=400, timeout=timeout)
        t = threading.Thread(target=go, daemon=True)
        t.start()
        threads.append(t)
    time.sleep(warmup)
    samples = []
    t0 = time.monotonic()
    while True:
        m = bed.memory()
        m["t"] = round(time.monotonic() - t0, 1)
        samples.append(m)
        if progress:
            progress(f"soak t={m['t']:.0f}s rss={m['rss_kb'] / 1024:.1f} MiB pss={m['pss_kb'] / 1024:.1f} MiB "
                     f"processes={m['processes']}")
        if time.monotonic() - t0 >= seconds - 0.5:
            break
        time.sleep(min(sample_every, max(0.1, seconds - (time.monotonic() - t0))))
    for t in threads:
        t.join(total + 60)
    first, last = samples[0], samples[-1]
    peak = max(s["rss_kb"] for s in samples)
    return {"seconds": seconds, "warmup": warmup, "qps_per_network": qps, "samples": samples,
            "rss_first_kb": first["rss_kb"], "rss_last_kb": last["rss_kb"], "rss_peak_kb": peak,
            "rss_growth_pct": round(100 * (last["rss_kb"] - first["rss_kb"]) / first["rss_kb"], 2),
            "pss_growth_pct": round(100 * (last["pss_kb"] - first["pss_kb"]) / first["pss_kb"], 2),
            "processes": (first["processes"], last["processes"]),
            "dnsperf": runs, "alive": bed.running(),
            "lost": sum(int(r.get("lost", 0)) for r in runs.values()),
            "sent": sum(int(r.get("sent", 0)) for r in runs.values())}
