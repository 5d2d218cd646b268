"""schoolgate inspect on a capture made here: tcpdump on lo while curl and dig talk to
local servers, so the expected names are known exactly. Everything stays on one random
address in 127.0.0.0/8 (the capture filter names it, so other tests' traffic stays out)."""

from __future__ import annotations

import io
import json
import random
import shutil
import signal
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from appliance.cli import main
from tests.bundles import make_bundle
from tests.tlscerts import self_signed
from tests.wait import DEADLINE, wait_for

pytestmark = pytest.mark.slow

TLS_NAMES = ("alpha.schoolgate.test", "www.casino.test")  # casino.test is blocked in test bundles
HTTP_NAME = "plain.schoolgate.test"
DNS_NAME = "asked.schoolgate.test"


def serve(sock: socket.socket, ctx: ssl.SSLContext | None, stop: threading.Event) -> None:
    """Answer every request on ``sock`` with a tiny 200 until ``stop``."""
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = sock.accept()
        except OSError:
            continue
        try:
            conn.settimeout(5)
            if ctx is not None:
                conn = ctx.wrap_socket(conn, server_side=True)
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        except OSError:
            pass
        finally:
            conn.close()


def answer_dns(sock: socket.socket, stop: threading.Event) -> None:
    """Echo each query back as an empty NOERROR response (QR set)."""
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            data, peer = sock.recvfrom(4096)
        except OSError:
            continue
        if len(data) >= 12:
            sock.sendto(data[:2] + bytes([data[2] | 0x80, data[3]]) + data[4:], peer)


EXPECTED = {("tls", TLS_NAMES[0]), ("tls", TLS_NAMES[1]), ("http", HTTP_NAME), ("dns", DNS_NAME)}


def names_in(pcap: Path, bundle: Path) -> set[tuple[str, str]]:
    """(proto, name) of what `schoolgate inspect` finds in ``pcap`` so far (tcpdump may be
    writing it: an unreadable tail is "nothing yet")."""
    out, err = io.StringIO(), io.StringIO()
    try:
        if main(["inspect", str(pcap), "--bundle", str(bundle), "--json"], out, err) != 0:
            return set()
    except Exception:  # noqa: BLE001 - a capture cut mid-record
        return set()
    return {(r["proto"], r["name"]) for r in map(json.loads, out.getvalue().splitlines())}


def test_names_from_a_live_capture(tmp_path: Path) -> None:
    for tool in ("tcpdump", "curl", "dig"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (as root, tests/setup.sh installs tcpdump, curl and dnsutils)")
    addr = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
    cert, key = self_signed(tmp_path, TLS_NAMES)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    tls_sock = socket.create_server((addr, 0))
    http_sock = socket.create_server((addr, 0))
    dns_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        dns_sock.bind((addr, 53))  # the DNS port (root); the extractors read 53/5353/5355
    except PermissionError:
        dns_sock.bind((addr, 5353))
    tls_port, http_port, dns_port = (s.getsockname()[1] for s in (tls_sock, http_sock, dns_sock))
    stop = threading.Event()
    threads = [threading.Thread(target=serve, args=(tls_sock, ctx, stop), daemon=True),
               threading.Thread(target=serve, args=(http_sock, None, stop), daemon=True),
               threading.Thread(target=answer_dns, args=(dns_sock, stop), daemon=True)]
    for t in threads:
        t.start()
    pcap = tmp_path / "live.pcap"
    # --immediate-mode: libpcap's ring otherwise hands packets over a block at a time (up
    # to a second late) and a capture stopped before that loses them.
    dump = subprocess.Popen(["tcpdump", "-i", "lo", "-n", "--immediate-mode", "-U", "-s", "0", "-w", str(pcap),
                             "host", addr],
                            stderr=subprocess.PIPE, text=True)
    try:
        line = dump.stderr.readline()  # "listening on lo, ..." once the capture runs
        if "listening" not in line:
            dump.kill()
            pytest.skip(f"tcpdump cannot capture on lo here: {line.strip() or dump.wait()}")
        for name in TLS_NAMES:
            subprocess.run(["curl", "-sS", "--max-time", "60", "--cacert", str(cert), "--resolve",
                            f"{name}:{tls_port}:{addr}", f"https://{name}:{tls_port}/"], check=True,
                           capture_output=True)
        subprocess.run(["curl", "-sS", "--max-time", "60", "--resolve", f"{HTTP_NAME}:{http_port}:{addr}",
                        f"http://{HTTP_NAME}:{http_port}/"], check=True, capture_output=True)
        subprocess.run(["dig", f"@{addr}", "-p", str(dns_port), DNS_NAME, "+tries=1", "+time=30"],
                       check=True, capture_output=True)
        # until tcpdump has written the last packets (-U: each as it comes, once it has them)
        probe = make_bundle(tmp_path / "probe-bundle", 1)
        wait_for(lambda: EXPECTED <= names_in(pcap, probe), DEADLINE, "every name in the capture")
    finally:
        dump.send_signal(signal.SIGTERM)
        dump.wait(timeout=10)
        stop.set()
        for t in threads:
            t.join(timeout=2)
        for s in (tls_sock, http_sock, dns_sock):
            s.close()
    bundle = make_bundle(tmp_path / "bundle", 1)
    out, err = io.StringIO(), io.StringIO()
    assert main(["inspect", str(pcap), "--bundle", str(bundle), "--json"], out, err) == 0, err.getvalue()
    rows = [json.loads(x) for x in out.getvalue().splitlines()]
    assert {(r["proto"], r["name"]) for r in rows} == EXPECTED
    verdicts = {r["name"]: r["verdict"] for r in rows}
    assert verdicts[TLS_NAMES[1]] == "block" and verdicts[TLS_NAMES[0]] == "allow"
    assert all(r["dst"] == addr or r["src"] == addr for r in rows)
