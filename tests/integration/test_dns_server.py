"""The DNS service end to end: `schoolgate run` as a subprocess, dnsmasq as its upstream,
dig and dnspython as clients — all on 127.0.0.0/8 (and [::1] when there is one)."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("dns", reason="needs dnspython (pip install -e '.[test]')")
import dns.flags  # noqa: E402
import dns.message  # noqa: E402
import dns.query  # noqa: E402
import dns.rcode  # noqa: E402
import dns.rdatatype  # noqa: E402

from tests.bundles import make_bundle  # noqa: E402
from tests.dnsdata import malformed, query  # noqa: E402
from tests.dnsservers import free_port, have_ipv6_loopback, need_tools, start_dnsmasq, start_schoolgate  # noqa: E402
from tests.wait import wait_for  # noqa: E402

pytestmark = pytest.mark.slow

CONFIG = """\
state_dir: {tmp}/state
bundle: {tmp}/bundle
dns:
  listen: [{listen}]
  upstreams: ["127.0.0.1:{upstream}"]
  block_mode: "null"
  blockpage: ["192.0.2.80", "2001:db8::80"]
  upstream_timeout: 500ms
  rate_limit: 0
networks:
  staff: {{cidrs: [127.0.0.3/32], policy: staff}}
  guest: {{cidrs: [127.0.0.4/32], policy: guest}}
  library: {{cidrs: [127.0.0.5/32], policy: library}}
policies:
  default: {{block: [gambling]}}
  staff: {{block: [], block_mode: nxdomain}}
  guest: {{block: [gambling], block_mode: refused}}
  library: {{block: [gambling], block_mode: blockpage}}
local:
  block: [local-block.test]
"""


def write_config(tmp: Path, port: int, upstream: int, extra_listen: str = "") -> Path:
    listen = f'"127.0.0.1:{port}"' + (f', "{extra_listen}"' if extra_listen else "")
    cfg = tmp / "schoolgate.yaml"
    cfg.write_text(CONFIG.format(tmp=tmp, listen=listen, upstream=upstream))
    return cfg


def ask(port: int, name: str, rdtype: str = "A", *, source: str | None = None, tcp: bool = False,
        host: str = "127.0.0.1", timeout: float = 3.0, **kw) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, **kw)
    if tcp:
        return dns.query.tcp(q, host, port=port, timeout=timeout, source=source)
    return dns.query.udp(q, host, port=port, timeout=timeout, source=source)


def addresses(r: dns.message.Message) -> list[str]:
    return [rd.to_text() for rrset in r.answer for rd in rrset]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    need_tools("dig", "dnsmasq")
    tmp = tmp_path_factory.mktemp("dns")
    make_bundle(tmp / "bundle", 3)
    up_port, port = free_port(), free_port()
    v6 = f"[::1]:{port}" if have_ipv6_loopback() else ""
    upstream = start_dnsmasq(tmp, up_port)
    cfg = write_config(tmp, port, up_port, v6)
    sg = start_schoolgate(cfg, tmp, port)
    yield {"tmp": tmp, "port": port, "up_port": up_port, "cfg": cfg, "sg": sg, "v6": bool(v6)}
    assert sg.stop() == 0, sg.text()[-2000:]  # SIGTERM is a clean exit
    upstream.stop()


def dig(port: int, *args: str) -> str:
    return subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "+tries=1", "+time=3", *args],
                          capture_output=True, text=True, timeout=20).stdout


def test_blocked_answers_per_mode_and_network(env) -> None:
    port = env["port"]
    assert dig(port, "+short", "www.casino.test").split() == ["0.0.0.0"]  # default: null
    assert addresses(ask(port, "www.casino.test", "AAAA")) == ["::"]
    mx = ask(port, "www.casino.test", "MX")
    assert mx.rcode() == dns.rcode.NOERROR and not mx.answer and mx.authority  # NODATA + SOA
    # Staff (127.0.0.3) are not blocked from gambling, but the local list blocks for all.
    assert addresses(ask(port, "www.casino.test", source="127.0.0.3")) == []  # forwarded: REFUSED upstream
    assert ask(port, "x.local-block.test", source="127.0.0.3").rcode() == dns.rcode.NXDOMAIN
    assert ask(port, "x.local-block.test", source="127.0.0.2").rcode() == dns.rcode.NOERROR
    assert ask(port, "casino.test", source="127.0.0.4").rcode() == dns.rcode.REFUSED
    assert addresses(ask(port, "casino.test", source="127.0.0.5")) == ["192.0.2.80"]
    assert addresses(ask(port, "casino.test", "AAAA", source="127.0.0.5")) == ["2001:db8::80"]


def test_bypass_names(env) -> None:
    assert ask(env["port"], "use-application-dns.net").rcode() == dns.rcode.NXDOMAIN
    assert ask(env["port"], "mask.icloud.com", "AAAA").rcode() == dns.rcode.NXDOMAIN
    r = ask(env["port"], "_dns.resolver.arpa", "SVCB")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer


def test_forwarded_then_cached(env) -> None:
    port = env["port"]
    log = env["tmp"] / f"dnsmasq-{env['up_port']}.log"
    r = ask(port, "www.allowed.test")
    assert addresses(r) == ["192.0.2.10"] and r.answer[0].ttl <= 300
    before = log.read_text().count("query[A] www.allowed.test")
    assert dig(port, "+short", "WWW.Allowed.TEST").split() == ["192.0.2.10"]  # case-insensitive hit
    assert log.read_text().count("query[A] www.allowed.test") == before == 1


def test_cname_to_blocked_target_is_blocked(env) -> None:
    port = env["port"]
    assert addresses(ask(port, "innocent.test")) == ["0.0.0.0"]
    staff = ask(port, "innocent.test", source="127.0.0.3")
    assert addresses(staff) == ["promo.casino.test.", "192.0.2.66"]


def test_tcp_pipelined_queries_on_one_connection(env) -> None:
    port = env["port"]
    q1, q2 = query("tcp.allowed.test", qid=101), query("www.casino.test", qid=202)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(struct.pack(">H", len(q1)) + q1 + struct.pack(">H", len(q2)) + q2)
        got = {}
        f = s.makefile("rb")
        for _ in range(2):
            n = struct.unpack(">H", f.read(2))[0]
            m = dns.message.from_wire(f.read(n))
            got[m.id] = addresses(m)
    assert got == {101: ["192.0.2.10"], 202: ["0.0.0.0"]}
    assert "192.0.2.10" in dig(port, "+tcp", "+short", "tcp2.allowed.test")


def test_edns(env) -> None:
    port = env["port"]
    r = ask(port, "www.casino.test", use_edns=0, want_dnssec=True, payload=1232)
    assert r.edns == 0 and r.ednsflags & dns.flags.DO and r.payload == 1232
    plain = ask(port, "www.casino.test", use_edns=False)
    assert plain.edns == -1  # RFC 6891 §7: no OPT in the answer to a query without one
    bad = ask(port, "www.casino.test", use_edns=1)
    assert bad.rcode() == dns.rcode.BADVERS
    assert "EDNS: version: 0" in dig(port, "+edns=0", "+bufsize=1232", "edns.allowed.test")


def test_malformed_packets_then_still_serving(env) -> None:
    port = env["port"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        for label, buf in malformed().items():
            s.sendto(buf, ("127.0.0.1", port))
            try:
                data = s.recv(4096)
            except TimeoutError:
                assert len(buf) < 12, f"{label}: no answer"
                continue
            assert len(buf) >= 12 and data[:2] == buf[:2] and data[3] & 0xF == 1, label  # FORMERR
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"\x00\x00")  # a zero-length message: the connection is closed
        assert s.recv(10) == b""
    assert addresses(ask(port, "casino.test")) == ["0.0.0.0"]
    assert env["sg"].p.poll() is None


@pytest.mark.skipif(not have_ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_listener(env) -> None:
    r = ask(env["port"], "casino.test", host="::1")
    assert addresses(r) == ["0.0.0.0"]


def test_sighup_with_broken_config_keeps_serving(env) -> None:
    port, cfg, sg = env["port"], env["cfg"], env["sg"]
    good = cfg.read_text()
    try:
        cfg.write_text(good.replace("default: {block: [gambling]}", "default: {block: [gambling, nosuch]}"))
        sg.signal(signal.SIGHUP)
        wait_for(lambda: "config refused" in sg.text(), what="the broken config to be refused")
        line = next(i for i, t in enumerate(good.splitlines(), 1) if "default: {block" in t)
        assert f"{cfg}:{line}:20: policy default: unknown category 'nosuch'" in sg.text()
        assert addresses(ask(port, "casino.test")) == ["0.0.0.0"]
        # A valid change is applied: a new local block entry.
        cfg.write_text(good.replace("block: [local-block.test]", "block: [local-block.test, newly.test]"))
        sg.signal(signal.SIGHUP)
        wait_for(lambda: "config reloaded" in sg.text(), what="the valid config to be reloaded")
        assert addresses(ask(port, "newly.test")) == ["0.0.0.0"]
    finally:
        cfg.write_text(good)


def test_upstream_down_cache_stale_then_servfail(tmp_path: Path) -> None:
    need_tools("dnsmasq")
    make_bundle(tmp_path / "bundle", 3)
    up_port, port = free_port(), free_port()
    upstream = start_dnsmasq(tmp_path, up_port, ttl=1)
    sg = start_schoolgate(write_config(tmp_path, port, up_port), tmp_path, port)
    try:
        assert addresses(ask(port, "stale.allowed.test")) == ["192.0.2.10"]
        upstream.stop()
        assert addresses(ask(port, "stale.allowed.test")) == ["192.0.2.10"]  # fresh from the cache
        # once its TTL (1 s) has passed, upstream down: the stale answer, TTL 30 (RFC 8767)
        r = wait_for(lambda: (r := ask(port, "stale.allowed.test")).answer and r.answer[0].ttl == 30 and r,
                     what="the stale answer (TTL 30)")
        assert addresses(r) == ["192.0.2.10"]
        r = ask(port, "never.allowed.test", timeout=30)
        assert r.rcode() == dns.rcode.SERVFAIL  # nothing cached, no upstream: SERVFAIL, not silence
        assert addresses(ask(port, "casino.test")) == ["0.0.0.0"]  # blocking never needs upstreams
    finally:
        assert sg.stop() == 0
        upstream.stop()


def test_silent_upstream_servfail_within_bound(tmp_path: Path) -> None:
    make_bundle(tmp_path / "bundle", 3)
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as blackhole:  # reads nothing, answers nothing
        blackhole.bind(("127.0.0.1", 0))
        sg = start_schoolgate(write_config(tmp_path, port, blackhole.getsockname()[1]), tmp_path, port)
        try:
            t0 = time.monotonic()
            r = ask(port, "slow.allowed.test", timeout=30)
            took = time.monotonic() - t0
            assert r.rcode() == dns.rcode.SERVFAIL and took > 0.4  # after its one 0.5 s try (one upstream)
        finally:
            assert sg.stop() == 0


def test_default_run_without_config(tmp_path: Path) -> None:
    """The README's first command: `schoolgate run` on the embedded defaults."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 5353))
    except OSError:
        pytest.skip("127.0.0.1:5353 is in use here")
    sg = start_schoolgate(None, tmp_path, 5353, env={"XDG_STATE_HOME": str(tmp_path / "xdg")})
    try:
        assert ask(5353, "www.0-casino.info").rcode() == dns.rcode.NXDOMAIN
        assert ask(5353, "dns.google", tcp=True).rcode() == dns.rcode.NXDOMAIN
        # the signed demo bundle, installed by the updater into its own state directory
        demo = tmp_path / "xdg" / "schoolgate" / "demo"
        assert (demo / "bundles" / "current" / "manifest.json").is_file()
        assert json.loads((demo / "update-state.json").read_text())["last_result"] == "updated"
        assert "DEMO" in sg.text()
    finally:
        assert sg.stop() == 0


def test_forked_workers_restart_and_stop(tmp_path: Path) -> None:
    """dns.workers: 2 — both workers answer (SO_REUSEPORT), a killed one is restarted,
    SIGTERM stops them all."""
    make_bundle(tmp_path / "bundle", 3)
    port = free_port()
    cfg = write_config(tmp_path, port, free_port())
    cfg.write_text(cfg.read_text().replace("  rate_limit: 0\n", "  rate_limit: 0\n  workers: 2\n"))
    sg = start_schoolgate(cfg, tmp_path, port)
    try:
        def workers() -> list[int]:
            out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(sg.pid)], capture_output=True, text=True)
            return [int(x) for x in out.stdout.split()]

        wait_for(lambda: len(workers()) >= 2, what="two workers")
        first = workers()
        assert len(first) == 2
        for _ in range(10):  # several source ports: the kernel spreads them over both workers
            assert addresses(ask(port, "casino.test")) == ["0.0.0.0"]
        os.kill(first[0], signal.SIGKILL)
        def replaced() -> list[int] | None:  # one snapshot: the killed one's zombie may be reaped between two
            now = workers()
            return now if len(now) == 2 and first[0] not in now else None

        wait_for(replaced, what="the killed worker replaced")
        for _ in range(10):
            assert addresses(ask(port, "casino.test", tcp=True)) == ["0.0.0.0"]
    finally:
        assert sg.stop() == 0
    assert "restarting" in sg.text()
