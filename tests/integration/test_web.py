"""The web page end to end: `schoolgate run` as a subprocess (its web process forked from
the owner), real HTTP clients (http.client, raw sockets, curl) on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import AnyStr

import pytest

pytest.importorskip("dns", reason="needs dnspython (pip install -e '.[test]')")
import dns.message  # noqa: E402
import dns.name  # noqa: E402
import dns.query  # noqa: E402

from appliance.bundles.select import DEMO_REPO, DEMO_ROOT  # noqa: E402
from appliance.web.auth import hash_password  # noqa: E402
from appliance.web.http import MAX_BODY, MAX_HEAD, MAX_REQUEST_LINE, Request, Response  # noqa: E402
from appliance.web.server import REQUEST_TIMEOUT, WebServer  # noqa: E402
from tests.bundles import make_bundle  # noqa: E402
from tests.dnsservers import free_port, start_dnsmasq, start_schoolgate  # noqa: E402
from tests.promtool import promtool_check  # noqa: E402
from tests.wait import DEADLINE, wait_for  # noqa: E402

pytestmark = pytest.mark.slow

PASSWORD = "integration test password"
XSS_LABEL = b"<img src=x onerror=alert(1)>"


def write_config(tmp: Path, dns_port: int, web_port: int, bp_port: int, workers: int = 1) -> Path:
    (tmp / "state").mkdir(exist_ok=True)  # run.json goes there (`bundle:` configs create no state dir)
    cfg = tmp / "schoolgate.yaml"
    cfg.write_text(f"""\
state_dir: {tmp}/state
bundle: {tmp}/bundle
dns:
  listen: ["127.0.0.1:{dns_port}"]
  upstreams: []
  rate_limit: 0
  workers: {workers}
updates:
  repository: "{DEMO_REPO.as_uri()}/"
  trusted_root: {DEMO_ROOT}
  interval: 7d
policies:
  default: {{block: [gambling]}}
web:
  listen: "127.0.0.1:{web_port}"
  blockpage_listen: "127.0.0.1:{bp_port}"
  admin_password_hash: "{hash_password(PASSWORD, n=2 ** 12)}"
""")
    return cfg


def wait_web(port: int, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
            c.request("GET", "/api/status")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the web page on {port} did not answer within {timeout} s")


def request(port: int, method: str, path: str, body: str | bytes | None = None,
            headers: dict | None = None) -> tuple[int, dict, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    h = dict(headers or {})
    if body is not None and "Content-Type" not in h:
        h["Content-Type"] = "application/x-www-form-urlencoded"
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    data = r.read()
    h = {k.lower(): v for k, v in r.getheaders()}
    cookies = r.msg.get_all("Set-Cookie")
    if cookies:
        h["set-cookie"] = "\n".join(cookies)
    return r.status, h, data


def raw(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out


def exchange(port: int, *pieces: bytes, timeout: float = DEADLINE) -> tuple[bytes, str]:
    """Send ``pieces`` on one connection and read until the server closes it: (what came back,
    "eof" for a clean close or "reset"). A server that never closes fails on ``timeout``."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        for piece in pieces:
            try:
                s.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                return out, "reset"
            if not chunk:
                return out, "eof"
            out += chunk


def found(m: re.Match[AnyStr] | None) -> AnyStr:
    """A search's first group (AssertionError when it did not match)."""
    assert m is not None, "no match"
    return m.group(1)


def login(port: int) -> tuple[str, str]:
    """(Cookie header value, CSRF token) of a fresh admin session."""
    status, h, page = request(port, "GET", "/login")
    token = found(re.search(r'sg_login=([^;]+)', h["set-cookie"]))
    status, h, _ = request(port, "POST", "/login", f"csrf={token}&password={PASSWORD.replace(' ', '+')}",
                           {"Cookie": f"sg_login={token}"})
    assert status == 303, status
    cookie = found(re.search(r"(sg_session=[^;]+)", h["set-cookie"]))
    assert "HttpOnly" in h["set-cookie"] and "SameSite=Strict" in h["set-cookie"]
    _, _, page = request(port, "GET", "/", headers={"Cookie": cookie})
    csrf = found(re.search(rb'name="csrf" value="([^"]+)"', page)).decode()
    return cookie, csrf


def web_child(owner: int) -> int | None:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(owner)], capture_output=True, text=True).stdout.split()
    for pid in map(int, out):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"appliance.cli" in cmd and b"update" not in cmd:
            fds = os.listdir(f"/proc/{pid}/fd")
            return pid if fds else None
    return None


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("web")
    make_bundle(tmp / "bundle", 3)
    dns_port, web_port, bp_port = free_port(), free_port(), free_port()
    cfg = write_config(tmp, dns_port, web_port, bp_port)
    sg = start_schoolgate(cfg, tmp, dns_port)
    wait_web(web_port)
    yield {"tmp": tmp, "dns": dns_port, "web": web_port, "bp": bp_port, "sg": sg, "state": tmp / "state"}
    assert sg.stop() == 0, sg.text()[-3000:]
    # the web process went with it: nothing listens any more
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", web_port), timeout=2).close()


def test_status_page_and_headers(env) -> None:
    status, h, page = request(env["web"], "GET", "/")
    assert status == 200 and len(page) < 100_000
    csp = h["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "script-src" not in csp
    assert h["x-content-type-options"] == "nosniff" and h["referrer-policy"] == "no-referrer"
    assert b"<script" not in page and b"<svg" in page


def test_api_status_counts_queries(env) -> None:
    before = json.loads(request(env["web"], "GET", "/api/status")[2])
    assert before["bundle"]["version"] == 3 and isinstance(before["dns"]["queries"], int)
    for _ in range(3):
        dns.query.udp(dns.message.make_query("casino.test", "A"), "127.0.0.1", port=env["dns"], timeout=3)
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        now = json.loads(request(env["web"], "GET", "/api/status")[2])
        if now["dns"]["queries"] >= before["dns"]["queries"] + 3:
            break
        time.sleep(0.3)
    assert now["dns"]["queries"] >= before["dns"]["queries"] + 3
    assert now["dns"]["blocked_by_category"].get("gambling", 0) >= 3


def metric_samples(body: bytes) -> tuple[dict, dict]:
    """({family name: type}, {(sample name, sorted labels): value}) by prometheus_client's parser."""
    from prometheus_client.parser import text_string_to_metric_families

    fams = list(text_string_to_metric_families(body.decode()))
    return ({f.name: f.type for f in fams},
            {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams for s in f.samples})


def poll_metrics(port: int, done, timeout: float = DEADLINE) -> tuple[bytes, dict, dict]:
    """GET /metrics until ``done(samples)`` holds (or the deadline passes): (body, types, samples)."""
    deadline = time.monotonic() + timeout
    while True:
        status, h, body = request(port, "GET", "/metrics")
        assert status == 200 and h["content-type"].startswith("text/plain; version=0.0.4")
        types, samples = metric_samples(body)
        if done(samples) or time.monotonic() > deadline:
            return body, types, samples
        time.sleep(0.3)


def test_metrics(env) -> None:
    dns.query.udp(dns.message.make_query("metrics.casino.test", "A"), "127.0.0.1", port=env["dns"], timeout=3)
    gambling = ("schoolgate_dns_blocked_by_category_total", (("category", "gambling"),))
    body, types, samples = poll_metrics(env["web"], lambda s: s.get(gambling, 0) >= 1)
    assert samples[gambling] >= 1
    assert types["schoolgate_dns_queries"] == "counter" and samples[("schoolgate_dns_queries_total", ())] >= 1
    assert types["schoolgate_bundle_version"] == "gauge" and samples[("schoolgate_bundle_version", ())] == 3
    assert types["schoolgate_bundle_age_seconds"] == "gauge" and samples[("schoolgate_running", ())] == 1
    assert not [n for n in types if "_ms" in n]
    promtool_check(body)


def test_metrics_upstream_latency_live(tmp_path: Path) -> None:
    """A running appliance forwarding to a real resolver (dnsmasq): its latency histogram is
    labelled with the configured upstream, in seconds, cumulative, and promtool-clean."""
    up_port = free_port()
    upstream = start_dnsmasq(tmp_path, up_port)  # skips without dnsmasq
    try:
        make_bundle(tmp_path / "bundle", 3)
        dns_port, web_port, bp_port = free_port(), free_port(), free_port()
        cfg = write_config(tmp_path, dns_port, web_port, bp_port)
        cfg.write_text(cfg.read_text().replace("upstreams: []", f'upstreams: ["127.0.0.1:{up_port}"]'))
        sg = start_schoolgate(cfg, tmp_path, dns_port)
        try:
            wait_web(web_port)
            for i in range(5):  # distinct names: each one is forwarded
                r = dns.query.udp(dns.message.make_query(f"h{i}.allowed.test", "A"), "127.0.0.1", port=dns_port,
                                  timeout=3)
                assert r.answer, r
            label = (("upstream", f"127.0.0.1:{up_port}"),)
            count = ("schoolgate_dns_upstream_latency_seconds_count", label)
            body, types, samples = poll_metrics(web_port, lambda s: s.get(count, 0) >= 5)
            assert types["schoolgate_dns_upstream_latency_seconds"] == "histogram"
            assert samples[count] >= 5
            assert samples[("schoolgate_dns_upstream_requests_total", label)] >= samples[count]
            assert samples[("schoolgate_dns_upstream_latency_seconds_sum", label)] > 0
            buckets = sorted((float(dict(k)["le"]), v) for (n, k), v in samples.items()
                             if n == "schoolgate_dns_upstream_latency_seconds_bucket" and dict(k)["upstream"]
                             == label[0][1])
            assert buckets[0][0] == 0.001 and buckets[-1] == (float("inf"), samples[count])
            assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
            promtool_check(body)
        finally:
            assert sg.stop() == 0, sg.text()[-3000:]
    finally:
        upstream.stop()


def test_unauthenticated_and_csrfless_posts_refused(env) -> None:
    for path in ("/api/update", "/api/allow", "/admin/unblock", "/logout"):
        assert request(env["web"], "POST", path, "name=x.test")[0] == 401
    cookie, csrf = login(env["web"])
    for path in ("/api/update", "/api/allow", "/admin/unblock"):
        assert request(env["web"], "POST", path, "name=x.test", {"Cookie": cookie})[0] == 403
    # h2c upgrade: no 101, and the same auth answer
    status, h, _ = request(env["web"], "POST", "/api/update", "",
                           {"Upgrade": "h2c", "Connection": "Upgrade, HTTP2-Settings",
                            "HTTP2-Settings": "AAMAAABkAARAAAAAAAIAAAAA"})
    assert status == 401 and "upgrade" not in h
    out = raw(env["web"], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 505 ")


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl (as root, tests/setup.sh installs it)")
def test_path_traversal_refused(env) -> None:
    for path in ("/../../etc/passwd", "/static/..%2f..%2fetc%2fpasswd", "/%2e%2e/%2e%2e/etc/passwd",
                 "/style.css/../../etc/passwd"):
        out = subprocess.run(["curl", "-s", "--path-as-is", "-o", "/dev/null", "-w", "%{http_code}",
                              f"http://127.0.0.1:{env['web']}{path}"], capture_output=True, text=True, timeout=20)
        assert out.stdout in ("400", "404"), (path, out.stdout)


def test_oversized_requests_refused(env) -> None:
    assert raw(env["web"], b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 414 ")
    big = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 200) for i in range(100)) + b"\r\n"
    assert raw(env["web"], big).startswith(b"HTTP/1.1 431 ")
    out = raw(env["web"], b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 413 ")


def status_line(out: bytes) -> bytes:
    return out.split(b"\r\n", 1)[0]


def assert_clean_refusal(out: bytes, how: str, status: int) -> None:
    """A whole answer with that status, our headers, and a closed connection (no RST)."""
    assert status_line(out).startswith(b"HTTP/1.1 %d " % status), out[:300]
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"\r\nConnection: close\r\n" in head + b"\r\n" and b"\r\nContent-Security-Policy: " in head
    assert int(found(re.search(rb"\r\nContent-Length: (\d+)", head))) == len(body)
    assert how == "eof", (how, out[:300])


def test_unicode_digit_content_length_is_a_clean_400(env) -> None:
    """``Content-Length: ²`` (Latin-1 0xB2, which str.isdigit() accepts) before login: a clean
    400 and a closed connection, where the hand-written parser raised and dropped it."""
    before = len(env["sg"].text())
    for port, path in ((env["web"], b"/login"), (env["bp"], b"/unblock")):
        for value in (b"\xb2", "²".encode(), "١".encode()):
            out, how = exchange(port, b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                b"Content-Type: application/x-www-form-urlencoded\r\n"
                                b"Content-Length: " + value + b"\r\n\r\nx")
            assert_clean_refusal(out, how, 400)
    assert request(env["web"], "GET", "/login")[0] == 200  # still serving, and logged nothing of it
    log = env["sg"].text()[before:]
    assert "Traceback" not in log and "Unhandled exception" not in log, log[-3000:]


MALFORMED = {
    "bad CL": (b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 1.5\r\n\r\nx", 400),
    "CL sign": (b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\nx", 400),
    "CL 5000 digits": (b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", 400),
    "duplicate CL": (b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx", 400),
    "CL list": (b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\nxx", 400),
    "TE chunked": (b"POST /login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n", 501),
    "TE and CL": ((b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"0\r\n\r\n"), 501),
    "TE gzip": (b"POST /login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    "folding": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400),
    "folding first": (b"GET / HTTP/1.1\r\n\tX-A: a\r\nHost: x\r\n\r\n", 400),
    "bare CR": (b"GET / HTTP/1.1\r\nHost: x\rX-A: a\r\n\r\n", 400),
    "no Host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "two Hosts": (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
    "space before colon": (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    "HTTP/0.9": (b"GET /\r\n\r\n", 400),
    "HTTP/2 preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    "HTTP/3.0": (b"GET / HTTP/3.0\r\nHost: x\r\n\r\n", 505),
    "TLS": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(200), 400),
    "POST without length": (b"POST /login HTTP/1.1\r\nHost: x\r\n\r\n", 411),
    "long request line": (b"GET /" + b"a" * (2 * MAX_REQUEST_LINE) + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    "endless request line": (b"GET /" + b"a" * (2 * MAX_HEAD), 414),
    "big head": (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: " + b"v" * MAX_HEAD + b"\r\n\r\n", 431),
    "endless head": (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * MAX_HEAD, 431),
    "big body": (b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1), 413),
    "huge body": (b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n" + b"a" * (2 * MAX_BODY), 413),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_requests_get_a_clean_answer(env, name: str) -> None:
    data, status = MALFORMED[name]
    out, how = exchange(env["web"], data)
    assert_clean_refusal(out, how, status)


def test_refused_requests_leave_the_server_clean(env) -> None:
    before = len(env["sg"].text())
    for data, status in MALFORMED.values():
        out, how = exchange(env["bp"], data)
        assert_clean_refusal(out, how, status)
    assert request(env["bp"], "GET", "/", headers={"Host": "promo.casino.test"})[0] == 200
    log = env["sg"].text()[before:]
    assert "Traceback" not in log and "Unhandled exception" not in log, log[-3000:]


def test_request_in_pieces_and_pipelined_bytes(env) -> None:
    """A request split anywhere is the same request; a second one after it is not answered."""
    data = (b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n"
            b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    for pieces in ([data], [bytes([b]) for b in data[:80]] + [data[80:]], [data[:17], data[17:40], data[40:]]):
        out, how = exchange(env["web"], *pieces)
        assert status_line(out) == b"HTTP/1.1 200 OK" and how == "eof"
        assert out.count(b"HTTP/1.1 ") == 1 and json.loads(out.partition(b"\r\n\r\n")[2])["bundle"]


# --- the listener in this process (WebServer on 127.0.0.1, no appliance): its own limits -----

@contextlib.contextmanager
def served(handler=None, **limits):
    """A WebServer on an ephemeral 127.0.0.1 port, its event loop in a thread: (port, server)."""
    async def echo(req: Request) -> Response:
        return Response(200, req.body or req.path.encode(), "text/plain")

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = WebServer(handler or echo, **limits)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    try:
        asyncio.run_coroutine_threadsafe(server.start(sock), loop).result(30)
        yield sock.getsockname()[1], server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def test_in_process_unicode_content_length_logs_nothing(caplog) -> None:
    with served() as (port, server):
        out, how = exchange(port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\r\n\r\nx")
        assert_clean_refusal(out, how, 400)
        out, how = exchange(port, b"POST /f HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        assert out.endswith(b"\r\n\r\nabc") and status_line(out) == b"HTTP/1.1 200 OK" and how == "eof"
        wait_for(lambda: server.active == 0, what="connections released")
    assert not [r for r in caplog.records if r.exc_info or r.levelname in ("ERROR", "CRITICAL")]


@pytest.mark.parametrize("limits,addr_cap", [({"max_per_client": 2}, True), ({"max_connections": 3}, False)])
def test_connection_caps_at_accept(limits: dict, addr_cap: bool) -> None:
    cap = limits.get("max_per_client") or limits["max_connections"]
    with served(request_timeout=120, **limits) as (port, server):
        held = []
        for _ in range(cap):
            s = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
            s.sendall(b"GET / HTTP/1.1\r\n")  # a head that does not end: the slot stays taken
            held.append(s)
        wait_for(lambda: server.active == cap, what=f"{cap} connections held")
        out, how = exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert out == b"", out[:200]  # closed at accept, nothing read or answered
        assert server.refused == 1 and server.active == cap
        if addr_cap:
            assert server.per_client == {"127.0.0.1": cap}
        held.pop().close()
        wait_for(lambda: server.active == cap - 1, what="a slot freed")
        out, how = exchange(port, b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n")
        assert out.endswith(b"\r\n\r\n/again") and how == "eof"
        for s in held:
            s.close()
        wait_for(lambda: server.active == 0 and server.per_client == {}, what="every slot freed")


@pytest.mark.parametrize("head,trickle", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n", b"X-A: b\r\n"),  # a head that never ends
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n", b"a"),  # a body that never ends
])
def test_one_deadline_for_the_whole_request(head: bytes, trickle: bytes) -> None:
    """A client sending a little every 50 ms never waits long on one read, yet gets 408 once
    the request as a whole is older than request_timeout."""
    timeout = 1.0
    with served(request_timeout=timeout) as (port, server):
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as s:
            t0 = time.monotonic()
            s.sendall(head)
            s.setblocking(False)
            got, closed = b"", False
            deadline = t0 + DEADLINE
            while not closed and time.monotonic() < deadline:
                try:
                    s.sendall(trickle)
                except OSError:
                    closed = True
                    break
                try:
                    chunk = s.recv(65536)
                    closed = not chunk
                    got += chunk
                except BlockingIOError:
                    time.sleep(0.05)
                except OSError:
                    closed = True
            waited = time.monotonic() - t0
        assert closed and status_line(got) == b"HTTP/1.1 408 Request Timeout", got[:200]
        assert waited >= timeout  # a lower bound: the deadline was not cut short
        assert server.timeouts == 1
        wait_for(lambda: server.active == 0, what="the slot freed")


def test_slowloris_bounded(env) -> None:
    """A client trickling its head is cut off after REQUEST_TIMEOUT, and others are served meanwhile."""
    socks = []
    t0 = time.monotonic()
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", env["web"]), timeout=REQUEST_TIMEOUT + 10)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    assert request(env["web"], "GET", "/api/status")[0] == 200  # still serving
    s = socks[0]
    got = b""
    closed = False  # polled up to a deadline well past REQUEST_TIMEOUT
    while not closed and time.monotonic() - t0 < DEADLINE:
        try:
            s.sendall(b"X: y\r\n")
            chunk = s.recv(4096)
        except TimeoutError:
            break
        except OSError:  # reset, broken pipe: closed by the server
            closed = True
            break
        closed = not chunk
        got += chunk
        if not closed:
            time.sleep(1)
    for x in socks:
        x.close()
    assert closed, "the slow connection was never closed"
    assert got == b"" or got.startswith(b"HTTP/1.1 408 ")


def test_update_now_and_temporary_allow(env) -> None:
    from appliance.updates.state import read_update_state

    cookie, csrf = login(env["web"])
    first = read_update_state(env["state"]).get("last_check")  # interval 7d: no check is due
    if first:  # last_check has a resolution of one second: wait for the next one
        since = datetime.fromisoformat(first.replace("Z", "+00:00")) + timedelta(seconds=1)
        wait_for(lambda: datetime.now(UTC) >= since, what="the next second")
    status, _, body = request(env["web"], "POST", "/api/update", "", {"Cookie": cookie, "X-CSRF-Token": csrf})
    assert status == 200 and json.loads(body)["ok"]
    deadline = time.monotonic() + DEADLINE
    while read_update_state(env["state"]).get("last_check") == first and time.monotonic() < deadline:
        time.sleep(0.2)
    assert read_update_state(env["state"]).get("last_check") != first, "SIGUSR2 did not start a check"

    status, _, body = request(env["web"], "POST", "/api/allow",
                              json.dumps({"name": "casino.test", "policy": "*", "duration": "15m"}),
                              {"Cookie": cookie, "X-CSRF-Token": csrf, "Content-Type": "application/json"})
    assert status == 200, body
    st = json.loads(request(env["web"], "GET", "/api/status")[2])
    assert [t["name"] for t in st["temporary_allows"]] == ["casino.test"]
    audit = [json.loads(x) for x in (env["state"] / "audit.jsonl").read_text().splitlines()]
    assert {"update-now", "temporary-allow", "login"} <= {a["action"] for a in audit}


def test_block_page(env) -> None:
    status, h, page = request(env["bp"], "GET", "/some/page", headers={"Host": "promo.casino.test"})
    assert status == 200 and b"promo.casino.test" in page and b"gambling" in page
    assert h["content-security-policy"].startswith("default-src 'none'")
    # HTTPS to the block address is refused fast: nothing listens on a TLS port
    status, _, page = request(env["bp"], "POST", "/unblock", "name=promo.casino.test&reason=homework",
                              {"Host": "promo.casino.test"})
    assert status == 200 and b"was sent" in page
    lines = (env["state"] / "unblock-requests.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["name"] == "promo.casino.test"


def test_web_process_restarted_after_a_crash(env) -> None:
    owner = env["sg"].pid
    pid = web_child(owner)
    assert pid is not None, "no web child of the appliance"
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + DEADLINE
    new = None
    while time.monotonic() < deadline:
        new = web_child(owner)
        if new not in (None, pid):
            break
        time.sleep(0.2)
    assert new not in (None, pid)
    wait_web(env["web"])
    # DNS never stopped
    dns.query.udp(dns.message.make_query("example.org", "A"), "127.0.0.1", port=env["dns"], timeout=3)


def test_with_several_workers(tmp_path: Path) -> None:
    make_bundle(tmp_path / "bundle", 4)
    dns_port, web_port, bp_port = free_port(), free_port(), free_port()
    sg = start_schoolgate(write_config(tmp_path, dns_port, web_port, bp_port, workers=2), tmp_path, dns_port)
    try:
        wait_web(web_port)
        st = json.loads(request(web_port, "GET", "/api/status")[2])
        assert st["bundle"]["version"] == 4 and st["appliance"]["running"]
        pid = web_child(sg.pid)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: web_child(sg.pid) not in (None, pid), what="a new web child")
        wait_web(web_port)
    finally:
        assert sg.stop() == 0, sg.text()[-3000:]
