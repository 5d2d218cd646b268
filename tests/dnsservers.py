"""Real servers for integration tests: schoolgate and dnsmasq as subprocesses on 127.0.0.1.

Only loopback addresses are ever used. Every wait is bounded; every process started here is
stopped by its own pid when the test is done.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.wait import DEADLINE

ROOT = Path(__file__).resolve().parent.parent


def need_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (as root, tests/setup.sh installs them)")


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host`` right now."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(fam, socket.SOCK_DGRAM) as u:
            u.bind((host, 0))
            port = u.getsockname()[1]
            try:
                with socket.socket(fam, socket.SOCK_STREAM) as t:
                    t.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def have_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class Proc:
    def __init__(self, argv: list[str], log: Path, env: dict | None = None) -> None:
        self.log = log
        self._f = open(log, "wb")
        self.p = subprocess.Popen(argv, stdout=self._f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env=env, cwd=ROOT)

    @property
    def pid(self) -> int:
        return self.p.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def records(self, msg: str | None = None) -> list[dict]:
        """The JSON log records written so far (only those whose msg is ``msg``, if given);
        lines that are not JSON objects (a traceback) are skipped."""
        out = []
        for line in self.text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and (msg is None or rec.get("msg") == msg):
                out.append(rec)
        return out

    def signal(self, sig: int) -> None:
        self.p.send_signal(sig)

    def stop(self, timeout: float = DEADLINE) -> int | None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        self._f.close()
        return self.p.returncode


def start_dnsmasq(tmp: Path, port: int, ttl: int = 300) -> Proc:
    """dnsmasq answering a small test zone, no upstream of its own, loopback only."""
    need_tools("dnsmasq")
    argv = ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll",
            "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={port}", "--pid-file=",
            "--address=/allowed.test/192.0.2.10", "--address=/nx.test/",
            "--host-record=promo.casino.test,192.0.2.66", "--cname=innocent.test,promo.casino.test",
            f"--local-ttl={ttl}", "--log-queries", f"--log-facility={tmp / f'dnsmasq-{port}.log'}"]
    if os.geteuid() == 0:
        argv.append("--user=root")  # else it drops to a user that cannot write our log
    p = Proc(argv, tmp / f"dnsmasq-{port}.out")
    wait_answer(port, "allowed.test", timeout=DEADLINE, proc=p)
    return p


def start_schoolgate(config: Path, tmp: Path, port: int, name: str = "schoolgate",
                     env: dict | None = None) -> Proc:
    e = dict(os.environ, **(env or {}))
    e.setdefault("XDG_STATE_HOME", str(tmp / "xdg"))
    argv = [sys.executable, "-m", "appliance.cli", "run"] + (["--config", str(config)] if config else [])
    p = Proc(argv, tmp / f"{name}.log", e)
    wait_answer(port, "readiness.probe.test", timeout=DEADLINE, proc=p)
    return p


def wait_answer(port: int, name: str, timeout: float, proc: Proc | None = None) -> None:
    """Poll until something answers a query for ``name`` on 127.0.0.1:port."""
    import dns.message
    import dns.query

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.p.poll() is not None:
            raise RuntimeError(f"server exited with {proc.p.returncode}:\n{proc.text()[-3000:]}")
        try:
            dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=1.5)
            return
        except Exception:
            time.sleep(0.05)
    raise RuntimeError(f"nothing answered on 127.0.0.1:{port} within {timeout} s"
                       + (f":\n{proc.text()[-3000:]}" if proc else ""))


# -- DNSSEC peers: a signed zone served by NSD, unbound as a validating resolver ---------------

def sign_zone(d: Path, zone: str, records: str, tamper: tuple[str, str] | None = None) -> str:
    """Write ``zone``'s records (zone-file lines after the SOA and NS, which are added) to
    ``d``, sign it with one ECDSA P-256 key (dnssec-keygen, dnssec-signzone; NSEC), and return
    the trust anchor: the key's DNSKEY record as text. ``tamper``: (old, new) replaced in the
    signed file afterwards, so the records it touches no longer match their signatures."""
    need_tools("dnssec-keygen", "dnssec-signzone")
    src = d / f"{zone}.zone"
    src.write_text(f"$TTL 300\n{zone}. IN SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 300\n"
                   f"{zone}. IN NS ns.{zone}.\nns.{zone}. IN A 127.0.0.1\n{records}")
    made = subprocess.run(["dnssec-keygen", "-q", "-K", str(d), "-a", "ECDSAP256SHA256", "-f", "KSK", zone],
                          capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    anchor = next(line for line in (d / f"{made}.key").read_text().splitlines() if not line.startswith(";"))
    with open(src, "a") as f:
        f.write(anchor + "\n")
    subprocess.run(["dnssec-signzone", "-q", "-K", str(d), "-d", str(d), "-z", "-N", "keep", "-o", zone, "-f",
                    str(d / f"{zone}.signed"), str(src)], capture_output=True, text=True, timeout=60, check=True)
    if tamper is not None:
        signed = d / f"{zone}.signed"
        text = signed.read_text()
        assert tamper[0] in text, f"{tamper[0]!r} is not in the signed {zone}"
        signed.write_text(text.replace(tamper[0], tamper[1]))
    return anchor


def wait_port(port: int, proc: Proc, what: str) -> None:
    """Poll until ``port`` on 127.0.0.1 accepts TCP (the server is listening)."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if proc.p.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.p.returncode}:\n{proc.text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port}:\n{proc.text()[-3000:]}")


def start_nsd(d: Path, port: int, zones: list[str]) -> Proc:
    """NSD serving ``zones`` (``<zone>.signed`` files in ``d``, from sign_zone) on 127.0.0.1:port."""
    need_tools("nsd", "nsd-checkconf")
    conf = d / "nsd.conf"
    conf.write_text(f"""\
server:
  ip-address: 127.0.0.1@{port}
  port: {port}
  do-ip6: no
  username: ""
  chroot: ""
  zonesdir: "{d}"
  pidfile: ""
  xfrdfile: "{d}/xfrd.state"
  zonelistfile: "{d}/zone.list"
  database: ""
  logfile: "{d}/nsd.log"
  server-count: 1
  verbosity: 1
remote-control:
  control-enable: no
""" + "".join(f"zone:\n  name: {z}\n  zonefile: {z}.signed\n" for z in zones))
    chk = subprocess.run(["nsd-checkconf", str(conf)], capture_output=True, text=True, timeout=30)
    assert chk.returncode == 0, chk.stdout + chk.stderr
    p = Proc(["nsd", "-d", "-c", str(conf)], d / "nsd.out")
    wait_port(port, p, "nsd")
    return p


def start_unbound(d: Path, port: int, name: str, server: str, zones: str = "") -> Proc:
    """unbound on 127.0.0.1:port (loopback only, no root hints used: ``zones`` must send every
    name to a local server), with ``server`` lines added to its server: clause. ``test.`` is
    resolved like any other name (not unbound's default local zone, RFC 6761)."""
    need_tools("unbound", "unbound-checkconf")
    conf = d / f"{name}.conf"
    conf.write_text(f"""\
server:
  interface: 127.0.0.1@{port}
  port: {port}
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{d}"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 1
  do-ip6: no
  do-not-query-localhost: no
  access-control: 127.0.0.0/8 allow
  qname-minimisation: no
  trust-anchor-signaling: no
  root-key-sentinel: no
  local-zone: "test." nodefault
{server}remote-control:
  control-enable: no
{zones}""")
    chk = subprocess.run(["unbound-checkconf", str(conf)], capture_output=True, text=True, timeout=30)
    assert chk.returncode == 0, chk.stdout + chk.stderr
    p = Proc(["unbound", "-d", "-c", str(conf)], d / f"{name}.out")
    wait_port(port, p, name)
    return p
