"""The forwarder with validating clients: a DNSSEC-signed zone served by NSD, validating
clients (delv, and unbound using schoolgate as its forwarder) in front of `schoolgate run`.

Two chains, every server on 127.0.0.1, each on a free port:

- ``chain``: client → schoolgate → unbound (a validating resolver) → NSD. ``good.test`` is
  signed; ``bogus.test`` is signed and then edited, so its answers fail validation: the
  resolver answers them only to CD=1 queries (RFC 4035 §3.2.2), SERVFAIL otherwise.
- ``junk``: client → schoolgate → a small dnspython upstream that relays to NSD and adds
  records that have nothing to do with the question (in every section), answers a few
  names with FORMERR / NOTIMP / REFUSED, the way servers reject what they do not take, and
  never answers names under blackhole.junk.test.

What they show: ANY with DO=1 is answered with the zone's signed records (not the RFC 8482
HINFO, which no validator accepts); an answer fetched with CD=1 never reaches a CD=0
client; zone transfers, NOTIFY and UPDATE are answered here and never reach an upstream,
and an upstream's FORMERR/NOTIMP/REFUSED is passed on without marking it down; unrelated
records are scrubbed while every record a validator needs (RRSIGs, NSEC for denial and
wildcards) is kept.
"""

from __future__ import annotations

import asyncio
import struct
import subprocess
import threading
from pathlib import Path

import pytest

pytest.importorskip("dns", reason="needs dnspython (pip install -e '.[test]')")
import dns.flags  # noqa: E402
import dns.message  # noqa: E402
import dns.name  # noqa: E402
import dns.opcode  # noqa: E402
import dns.query  # noqa: E402
import dns.rcode  # noqa: E402
import dns.rdataclass  # noqa: E402
import dns.rdatatype  # noqa: E402
import dns.rrset  # noqa: E402
import dns.update  # noqa: E402

from tests.bundles import make_bundle  # noqa: E402
from tests.dnsservers import (  # noqa: E402
    free_port,
    need_tools,
    sign_zone,
    start_nsd,
    start_schoolgate,
    start_unbound,
)
from tests.wait import DEADLINE  # noqa: E402

pytestmark = pytest.mark.slow

GOOD = """\
www.good.test. IN A 192.0.2.1
www.good.test. IN AAAA 2001:db8::1
www.good.test. IN TXT "hello"
alias.good.test. IN CNAME www.good.test.
any.good.test. IN A 192.0.2.2
any.good.test. IN TXT "any"
*.wild.good.test. IN A 192.0.2.7
"""
BOGUS = "www.bogus.test. IN A 192.0.2.66\n"
ZONES = ("good.test", "bogus.test")

CONFIG = """\
state_dir: {tmp}/state
bundle: {tmp}/bundle
web: {{enabled: false}}
dns:
  listen: ["127.0.0.1:{port}"]
  upstreams: ["127.0.0.1:{upstream}"]
  upstream_timeout: 5s
  rate_limit: 0
policies:
  default: {{block: [gambling]}}
"""


def schoolgate(tmp: Path, upstream: int, name: str):
    port = free_port()
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(CONFIG.format(tmp=tmp / name, port=port, upstream=upstream))
    make_bundle(tmp / name / "bundle", 3)
    return port, start_schoolgate(cfg, tmp, port, name)


def trust_anchors(anchors: list[str]) -> tuple[str, str]:
    """(unbound ``trust-anchor:`` lines, a delv ``trust-anchors`` clause) for DNSKEY records."""
    ub = "".join(f'  trust-anchor: "{a}"\n' for a in anchors)
    delv = ""
    for a in anchors:
        f = a.split()
        i = f.index("DNSKEY")
        delv += f'trust-anchors {{ {f[0]} static-key {f[i + 1]} {f[i + 2]} {f[i + 3]} "{"".join(f[i + 4:])}"; }};\n'
    return ub, delv


@pytest.fixture(scope="module")
def zones(tmp_path_factory):
    need_tools("nsd", "dnssec-signzone", "unbound", "delv")
    d = tmp_path_factory.mktemp("zones")
    anchors = [sign_zone(d, "good.test", GOOD), sign_zone(d, "bogus.test", BOGUS, ("192.0.2.66", "192.0.2.99"))]
    port = free_port()
    nsd = start_nsd(d, port, list(ZONES))
    ub, delv = trust_anchors(anchors)
    (d / "anchors.conf").write_text(delv)
    yield {"dir": d, "nsd": port, "unbound_anchors": ub, "delv_anchors": d / "anchors.conf"}
    nsd.stop()


@pytest.fixture(scope="module")
def chain(zones, tmp_path_factory):
    """client → schoolgate → validating unbound → NSD; and a validating unbound whose
    forwarder is schoolgate."""
    tmp = tmp_path_factory.mktemp("chain")
    res_port = free_port()
    # The test zones go to NSD; every other name is refused: nothing leaves the loopback.
    resolver = start_unbound(tmp, res_port, "resolver", '  module-config: "validator iterator"\n'
                             + zones["unbound_anchors"] + '  local-zone: "." refuse\n'
                             + "".join(f'  local-zone: "{z}." transparent\n' for z in ZONES),
                             "".join(f'stub-zone:\n  name: "{z}."\n  stub-addr: 127.0.0.1@{zones["nsd"]}\n'
                                     for z in ZONES))
    port, sg = schoolgate(tmp, res_port, "schoolgate")
    cl_port = free_port()
    client = start_unbound(tmp, cl_port, "client", '  module-config: "validator iterator"\n'
                           + zones["unbound_anchors"],
                           f'forward-zone:\n  name: "."\n  forward-addr: 127.0.0.1@{port}\n')
    yield {"port": port, "client": cl_port, "sg": sg, "anchors": zones["delv_anchors"]}
    client.stop()
    assert sg.stop() == 0, sg.text()[-3000:]
    resolver.stop()


def ask(port: int, name: str, rdtype: str = "A", *, do: bool = True, cd: bool = False, tcp: bool = False,
        timeout: float = 30.0) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, want_dnssec=do)
    if cd:
        q.flags |= dns.flags.CD
    if tcp:
        return dns.query.tcp(q, "127.0.0.1", port=port, timeout=timeout)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=timeout)


def delv(port: int, anchors: Path, name: str, rdtype: str, zone: str = "good.test") -> str:
    out = subprocess.run(["delv", "@127.0.0.1", "-p", str(port), "-a", str(anchors), f"+root={zone}",
                          name, rdtype], capture_output=True, text=True, timeout=DEADLINE)
    return out.stdout + out.stderr


def validated(text: str) -> bool:
    return "fully validated" in text and not any(
        bad in text for bad in ("insecurity proof failed", "broken trust chain", "no valid signature", "bogus"))


# -- 1. ANY with DO=1: the zone's signed records, which validators accept ----------------------

def test_delv_validates_answers_through_schoolgate(chain) -> None:
    for name, rdtype in (("www.good.test", "A"), ("www.good.test", "AAAA"), ("www.good.test", "ANY"),
                         ("alias.good.test", "A"), ("x.wild.good.test", "A"), ("nx.good.test", "A"),
                         ("www.good.test", "MX")):
        out = delv(chain["port"], chain["anchors"], name, rdtype)
        assert validated(out), f"{name} {rdtype}:\n{out}"
    any_ = delv(chain["port"], chain["anchors"], "www.good.test", "ANY")
    assert "HINFO" not in any_ and "RRSIG" in any_, any_


def test_any_with_do_is_forwarded_without_do_minimal(chain) -> None:
    r = ask(chain["port"], "www.good.test", "ANY")
    types = {rrset.rdtype for rrset in r.answer}
    assert r.rcode() == dns.rcode.NOERROR and dns.rdatatype.RRSIG in types and dns.rdatatype.HINFO not in types
    # DO=0: the RFC 8482 answer (one synthesised HINFO) is still given; no validator asks that way.
    plain = ask(chain["port"], "www.good.test", "ANY", do=False)
    assert [rrset.rdtype for rrset in plain.answer] == [dns.rdatatype.HINFO]


def test_validating_unbound_behind_schoolgate(chain) -> None:
    # ANY first, for a name unbound has nothing cached for (else it answers ANY from its cache).
    for name, rdtype, rcode in (("any.good.test", "ANY", dns.rcode.NOERROR), ("www.good.test", "A", dns.rcode.NOERROR),
                                ("alias.good.test", "A", dns.rcode.NOERROR),
                                ("x.wild.good.test", "A", dns.rcode.NOERROR),
                                ("nx.good.test", "A", dns.rcode.NXDOMAIN), ("www.good.test", "MX", dns.rcode.NOERROR)):
        r = ask(chain["client"], name, rdtype)
        assert r.rcode() == rcode and r.flags & dns.flags.AD, f"{name} {rdtype}: {r}"
    assert ask(chain["client"], "www.bogus.test", "A").rcode() == dns.rcode.SERVFAIL  # and bogus stays bogus


# -- 2. CD=1 answers never reach CD=0 clients ------------------------------------------------

@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_cd_answer_is_not_served_to_cd0_clients(chain, tcp: bool) -> None:
    name = "www.bogus.test"
    port = chain["port"]
    # The resolver does not validate for a CD=1 query: the edited record comes back ...
    r = ask(port, name, cd=True, tcp=tcp)
    assert r.rcode() == dns.rcode.NOERROR and [rd.to_text() for rs in r.answer for rd in rs if rs.rdtype == 1] == [
        "192.0.2.99"]
    assert ask(port, name, cd=True, tcp=tcp).rcode() == dns.rcode.NOERROR  # (and is cached for CD=1)
    # ... but a client that leaves checking to its resolver must get the resolver's verdict.
    for do in (True, False):
        r = ask(port, name, do=do, tcp=tcp)
        assert r.rcode() == dns.rcode.SERVFAIL and not r.answer, r


# -- 3. zone transfers, NOTIFY, UPDATE: answered here; upstreams never see them ------------------

def test_transfers_notify_update_answered_locally(chain) -> None:
    port, sg = chain["port"], chain["sg"]
    for _ in range(4):  # twice is enough to mark an upstream down, were it counted
        ixfr = dns.message.make_query("good.test", "IXFR")
        ixfr.authority.append(dns.rrset.from_text("good.test.", 0, "IN", "SOA", ". . 0 0 0 0 0"))
        assert dns.query.udp(ixfr, "127.0.0.1", port=port, timeout=30).rcode() == dns.rcode.REFUSED
        assert dns.query.tcp(ixfr, "127.0.0.1", port=port, timeout=30).rcode() == dns.rcode.REFUSED
        axfr = dns.message.make_query("good.test", "AXFR")
        assert dns.query.tcp(axfr, "127.0.0.1", port=port, timeout=30).rcode() == dns.rcode.REFUSED
        assert dns.query.udp(axfr, "127.0.0.1", port=port, timeout=30).rcode() == dns.rcode.REFUSED
        notify = dns.message.make_query("good.test", "SOA")
        notify.set_opcode(dns.opcode.NOTIFY)
        notify.flags &= ~dns.flags.RD
        assert dns.query.udp(notify, "127.0.0.1", port=port, timeout=30).rcode() == dns.rcode.NOTIMP
        update = dns.update.UpdateMessage("good.test")
        update.add("new.good.test", 300, "A", "192.0.2.9")
        assert dns.query.udp(update, "127.0.0.1", port=port, timeout=30).rcode() == dns.rcode.NOTIMP
        assert dns.query.tcp(update, "127.0.0.1", port=port, timeout=30).rcode() == dns.rcode.NOTIMP
    assert ask(port, "www.good.test").rcode() == dns.rcode.NOERROR
    assert "is not answering" not in sg.text()


# -- the junk upstream: relays to NSD, adds unrelated records; rejects some names --------------

JUNK_ANSWER = "bank.example. 300 IN A 198.51.100.66"
JUNK_AUTHORITY = ("example. 300 IN NS ns.evil.example.",
                  "example. 300 IN SOA ns.evil.example. h.evil.example. 1 2 3 4 300")
JUNK_ADDITIONAL = ("ns.evil.example. 300 IN A 198.51.100.53", "www.good.test.evil.example. 300 IN A 198.51.100.1")
REJECTS = {"formerr.junk.test.": dns.rcode.FORMERR, "notimp.junk.test.": dns.rcode.NOTIMP,
           "refused.junk.test.": dns.rcode.REFUSED}


class JunkUpstream:
    """A dnspython server on 127.0.0.1 (UDP and TCP, in a thread): names under good.test are
    relayed to NSD and come back with JUNK_* records added; the REJECTS names get their rcode
    with no question section (as servers answer a message they will not parse); names under
    blackhole.junk.test get no answer at all; the qtypes and opcodes it was asked are
    recorded in ``seen``."""

    def __init__(self, nsd_port: int) -> None:
        self.nsd = nsd_port
        self.port = free_port()
        self.seen: list[tuple[int, int]] = []  # (opcode, qtype)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(DEADLINE)

    def answer(self, wire: bytes) -> bytes | None:
        try:
            q = dns.message.from_wire(wire)
        except Exception:
            return None
        qtype = q.question[0].rdtype if q.question else -1
        self.seen.append((q.opcode(), qtype))
        name = q.question[0].name.to_text().lower() if q.question else ""
        if name in REJECTS:
            return struct.pack(">HHHHHH", q.id, 0x8000 | (q.flags & 0x0100) | REJECTS[name], 0, 0, 0, 0)
        if name.endswith(".blackhole.junk.test."):
            return None  # never answered (a name whose servers do not answer)
        if not name.endswith("good.test."):
            r = dns.message.make_response(q)
            r.set_rcode(dns.rcode.REFUSED)
            return r.to_wire()
        relayed = dns.query.tcp(q, "127.0.0.1", port=self.nsd, timeout=30)
        for section, texts in ((relayed.answer, (JUNK_ANSWER,)), (relayed.authority, JUNK_AUTHORITY),
                               (relayed.additional, JUNK_ADDITIONAL)):
            for text in texts:
                f = text.split(" ", 4)
                section.append(dns.rrset.from_text(f[0], int(f[1]), f[2], f[3], f[4]))
        return relayed.to_wire(max_size=65535)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport) -> None:
                self.t = transport

            def datagram_received(self, data: bytes, addr) -> None:
                fut = server.loop.run_in_executor(None, server.answer, data)
                fut.add_done_callback(lambda f: f.result() and self.t.sendto(f.result(), addr))

        async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    n = int.from_bytes(await reader.readexactly(2), "big")
                    out = await server.loop.run_in_executor(None, server.answer, await reader.readexactly(n))
                    if out:
                        writer.write(len(out).to_bytes(2, "big") + out)
                        await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        async def main() -> None:
            await self.loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", self.port))
            self._tcp = await asyncio.start_server(tcp, "127.0.0.1", self.port)
            self._ready.set()

        self.loop.run_until_complete(main())
        self.loop.run_forever()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def junk(zones, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("junk")
    up = JunkUpstream(zones["nsd"])
    port, sg = schoolgate(tmp, up.port, "schoolgate-junk")
    yield {"port": port, "sg": sg, "up": up, "anchors": zones["delv_anchors"]}
    assert sg.stop() == 0, sg.text()[-3000:]
    up.stop()


def names(section) -> set[str]:
    return {rrset.name.to_text().lower() for rrset in section}


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_unrelated_records_are_scrubbed(junk, tcp: bool) -> None:
    port = junk["port"]
    for _ in range(2):  # forwarded, then from the cache
        r = ask(port, "www.good.test", tcp=tcp)
        assert r.rcode() == dns.rcode.NOERROR
        assert {(rs.name.to_text(), rs.rdtype) for rs in r.answer} == {
            ("www.good.test.", dns.rdatatype.A), ("www.good.test.", dns.rdatatype.RRSIG)}
        assert names(r.authority) <= {"good.test."}  # the zone's own NS (in bailiwick) at most
        assert not r.additional or all(rs.rdtype == dns.rdatatype.OPT for rs in r.additional)
        chain_ = ask(port, "alias.good.test", tcp=tcp)
        assert names(chain_.answer) == {"alias.good.test.", "www.good.test."}
        nx = ask(port, "nx.good.test", tcp=tcp)
        assert nx.rcode() == dns.rcode.NXDOMAIN and "example." not in names(nx.authority)
        assert {rs.rdtype for rs in nx.authority} == {dns.rdatatype.SOA, dns.rdatatype.NSEC, dns.rdatatype.RRSIG}
        wild = ask(port, "x.wild.good.test", tcp=tcp)  # a wildcard answer keeps its NSEC proof
        assert dns.rdatatype.NSEC in {rs.rdtype for rs in wild.authority} and "example." not in names(wild.authority)


def test_delv_validates_scrubbed_answers(junk) -> None:
    for name, rdtype in (("www.good.test", "A"), ("www.good.test", "ANY"), ("alias.good.test", "A"),
                         ("x.wild.good.test", "A"), ("nx.good.test", "A"), ("www.good.test", "MX"),
                         ("good.test", "DNSKEY")):
        out = delv(junk["port"], junk["anchors"], name, rdtype)
        assert validated(out), f"{name} {rdtype}:\n{out}"
        assert "example." not in out, out


def test_upstream_rejections_are_passed_on_not_failures(junk) -> None:
    port, sg, up = junk["port"], junk["sg"], junk["up"]
    for _ in range(4):
        for name, rcode in REJECTS.items():  # passed on; an upstream's REFUSED is our SERVFAIL
            told = dns.rcode.SERVFAIL if rcode == dns.rcode.REFUSED else rcode
            assert ask(port, name, do=False).rcode() == told
            assert ask(port, name, tcp=True).rcode() == told
        ixfr = dns.message.make_query("good.test", "IXFR")
        ixfr.authority.append(dns.rrset.from_text("good.test.", 0, "IN", "SOA", ". . 0 0 0 0 0"))
        assert dns.query.udp(ixfr, "127.0.0.1", port=port, timeout=30).rcode() == dns.rcode.REFUSED
    assert ask(port, "www.good.test", "TXT").rcode() == dns.rcode.NOERROR
    assert "is not answering" not in sg.text()
    assert not [s for s in up.seen if s[1] in (dns.rdatatype.IXFR, dns.rdatatype.AXFR) or s[0] != 0]


def test_a_question_that_times_out_does_not_mark_a_busy_upstream_down(junk) -> None:
    """A client can pick names whose servers never answer; while the upstream answers other
    queries, its silence on those is the names' fault, not the upstream's."""
    port, sg = junk["port"], junk["sg"]
    got: list[int] = []
    slow = [threading.Thread(target=lambda i=i: got.append(ask(port, f"n{i}.blackhole.junk.test", do=False).rcode()))
            for i in range(3)]
    for t in slow:
        t.start()
    others = 0
    while any(t.is_alive() for t in slow):  # other clients' queries, forwarded meanwhile
        assert ask(port, f"q{others}.good.test", do=False).rcode() == dns.rcode.NXDOMAIN
        others += 1
    for t in slow:
        t.join()
    assert got == [dns.rcode.SERVFAIL] * 3 and others > 0
    assert "is not answering" not in sg.text()
    assert ask(port, "www.good.test", "AAAA").rcode() == dns.rcode.NOERROR
