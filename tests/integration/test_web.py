"""The web page end to end: `schoolgate run` as a subprocess (its web process forked from
the owner), real HTTP clients (http.client, raw sockets, curl) on 127.0.0.1 only."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

dns = pytest.importorskip("dns", reason="needs dnspython (pip install -e '.[test]')")
import dns.message  # noqa: E402
import dns.name  # noqa: E402
import dns.query  # noqa: E402

from appliance.embedded import DEMO_REPO, DEMO_ROOT  # noqa: E402
from appliance.web.auth import hash_password  # noqa: E402
from appliance.web.server import REQUEST_TIMEOUT  # noqa: E402
from tests.bundles import make_bundle  # noqa: E402
from tests.dnsservers import free_port, start_schoolgate  # noqa: E402

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


def wait_web(port: int, timeout: float = 30.0) -> None:
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
    if r.msg.get_all("Set-Cookie"):
        h["set-cookie"] = "\n".join(r.msg.get_all("Set-Cookie"))
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


def login(port: int) -> tuple[str, str]:
    """(Cookie header value, CSRF token) of a fresh admin session."""
    status, h, page = request(port, "GET", "/login")
    token = re.search(r'sg_login=([^;]+)', h["set-cookie"]).group(1)
    status, h, _ = request(port, "POST", "/login", f"csrf={token}&password={PASSWORD.replace(' ', '+')}",
                           {"Cookie": f"sg_login={token}"})
    assert status == 303, status
    cookie = re.search(r"(sg_session=[^;]+)", h["set-cookie"]).group(1)
    assert "HttpOnly" in h["set-cookie"] and "SameSite=Strict" in h["set-cookie"]
    _, _, page = request(port, "GET", "/", headers={"Cookie": cookie})
    csrf = re.search(rb'name="csrf" value="([^"]+)"', page).group(1).decode()
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
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = json.loads(request(env["web"], "GET", "/api/status")[2])
        if now["dns"]["queries"] >= before["dns"]["queries"] + 3:
            break
        time.sleep(0.3)
    assert now["dns"]["queries"] >= before["dns"]["queries"] + 3
    assert now["dns"]["blocked_by_category"].get("gambling", 0) >= 3


def test_metrics(env) -> None:
    parser = pytest.importorskip("prometheus_client.parser", reason="pip install -e '.[test]'")
    status, h, body = request(env["web"], "GET", "/metrics")
    assert status == 200 and h["content-type"].startswith("text/plain; version=0.0.4")
    names = {f.name for f in parser.text_string_to_metric_families(body.decode())}
    assert {"schoolgate_dns_queries", "schoolgate_bundle_version", "schoolgate_bundle_age_seconds"} <= names


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


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl (installed by .ci/run)")
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
    while time.monotonic() - t0 < REQUEST_TIMEOUT + 8:
        try:
            s.sendall(b"X: y\r\n")
            chunk = s.recv(4096)
        except (ConnectionError, socket.timeout, OSError):
            break
        if not chunk:
            break
        got += chunk
        time.sleep(1)
    elapsed = time.monotonic() - t0
    for x in socks:
        x.close()
    assert elapsed < REQUEST_TIMEOUT + 8, "the slow connection was never closed"
    assert got == b"" or got.startswith(b"HTTP/1.1 408 ")


def test_update_now_and_temporary_allow(env) -> None:
    from appliance.state import read_update_state

    cookie, csrf = login(env["web"])
    first = read_update_state(env["state"]).get("last_check")  # interval 7d: no check is due
    time.sleep(1.1)  # last_check has a resolution of one second
    status, _, body = request(env["web"], "POST", "/api/update", "", {"Cookie": cookie, "X-CSRF-Token": csrf})
    assert status == 200 and json.loads(body)["ok"]
    deadline = time.monotonic() + 60
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
    deadline = time.monotonic() + 30
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
        time.sleep(0.5)
        wait_web(web_port)
    finally:
        assert sg.stop() == 0, sg.text()[-3000:]
