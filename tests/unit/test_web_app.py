"""appliance/web/app.py driven request by request: a real bundle, real shared counters, a
real state directory; no sockets (the listeners are tested in tests/integration)."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest

from appliance.config import load_config
from appliance.stats import SharedStats, slots_for
from appliance.web.app import LOGIN_COOKIE, SESSION_COOKIE, UNBLOCK_RATE, WebApp
from appliance.web.audit import AUDIT_FILE, UnblockStore
from appliance.web.auth import LOGIN_FAILURES, hash_password
from appliance.web.http import HttpError, Request, parse_head
from tests.bundles import make_bundle

PASSWORD = "correct horse battery"
XSS = "<img src=x onerror=alert(1)>"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("webbundle") / "bundle", 5)


@pytest.fixture()
def app(tmp_path: Path, bundle: Path) -> WebApp:
    cfg_file = tmp_path / "sg.yaml"
    cfg_file.write_text(f"""\
state_dir: {tmp_path}/state
bundle: {bundle}
policies:
  default: {{block: [gambling]}}
  staff: {{block: []}}
networks:
  staff: {{cidrs: [10.9.0.0/16], policy: staff}}
web:
  listen: "127.0.0.1:18080"
  blockpage_listen: "127.0.0.1:18081"
  admin_password_hash: "{hash_password(PASSWORD, n=2 ** 12)}"
""")
    (tmp_path / "state").mkdir()
    stats = SharedStats.create(slots_for(1))
    slot = stats.slot(0)
    slot.add("queries", 40)
    slot.add("blocked", 7)
    slot.add("cache_hits", 10)
    slot.count_blocked(1)
    slot.record_event("dns", f"{XSS}.example", 1, "default", None, "block")
    return WebApp(load_config(cfg_file), str(cfg_file), stats=stats, clock=lambda: NOW, mono=Clock())


def req(method: str, target: str, *headers: str, body: bytes = b"", client: str = "127.0.0.1") -> Request:
    hs = ["Host: 127.0.0.1:18080", *headers]
    if method == "POST":
        hs += [f"Content-Length: {len(body)}", "Content-Type: application/x-www-form-urlencoded"]
    r = parse_head("\r\n".join([f"{method} {target} HTTP/1.1", *hs]).encode())
    r.body, r.client = body, client
    return r


def run(app: WebApp, r: Request, blockpage: bool = False):
    try:
        return asyncio.run((app.blockpage if blockpage else app.main)(r))
    except HttpError as e:
        return e


def cookie_of(resp, name: str) -> str | None:
    for k, v in resp.headers:
        if k == "Set-Cookie" and v.startswith(name + "="):
            return v
    return None


def login(app: WebApp, password: str = PASSWORD, client: str = "127.0.0.1"):
    form = run(app, req("GET", "/login", client=client))
    token = cookie_of(form, LOGIN_COOKIE).split(";")[0].split("=", 1)[1]
    assert f'value="{token}"' in form.body.decode()
    return run(app, req("POST", "/login", f"Cookie: {LOGIN_COOKIE}={token}",
                        body=f"csrf={token}&password={password.replace(' ', '+')}".encode(), client=client))


def admin(app: WebApp) -> tuple[str, str]:
    """(session cookie header, csrf token)."""
    r = login(app)
    assert r.status == 303, r
    sc = cookie_of(r, SESSION_COOKIE)
    assert "HttpOnly" in sc and "SameSite=Strict" in sc and "Secure" not in sc
    cookie = f"Cookie: {sc.split(';')[0]}"
    page = run(app, req("GET", "/", cookie)).body.decode()
    csrf = page.split('name="csrf" value="')[1].split('"')[0]
    return cookie, csrf


class Texts(HTMLParser):
    """Every element and every text node of a page (to check that markup stayed text)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append(tag)

    def handle_data(self, data) -> None:
        self.text.append(data)


def test_status_page_public(app: WebApp) -> None:
    r = run(app, req("GET", "/"))
    page = r.body.decode()
    assert r.status == 200 and len(r.body) < 100_000
    assert "<script" not in page and "style=" not in page
    assert "gambling" in page and "<svg" in page
    assert "Recent block events" not in page  # the events are for admins only
    assert "Admin login" in page


def test_api_status_shape(app: WebApp) -> None:
    st = json.loads(run(app, req("GET", "/api/status")).body)
    assert st["bundle"]["version"] == 5 and st["bundle"]["categories"] == {"gambling": 2}
    assert st["dns"]["queries"] == 40 and st["dns"]["blocked"] == 8 and st["dns"]["cache_hit_ratio"] == 0.25
    assert st["dns"]["blocked_by_category"] == {"gambling": 1}
    assert {p["name"] for p in st["policies"]} == {"default", "staff"}
    assert st["flows"]["state"] is None


def test_metrics_parse_with_prometheus_client(app: WebApp) -> None:
    parser = pytest.importorskip("prometheus_client.parser", reason="pip install -e '.[test]'")
    r = run(app, req("GET", "/metrics"))
    assert r.content_type.startswith("text/plain; version=0.0.4")
    fams = {f.name: f for f in parser.text_string_to_metric_families(r.body.decode())}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    assert samples[("schoolgate_dns_queries_total", ())] == 40
    assert samples[("schoolgate_dns_blocked_by_category_total", (("category", "gambling"),))] == 1
    assert samples[("schoolgate_bundle_version", ())] == 5
    assert ("schoolgate_bundle_age_seconds", ()) in samples
    assert fams["schoolgate_dns_queries"].type == "counter"


def test_admin_routes_refuse_without_session_or_csrf(app: WebApp) -> None:
    for path in ("/api/update", "/api/allow", "/admin/unblock", "/logout"):
        assert run(app, req("POST", path, body=b"name=a.test")).status == 401, path
    for path in ("/api/events", "/admin/audit", "/admin/audit.jsonl", "/admin/events"):
        assert run(app, req("GET", path)).status == 401, path
    cookie, csrf = admin(app)
    for path in ("/api/update", "/api/allow", "/admin/unblock", "/logout"):
        assert run(app, req("POST", path, cookie, body=b"name=a.test")).status == 403, path
        assert run(app, req("POST", path, cookie, body=b"name=a.test&csrf=" + b"x" * len(csrf))).status == 403
    # a cross-origin form, even with the token
    bad = run(app, req("POST", "/api/allow", cookie, "Origin: http://evil.test",
                       body=f"csrf={csrf}&name=a.test".encode()))
    assert bad.status == 403
    # the h2c upgrade headers change nothing
    r = run(app, req("POST", "/api/update", "Upgrade: h2c", "Connection: Upgrade, HTTP2-Settings",
                     "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA", body=b""))
    assert r.status == 401


def test_update_now_without_running_appliance(app: WebApp) -> None:
    cookie, csrf = admin(app)
    r = run(app, req("POST", "/api/update", cookie, body=f"csrf={csrf}".encode()))
    assert r.status == 503 and "not running" in r.message


def test_temporary_allow_and_audit(app: WebApp) -> None:
    from appliance import temporary_allow

    cookie, csrf = admin(app)
    r = run(app, req("POST", "/api/allow", cookie, "Accept: text/html",
                     body=f"csrf={csrf}&name=casino.test&policy=default&duration=1h".encode()))
    assert r.status == 303 and ("Location", "/?done=allow") in r.headers
    act = temporary_allow.active(app.state_dir, NOW)
    assert [(t.name, t.policy, t.until) for t in act] == [("casino.test", "default", NOW + timedelta(hours=1))]
    bad = run(app, req("POST", "/api/allow", cookie, body=f"csrf={csrf}&name={XSS}&duration=1h".encode()))
    assert bad.status == 400
    bad = run(app, req("POST", "/api/allow", cookie, body=f"csrf={csrf}&name=a.test&policy=nope".encode()))
    assert bad.status == 400
    lines = (app.state_dir / AUDIT_FILE).read_text().splitlines()
    actions = [json.loads(x)["action"] for x in lines]
    assert actions[:2] == ["login", "events-view"] and "temporary-allow" in actions
    # append-only: a later action leaves every earlier byte in place
    before = (app.state_dir / AUDIT_FILE).read_bytes()
    run(app, req("GET", "/admin/audit", cookie))
    after = (app.state_dir / AUDIT_FILE).read_bytes()
    assert after.startswith(before) and len(after) > len(before)
    dl = run(app, req("GET", "/admin/audit.jsonl", cookie))
    assert dl.body.startswith(before) and dl.content_type == "application/x-ndjson"


def test_events_escaped_for_admins(app: WebApp) -> None:
    cookie, _ = admin(app)
    page = run(app, req("GET", "/", cookie)).body.decode()
    assert "&lt;img src=x onerror=alert(1)&gt;.example" in page
    assert XSS not in page
    p = Texts()
    p.feed(page)
    assert "img" not in p.tags and "script" not in p.tags
    ev = json.loads(run(app, req("GET", "/api/events", cookie)).body)["events"]
    assert ev[0]["name"] == f"{XSS}.example" and ev[0]["categories"] == ["gambling"]


def test_login_wrong_password_then_lockout(app: WebApp) -> None:
    for _ in range(LOGIN_FAILURES):
        assert login(app, "wrong password").status == 401
    assert login(app).status == 429  # even the right one, while locked out
    assert login(app, client="127.0.0.9").status == 303  # another address is not locked
    actions = [json.loads(x)["action"] for x in (app.state_dir / AUDIT_FILE).read_text().splitlines()]
    assert actions.count("login-failed") == LOGIN_FAILURES and "login-locked-out" in actions


def test_login_needs_the_form_token(app: WebApp) -> None:
    r = run(app, req("POST", "/login", body=f"password={PASSWORD}".encode()))
    assert r.status == 403
    r = run(app, req("POST", "/login", f"Cookie: {LOGIN_COOKIE}=abc", body=f"csrf=abd&password={PASSWORD}".encode()))
    assert r.status == 403


def test_logout_ends_the_session(app: WebApp) -> None:
    cookie, csrf = admin(app)
    assert run(app, req("POST", "/logout", cookie, body=f"csrf={csrf}".encode())).status == 303
    assert run(app, req("GET", "/api/events", cookie)).status == 401


def test_block_page_and_unblock_requests(app: WebApp) -> None:
    r = parse_head(b"GET /some/path HTTP/1.1\r\nHost: www.casino.test:80")
    r.client = "10.1.2.3"
    page = asyncio.run(app.blockpage(r)).body.decode()
    assert "www.casino.test" in page and "gambling" in page and "casino.test" in page and "unblock" in page
    staff = parse_head(b"GET / HTTP/1.1\r\nHost: www.casino.test")
    staff.client = "10.9.1.1"
    assert "This site is blocked" not in asyncio.run(app.blockpage(staff)).body.decode()

    body = f"name=www.casino.test&reason={XSS}+please".encode()
    r = run(app, req("POST", "/unblock", body=body, client="10.1.2.3"), blockpage=True)
    assert r.status == 200 and "was sent" in r.body.decode()
    stored = UnblockStore(app.state_dir).all()
    assert stored[0]["name"] == "www.casino.test" and stored[0]["reason"] == f"{XSS} please"
    assert stored[0]["category"] == "gambling" and stored[0]["policy"] == "default"
    for _ in range(UNBLOCK_RATE - 1):
        run(app, req("POST", "/unblock", body=body, client="10.1.2.3"), blockpage=True)
    assert run(app, req("POST", "/unblock", body=body, client="10.1.2.3"), blockpage=True).status == 429
    assert run(app, req("POST", "/unblock", body=b"name=%3Cb%3E", client="10.1.2.4"), blockpage=True).status == 400

    cookie, csrf = admin(app)
    page = run(app, req("GET", "/", cookie)).body.decode()
    assert "&lt;img src=x onerror=alert(1)&gt; please" in page and XSS not in page
    rid = stored[0]["id"]
    r = run(app, req("POST", "/admin/unblock", cookie, body=f"csrf={csrf}&id={rid}&decision=temporary&duration=4h".encode()))
    assert r.status == 200
    assert UnblockStore(app.state_dir).get(rid)["decision"] == "allowed (temporary)"
    assert run(app, req("POST", "/admin/unblock", cookie, body=f"csrf={csrf}&id={rid}&decision=reject".encode())).status == 409
    other = UnblockStore(app.state_dir).all()[1]["id"]
    assert run(app, req("POST", "/admin/unblock", cookie, body=f"csrf={csrf}&id={other}&decision=reject".encode())).status == 200


def test_unknown_and_wrong_method(app: WebApp) -> None:
    assert run(app, req("GET", "/etc/passwd")).status == 404
    assert run(app, req("GET", "/api/update")).status == 405
    assert run(app, req("GET", "/style.css")).content_type.startswith("text/css")


def test_capture_state_shown(app: WebApp) -> None:
    state = app.cfg.state_dir / "flows-state.json"
    state.write_text(json.dumps({"enabled": True, "interface": "eth1", "mode": "enforce", "running": True,
                                 "capture": "bpf", "counters": {"capture_drops": 17}, "error": None,
                                 "updated": "2026-11-25T12:00:00Z"}))
    page = run(app, req("GET", "/")).body.decode()
    assert "via bpf" in page and "split over segments are not read" in page
    assert "17 packets dropped by the kernel" in page
    state.write_text(json.dumps({"enabled": True, "interface": "eth1", "mode": "enforce", "running": True,
                                 "capture": "nflog", "counters": {"capture_drops": 0},
                                 "updated": "2026-11-25T12:00:00Z"}))
    page = run(app, req("GET", "/")).body.decode()
    assert "via nflog" in page and "not read" not in page and "dropped by the kernel" not in page


def test_boot_config_errors_shown_escaped(app: WebApp) -> None:
    (app.cfg.state_dir / "config-status.json").write_text(json.dumps({
        "ok": False, "time": "2026-11-25T12:00:00Z", "source": "/boot/firmware/schoolgate.yaml",
        "summary": "1 error", "errors": [f"schoolgate.yaml:3:7: unknown key {XSS!r}"]}))
    r = run(app, req("GET", "/"))
    page = r.body.decode()
    assert "was not taken" in page and "schoolgate.yaml:3:7" in page
    assert "<img" not in page and "&lt;img src=x" in page
    st = json.loads(run(app, req("GET", "/api/status")).body)
    assert st["config_check"]["ok"] is False and st["config_check"]["errors"]
