"""appliance/web/app.py driven request by request: a real bundle, real shared counters, a
real state directory; no sockets (the listeners are tested in tests/integration)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest

from appliance.compose import Assembly
from appliance.config.load import load_config
from appliance.observe.stats import SLOT_CAPTURE, SharedStats, slots_for
from appliance.web.app import LOGIN_COOKIE, SESSION_COOKIE, UNBLOCK_RATE, WebApp
from appliance.web.audit import AUDIT_FILE, UnblockStore
from appliance.web.auth import LOGIN_FAILURES, hash_password
from appliance.web.http import HttpError, Request, parse_head
from appliance.web.metrics import render_metrics
from tests.bundles import edit_manifest, make_bundle
from tests.promtool import promtool_check

PASSWORD = "correct horse battery"
XSS = "<img src=x onerror=alert(1)>"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


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
    return WebApp(load_config(cfg_file), Assembly(str(cfg_file)), stats=stats, clock=lambda: NOW, mono=Clock())


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


def metric_families(body: bytes) -> dict:
    """prometheus_client's parser over a /metrics body: {family name: family} (a counter
    ``foo_total`` is family ``foo``)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def metric_samples(fams: dict) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}


# A category name (bundles name them) that needs every escape of the text format.
ODD_CATEGORY = 'odd "cat" \\ with\nnewline'
UPSTREAMS = ["9.9.9.9:53", "tls://1.1.1.1:853#cloudflare-dns.com"]
# Latencies (s) reported per upstream index, None for a failed try; none sits on a bucket bound.
LATENCIES = {0: [0.0004, 0.0015, 0.003, 0.008, 0.015, 0.04, 0.09, 0.15, 0.4, 0.9, 1.5, 2.5, None, None],
             1: [0.012, 0.018, 0.035, None]}
LATENCY_LE = ["0.001", "0.002", "0.005", "0.01", "0.02", "0.05", "0.1", "0.2", "0.5", "1.0", "2.0", "+Inf"]


@pytest.fixture()
def busy_app(tmp_path: Path) -> WebApp:
    """A WebApp whose record looks like a busy appliance's: two upstreams (one DoT) with
    latencies and failures written by two worker slots, blocked queries, flows of each kind,
    the capture process running, a board with a temperature sensor, and a bundle whose
    category name needs escaping."""
    tmp_path = tmp_path / "busy"  # beside the ``app`` fixture's files
    bundle = make_bundle(tmp_path / "bundle", 9)
    sources = json.loads((bundle / "manifest.json").read_text())["sources"]
    for src in sources:
        if src.get("category") == "gambling":
            src["category"] = ODD_CATEGORY
    edit_manifest(bundle, sources=sources)
    state = tmp_path / "state"
    state.mkdir()
    (state / "flows-state.json").write_text(json.dumps(
        {"enabled": True, "interface": "eth1", "mode": "enforce", "running": True, "error": None}))
    board = tmp_path / "board"
    (board / "proc").mkdir(parents=True)
    (board / "proc/meminfo").write_text("MemTotal:  3884096 kB\nMemAvailable:  2457600 kB\n")
    (board / "proc/uptime").write_text("86400.25 300000.10\n")
    (board / "sys/class/thermal/thermal_zone0").mkdir(parents=True)
    (board / "sys/class/thermal/thermal_zone0/temp").write_text("48312\n")
    cfg_file = tmp_path / "sg.yaml"
    cfg_file.write_text(f"""\
state_dir: {state}
bundle: {bundle}
dns:
  upstreams: {json.dumps(UPSTREAMS)}
policies:
  default: {{block: [gambling]}}
web:
  listen: "127.0.0.1:18080"
  blockpage_listen: "127.0.0.1:18081"
""")
    stats = SharedStats.create(slots_for(2))
    for i in (0, 1):
        w = stats.slot(i)
        for name, n in (("queries", 1200 + i), ("cache_hits", 300), ("forwarded", 700), ("servfail", 3),
                        ("upstream_errors", 2), ("rate_limited", 5)):
            w.add(name, n)
        for _ in range(40):
            w.count_blocked(1)
    for index, latencies in LATENCIES.items():
        for j, seconds in enumerate(latencies):
            stats.slot(j % 2).upstream_result(index, seconds)
    capture = stats.slot(SLOT_CAPTURE)
    for proto, action in (("tls", "block"), ("tls", None), ("quic", None), ("http", "reset"), ("dns", "monitor")):
        capture.add_flow(proto, action)
    return WebApp(load_config(cfg_file), Assembly(str(cfg_file)), stats=stats, clock=lambda: NOW, mono=Clock(),
                  root=board)


def test_metrics_parse_with_prometheus_client(app: WebApp) -> None:
    r = run(app, req("GET", "/metrics"))
    assert r.content_type.startswith("text/plain; version=0.0.4")
    fams = metric_families(r.body)
    samples = metric_samples(fams)
    assert samples[("schoolgate_dns_queries_total", ())] == 40
    assert samples[("schoolgate_dns_blocked_by_category_total", (("category", "gambling"),))] == 1
    assert samples[("schoolgate_bundle_version", ())] == 5
    assert ("schoolgate_bundle_age_seconds", ()) in samples
    assert fams["schoolgate_dns_queries"].type == "counter"


def test_metrics_pass_promtool(app: WebApp, busy_app: WebApp) -> None:
    promtool_check(run(busy_app, req("GET", "/metrics")).body)
    promtool_check(run(app, req("GET", "/metrics")).body)
    # no shared counters and no bundle: what is known still checks clean
    bare = WebApp(busy_app.cfg, None, clock=lambda: NOW, mono=Clock(), root=busy_app.root)
    rec = bare.record()
    rec["bundle"] = None
    body = render_metrics(rec)
    assert b"schoolgate_dns_queries" not in body and b"schoolgate_bundle_version" not in body
    promtool_check(body)


def test_metrics_types_and_units(busy_app: WebApp) -> None:
    fams = metric_families(run(busy_app, req("GET", "/metrics")).body)
    by_type: dict[str, set[str]] = {}
    for name, f in fams.items():
        by_type.setdefault(f.type, set()).add(name)
    assert by_type.pop("counter") == {
        "schoolgate_dns_queries", "schoolgate_dns_blocked", "schoolgate_dns_cache_hits", "schoolgate_dns_forwarded",
        "schoolgate_dns_rate_limited", "schoolgate_dns_servfail", "schoolgate_dns_upstream_errors",
        "schoolgate_dns_blocked_by_category", "schoolgate_dns_upstream_requests",
        "schoolgate_dns_upstream_request_failures", "schoolgate_flows_seen", "schoolgate_flows_blocked",
        "schoolgate_flows_reset", "schoolgate_flows_monitor", "schoolgate_flows_by_proto"}
    assert by_type.pop("histogram") == {"schoolgate_dns_upstream_latency_seconds"}
    assert by_type.pop("gauge") == {
        "schoolgate_info", "schoolgate_running", "schoolgate_dns_cache_hit_ratio", "schoolgate_bundle_version",
        "schoolgate_bundle_age_seconds", "schoolgate_bundle_expiry_seconds", "schoolgate_bundle_demo",
        "schoolgate_bundle_domains", "schoolgate_bundle_category_entries", "schoolgate_capture_running",
        "schoolgate_cpu_temperature_celsius", "schoolgate_state_disk_free_bytes",
        "schoolgate_memory_available_bytes"}
    assert by_type == {}
    assert not [n for n in fams if "_ms" in n or "milli" in n]
    samples = metric_samples(fams)
    assert samples[("schoolgate_dns_queries_total", ())] == 2401
    assert samples[("schoolgate_dns_blocked_total", ())] == 80
    assert samples[("schoolgate_dns_upstream_errors_total", ())] == 4
    assert samples[("schoolgate_dns_blocked_by_category_total", (("category", "gambling"),))] == 80
    assert samples[("schoolgate_flows_seen_total", ())] == 5
    assert samples[("schoolgate_flows_blocked_total", ())] == 2
    assert samples[("schoolgate_flows_by_proto_total", (("proto", "tls"),))] == 2
    assert samples[("schoolgate_bundle_age_seconds", ())] == 86400  # built a day before NOW
    assert samples[("schoolgate_capture_running", ())] == 1 and samples[("schoolgate_running", ())] == 0
    assert samples[("schoolgate_cpu_temperature_celsius", ())] == 48.3
    assert samples[("schoolgate_memory_available_bytes", ())] == 2457600 * 1024


def test_metrics_upstream_latency_histogram(busy_app: WebApp) -> None:
    fams = metric_families(run(busy_app, req("GET", "/metrics")).body)
    samples = metric_samples(fams)
    hist = fams["schoolgate_dns_upstream_latency_seconds"]
    for index, upstream in enumerate(UPSTREAMS):
        ok = [x for x in LATENCIES[index] if x is not None]
        mine = [s for s in hist.samples if s.labels["upstream"] == upstream]
        buckets = [(s.labels["le"], s.value) for s in mine if s.name.endswith("_bucket")]
        assert [le for le, _ in buckets] == LATENCY_LE  # seconds, +Inf last
        assert [n for _, n in buckets] == [sum(x <= float(le) for x in ok) for le in LATENCY_LE]  # cumulative
        count = [s.value for s in mine if s.name.endswith("_count")]
        total = [s.value for s in mine if s.name.endswith("_sum")]
        assert count == [len(ok)]
        assert total == [pytest.approx(sum(ok), abs=1e-6 * len(ok))]  # workers add whole microseconds
        key = (("upstream", upstream),)
        assert samples[("schoolgate_dns_upstream_requests_total", key)] == len(LATENCIES[index])
        assert samples[("schoolgate_dns_upstream_request_failures_total", key)] == LATENCIES[index].count(None)


def test_metrics_label_values_escaped(busy_app: WebApp) -> None:
    body = run(busy_app, req("GET", "/metrics")).body
    assert b'{category="odd \\"cat\\" \\\\ with\\nnewline"}' in body
    fams = metric_families(body)
    assert [s.labels["category"] for s in fams["schoolgate_bundle_category_entries"].samples] == [ODD_CATEGORY]
    # upstream and blocked-category names straight from a record
    rec = busy_app.record()
    rec["dns"]["blocked_by_category"] = {ODD_CATEGORY: 3, "gambling": 1}
    rec["dns"]["upstreams"] = ['evil"} 1\nx{', UPSTREAMS[1]]
    body = render_metrics(rec)
    samples = metric_samples(metric_families(body))
    assert samples[("schoolgate_dns_blocked_by_category_total", (("category", ODD_CATEGORY),))] == 3
    assert samples[("schoolgate_dns_upstream_requests_total", (("upstream", 'evil"} 1\nx{'),))] == 14
    promtool_check(body)


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
    from appliance.policy import temporary_allow

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
    r = run(app, req("POST", "/admin/unblock", cookie,
                     body=f"csrf={csrf}&id={rid}&decision=temporary&duration=4h".encode()))
    assert r.status == 200
    assert UnblockStore(app.state_dir).get(rid)["decision"] == "allowed (temporary)"
    again = req("POST", "/admin/unblock", cookie, body=f"csrf={csrf}&id={rid}&decision=reject".encode())
    assert run(app, again).status == 409
    other = UnblockStore(app.state_dir).all()[1]["id"]
    reject = req("POST", "/admin/unblock", cookie, body=f"csrf={csrf}&id={other}&decision=reject".encode())
    assert run(app, reject).status == 200


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
