"""The config loader: every error at once, each with file:line:col."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import ConfigErrors, load_config


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("bundle: b\npolicies: {kids: {block: [adult]}}\nlocal: {block: ['*.x.test']}\n")
    cfg = load_config(f)
    assert cfg.bundle == tmp_path / "b" and cfg.bundle_path() == tmp_path / "b"
    assert cfg.policies["kids"].block == ("adult",)
    assert cfg.local_block == ("*.x.test",)
    empty = tmp_path / "e.yaml"
    empty.write_text("")
    assert load_config(empty).bundle_path() == Path("/var/lib/schoolgate/bundles/current")


def test_every_error_is_reported(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("colour: red\nbundle: 5\nlocal:\n  block: [ok.test, 'bad name']\n")
    with pytest.raises(ConfigErrors) as info:
        load_config(f)
    lines = str(info.value).splitlines()
    assert lines == [
        f"{f}:1:1: unknown key 'colour' (known: bundle, dns, local, networks, policies, state_dir, updates, web)",
        f"{f}:2:9: bundle must be a path",
        f"{f}:4:20: local.block: bad character ' ': 'bad name'",
    ]
