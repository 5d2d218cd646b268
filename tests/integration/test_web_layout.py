"""The status page's layout in a real browser, at a phone's width (390 px) and a laptop's
(1280 px): headless Debian Chromium driven by Playwright (the system browser, as in
test_web_browser.py), against `schoolgate run` on 127.0.0.1 as a new user first meets it — the
demo bundle, no `updates:`, no admin password, one upstream answering (dnsmasq) and one not
(a port nothing listens on).

The check runs in the page (LAYOUT_CHECK): no word of a label, heading or cell broken over
two lines (each word's Range must lie in one line box), nothing wider than the viewport, and
no raw value (``{``, ``np.``, ``None``, ...) in the visible text. test_layout_check_catches_*
prove that the check fails on the faults it is for. Screenshots are kept as artefacts
(tests/artifacts/status-390.png, status-1280.png; git-ignored)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("dns", reason="needs dnspython (pip install -e '.[test]')")
playwright = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install -e '.[test]')")
import dns.exception  # noqa: E402
import dns.message  # noqa: E402
import dns.query  # noqa: E402

from appliance.web.pages import upstream_rows, upstream_state  # noqa: E402
from tests.dnsservers import free_port, start_dnsmasq, start_schoolgate  # noqa: E402
from tests.integration.test_web import request, wait_web  # noqa: E402
from tests.integration.test_web_browser import ARGS, ARTIFACTS, CHROMIUM  # noqa: E402
from tests.wait import DEADLINE, wait_for  # noqa: E402

pytestmark = pytest.mark.slow

WIDTHS = (390, 1280)
DEMO_BLOCKED = "www.0-casino.info"  # in the demo bundle's gambling excerpt

# Run in the page: a list of problems (empty: the layout is clean).
LAYOUT_CHECK = r"""
() => {
  const SEL = 'h1,h2,h3,h4,th,td,dt,dd,label,li,p,figcaption,a,button,.badge,.tile,.legend,footer';
  const RAW = /[{}]|np\.|\bNone\b|\bTrue\b|\bFalse\b/;
  const doc = document.documentElement;
  const width = doc.clientWidth;
  const problems = [];
  const describe = (el) => {
    const id = el.id ? '#' + el.id : '';
    const cls = el.classList.length ? '.' + [...el.classList].join('.') : '';
    return `<${el.tagName.toLowerCase()}${id}${cls}> "${(el.textContent || '').trim().slice(0, 60)}"`;
  };
  const scrolls = (el) => {
    for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
      const o = getComputedStyle(a).overflowX;
      if (o === 'auto' || o === 'scroll' || o === 'hidden') return true;
    }
    return false;
  };
  if (doc.scrollWidth > doc.clientWidth) {
    problems.push(`the page scrolls sideways: scrollWidth ${doc.scrollWidth} > clientWidth ${doc.clientWidth}`);
  }
  for (const el of document.body.querySelectorAll(SEL)) {
    const r = el.getBoundingClientRect();
    if (r.width > 0 && (r.right > width + 0.5 || r.left < -0.5) && !scrolls(el)) {
      problems.push(`${describe(el)} spans x ${r.left.toFixed(0)}..${r.right.toFixed(0)}, outside 0..${width}`);
    }
  }
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const range = document.createRange();
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const host = node.parentElement && node.parentElement.closest(SEL);
    if (!host || !node.parentElement.getClientRects().length) continue;  // not one of ours, or hidden
    const raw = node.data.match(RAW);
    if (raw) problems.push(`${describe(host)} shows a raw value: "${raw[0]}" in "${node.data.trim().slice(0, 80)}"`);
    const words = /\S+/g;
    for (let m = words.exec(node.data); m; m = words.exec(node.data)) {
      range.setStart(node, m.index);
      range.setEnd(node, m.index + m[0].length);
      const boxes = [...range.getClientRects()].filter((b) => b.width > 0 && b.height > 0);
      if (boxes.length > 1 && boxes.some((b) => b.top >= boxes[0].bottom - 1)) {
        const lines = new Set(boxes.map((b) => Math.round(b.top))).size;
        problems.push(`"${m[0]}" is broken over ${lines} lines in ${describe(host)}`);
      }
    }
  }
  return problems;
}
"""


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium (as root, tests/setup.sh installs it)")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True, timeout=DEADLINE * 1000)
        try:
            yield b
        finally:
            b.close()


def first_run_config(tmp: Path, dns_port: int, web_port: int, answering: int, silent: int) -> Path:
    """What a new user starts with: no bundle (the demo one is installed), no updates, no
    admin password; the first upstream does not answer, the second does."""
    (tmp / "state").mkdir(exist_ok=True)
    cfg = tmp / "schoolgate.yaml"
    cfg.write_text(f"""\
state_dir: {tmp}/state
dns:
  listen: ["127.0.0.1:{dns_port}"]
  upstreams: ["127.0.0.1:{silent}", "127.0.0.1:{answering}"]
  rate_limit: 0
  workers: 1
policies:
  default: {{block: [gambling, drugs, doh]}}
web:
  listen: "127.0.0.1:{web_port}"
""")
    return cfg


def status(port: int) -> dict:
    return json.loads(request(port, "GET", "/api/status")[2])


@pytest.fixture(scope="module")
def appliance(browser, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("weblayout")
    dns_port, web_port, up_port, silent_port = free_port(), free_port(), free_port(), free_port()
    upstream = start_dnsmasq(tmp, up_port)
    sg = start_schoolgate(first_run_config(tmp, dns_port, web_port, up_port, silent_port), tmp, dns_port)
    try:
        wait_web(web_port)
        sent = iter(range(10 ** 6))

        def settled() -> bool:
            """Queries until the page's record shows the first upstream not answering and the
            second answering, a blocked name among the counters (counters.json: every 5 s)."""
            i = next(sent)
            for name in (f"n{i}.allowed.test", DEMO_BLOCKED):
                try:
                    dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=dns_port, timeout=3)
                except dns.exception.Timeout:  # a loaded machine: the next poll asks again
                    pass
            st = status(web_port)
            rows = upstream_rows(st["dns"])
            return ([upstream_state(u) for u in rows] == ["down", "up"] and (st["bundle"] or {}).get("demo") is True
                    and st["dns"].get("blocked", 0) > 0 and bool(st["top_blocked"]))

        wait_for(settled, DEADLINE, "the record to show both upstreams' states and a blocked name", period=0.5)
        yield {"web": web_port, "tmp": tmp}
    finally:
        assert sg.stop() == 0, sg.text()[-3000:]
        upstream.stop()


def layout_problems(page) -> list[str]:
    return page.evaluate(LAYOUT_CHECK)


@pytest.mark.parametrize("width", WIDTHS)
def test_status_page_layout(appliance, browser, width: int, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": width, "height": 900})
    try:
        page.set_default_timeout(DEADLINE * 1000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        # e.g. a CSP refusal; not the browser's own /favicon.ico (404: the page names none)
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error"
                and not msg.location.get("url", "").endswith("/favicon.ico") else None)
        page.goto(f"http://127.0.0.1:{appliance['web']}/")
        page.wait_for_load_state("load")
        shot = tmp_path / f"status-{width}.png"
        page.screenshot(path=str(shot), full_page=True)
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(shot, ARTIFACTS / f"status-{width}.png")
        assert layout_problems(page) == []
        assert errors == []
        # the stylesheet applied (the CSP allows it): cards, badges
        assert page.evaluate("getComputedStyle(document.querySelector('section')).borderRadius") == "8px"
        # what a first-run user must see: the checklist with every item to do, the silent upstream loudly
        items = page.locator("#checklist li")
        assert items.count() == 4
        assert page.locator("#checklist li.todo").count() == 4, page.inner_text("#checklist")
        card = page.inner_text("#upstreams")
        assert "1 of 2 answering" in card and "not answering" in card and "Last error" in card
        assert page.locator("#upstreams .badge.bad").count() == 1
        # one column on a phone, two on a laptop
        columns = page.evaluate("getComputedStyle(document.querySelector('.cards')).gridTemplateColumns")
        assert len(columns.split()) == (1 if width < 600 else 2), columns
        # the chart's total is the counter's
        assert page.inner_text("#chart-queries") == page.inner_text("#count-24h")
    finally:
        page.close()


# The faults the check is for, each in a page of its own (set_content: no server, no CSP).
BROKEN_CELL = """<!doctype html><style>table{width:20px;border-collapse:collapse}
td,th{overflow-wrap:anywhere;padding:0}</style>
<table><tr><th>Capture / enforcement</th><td>x</td></tr></table>"""
WIDE = '<!doctype html><div style="width:2000px">a row of tiles too wide for a phone</div>'
RAW_VALUE = "<!doctype html><table><tr><th>Upstreams</th><td>0 {'queries': 5, 'avg_ms': None}</td></tr></table>"
CLEAN = "<!doctype html><table><tr><th>Capture / enforcement</th><td>disabled</td></tr></table>"


@pytest.fixture()
def phone(browser):
    page = browser.new_page(viewport={"width": 390, "height": 800})
    yield page
    page.close()


def test_layout_check_catches_a_word_broken_over_lines(phone) -> None:
    phone.set_content(BROKEN_CELL)
    problems = layout_problems(phone)
    assert any('"Capture"' in p and "broken over" in p for p in problems), problems
    assert any('"enforcement"' in p for p in problems), problems


def test_layout_check_catches_overflow_and_raw_values(phone) -> None:
    phone.set_content(WIDE)
    assert any("scrolls sideways" in p for p in layout_problems(phone))
    phone.set_content(RAW_VALUE)
    problems = layout_problems(phone)
    assert any('raw value: "{"' in p for p in problems), problems
    phone.set_content(CLEAN)
    assert layout_problems(phone) == []
