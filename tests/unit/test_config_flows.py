"""The config's flows: section (appliance/config/flows.py)."""

from __future__ import annotations

import pytest

from appliance.config.flows import FlowsConfig
from appliance.config.load import ConfigErrors, load_config


def test_absent_means_disabled_and_values_parse() -> None:
    assert load_config("c.yaml", "state_dir: /tmp/x\n").flows == FlowsConfig()
    c = load_config("c.yaml", "flows: {enabled: true, interface: eth1, mode: monitor, block_quic: true,\n"
                              "        block_dot: false, flow_timeout: 2m, max_flows: 1000}\n").flows
    assert c == FlowsConfig(True, "eth1", "monitor", True, False, True, 120, 1000)
    assert (c.capture, c.nflog_group) == ("auto", 2375)
    c = load_config("c.yaml", "flows: {capture: bpf, nflog_group: 0}\n").flows
    assert (c.capture, c.nflog_group) == ("bpf", 0)


def test_capture_errors() -> None:
    with pytest.raises(ConfigErrors) as e:
        load_config("c.yaml", "flows:\n  capture: nfqueue\n  nflog_group: 65536\n")
    got = sorted(str(x) for x in e.value.errors)
    assert got[0].startswith("c.yaml:2:12: flows.capture must be one of auto, nflog, bpf"), got
    assert got[1].startswith("c.yaml:3:16: flows.nflog_group must be a whole number from 0 to 65535"), got


def test_every_error_with_line_and_column() -> None:
    text = ("flows:\n  enabled: 1\n  interface: 'a/b'\n  mode: block\n  flow_timeout: 0\n"
            "  max_flows: 3\n  color: red\n")
    with pytest.raises(ConfigErrors) as e:
        load_config("c.yaml", text)
    got = sorted(str(x) for x in e.value.errors)
    assert any(s.startswith("c.yaml:2:12: flows.enabled must be true or false") for s in got), got
    assert any(s.startswith("c.yaml:3:14: flows.interface") for s in got), got
    assert any(s.startswith("c.yaml:4:9: flows.mode must be one of enforce, monitor") for s in got), got
    assert any(s.startswith("c.yaml:5:17: flows.flow_timeout") for s in got), got
    assert any(s.startswith("c.yaml:6:14: flows.max_flows") for s in got), got
    assert any(s.startswith("c.yaml:7:3: unknown key flows.color") for s in got), got
    assert len(got) == 6


def test_enabled_needs_an_interface() -> None:
    with pytest.raises(ConfigErrors, match="flows.enabled needs flows.interface"):
        load_config("c.yaml", "flows: {enabled: true}\n")
