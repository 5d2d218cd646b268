"""config/schema.json (appliance/config/schema.py): the config's shape, declared once.

The schema is valid 2020-12; every config the repository ships or documents passes it; each
kind of schema error comes out as file:line:col with the key path; several errors in one
file are all reported, schema's and loader's alike; the schema agrees with the code's
defaults and enums.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from appliance.cli import main
from appliance.config.dns import DnsConfig
from appliance.config.flows import FlowsConfig
from appliance.config.load import ConfigErrors, UpdatesConfig, load_config
from appliance.config.log import LogConfig
from appliance.config.schema import SCHEMA_FILE, load_schema
from appliance.config.values import seconds
from filters.dns_answer import BLOCK_MODES
from filters.safesearch import YOUTUBE_MODES

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "config" / "schema.json"
MODELINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)$", re.M)


def _errors(text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load_config("c.yaml", text)
    return [str(e) for e in info.value.errors]


def _properties(schema: dict, path: str = ""):
    """(key path, property schema) for every declared key, $defs included."""
    for name, sub in schema.get("properties", {}).items():
        yield f"{path}.{name}".lstrip("."), sub
        yield from _properties(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _properties(schema[key], f"{path}[{key}]")
    for i, sub in enumerate(schema.get("anyOf", []) + schema.get("oneOf", [])):
        yield from _properties(sub, f"{path}|{i}")
    for name, sub in schema.get("$defs", {}).items():
        yield from _properties(sub, f"$defs.{name}")


# -- the schema itself --------------------------------------------------------------------------

def test_schema_is_valid_2020_12_and_the_one_the_loader_reads() -> None:
    schema = json.loads(SCHEMA.read_text())
    assert schema["$schema"].endswith("/draft/2020-12/schema")
    Draft202012Validator.check_schema(schema)
    # The package's copy is a link to it, so the wheel ships it and there is one file to edit.
    assert SCHEMA_FILE.resolve() == SCHEMA.resolve() and load_schema() == schema


def test_every_key_is_described_and_every_alternative_says_what_it_wants() -> None:
    schema = load_schema()
    undescribed = [p for p, s in _properties(schema) if "description" not in s and "$ref" not in s]
    assert not undescribed
    assert all(s.get("description") for s in schema["$defs"].values())

    def alternatives(s: object):
        if isinstance(s, dict):
            if "anyOf" in s or "oneOf" in s:
                yield s
            for v in s.values():
                yield from alternatives(v)
        elif isinstance(s, list):
            for v in s:
                yield from alternatives(v)
    # A value that fits no alternative gets this message (jsonschema's would list them all).
    assert all("errorMessage" in s for s in alternatives(schema))


def test_schema_agrees_with_the_code() -> None:
    schema = load_schema()
    props = schema["properties"]
    assert tuple(schema["$defs"]["block_mode"]["enum"]) == BLOCK_MODES
    youtube = schema["$defs"]["policy"]["properties"]["safesearch"]["properties"]["youtube"]["enum"]
    assert [m for m in youtube if isinstance(m, str)] == list(YOUTUBE_MODES)
    # The defaults editors show are the ones the code uses.
    for section, cls in (("dns", DnsConfig), ("flows", FlowsConfig), ("log", LogConfig), ("updates", UpdatesConfig)):
        for f in dataclasses.fields(cls):
            want = f.default
            default = props[section]["properties"].get(f.name, {}).get("default")
            if default is None or want is dataclasses.MISSING or isinstance(want, tuple):
                continue
            got = seconds(default) if isinstance(default, str) and isinstance(want, (int, float)) \
                and not isinstance(want, bool) else default
            assert got == want, (section, f.name, default, want)


# -- what the repository ships and documents passes ------------------------------------------

def _shipped() -> list[Path]:
    return [ROOT / "config" / "default.yaml", *sorted((ROOT / "config" / "examples").glob("*.yaml"))]


@pytest.mark.parametrize("path", _shipped(), ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_configs_validate_and_point_editors_at_the_schema(path: Path) -> None:
    text = path.read_text()
    assert not list(Draft202012Validator(load_schema()).iter_errors(yaml.safe_load(text)))
    load_config(path)  # and the loader's own checks
    m = MODELINE.search(text)
    assert m and m.start() == 0, "the yaml-language-server line opens the file"
    assert (path.parent / m.group(1)).resolve() == SCHEMA.resolve()


def test_the_image_template_validates_as_installed(tmp_path: Path) -> None:
    # image/build.sh installs the boot template with its empty admin_password commented out
    # (firstboot hashes a password typed there into admin_password_hash before the check).
    text = (ROOT / "image" / "boot" / "schoolgate.yaml").read_text()
    installed = re.sub(r'^(\s*)admin_password: ""', r'\1# admin_password: ""', text, flags=re.M)
    assert installed != text
    assert not list(Draft202012Validator(load_schema()).iter_errors(yaml.safe_load(installed)))
    f = tmp_path / "schoolgate.yaml"
    f.write_text(installed)
    load_config(f)


def test_the_documented_config_examples_validate() -> None:
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    blocks = [yaml.safe_load(b) for d in docs for b in re.findall(r"```yaml\n(.*?)```", d.read_text(), re.S)]
    configs = [b for b in blocks if "categories" not in b]  # not SOURCES.yaml
    assert len(configs) >= 4
    v = Draft202012Validator(load_schema())
    for b in configs:
        assert not [e.message for e in v.iter_errors(b)], b


# -- each kind of schema error: file:line:col and the key path --------------------------------

@pytest.mark.parametrize("text,want", [
    # type
    ("dns:\n  upstreams: ['1.2.3.4', 5]\n", "c.yaml:2:26: dns.upstreams[1] must be a string"),
    ("flows: {enabled: 1}\n", "c.yaml:1:18: flows.enabled must be true or false"),
    ("dns: {cache_size: 5.0}\n", "c.yaml:1:19: dns.cache_size must be a whole number"),
    ("log: [queries]\n", "c.yaml:1:6: log must be a mapping"),
    ("- dns\n", "c.yaml:1:1: the config must be a mapping"),
    # enum
    ("no_bundle: open\n", "c.yaml:1:12: no_bundle must be one of embedded, refuse, forward"),
    ("log:\n  queries: some\n", "c.yaml:2:12: log.queries must be one of all, blocked, off"),
    # minimum / maximum, with the unit of a duration
    ("dns:\n  block_ttl: -1\n", "c.yaml:2:14: dns.block_ttl must be a whole number from 0 to 86400"),
    ("flows: {nflog_group: 65536}\n", "c.yaml:1:22: flows.nflog_group must be a whole number from 0 to 65535"),
    ("flows: {flow_timeout: 90000}\n",
     "c.yaml:1:23: flows.flow_timeout must be a duration from 1 s to 24 h (e.g. 90s, 30m, 1h)"),
    ("flows: {flow_timeout: 25h}\n",  # the same bound, checked after the unit
     "c.yaml:1:23: flows.flow_timeout must be a duration from 1 s to 24 h (e.g. 90s, 30m, 1h)"),
    ("dns: {upstream_timeout: 20ms}\n",
     "c.yaml:1:25: dns.upstream_timeout must be a duration from 0.05 s to 10 s (e.g. 500ms, 2s, 1h)"),
    # pattern
    ("dns: {listen: 'localhost:53'}\n",
     "c.yaml:1:15: dns.listen: not an IP address with optional port (1.2.3.4:53 or [::1]:53): 'localhost:53'"),
    ("updates: {repository: 'ftp://x/', trusted_root: r.json, interval: soon}\n",
     "c.yaml:1:23: updates.repository must be an http://, https:// or file:// URL"),
    ("flows: {interface: 'eth/1'}\n", "c.yaml:1:20: flows.interface must be a network interface name"),
    ("policies:\n  p:\n    schedule: [{days: mon, time: '8-16', block: []}]\n",
     "c.yaml:3:34: policies.p.schedule[0].time: not \"HH:MM-HH:MM\""),
    # unknown keys: at the key, with the keys known there
    ("colour: red\n", "c.yaml:1:1: unknown key 'colour' (known: bundle, dns, flows, local, log, networks,"),
    ("web:\n  listen: '127.0.0.1:80'\n  colour: red\n",
     "c.yaml:3:3: unknown key web.colour (known: admin_password_hash,"),
    ("policies: {p: {}}\nnetworks:\n  lab: {cidrs: [10.0.0.0/8], policy: p, vlan: 3}\n",
     "c.yaml:3:41: unknown key networks.lab.vlan (known: cidrs, policy)"),
    # required keys, list sizes
    ("updates:\n  trusted_root: root.json\n", "c.yaml:2:3: updates needs repository"),
    ("policies: {p: {block: []}}\nnetworks: {lab: {}}\n", "c.yaml:2:17: networks.lab needs cidrs and policy"),
    ("dns: {listen: []}\n", "c.yaml:1:15: dns.listen needs at least one entry"),
    ("policies:\n  p:\n    schedule:\n" + "      - {days: mon, time: '08:00-09:00', block: []}\n" * 33,
     "c.yaml:4:7: policies.p.schedule: at most 32 entries (has 33)"),
    # alternatives: inside the mapping when the value is one, else what the key wants
    ("dns: {rate_limit: {qps: -1}}\n", "c.yaml:1:25: dns.rate_limit.qps must be a number from 0 to 1000000"),
    ("dns: {rate_limit: fast}\n", "c.yaml:1:19: dns.rate_limit must be {qps: N, burst: N} (per client) or 0 for off"),
    # names that are not identifiers are quoted in the key path
    ("policies:\n  head teacher: {block: gambling}\n", "c.yaml:2:25: policies['head teacher'].block must be a list"),
])
def test_each_kind_of_error_names_its_place_and_key(text: str, want: str) -> None:
    got = _errors(text)
    assert any(e.startswith(want) for e in got), got


def test_several_errors_are_all_reported_in_file_order() -> None:
    text = """\
state_dir: 5
dns:
  listen: [5, "127.0.0.1:53", "localhost"]
  upstreams: ["tls://9.9.9.9#dns.quad9.net", "nowhere:53"]
  block_mode: blockpage
  cache_max_ttl: 8d
networks:
  kids: {cidrs: [10.0.0.300/8], policy: nobody}
policies:
  students: {block: [gambling], safesearch: {google: maybe}}
log: {retention_days: 0, colour: red}
"""
    assert _errors(text) == [
        "c.yaml:1:12: state_dir must be a path",
        "c.yaml:3:12: dns.listen[0] must be a string",
        # a list item the schema refused keeps its index: the loader's own check of the
        # next-but-one still says [2]
        "c.yaml:3:31: dns.listen[2]: not an IP address with optional port (1.2.3.4:53 or [::1]:53): 'localhost'",
        "c.yaml:4:46: dns.upstreams[1]: not an IP address with optional port (1.2.3.4:53 or [::1]:53), or system: "
        "'nowhere:53'",
        "c.yaml:5:15: dns.block_mode: blockpage needs dns.blockpage addresses",
        "c.yaml:6:18: dns.cache_max_ttl must be a duration from 0 s to 168 h (e.g. 500ms, 2s, 1h)",
        "c.yaml:8:18: networks.kids.cidrs[0]: not a CIDR (10.10.0.0/16 or fd00::/8): '10.0.0.300/8'",
        "c.yaml:8:41: networks.kids.policy must name a policy defined under policies (have: students)",
        "c.yaml:10:54: policies.students.safesearch.google must be true or false",
        "c.yaml:11:23: log.retention_days must be a whole number from 1 to 366",
        "c.yaml:11:26: unknown key log.colour (known: clients, queries, retention_days)",
    ]


def test_a_value_the_schema_refused_is_not_reported_again() -> None:
    # flows.interface is wrong, not missing; a network naming a policy whose body the schema
    # refused names a policy that exists.
    assert _errors("flows: {enabled: true, interface: 'a b'}\n") == [
        "c.yaml:1:35: flows.interface must be a network interface name (1-15 characters, no '/', ':' or spaces), "
        "e.g. eth1"]
    assert _errors("policies: {p: 5}\nnetworks: {lab: {cidrs: 10.0.0.0/8, policy: p}}\n") == [
        "c.yaml:1:15: policies.p must be a mapping"]


def test_a_bare_null_block_mode_is_refused_at_its_place(tmp_path: Path) -> None:
    # YAML's bare null is no value, not the null mode: refused (it used to pass as "unset"),
    # with the two things the writer may have meant.
    f = tmp_path / "c.yaml"
    f.write_text("policies:\n  guest:\n    block: [gambling]\n    block_mode: null\n"
                 "dns:\n  block_mode:\n")
    hint = ('must be one of nxdomain, null, refused, blockpage (a bare null is no value: remove the key '
            'for the default; write "null" in quotes for the null mode)')
    assert _errors(f.read_text()) == [f"c.yaml:4:17: policies.guest.block_mode {hint}",
                                      f"c.yaml:6:14: dns.block_mode {hint}"]
    out, err = io.StringIO(), io.StringIO()
    assert main(["check-config", str(f)], out, err) == 2
    assert f"{f}:4:17: policies.guest.block_mode {hint}" in err.getvalue().splitlines()
    cfg = load_config("c.yaml", 'policies:\n  guest: {block: [], block_mode: "null"}\n  p: {block: []}\n')
    assert (cfg.policies["guest"].block_mode, cfg.policies["p"].block_mode) == ("null", None)


def test_yaml_one_one_spellings_still_load() -> None:
    # YAML 1.1 (PyYAML) reads a bare off as false: the schema takes both spellings.
    cfg = load_config("c.yaml", "log: {queries: off}\npolicies: {p: {safesearch: {youtube: off}}}\n")
    assert cfg.log.queries == "off" and cfg.policies["p"].safesearch.youtube == "off"


def test_check_config_json_lists_schema_errors(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("dns:\n  upstreams: [5]\n  workers: 0\nweb: {colour: red}\n")
    out, err = io.StringIO(), io.StringIO()
    assert main(["check-config", str(f), "--json"], out, err) == 2
    got = json.loads(out.getvalue())
    assert got["ok"] is False
    assert [(e["file"], e["line"], e["col"]) for e in got["errors"]] == [(str(f), 2, 15), (str(f), 3, 12),
                                                                        (str(f), 4, 7)]
    assert [e["message"].split(" ")[0] for e in got["errors"]] == ["dns.upstreams[0]", "dns.workers", "unknown"]
    assert "web.colour" in got["errors"][2]["message"]
    f.write_text("# yaml-language-server: $schema=../schema.json\ndns: {listen: '127.0.0.1:5353', upstreams: []}\n")
    out = io.StringIO()
    assert main(["check-config", str(f), "--json"], out, err) == 0
    assert json.loads(out.getvalue()) == {"ok": True, "errors": [], "warnings": []}
