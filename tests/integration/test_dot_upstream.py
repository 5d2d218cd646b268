"""DNS over TLS upstreams (appliance/dns/dot.py) against a real DoT server: unbound serving a
local zone on 127.0.0.1 with a certificate made here (a throwaway CA and server key)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("dns", reason="needs dnspython (pip install -e '.[test]')")
import dns.message  # noqa: E402
import dns.query  # noqa: E402
import dns.rcode  # noqa: E402

from appliance.dns import dot  # noqa: E402
from appliance.dns.pipeline import Counters, Forward  # noqa: E402
from appliance.dns.upstream import UpstreamSet  # noqa: E402
from filters.dns_wire import parse_query  # noqa: E402
from filters.names import name_to_wire  # noqa: E402
from tests.bundles import make_bundle  # noqa: E402
from tests.dnsservers import Proc, free_port, need_tools, start_dnsmasq, start_schoolgate  # noqa: E402
from tests.wait import DEADLINE  # noqa: E402

pytestmark = pytest.mark.slow
SERVER_NAME = "dns.schoolgate.test"
UPSTREAM_TIMEOUT = 30.0  # s: the upstreams' answers are awaited, however loaded the machine


def make_certs(d: Path) -> tuple[Path, Path, Path]:
    """ca.pem, and key.pem/cert.pem for SERVER_NAME and 127.0.0.1 signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "schoolgate test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
          .not_valid_after(now + dt.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (d / "ca.pem").write_bytes(ca.public_bytes(pem))
    (d / "cert.pem").write_bytes(cert.public_bytes(pem))
    (d / "key.pem").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL,
                                                  serialization.NoEncryption()))
    return d / "ca.pem", d / "key.pem", d / "cert.pem"


def start_unbound_dot(d: Path, port: int) -> Proc:
    ca, key, cert = make_certs(d)
    conf = d / "unbound.conf"
    conf.write_text(f"""\
server:
  interface: 127.0.0.1@{port}
  tls-port: {port}
  tls-service-key: "{key}"
  tls-service-pem: "{cert}"
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{d}"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 1
  do-ip6: no
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  local-zone: "dot.test." static
  local-data: "www.dot.test. 300 IN A 192.0.2.53"
  local-data: "dot.test. 300 IN A 192.0.2.54"
remote-control:
  control-enable: no
""")
    chk = subprocess.run(["unbound-checkconf", str(conf)], capture_output=True, text=True, timeout=30)
    assert chk.returncode == 0, chk.stdout + chk.stderr
    p = Proc(["unbound", "-d", "-c", str(conf)], d / "unbound.out")
    import socket
    import time

    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:  # TCP accepting = ready (its TLS we test below)
        if p.p.poll() is not None:
            raise RuntimeError(p.text())
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return p
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("unbound did not start:\n" + p.text())


@pytest.fixture(scope="module")
def unbound(tmp_path_factory):
    need_tools("unbound", "unbound-checkconf")
    d = tmp_path_factory.mktemp("dot")
    port = free_port()
    p = start_unbound_dot(d, port)
    yield {"dir": d, "port": port, "ca": d / "ca.pem"}
    p.stop()


def forward(name: str) -> Forward:
    q = dns.message.make_query(name, "A", use_edns=False).to_wire()
    parsed = parse_query(q)
    key = name_to_wire(name) + b"\x00\x01\x00\x01\x00"
    return Forward(q, parsed, key, None, 512)  # type: ignore[arg-type]


def run(coro):
    return asyncio.run(coro)


def test_queries_share_one_verified_connection(unbound) -> None:
    async def go():
        ups = UpstreamSet((("127.0.0.1", unbound["port"], SERVER_NAME),), UPSTREAM_TIMEOUT, tls_ca=unbound["ca"])
        counters = Counters()
        ups.slot = counters.slot
        try:
            names = ["www.dot.test", "dot.test"] * 10
            answers = await asyncio.gather(*(ups.resolve(forward(n)) for n in names))  # pipelined
            answers += [await ups.resolve(forward("www.dot.test")) for _ in range(5)]  # one after another
            return answers, ups.upstreams[0].dot.connects, counters.slot
        finally:
            ups.close()

    answers, connects, slot = run(go())
    assert all(a is not None for a in answers)
    for a, n in zip(answers, ["www.dot.test", "dot.test"] * 10 + ["www.dot.test"] * 5):
        m = dns.message.from_wire(a)
        assert m.rcode() == dns.rcode.NOERROR and str(m.question[0].name) == n + "."
        assert m.answer[0][0].to_text() == ("192.0.2.53" if n.startswith("www") else "192.0.2.54")
    assert connects == 1  # RFC 7858 §3.4: one connection reused, queries pipelined
    assert int(slot.upstreams[0][0]) == 25 and int(slot.upstreams[0][1]) == 0


def test_a_reconnect_after_the_server_closed_the_connection(unbound) -> None:
    async def go():
        ups = UpstreamSet((("127.0.0.1", unbound["port"], SERVER_NAME),), UPSTREAM_TIMEOUT, tls_ca=unbound["ca"])
        try:
            first = await ups.resolve(forward("www.dot.test"))
            c = ups.upstreams[0].dot
            c._writer.transport.abort()  # as if the server had dropped it while idle
            deadline = asyncio.get_running_loop().time() + DEADLINE
            while c._writer is not None:  # until its reader has seen the connection go
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError("the aborted connection was never noticed")
                await asyncio.sleep(0.01)
            second = await ups.resolve(forward("www.dot.test"))
            return first, second, c.connects
        finally:
            ups.close()

    first, second, connects = run(go())
    assert first is not None and second is not None and connects == 2


def test_wrong_name_or_unknown_ca_is_refused_and_plain_takes_over(unbound, tmp_path) -> None:
    need_tools("dnsmasq")
    up = free_port()
    plain = start_dnsmasq(tmp_path, up)

    async def go(ca):
        ups = UpstreamSet((("127.0.0.1", unbound["port"], "other.example"), ("127.0.0.1", up)), UPSTREAM_TIMEOUT,
                          tls_ca=ca)
        try:
            ans = await ups.resolve(forward("allowed.test"))
            return ans, [u.errors for u in ups.upstreams]
        finally:
            ups.close()

    try:
        for ca in (unbound["ca"], None):  # a name the certificate lacks; a CA we do not trust
            ans, errors = run(go(ca))
            assert errors == [1, 0]  # the DoT upstream failed verification, the plain one answered
            assert dns.message.from_wire(ans).answer[0][0].to_text() == "192.0.2.10"
    finally:
        plain.stop()


def test_padding_makes_query_lengths_uniform() -> None:
    short = forward("a.test").upstream_query(1)
    for name in ("a.test", "a-much-longer-name-than-the-other.example.test"):
        padded = dot.pad_query(forward(name).upstream_query(7))
        assert len(padded) % dot.PAD_BLOCK == 0
        m = dns.message.from_wire(padded)
        assert m.opt is not None and any(o.otype == 12 for o in m.opt[0].options)
    assert dot.pad_query(short[:-11]) == short[:-11]  # no OPT at the end: unchanged


def test_schoolgate_run_forwards_over_tls(unbound, tmp_path) -> None:
    make_bundle(tmp_path / "bundle", 3)
    port = free_port()
    cfg = tmp_path / "schoolgate.yaml"
    cfg.write_text(f"""\
state_dir: {tmp_path}/state
bundle: {tmp_path}/bundle
dns:
  listen: ["127.0.0.1:{port}"]
  upstreams: ["tls://127.0.0.1:{unbound['port']}#{SERVER_NAME}"]
  tls_ca: {unbound['ca']}
  rate_limit: 0
""")
    chk = subprocess.run([sys.executable, "-m", "appliance.cli", "check-config", str(cfg)], capture_output=True,
                         text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert chk.returncode == 0, chk.stderr
    sg = start_schoolgate(cfg, tmp_path, port)
    try:
        for _ in range(3):
            r = dns.query.udp(dns.message.make_query("www.dot.test", "A"), "127.0.0.1", port=port, timeout=5)
            assert r.answer[0][0].to_text() == "192.0.2.53"
        r = dns.query.udp(dns.message.make_query("casino.test", "A"), "127.0.0.1", port=port, timeout=5)
        assert r.rcode() == dns.rcode.NXDOMAIN
    finally:
        assert sg.stop() == 0, sg.text()[-3000:]
