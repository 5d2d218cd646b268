"""The UDP fast path on real sockets (recvmmsg/sendmmsg from jitted code) against the plain loop.

Two DnsServers run in one event loop in a thread, alike except that one has the fast path:
same bundle, policies, a small upstream answering every allowed name. The same queries —
blocked, bypass, allowed (forwarded once, then cache hits), malformed, from IPv4 and IPv6
sources, one at a time and in bursts that fill whole recvmmsg batches — must get the same
answers from both (TTLs aside: each server counts down on its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time

import pytest

pytest.importorskip("dns", reason="needs dnspython (pip install -e '.[test]')")
import dns.message  # noqa: E402

from appliance.dns.cache import ArrayCache  # noqa: E402
from appliance.dns.fastpath import warm_up  # noqa: E402
from appliance.dns.pipeline import Pipeline  # noqa: E402
from appliance.dns.ratelimit import ArrayRateLimiter  # noqa: E402
from appliance.dns.server import DnsServer, open_sockets  # noqa: E402
from appliance.dns.upstream import UpstreamSet  # noqa: E402
from filters.dns_answer import BlockAnswers  # noqa: E402
from filters.policy import NetworkTable, PolicyRule, PolicySet  # noqa: E402
from signatures.bundle import open_bundle  # noqa: E402
from tests.bundles import make_bundle  # noqa: E402
from tests.dnsdata import malformed, query  # noqa: E402
from tests.dnsservers import free_port, have_ipv6_loopback  # noqa: E402
from tests.wait import DEADLINE  # noqa: E402

pytestmark = pytest.mark.slow


class Upstream(asyncio.DatagramProtocol):
    """Answers every query with one A record (TTL 300), NXDOMAIN for nx.*."""

    def connection_made(self, transport) -> None:
        self.t = transport

    def datagram_received(self, data: bytes, addr) -> None:
        q = dns.message.from_wire(data)
        r = dns.message.make_response(q)
        name = q.question[0].name.to_text()
        if name.startswith("nx."):
            r.set_rcode(3)
        else:
            r.answer.append(dns.rrset.from_text(q.question[0].name, 300, "IN", "A", "192.0.2.10"))
        self.t.sendto(r.to_wire(), addr)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fast")
    matcher = open_bundle(make_bundle(tmp / "bundle", 3)).domain_matcher().with_local(block=["local-block.test"])
    cat = matcher.catalog
    gam = matcher.policy_mask(cat.mask(["gambling"]))
    rules = {"default": PolicyRule("default", ("gambling",), gam, BlockAnswers("null")),
             "v6": PolicyRule("v6", ("gambling",), gam, BlockAnswers("nxdomain"))}
    policies = PolicySet(rules, NetworkTable([("::1/128", "v6")], "default"))
    hosts = ["127.0.0.1"] + (["::1"] if have_ipv6_loopback() else [])
    # Kernels loaded here, so the fast server uses them from its first query (a process
    # that has not loaded them compiles them in a forked child first: appliance/dns/startup.py).
    warm_up(matcher, policies)
    up_port = free_port()
    loop = asyncio.new_event_loop()
    ports: dict[str, int] = {}
    made: dict[str, DnsServer] = {}
    ready = threading.Event()

    async def main() -> None:
        await loop.create_datagram_endpoint(Upstream, local_addr=("127.0.0.1", up_port))
        for name, fast in (("fast", True), ("plain", False)):
            port = free_port()
            ports[name] = port
            pipe = Pipeline(matcher, policies, ArrayCache(1000, 600),
                            limiter=ArrayRateLimiter(1e6, 1e6) if fast else None)
            srv = DnsServer(pipe, UpstreamSet((("127.0.0.1", up_port),), 1.0), fast_path=fast)
            await srv.start(open_sockets(tuple((h, port) for h in hosts)))
            made[name] = srv
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(main()), loop.run_forever()), daemon=True)
    thread.start()
    assert ready.wait(DEADLINE)
    yield {"ports": ports, "servers": made, "hosts": hosts, "loop": loop}

    async def stop() -> None:
        for srv in made.values():
            await srv.stop()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@contextlib.contextmanager
def paused(loop: asyncio.AbstractEventLoop):
    """The servers' event loop held in a callback for the body: datagrams sent meanwhile wait
    in the sockets (a whole burst queued, whatever the machine's speed), and the servers'
    counters hold still."""
    held, go = threading.Event(), threading.Event()
    loop.call_soon_threadsafe(lambda: (held.set(), go.wait(DEADLINE)))
    assert held.wait(DEADLINE), "the servers' loop never ran the pause"
    try:
        yield
    finally:
        go.set()


def exchange(host: str, port: int, packets: list[bytes], timeout: float = DEADLINE,
             loop: asyncio.AbstractEventLoop | None = None) -> dict[int, bytes]:
    """Send every packet (IDs must differ), then read answers until all came or time is up.
    ``loop``: send while the servers' loop is paused (see :func:`paused`)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.settimeout(0.5)
        with paused(loop) if loop is not None else contextlib.nullcontext():
            for p in packets:
                s.sendto(p, (host, port))
        got: dict[int, bytes] = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(packets) and time.monotonic() < deadline:
            try:
                data = s.recv(4096)
            except TimeoutError:
                continue
            got[struct.unpack(">H", data[:2])[0]] = data
    return got


def answers_to(host: str, port: int, packet: bytes, sentinel: str) -> list[bytes]:
    """What the server sends back for ``packet`` (nothing, or answers), known without waiting
    for "long enough": ``packet`` is followed by a query for ``sentinel``, a name it has never
    seen, which it forwards. Whatever it answers to ``packet`` leaves before the upstream's
    answer to the sentinel is relayed (the fast path answers or hands over a whole batch
    before the pipeline forwards anything), so everything before that relay is the answer."""
    qid = (int.from_bytes(packet[:2].ljust(2, b"\0"), "big") + 1) & 0xFFFF
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    out = []
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.settimeout(DEADLINE)
        s.sendto(packet, (host, port))
        s.sendto(query(sentinel, qid=qid), (host, port))
        while True:
            data = s.recv(4096)
            if data[:2] == qid.to_bytes(2, "big") and sentinel.encode().split(b".")[0] in data:
                return out
            out.append(data)


def same(a: bytes, b: bytes) -> bool:
    """Equal answers, TTLs aside."""
    if a == b:
        return True
    ma, mb = dns.message.from_wire(a), dns.message.from_wire(b)
    return ma == mb and ma.id == mb.id


def queries(base: int) -> list[bytes]:
    names = ["casino.test", "www.casino.test", "x.local-block.test", "use-application-dns.net", "_dns.resolver.arpa",
             "a.allowed.example", "b.allowed.example", "nx.allowed.example", "fine.casino.test"]
    out = []
    for i, n in enumerate(names):
        for j, (t, e) in enumerate(((1, False), (28, True), (255, False), (15, True))):
            out.append(query(n, t, qid=base + 10 * i + j, edns=e, do=e and j % 2 == 1))
    return out


def test_same_answers_as_the_plain_loop(servers) -> None:
    for host in servers["hosts"]:
        for rnd in range(3):  # forwarded, then from the cache (twice)
            qs = queries(1000 * rnd + (500 if ":" in host else 0))
            fast = exchange(host, servers["ports"]["fast"], qs)
            plain = exchange(host, servers["ports"]["plain"], qs)
            assert set(fast) == set(plain) == {struct.unpack(">H", q[:2])[0] for q in qs}
            for k in fast:
                assert same(fast[k], plain[k]), (host, k)
    stats = servers["servers"]["fast"].fast.stats
    assert stats["datagrams"] >= 3 * len(queries(0))
    snap = servers["servers"]["fast"].pipeline.counters.snapshot(lambda m: [str(m)])
    assert snap["fast_path"] > 0 and snap["cache_hits"] > 0 and snap["forwarded"] > 0


def test_bursts_fill_batches(servers) -> None:
    """Hundreds of queries at once: every one answered, in batches of many datagrams."""
    fast, loop, port = servers["servers"]["fast"], servers["loop"], servers["ports"]["fast"]
    for host in servers["hosts"]:  # answered: everything sent before it has been counted
        assert exchange(host, port, [query("settle.casino.test", qid=9999)])
    with paused(loop):
        before = dict(fast.fast.stats)
    got = {}
    for burst in range(4):  # 150 at a time (the socket's default buffer holds 256 such queries)
        qs = [query("casino.test" if i % 2 else "a.allowed.example", qid=i)
              for i in range(150 * burst, 150 * burst + 150)]
        got.update(exchange("127.0.0.1", port, qs, loop=loop))  # the burst queued while the server waits
    assert len(got) == 600
    with paused(loop):
        after = dict(fast.fast.stats)
    batches, datagrams = after["batches"] - before["batches"], after["datagrams"] - before["datagrams"]
    assert datagrams == 600 and batches <= 60, (datagrams, batches)  # many datagrams per recvmmsg


def test_malformed_packets(servers) -> None:
    bad = list(malformed().values())
    for i, p in enumerate(bad):
        fast = answers_to("127.0.0.1", servers["ports"]["fast"], p, f"sentinel{i}.allowed.example")
        plain = answers_to("127.0.0.1", servers["ports"]["plain"], p, f"sentinel{i}.allowed.example")
        assert fast == plain, (p, fast, plain)
    assert exchange("127.0.0.1", servers["ports"]["fast"], [query("casino.test", qid=7)])[7]
