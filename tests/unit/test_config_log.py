"""DNS upstream syntax (plain and tls://, appliance/config/values.py) and dns.tls_ca (appliance/config/dns.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config.load import load_config
from appliance.config.values import UpstreamAddress
from appliance.dns.upstream import upstream_text
from filters.errors import ConfigError


def test_plain_and_tls_upstreams(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    f = tmp_path / "c.yaml"
    f.write_text('dns:\n  upstreams: ["127.0.0.1:5399", "tls://127.0.0.1:8853#Dns.Example.", "tls://[::1]",\n'
                 '              "tls://192.0.2.1#dns.example"]\n  tls_ca: ca.pem\n')
    d = load_config(f).dns
    assert d.upstreams == (UpstreamAddress("127.0.0.1", 5399), UpstreamAddress("127.0.0.1", 8853, "dns.example"),
                           UpstreamAddress("::1", 853, ""), UpstreamAddress("192.0.2.1", 853, "dns.example"))
    assert [u.tls_name for u in d.upstreams] == [None, "dns.example", "", "dns.example"]
    assert d.tls_ca == (tmp_path / "ca.pem").resolve()
    assert [upstream_text(u) for u in d.upstreams] == ["127.0.0.1:5399", "tls://127.0.0.1:8853#dns.example",
                                                       "tls://[::1]:853", "tls://192.0.2.1:853#dns.example"]


def test_bad_upstreams_and_ca_are_reported_with_positions(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text('dns:\n  upstreams: ["tls://dns.example", "tls://1.2.3.4#bad name", "https://1.2.3.4"]\n'
                 '  tls_ca: nowhere.pem\n')
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    for text in (f"{f}:2:15: dns.upstreams[0]: not tls://address[:port][#server-name]: 'tls://dns.example'",
                 f"{f}:2:36: dns.upstreams[1]: not tls://address[:port][#server-name]: 'tls://1.2.3.4#bad name'",
                 f"{f}:2:62: dns.upstreams[2]: not an IP address with optional port",
                 f"{f}:3:11: dns.tls_ca: no such file"):
        assert text in msg, msg
