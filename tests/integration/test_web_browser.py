"""The status page in a real browser: headless Debian Chromium driven by Playwright (the
system browser, no `playwright install`), against `schoolgate run` on 127.0.0.1.

It logs in, asks for an update, adds a temporary allow, and checks that hostile names — a
DNS query name whose label is ``<img src=x onerror=alert(1)>`` and an unblock request
carrying HTML — render as text: no dialog opens, no element is injected. A screenshot is
kept as an artefact (tests/artifacts/web-status.png, git-ignored)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("dns", reason="needs dnspython (pip install -e '.[test]')")
playwright = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install -e '.[test]')")
import dns.message  # noqa: E402
import dns.name  # noqa: E402
import dns.query  # noqa: E402

from tests.bundles import make_bundle  # noqa: E402
from tests.dnsservers import free_port, start_schoolgate  # noqa: E402
from tests.integration.test_web import PASSWORD, XSS_LABEL, request, wait_web, write_config  # noqa: E402
from tests.wait import DEADLINE  # noqa: E402

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
XSS = XSS_LABEL.decode()


@pytest.fixture(scope="module")
def appliance(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium (as root, tests/setup.sh installs it)")
    tmp = tmp_path_factory.mktemp("webui")
    make_bundle(tmp / "bundle", 3)
    dns_port, web_port, bp_port = free_port(), free_port(), free_port()
    sg = start_schoolgate(write_config(tmp, dns_port, web_port, bp_port), tmp, dns_port)
    wait_web(web_port)
    yield {"dns": dns_port, "web": web_port, "bp": bp_port, "state": tmp / "state", "tmp": tmp}
    assert sg.stop() == 0, sg.text()[-3000:]


def test_admin_flow_in_chromium(appliance, tmp_path: Path) -> None:
    web, bp = appliance["web"], appliance["bp"]
    # A blocked query name whose first label carries markup (DNS labels may hold any bytes).
    hostile = dns.name.Name([XSS_LABEL, b"casino", b"test", b""])
    dns.query.udp(dns.message.make_query(hostile, "A"), "127.0.0.1", port=appliance["dns"], timeout=3)
    # An unblock request whose reason is markup, sent from the block page.
    status, _, _ = request(bp, "POST", "/unblock", f"name=casino.test&reason={XSS}+for+homework",
                           {"Host": "casino.test"})
    assert status == 200

    dialogs: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True, timeout=DEADLINE * 1000)
        try:
            page = browser.new_page(viewport={"width": 412, "height": 915})  # a phone
            page.set_default_timeout(DEADLINE * 1000)  # every wait of Playwright's: a loaded machine is slow
            def dismiss(d) -> None:
                dialogs.append(d.message)
                d.dismiss()

            page.on("dialog", dismiss)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://127.0.0.1:{web}/")
            assert "schoolgate status" in page.title()
            page.click("text=Admin login")
            page.fill("input[name=password]", PASSWORD)
            page.click("#login-submit")
            page.wait_for_load_state()
            assert page.locator("#admin").count() == 1, page.content()[:2000]
            page.click("#update-now")
            page.wait_for_selector("#flash")
            assert "Update check requested" in page.inner_text("#flash")
            page.fill("#allow-form input[name=name]", "casino.test")
            page.select_option("#allow-form select[name=duration]", "15m")
            page.click("#allow-submit")
            page.wait_for_selector("#flash")
            assert "Temporary allow added" in page.inner_text("#flash")
            body = page.inner_text("body")
            assert f"{XSS} for homework" in body  # shown as text ...
            # ... and not as markup: no <img> anywhere, no dialog, no script error
            assert page.locator("img").count() == 0
            assert page.evaluate("document.querySelectorAll('[onerror]').length") == 0
            # the hostile query name is among the block events, as text
            assert f"{XSS}.casino.test" in page.inner_text("#admin")
            shot = tmp_path / "web-status.png"
            page.screenshot(path=str(shot), full_page=True)
            ARTIFACTS.mkdir(exist_ok=True)
            shutil.copy(shot, ARTIFACTS / "web-status.png")
            # the block page in the browser too
            page.goto(f"http://127.0.0.1:{bp}/")
            assert page.locator("h1").count() == 1
            page.wait_for_load_state("load")  # everything it loads, loaded: any error would have come
        finally:
            browser.close()
    assert dialogs == [] and errors == []
    actions = {json.loads(x)["action"] for x in (appliance["state"] / "audit.jsonl").read_text().splitlines()}
    assert {"login", "update-now", "temporary-allow", "events-view"} <= actions
