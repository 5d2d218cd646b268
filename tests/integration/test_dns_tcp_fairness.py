"""DNS over TCP under a connection hog: one client address holding many idle connections
must not starve the others (`schoolgate run` as a subprocess, every client on 127.0.0.0/8).

The hog opens more idle connections than the global cap (dns.tcp_max_connections) and opens
them again when the server closes them (every ten queries); meanwhile other clients, each from an address
of its own, ask over TCP. Every one of their queries must be answered: a client gets at
most dns.tcp_per_client connections, and at the global cap the idlest connection is closed
to make room rather than the new one refused.
"""

from __future__ import annotations

import select
import socket
import time
from pathlib import Path

import pytest

pytest.importorskip("dns", reason="needs dnspython (pip install -e '.[test]')")
import dns.message  # noqa: E402
import dns.query  # noqa: E402
import dns.rcode  # noqa: E402

from appliance.dns.server import tcp_client_key  # noqa: E402
from tests.bundles import make_bundle  # noqa: E402
from tests.dnsservers import free_port, start_schoolgate  # noqa: E402

pytestmark = pytest.mark.slow

CONFIG = """\
state_dir: {tmp}/state
bundle: {tmp}/bundle
web: {{enabled: false}}
dns:
  listen: ["127.0.0.1:{port}"]
  upstreams: []
  rate_limit: 0
  tcp_idle_timeout: 10m
  tcp_max_connections: {cap}
{extra}policies:
  default: {{block: [gambling]}}
"""
HOG = "127.0.0.9"


class Hog:
    """Idle TCP connections from one address, reopened as soon as the server closes one."""

    def __init__(self, port: int, count: int) -> None:
        self.port, self.count = port, count
        self.socks: list[socket.socket] = []
        self.opened = 0

    def top_up(self) -> None:
        if self.socks:  # drop the ones the server closed (readable: EOF or a reset)
            readable, _, _ = select.select(self.socks, [], [], 0)
            for s in readable:
                try:
                    gone = s.recv(1) == b""
                except OSError:
                    gone = True
                if gone:
                    self.socks.remove(s)
                    s.close()
        while len(self.socks) < self.count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOG, 0))
            s.connect(("127.0.0.1", self.port))
            self.socks.append(s)
            self.opened += 1

    def close(self) -> None:
        for s in self.socks:
            s.close()


@pytest.mark.parametrize("cap, extra", [(256, ""), (24, "  tcp_per_client: 20\n")],
                         ids=["defaults", "per-client-near-the-cap"])
def test_one_client_holding_idle_connections_does_not_starve_others(tmp_path: Path, cap: int, extra: str) -> None:
    make_bundle(tmp_path / "bundle", 3)
    port = free_port()
    cfg = tmp_path / "schoolgate.yaml"
    cfg.write_text(CONFIG.format(tmp=tmp_path, port=port, cap=cap, extra=extra))
    sg = start_schoolgate(cfg, tmp_path, port)
    hog = Hog(port, 300)
    try:
        hog.top_up()
        answered = 0
        for i in range(40):
            if i % 10 == 0:
                hog.top_up()  # (each time the server's backlog overflows: a second or two)
            q = dns.message.make_query("www.casino.test", "A")  # blocked: answered here, no upstream
            r = dns.query.tcp(q, "127.0.0.1", port=port, timeout=30, source=f"127.0.0.{2 + i % 4}")
            assert r.rcode() == dns.rcode.NXDOMAIN  # the block answer
            answered += 1
        assert answered == 40
        # The hog kept reconnecting: its connections were closed (its own idlest), the
        # others' were not.
        assert hog.opened > 300
        # Several queries on one connection from a client that is not the hog still work.
        with socket.create_connection(("127.0.0.1", port), timeout=30, source_address=("127.0.0.7", 0)) as s:
            for qid in range(3):
                q = dns.message.make_query("www.casino.test", "A", id=qid)
                dns.query.send_tcp(s, q)
                r, _ = dns.query.receive_tcp(s, expiration=time.time() + 30)
                assert r.id == qid and r.rcode() == dns.rcode.NXDOMAIN
    finally:
        hog.close()
        assert sg.stop() == 0, sg.text()[-3000:]


def test_client_key_groups_ipv6_by_64_and_maps_ipv4() -> None:
    assert tcp_client_key("2001:db8:1:2::1") == tcp_client_key("2001:db8:1:2:ffff:ffff:ffff:ffff")
    assert tcp_client_key("2001:db8:1:2::1") != tcp_client_key("2001:db8:1:3::1")
    assert tcp_client_key("::ffff:192.0.2.1") == tcp_client_key("192.0.2.1") != tcp_client_key("192.0.2.2")
    assert tcp_client_key("fe80::1%eth0") == tcp_client_key("fe80::2")
    assert tcp_client_key("not an address") == "not an address"
