"""The config loader: every error at once, each with file:line:col."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.bundles.select import resolve_bundle
from appliance.config.load import ConfigErrors, load_config


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("bundle: b\npolicies: {kids: {block: [adult]}}\nlocal: {block: ['*.x.test']}\n")
    cfg = load_config(f)
    assert cfg.bundle == tmp_path / "b" and resolve_bundle(cfg) == (tmp_path / "b", "configured")
    assert cfg.policies["kids"].block == ("adult",)
    assert cfg.local_block == ("*.x.test",)
    empty = tmp_path / "e.yaml"
    empty.write_text("")
    assert load_config(empty).state_dir == Path("/var/lib/schoolgate") and load_config(empty).bundle is None


def test_every_error_is_reported(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("colour: red\nbundle: 5\nlocal:\n  block: [ok.test, 'bad name']\n")
    with pytest.raises(ConfigErrors) as info:
        load_config(f)
    lines = str(info.value).splitlines()
    assert lines == [
        f"{f}:1:1: unknown key 'colour' (known: bundle, dns, flows, local, log, networks, no_bundle, policies, "
        "state_dir, timezone, updates, web)",
        f"{f}:2:9: bundle must be a path",
        f"{f}:4:20: local.block[1]: bad character ' ': 'bad name'",
    ]


def test_updates_section(tmp_path: Path) -> None:
    (tmp_path / "root.json").write_text("{}")
    f = tmp_path / "c.yaml"
    f.write_text("state_dir: st\nupdates:\n  repository: https://lists.example.org/repo/\n"
                 "  trusted_root: root.json\n  interval: 30m\n  timeout: 90s\n  keep: 5\n")
    cfg = load_config(f)
    u = cfg.updates
    assert (u.repository, u.trusted_root, u.interval, u.timeout, u.keep) == (
        "https://lists.example.org/repo/", tmp_path / "root.json", 1800, 90, 5)
    f.write_text("updates: {repository: 'file:///media/usb/repo', trusted_root: root.json}\n")
    u = load_config(f).updates
    assert (u.interval, u.timeout, u.keep) == (3600, 1800, 3)
    assert load_config(tmp_path / "e.yaml", "state_dir: x\n").updates is None


def test_updates_errors_name_their_position(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("""\
updates:
  repository: ftp://example.org/
  trusted_root: missing.json
  interval: 0s
  timeout: soon
  keep: 0
  mirror: x
""")
    with pytest.raises(ConfigErrors) as info:
        load_config(f)
    assert str(info.value).splitlines() == [  # in file order, schema's and loader's alike
        f"{f}:2:15: updates.repository must be an http://, https:// or file:// URL",
        f"{f}:3:17: updates.trusted_root: no such file: {tmp_path / 'missing.json'}",
        f"{f}:4:13: updates.interval must be a duration from 1 s to 168 h (e.g. 90s, 30m, 1h)",
        f"{f}:5:12: updates.timeout must be a duration (e.g. 90s, 30m, 1h)",
        f"{f}:6:9: updates.keep must be a whole number from 1 to 100",
        f"{f}:7:3: unknown key updates.mirror (known: interval, keep, missing_categories, repository, timeout, "
        "trusted_root)",
    ]
    f.write_text("updates:\n  repository: http://x/\n  timeout: 2d\n")
    with pytest.raises(ConfigErrors) as info:
        load_config(f)
    assert str(info.value).splitlines() == [
        f"{f}:2:3: updates needs trusted_root",
        f"{f}:3:12: updates.timeout must be a duration from 1 s to 24 h (e.g. 90s, 30m, 1h)"]
    f.write_text("updates: {repository: 'https:///repo', trusted_root: missing.json, interval: 604801}\n")
    with pytest.raises(ConfigErrors) as info:
        load_config(f)
    assert [str(e) for e in info.value.errors] == [
        f"{f}:1:23: updates.repository must be an http://, https:// or file:// URL with a host",
        f"{f}:1:54: updates.trusted_root: no such file: {tmp_path / 'missing.json'}",
        f"{f}:1:78: updates.interval must be a duration from 1 s to 168 h (e.g. 90s, 30m, 1h)"]


def test_the_active_bundle_follows_the_current_pointer(tmp_path: Path) -> None:
    from appliance.updates.state import set_current

    f = tmp_path / "c.yaml"
    f.write_text("state_dir: st\n")
    cfg = load_config(f)
    assert resolve_bundle(cfg) is None  # none active yet
    (tmp_path / "st" / "bundles" / "7-0123abcd").mkdir(parents=True)
    set_current(tmp_path / "st", "7-0123abcd")
    assert resolve_bundle(cfg) == (tmp_path / "st" / "bundles" / "7-0123abcd", "active")


def test_no_bundle_mode_is_checked(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("no_bundle: refuse\n")
    assert load_config(f).no_bundle == "refuse"
    assert load_config(f, "{}\n").no_bundle == "embedded"  # the default: keep the embedded bundle
    f.write_text("dns: {}\nno_bundle: open\n")
    with pytest.raises(ConfigErrors) as info:
        load_config(f)
    assert str(info.value) == f"{f}:2:12: no_bundle must be one of embedded, refuse, forward"
