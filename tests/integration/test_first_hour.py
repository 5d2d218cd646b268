"""The first hour of a school IT admin with a district config, on a fresh box.

A real TUF repository on 127.0.0.1 (tests/repo_server.py) offers the district's bundle,
whose categories (``malware`` here) the demo bundle a fresh box starts with does not have.
The config must be accepted before that bundle arrives (a warning, not an error), the box
must end up filtering with the district's bundle — not with safe defaults — and a later
bundle that drops a category a policy blocks must be refused with that reason while the
last good one keeps serving. Upstream health shows in ``schoolgate status``.

The last test walks it in a browser (headless Debian Chromium, as test_web_layout.py): the
status page with the district's bundle active, the checklist's bundle and updates items
done, the upstreams' states, screenshots at 390 and 1280 px that pass the layout check.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

pytest.importorskip("dns", reason="needs dnspython (pip install -e '.[test]')")
import dns.exception  # noqa: E402
import dns.message  # noqa: E402
import dns.query  # noqa: E402
import dns.rcode  # noqa: E402

from appliance.cli import main  # noqa: E402
from signatures.keys import Keyring, generate_keys  # noqa: E402
from signatures.repository import publish  # noqa: E402
from tests.bundles import make_bundle  # noqa: E402
from tests.dnsservers import free_port, start_schoolgate  # noqa: E402
from tests.integration.test_update_swap import Upstream  # noqa: E402
from tests.integration.test_web import request, wait_web  # noqa: E402
from tests.integration.test_web_browser import ARTIFACTS  # noqa: E402
from tests.integration.test_web_layout import WIDTHS, browser, layout_problems  # noqa: E402, F401
from tests.repo_server import RepoServer  # noqa: E402
from tests.wait import DEADLINE, wait_for  # noqa: E402

pytestmark = pytest.mark.slow


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def status(config: Path) -> dict:
    code, out, err = run_cli("status", "--json", "--config", str(config))
    assert code == 0, err
    return json.loads(out)


def rcode(port: int, name: str) -> str:
    try:
        r = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=5.0)
    except dns.exception.Timeout:
        return "no answer"
    return dns.rcode.to_text(r.rcode())


def district_config(path: Path, port: int, upstream: int, repo_url: str, extra: str = "") -> None:
    path.write_text(f"""\
state_dir: state
dns:
  listen: ["127.0.0.1:{port}"]
  upstreams: ["127.0.0.1:{upstream}", "127.0.0.1:{free_port()}"]
  rate_limit: 0
updates:
  repository: "{repo_url}"
  trusted_root: root.json
  interval: 1s
  timeout: 30s
{extra}policies:
  default: {{block: [gambling, malware]}}
""")


def district_repository(tmp_path: Path, **categories: tuple[str, ...]) -> tuple[Path, RepoServer, Upstream]:
    """The district's signed repository with bundle version 5 (the demo bundle a fresh box
    serves first is version 1) on 127.0.0.1, its root.json beside the config, and an
    upstream; the repository directory (publish more into it with the keys in keys/)."""
    now = datetime.now(UTC)
    keys, repo = tmp_path / "keys", tmp_path / "repo"
    generate_keys(keys)
    publish(repo, make_bundle(tmp_path / "b1", 5, now=now, categories=categories), Keyring(keys), now)
    shutil.copyfile(repo / "metadata" / "root.json", tmp_path / "root.json")
    return repo, RepoServer(repo), Upstream()


def test_a_district_config_on_a_fresh_box_ends_filtering_with_the_district_bundle(tmp_path: Path) -> None:
    repo, server, upstream = district_repository(tmp_path, malware=("malware.test",))
    keys = tmp_path / "keys"
    port = free_port()
    config = tmp_path / "schoolgate.yaml"
    district_config(config, port, upstream.port, server.url)
    try:
        # Before the first start: valid, with a warning naming the category and why.
        code, out, err = run_cli("check-config", str(config))
        assert code == 0, err
        assert "warning: policy default: malware not in the bundle in use yet" in err
        assert server.url in err and "1 warning" in out

        sg = start_schoolgate(config, tmp_path, port)
        try:
            wait_for(lambda: (status(config).get("serving") or {}).get("version") == 5, DEADLINE,
                     "the district's bundle to be served")
            st = status(config)
            assert st["demo"] is False and st["serving"]["how"] == "active"
            wait_for(lambda: rcode(port, "malware.test") == "NXDOMAIN", DEADLINE, "malware.test blocked")
            assert rcode(port, "casino.test") == "NXDOMAIN" and rcode(port, "example.org") == "NOERROR"
            wait_for(lambda: status(config).get("degraded") == [], DEADLINE, "no policy degraded")
            log = sg.text()
            assert "unknown category" not in log
            assert "malware not in the bundle in use yet" in log  # said while the demo served

            # The second upstream is a port nobody listens on: shown down, with the reason.
            def upstreams() -> list[dict]:
                return (status(config).get("dns") or {}).get("upstreams") or []
            wait_for(lambda: len(upstreams()) == 2, DEADLINE, "upstream records in status")
            good, bad = upstreams()
            assert good["up"] is True and good["last_error"] is None
            assert bad["up"] is False and bad["last_error"] == "connection refused"
            code, text, _ = run_cli("status", "--config", str(config))
            assert f"127.0.0.1:{upstream.port} answering" in text
            assert "NOT ANSWERING (connection refused)" in text
            assert "not answering (connection refused)" in sg.text()

            # The district drops malware: that bundle is refused, version 5 keeps serving.
            later = datetime.now(UTC)
            publish(repo, make_bundle(tmp_path / "b2", 6, now=later), Keyring(keys), later)
            wait_for(lambda: status(config)["updates"].get("last_result") == "refused", DEADLINE,
                     "version 6 to be refused")
            st = status(config)
            assert "malware" in st["updates"]["last_error"] and "missing_categories: degrade" in \
                st["updates"]["last_error"]
            assert st["serving"]["version"] == 5 and rcode(port, "malware.test") == "NXDOMAIN"

            # Now that the repository has delivered, an unknown category is an error.
            other = tmp_path / "other.yaml"
            district_config(other, port, upstream.port, server.url)
            other.write_text(other.read_text().replace("[gambling, malware]", "[gambling, adult]"))
            code, _, err = run_cli("check-config", str(other))
            assert code == 2
            assert "policy default: unknown category 'adult'" in err and "publish one with it" in err
        finally:
            stopped = sg.stop()
        assert stopped == 0, sg.text()[-3000:]
    finally:
        server.close()
        upstream.close()


def test_degrade_activates_a_bundle_without_a_category_and_says_so(tmp_path: Path) -> None:
    _, server, upstream = district_repository(tmp_path)
    port = free_port()
    config = tmp_path / "schoolgate.yaml"
    district_config(config, port, upstream.port, server.url)
    config.write_text(config.read_text().replace("  timeout: 30s\n", "  timeout: 30s\n  missing_categories: degrade\n"))
    try:
        code, _, err = run_cli("update", "--once", "--config", str(config))
        assert code == 0, err
        code, out, err = run_cli("check-config", str(config))
        assert code == 0 and "malware not in the active bundle" in err and "degraded" in err
        sg = start_schoolgate(config, tmp_path, port)
        try:
            wait_for(lambda: status(config).get("degraded") == [{"policy": "default", "missing": ["malware"]}],
                     DEADLINE, "the policy marked degraded")
            assert rcode(port, "casino.test") == "NXDOMAIN"  # the categories it has still block
            code, text, _ = run_cli("status", "--config", str(config))
            assert "policy default DEGRADED: malware not in the bundle" in text
        finally:
            stopped = sg.stop()
        assert stopped == 0, sg.text()[-3000:]
    finally:
        server.close()
        upstream.close()


def test_the_first_hour_in_a_browser(tmp_path: Path, browser) -> None:  # noqa: F811 (the fixture)
    _, server, upstream = district_repository(tmp_path, malware=("malware.test",))
    port, web = free_port(), free_port()
    config = tmp_path / "schoolgate.yaml"
    district_config(config, port, upstream.port, server.url, extra=f'web: {{listen: "127.0.0.1:{web}"}}\n')
    try:
        sg = start_schoolgate(config, tmp_path, port)  # a fresh state directory
        try:
            wait_web(web)

            def settled() -> bool:
                """The page's record: the district's bundle, no policy degraded, both upstreams'
                states known (counters.json: every 5 s), a blocked name counted."""
                rcode(port, "malware.test")
                rcode(port, f"n{time.monotonic_ns()}.example.org")
                st = json.loads(request(web, "GET", "/api/status")[2])
                rows = (st.get("dns") or {}).get("upstream_status") or []
                return ((st.get("bundle") or {}).get("version") == 5 and not (st.get("bundle") or {}).get("demo")
                        and [bool(r.get("up")) and not r.get("last_error") for r in rows] == [True, False]
                        and (st.get("dns") or {}).get("blocked", 0) > 0
                        and all(not p.get("missing") for p in st.get("policies") or []))

            wait_for(settled, DEADLINE, "the district's bundle and the upstreams' states on the page", period=0.5)
            assert "unknown category" not in sg.text()
            for width in WIDTHS:
                page = browser.new_page(viewport={"width": width, "height": 900})
                try:
                    page.set_default_timeout(DEADLINE * 1000)
                    page.goto(f"http://127.0.0.1:{web}/")
                    page.wait_for_load_state("load")
                    shot = tmp_path / f"first-hour-{width}.png"
                    page.screenshot(path=str(shot), full_page=True)
                    ARTIFACTS.mkdir(exist_ok=True)
                    shutil.copy(shot, ARTIFACTS / shot.name)
                    assert layout_problems(page) == []
                    text = page.inner_text("body")
                    assert "DEMO" not in text and "malware" in page.inner_text("#policies")
                    assert page.get_attribute("#check-lists", "class") == "done"
                    assert page.get_attribute("#check-updates", "class") == "done"
                    assert page.get_attribute("#check-upstreams", "class") == "todo"
                    card = page.inner_text("#upstreams")
                    assert "1 of 2 answering" in card and "connection refused" in card
                    assert "version 5" in page.inner_text("#checklist") or "5" in page.inner_text("#lists")
                finally:
                    page.close()
        finally:
            stopped = sg.stop()
        assert stopped == 0, sg.text()[-3000:]
    finally:
        server.close()
        upstream.close()
