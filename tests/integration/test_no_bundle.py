"""`no_bundle:` — what `schoolgate run` answers when the configured bundle does not open
(appliance/bundles/fallback.py): the embedded demo bundle, REFUSED, or forwarding unfiltered with
the status saying so. Real server, dnsmasq upstream and dnspython on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("dns", reason="needs dnspython (pip install -e '.[test]')")
import dns.message  # noqa: E402
import dns.query  # noqa: E402
import dns.rcode  # noqa: E402

from tests.bundles import make_bundle  # noqa: E402
from tests.dnsservers import free_port, need_tools, start_dnsmasq, start_schoolgate  # noqa: E402

pytestmark = pytest.mark.slow

CONFIG = """\
state_dir: {tmp}/state
bundle: {tmp}/bundle
no_bundle: {mode}
dns:
  listen: ["127.0.0.1:{port}"]
  upstreams: ["127.0.0.1:{upstream}"]
  upstream_timeout: 500ms
  rate_limit: 0
policies:
  default: {{block: [gambling]}}
"""


def ask(port: int, name: str) -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=3)


@pytest.mark.parametrize("mode", ["embedded", "refuse", "forward"])
def test_a_bundle_that_does_not_open(tmp_path, mode) -> None:
    need_tools("dnsmasq")
    make_bundle(tmp_path / "bundle", 3)
    (tmp_path / "bundle" / "manifest.json").write_text("{ damaged")  # an SD card gone bad
    up, port = free_port(), free_port()
    upstream = start_dnsmasq(tmp_path, up)
    cfg = tmp_path / "schoolgate.yaml"
    cfg.write_text(CONFIG.format(tmp=tmp_path, mode=mode, port=port, upstream=up))
    sg = None
    try:
        sg = start_schoolgate(cfg, tmp_path, port, env={"XDG_STATE_HOME": str(tmp_path / "xdg")})
        demo_listed = ask(port, "www.0-casino.info")  # in the demo bundle's gambling excerpt
        allowed = ask(port, "www.allowed.test")  # dnsmasq's test zone answers it
        status = json.loads(subprocess.run(
            [sys.executable, "-m", "appliance.cli", "status", "--json", "--config", str(cfg)],
            capture_output=True, text=True, timeout=60, check=True).stdout)
        serving = status["serving"]
        text = subprocess.run([sys.executable, "-m", "appliance.cli", "status", "--config", str(cfg)],
                              capture_output=True, text=True, timeout=60, check=True).stdout
        if mode == "embedded":
            assert demo_listed.rcode() == dns.rcode.NXDOMAIN  # blocked by the demo bundle
            assert serving["how"] == "demo" and serving["demo"] is True
            assert allowed.rcode() == dns.rcode.NOERROR and allowed.answer
        elif mode == "refuse":
            assert demo_listed.rcode() == allowed.rcode() == dns.rcode.REFUSED
            assert serving["how"] == "refusing"
            assert "REFUSING EVERY QUERY" in text
        else:
            # Forwarded, not blocked: the test upstream refuses names outside its zone, which
            # the service reports to the client as SERVFAIL (never our NXDOMAIN block).
            assert demo_listed.rcode() == dns.rcode.SERVFAIL
            assert allowed.rcode() == dns.rcode.NOERROR and allowed.answer
            assert serving["how"] == "unfiltered"
            assert "FORWARDING UNFILTERED" in text
        log = sg.text()
        assert "no bundle can be opened" in log
    finally:
        if sg is not None:
            sg.stop()
        upstream.stop()
