"""appliance/web/app.py driven request by request: a real bundle, real shared counters, a
real state directory; no sockets (the listeners are tested in tests/integration)."""

from __future__ import annotations

import asyncio
import json
import re
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
    set_cookie = cookie_of(form, LOGIN_COOKIE)
    assert set_cookie is not None
    token = set_cookie.split(";")[0].split("=", 1)[1]
    assert f'value="{token}"' in form.body.decode()
    return run(app, req("POST", "/login", f"Cookie: {LOGIN_COOKIE}={token}",
                        body=f"csrf={token}&password={password.replace(' ', '+')}".encode(), client=client))


def admin(app: WebApp) -> tuple[str, str]:
    """(session cookie header, csrf token)."""
    r = login(app)
    assert r.status == 303, r
    sc = cookie_of(r, SESSION_COOKIE)
    assert sc is not None and "HttpOnly" in sc and "SameSite=Strict" in sc and "Secure" not in sc
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
    decided = UnblockStore(app.state_dir).get(rid)
    assert decided is not None and decided["decision"] == "allowed (temporary)"
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


# -- the status page's text: formatted for people, first-run checklist, chart = counters ------

# What must never reach a page's visible text: Python/JSON structures and reprs, numpy
# scalars, booleans, floats with many decimals, ISO timestamps.
RAW = re.compile(r"[{}\[\]]|np\.|\bNone\b|\bTrue\b|\bFalse\b|\d\.\d{4,}|\d{4}-\d\d-\d\dT\d\d:\d\d")


def page_text(page: str) -> str:
    p = Texts()
    p.feed(page)
    return re.sub(r"\s+", " ", " ".join(p.text))


def assert_no_raw(page: str) -> None:
    text = page_text(page)
    found = [text[max(m.start() - 40, 0):m.end() + 40] for m in RAW.finditer(text)]
    assert not found, found


def by_id(page: str, ident: str) -> str:
    """The text of the element with ``id`` (up to its first closing tag)."""
    m = re.search(rf'id="{re.escape(ident)}"[^>]*>(.*?)</', page, re.S)
    assert m, ident
    return m.group(1)


def first_run_record() -> dict:
    """A fresh appliance's record, as data.collect makes it: the demo bundle, no updates, one
    upstream answering and one not (with the error), one upstream error, a minute history."""
    t = int(NOW.timestamp())
    history = [{"t": t - 60 * k, "queries": 3, "blocked": 1} for k in range(1, 11)]
    return {
        "version": "0.1.0", "time": "2026-11-25T12:00:00Z",
        "appliance": {"running": True, "pid": 7, "started": "2026-11-25T11:50:00Z", "uptime_s": 600,
                      "config": None, "state_dir": "/var/lib/schoolgate"},
        "bundle": {"version": 1, "demo": True, "how": "demo", "path": "/x", "created": "2026-11-15T11:25:52.123456Z",
                   "expires": "2036-11-21T21:25:52Z", "age_s": 10 * 86400, "expires_in_s": 3650 * 86400,
                   "domains": 1146, "categories": {"gambling": 323, "drugs": 521}},
        "updates": {"configured": False},
        "dns": {"queries": 30, "blocked": 10, "cache_hits": 3, "forwarded": 20, "rate_limited": 0, "servfail": 1,
                "upstream_errors": 1, "blocked_by_category": {"gambling": 10},
                "upstream_latency_ms": {"0": {"queries": 19, "errors": 0, "avg_ms": 1.234567891234,
                                              "histogram_ms": {"1": 10, "inf": 0}},
                                        "1": {"queries": 1, "errors": 1, "avg_ms": None, "histogram_ms": {}}},
                "cache_hit_ratio": 0.1, "qps": 0.05, "counters_available": True, "workers": 1,
                "listen": ["127.0.0.1:5353"], "upstreams": ["9.9.9.9:53", "127.0.0.53:53"], "block_mode": "nxdomain",
                "upstream_status": [
                    {"address": "9.9.9.9:53", "index": 0, "up": True, "rtt_ms": 1.23456789, "avg_ms": 1.2345678,
                     "queries": 19, "errors": 0, "last_error": None},
                    {"address": "127.0.0.53:53", "index": 1, "up": False, "rtt_ms": 0.0, "avg_ms": None,
                     "queries": 1, "errors": 1, "last_error": f"connection refused {XSS}"}],
                "counting_since": "2026-11-25T11:50:00Z"},
        "flows": {"state": None, "counters": {"seen": 0, "blocked": 0, "reset": 0, "by_proto": {}}},
        "system": {"disk": {"total": 10 ** 11, "free": 8 * 2 ** 30, "used_pct": 9.4}, "memory": None,
                   "cpu_temp_c": None, "load": [0.123456789, 0.2, 0.3], "uptime_s": 86400 * 3},
        "history": history,
        "top_blocked": [["casino.test", 10]],
        "policies": [{"name": "default", "block": ["gambling"], "block_mode": "nxdomain",
                      "networks": ["every other client"]}],
        "temporary_allows": [],
        "config_check": None,
    }


def test_status_page_first_run_record() -> None:
    from appliance.web.pages import status_page

    page = status_page(first_run_record(), NOW, None, None, False).decode()
    assert_no_raw(page)
    text = page_text(page)
    # each upstream by its address, with its state; the failing one loudly, with its error (escaped)
    assert "9.9.9.9:53" in text and "127.0.0.53:53" in text
    assert '<span class="badge bad">not answering</span>' in page and "answering" in text
    assert f"connection refused {XSS}" in text and XSS not in page
    assert "1 of 2 answering" in text and "rtt 1.2 ms" in text
    # plurals
    assert "1 error" in text and "1 errors" not in text and "1 failed try in all" in text
    assert "19 queries" in text and "1 query" in text and "1 worker" in text
    # times and sizes for people
    assert "10 days ago" in text and "in 10 years" in text and "8.0 GiB free" in text
    assert "0.12 · 0.20 · 0.30" in text and "appliance 10 min" in text and "system 3 days" in text
    # every checklist item is to do, each saying what to do
    for key, hint in (("lists", "updates:"), ("upstreams", "127.0.0.53:53"),
                      ("admin", "schoolgate web hash-password"), ("updates", "trusted_root:")):
        item = page.split(f'id="check-{key}"')[1].split("</li>")[0]
        assert 'class="todo"' in page.split(f'id="check-{key}"')[1][:20] and "to do" in item and hint in item, key
    assert "First-run checklist: 0 of 4 done" in text


def test_status_page_plural_and_counts() -> None:
    from appliance.web.pages import status_page

    rec = first_run_record()
    rec["dns"]["upstream_errors"] = 2
    rec["dns"]["upstream_status"][1].update(queries=2, errors=2)
    text = page_text(status_page(rec, NOW, None, None, False).decode())
    assert "2 errors" in text and "2 failed tries in all" in text and "2 queries" in text
    rec["dns"].update(queries=1234567, upstream_status=[dict(rec["dns"]["upstream_status"][0], errors=1234)])
    text = page_text(status_page(rec, NOW, None, None, False).decode())
    assert "1,234,567" in text and "1,234 errors" in text


def test_status_page_missing_fields() -> None:
    """A record with only what cannot be missing: the page renders, unknowns show as a dash
    or "unknown", never as None."""
    from appliance.web.pages import status_page

    for rec in ({"version": "0.1.0", "time": "2026-11-25T12:00:00Z"},
                {"version": "0.1.0", "time": "2026-11-25T12:00:00Z", "appliance": {}, "bundle": {"demo": None},
                 "updates": {}, "dns": {"counters_available": True, "upstreams": ["9.9.9.9:53"]}, "system": {},
                 "flows": {"state": {"enabled": True}}, "history": [{"t": "x"}, None], "top_blocked": [[1]]}):
        page = status_page(rec, NOW, None, None, True).decode()
        assert_no_raw(page)
        for key in ("lists", "upstreams", "updates"):
            assert page.split(f'id="check-{key}"')[1].startswith(' class="unknown"'), (key, rec)
        assert page.split('id="check-admin"')[1].startswith(' class="done"')
    # an upstream with no live health and no tries yet: "no queries yet", the item unknown
    assert "no queries yet" in page_text(page)


def test_checklist_gone_when_everything_is_done() -> None:
    from appliance.web.pages import checklist, status_page

    rec = first_run_record()
    rec["bundle"].update(demo=False, how="active")
    rec["updates"] = {"configured": True, "repository": "https://lists.example.org/sg/", "interval_s": 3600,
                      "last_check": "2026-11-25T11:57:00.123456Z", "last_result": "up-to-date", "last_error": None,
                      "last_success": "2026-11-25T11:57:00Z", "next_check": "2026-11-25T12:57:00Z"}
    rec["dns"]["upstream_status"] = rec["dns"]["upstream_status"][:1]
    assert [state for _k, state, _t, _w in checklist(rec, True)] == ["done"] * 4
    page = status_page(rec, NOW, None, None, True).decode()
    assert 'id="checklist"' not in page and "Serving the <strong>DEMO" not in page
    assert_no_raw(page)
    text = page_text(page)
    assert "3 min ago" in text and "in 57 min" in text and "every 1 h" in text
    # one item not done brings the list back, with only that one to do
    states = {k: s for k, s, _t, _w in checklist(rec, False)}
    assert states == {"lists": "done", "upstreams": "done", "admin": "todo", "updates": "done"}
    assert 'id="checklist"' in status_page(rec, NOW, None, None, False).decode()


def test_upstream_state_from_health_or_counters() -> None:
    from appliance.web.pages import upstream_rows, upstream_state

    def state(**row) -> str:
        return upstream_state(upstream_rows({"upstream_status": [dict({"address": "a"}, **row)]})[0])

    assert state(up=True, queries=3, errors=0) == "up"
    assert state(up=False, queries=3, errors=3) == "down"
    # out of its back-off ("up" again) but its last try failed: still not answering
    assert state(up=True, queries=3, errors=3, last_error="connection refused") == "down"
    assert state(queries=3, errors=3) == "down" and state(queries=3, errors=1) == "up"
    assert state() == "unknown" and state(up="yes") == "unknown"
    # without upstream_status: addresses (or dicts) and the counters by index
    rows = upstream_rows({"upstreams": ["1.1.1.1:53", {"address": "2.2.2.2:53", "up": False}],
                          "upstream_latency_ms": {"0": {"queries": 4, "errors": 0, "avg_ms": 2.5}}})
    assert [(r["address"], upstream_state(r), r["avg_ms"]) for r in rows] == [
        ("1.1.1.1:53", "up", 2.5), ("2.2.2.2:53", "down", None)]


def test_upstream_rows_merge_live_health() -> None:
    from appliance.web.data import upstream_rows

    rows = upstream_rows(["9.9.9.9:53", "127.0.0.53:53"],
                         {"0": {"queries": 10, "errors": 1, "avg_ms": 3.0}},
                         [{"address": "127.0.0.53:53", "index": 0, "up": False, "rtt_ms": 0.0, "queries": 2,
                           "errors": 2, "last_error": "connection refused"}])
    assert rows[0] == {"address": "9.9.9.9:53", "index": 0, "queries": 10, "errors": 1, "avg_ms": 3.0,
                       "up": None, "rtt_ms": None, "last_error": None, "last_error_at": None, "last_ok": None,
                       "checked": None}
    # matched by address, not by the (stale) index; its own counts when the shared ones lack it
    assert (rows[1]["up"], rows[1]["last_error"], rows[1]["queries"]) == (False, "connection refused", 2)


def test_people_formats() -> None:
    from appliance.web.pages import count, duration, nbytes, plural

    assert [plural(n, "error") for n in (0, 1, 2, 1234)] == ["0 errors", "1 error", "2 errors", "1,234 errors"]
    assert plural(1, "query", "queries") == "1 query" and plural(None, "error") == "— errors"
    assert [count(x) for x in (1234567, 2.6, None, True, "7", float("nan"))] == ["1,234,567", "3", "—", "—", "—", "—"]
    assert [nbytes(x) for x in (512, 1536, 5 * 2 ** 20, 77.8 * 2 ** 30, 300 * 2 ** 20)] == [
        "512 B", "1.5 KiB", "5.0 MiB", "77.8 GiB", "300 MiB"]
    assert [duration(x) for x in (9, 125, 3 * 3600 + 300, 30 * 3600, 86400 * 10, 86400 * 3650)] == [
        "9 s", "2 min", "3 h 5 min", "1 day 6 h", "10 days", "10 years"]


def test_chart_total_is_the_counter_it_claims_to_show() -> None:
    """The legend's totals, the "Last 24 hours" counter and the data are one Series: a minute
    in the window counts in all three, one outside it (25 h ago) in none."""
    from appliance.web.charts import N_BUCKETS, axis_top, history_series
    from appliance.web.pages import status_page

    t = int(NOW.timestamp())
    history = ([{"t": t - 60 * k, "queries": 100 + k, "blocked": k % 7} for k in range(0, 1440, 7)]
               + [{"t": t - 25 * 3600, "queries": 99999, "blocked": 999}])
    rec = first_run_record()
    rec["history"] = history
    series = history_series(history, t)
    inside = [h for h in history if h["t"] > t - 86400]
    assert len(series.queries) == N_BUCKETS
    assert series.total_queries == sum(h["queries"] for h in inside)
    assert series.total_blocked == sum(h["blocked"] for h in inside)
    page = status_page(rec, NOW, None, None, False).decode()
    legend_q, legend_b = (int(by_id(page, i).replace(",", "")) for i in ("chart-queries", "chart-blocked"))
    counter = int(by_id(page, "count-24h").replace(",", ""))
    assert legend_q == counter == series.total_queries and legend_b == series.total_blocked
    assert f"{series.total_blocked:,} blocked" in page.split('id="count-24h"')[1].split("</div>")[0]
    # the axis reaches the busiest bucket, and its label is the scale the points are drawn at
    top = int(by_id(page, "chart-top").replace(",", ""))
    assert top == axis_top(series.peak) >= series.peak and top < 2 * series.peak
    ys = [float(p.split(",")[1]) for p in page.split('<polyline')[1].split('points="')[1].split('"')[0].split()]
    assert min(ys) == pytest.approx(100 - series.peak * 100 / top, abs=0.01) and max(ys) <= 100


def test_chart_and_counters_agree_on_the_real_data_path(tmp_path: Path, bundle: Path) -> None:
    """Shared counters written as a DNS worker writes them (counted, then folded into the
    minute history): the chart's total, the "Last 24 hours" counter and the Queries counter
    show one number, and "per second" is the last complete minute's."""
    cfg_file = tmp_path / "sg.yaml"
    cfg_file.write_text(f"state_dir: {tmp_path}/state\nbundle: {bundle}\n")
    (tmp_path / "state").mkdir()
    stats = SharedStats.create(slots_for(1), clock=lambda: NOW.timestamp())
    w = stats.slot(0)
    t = NOW.timestamp()
    for minutes_ago, n, blocked in ((300, 40, 5), (61, 17, 2), (1, 120, 9)):
        w.add("queries", n)
        for _ in range(blocked):
            w.count_blocked(1)
        w.roll(w.get("queries"), w.get("blocked"), t - 60 * minutes_ago)
    app = WebApp(load_config(cfg_file), Assembly(str(cfg_file)), stats=stats, clock=lambda: NOW, mono=Clock())
    page = run(app, req("GET", "/")).body.decode()
    assert_no_raw(page)
    assert (by_id(page, "chart-queries"), by_id(page, "count-24h"), by_id(page, "count-queries")) == ("177",) * 3
    assert by_id(page, "chart-blocked") == "16" == by_id(page, "count-blocked")
    assert by_id(page, "count-qps") == "2.00"  # 120 queries in the minute before now's
    assert json.loads(run(app, req("GET", "/api/status")).body)["dns"]["qps"] == 2.0


def test_busy_record_page_is_clean(busy_app: WebApp) -> None:
    """The busy appliance (two upstreams, one DoT, failures in both): no raw value, each
    upstream by its configured text, errors counted in words."""
    page = run(busy_app, req("GET", "/")).body.decode()
    assert_no_raw(page)
    text = page_text(page)
    assert "9.9.9.9:53" in text and "tls://1.1.1.1:853#cloudflare-dns.com" in text
    assert "14 queries · 2 errors" in text and "4 queries · 1 error" in text and "4 failed tries in all" in text
    assert "48.3 °C" in text and "2,401" in text
    assert "<script" not in page and "style=" not in page
