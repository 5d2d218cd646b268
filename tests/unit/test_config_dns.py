"""appliance.config.dns via load_config, and `schoolgate check-config`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.config.load import ConfigErrors, load_config
from appliance.config.values import UpstreamAddress, parse_hostport

ROOT = Path(__file__).resolve().parents[2]


def test_parse_hostport() -> None:
    assert parse_hostport("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_hostport("[::1]:53") == ("::1", 53)
    assert parse_hostport("::1") == ("::1", 53)
    assert parse_hostport("10.0.0.1") == ("10.0.0.1", 53)
    for bad in ("dns.google:53", "1.2.3.4:0", "[::1", "1.2.3.4:x", 53):
        assert parse_hostport(bad) is None


def test_dns_networks_and_policies(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("""\
dns:
  listen: ["127.0.0.1:5300", "[::1]:5300"]
  upstreams: ["127.0.0.1:5399"]
  block_mode: blockpage
  blockpage: [192.0.2.1]
  upstream_timeout: 250ms
  cache_size: 50
  rate_limit: {qps: 10}
networks:
  kids: {cidrs: [10.0.0.0/8, "fd00::/8"], policy: students}
policies:
  students: {block: [gambling]}
""")
    cfg = load_config(f)
    d = cfg.dns
    assert d.listen == (("127.0.0.1", 5300), ("::1", 5300)) and d.upstreams == (UpstreamAddress("127.0.0.1", 5399),)
    assert (d.block_mode, d.blockpage, d.upstream_timeout, d.cache_size) == ("blockpage", ("192.0.2.1",), 0.25, 50)
    assert (d.rate_limit, d.rate_burst) == (10.0, 20.0)
    assert cfg.networks[0].cidrs == ("10.0.0.0/8", "fd00::/8") and cfg.networks[0].policy == "students"
    assert cfg.policies["students"].block_mode is None  # unset: use dns.block_mode


def test_every_dns_error_with_position(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("""\
dns:
  listen: ["localhost:53"]
  block_mode: sinkhole
  cache_size: -1
  colour: red
networks:
  kids: {cidrs: [10.0.0.300/8], policy: nobody}
policies:
  students: {block: [gambling], mode: x}
""")
    with pytest.raises(ConfigErrors) as info:
        load_config(f)
    lines = str(info.value).splitlines()
    assert len(lines) == 7
    assert any(line.startswith(f"{f}:5:3: unknown key dns.colour") for line in lines)
    assert any(line.startswith(f"{f}:2:12: dns.listen[0]: not an IP address") for line in lines)
    assert any(line.startswith(f"{f}:3:15: dns.block_mode must be one of") for line in lines)
    assert any(line.startswith(f"{f}:4:15: dns.cache_size") for line in lines)
    assert any(line.startswith(f"{f}:7:18: networks.kids.cidrs[0]: not a CIDR") for line in lines)
    assert any(line.startswith(f"{f}:7:41: networks.kids.policy must name a policy") for line in lines)
    assert any(line.startswith(f"{f}:9:33: unknown key policies.students.mode") for line in lines)


def _check(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    return main(["check-config", *argv], out, err), out.getvalue(), err.getvalue()


def test_check_config_command(tmp_path: Path) -> None:
    code, out, err = _check(str(ROOT / "config" / "default.yaml"))
    # valid; in tests `upstreams: system` finds no resolver (tests/resolv.conf): a warning
    assert code == 0 and out.endswith(": ok (1 warning)\n")
    assert "warning: dns.upstreams: system: " in err and "names no nameserver" in err
    code, _, _ = _check(str(ROOT / "config" / "examples" / "school.yaml"))
    assert code == 0
    f = tmp_path / "bad.yaml"
    f.write_text("dns: {upstreams: [nowhere]}\npolicies:\n  default: {block: [gambling, nosuch]}\n")
    code, _, err = _check(str(f))
    assert code == 2
    lines = err.splitlines()  # the schema's error and the bundle's, in one pass, in file order
    assert lines[0] == (f"{f}:1:19: dns.upstreams[0]: not an IP address with optional port "
                        "(1.2.3.4:53 or [::1]:53), or system: 'nowhere'")
    assert lines[1].startswith(f"{f}:3:20: policy default: unknown category 'nosuch' (known: ")
    assert "no updates: section is configured" in lines[1] and len(lines) == 2
    f.write_text("policies:\n  default: {block: [gambling, nosuch]}\n")
    code, out, _ = _check(str(f), "--json")
    got = json.loads(out)
    assert code == 2 and got["ok"] is False
    assert got["errors"][0]["line"] == 2 and "unknown category 'nosuch'" in got["errors"][0]["message"]
    code, _, err = _check(str(tmp_path / "missing.yaml"))
    assert code == 2 and "file not found" in err


def test_policy_schedule_safesearch_doh_keys(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("""\
timezone: Europe/Paris
policies:
  students:
    block: [gambling]
    allow_doh: false
    safesearch: {google: true, bing: true, duckduckgo: true, youtube: moderate}
    schedule:
      - {days: mon-fri, time: "08:00-16:00", block: [games]}
      - days: [sat, sun]
        time: "22:00-06:00"
        block: [social]
  staff: {block: [], safesearch: true, allow_doh: true}
""")
    cfg = load_config(f)
    s = cfg.policies["students"]
    assert cfg.timezone == "Europe/Paris" and s.safesearch.youtube == "moderate" and s.safesearch.bing
    assert [(sorted(e.days), e.start, e.end, e.block) for e in s.schedule] == [
        ([0, 1, 2, 3, 4], 480, 960, ("games",)), ([5, 6], 1320, 360, ("social",))]
    assert cfg.policies["staff"].allow_doh and cfg.policies["staff"].safesearch.google
    assert load_config(tmp_path / "x.yaml", "policies: {p: {block: []}}\n").timezone == "UTC"


def test_policy_key_errors_with_position(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("""\
timezone: Mars/Olympus
policies:
  students:
    block: [gambling]
    allow_doh: maybe
    safesearch: {google: yes please, yahoo: true}
    schedule:
      - {days: mon-funday, time: "08:00-16:00", block: [games]}
      - {days: mon, time: "8h-16h", block: [games]}
      - {days: mon, time: "08:00-09:00", block: [games], colour: red}
  staff:
    block: []
    safesearch: {youtube: extreme}
    schedule: monday
""")
    with pytest.raises(ConfigErrors) as info:
        load_config(f)
    lines = str(info.value).splitlines()
    want = [f"{f}:1:11: timezone: unknown time zone 'Mars/Olympus'",
            f"{f}:5:16: policies.students.allow_doh must be true or false",
            f"{f}:6:26: policies.students.safesearch.google must be true or false",
            f"{f}:6:38: unknown key policies.students.safesearch.yahoo",
            f"{f}:8:16: policies.students.schedule[0].days: 'mon-funday' is not a day",
            f"{f}:9:27: policies.students.schedule[1].time: not \"HH:MM-HH:MM\"",
            f"{f}:10:58: unknown key policies.students.schedule[2].colour",
            f"{f}:13:27: policies.staff.safesearch.youtube must be one of off, moderate, strict",
            f"{f}:14:15: policies.staff.schedule must be a list"]
    for w in want:
        assert any(line.startswith(w) for line in lines), (w, lines)
    assert len(lines) == len(want), lines


def test_check_config_reports_schedule_categories(tmp_path: Path) -> None:
    from tests.bundles import make_bundle

    make_bundle(tmp_path / "bundle", 1)
    f = tmp_path / "c.yaml"
    f.write_text(f"""\
bundle: {tmp_path}/bundle
state_dir: {tmp_path}/state
policies:
  students:
    block: [gambling]
    schedule: [{{days: mon-fri, time: "08:00-16:00", block: [nonsense]}}]
""")
    code, out, err = _check(str(f))
    assert code == 2 and "unknown category 'nonsense'" in err and f"{f}:5:12" in err
