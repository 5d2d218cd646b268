"""SOURCES.yaml loading: every mistake is refused with file:line:col."""

from __future__ import annotations

from pathlib import Path

import pytest

from filters.errors import ConfigError
from signatures.sources import load_sources

GOOD = """\
version: 3
expires_days: 7
categories:
  gambling:
    description: Gambling
    sources: [{path: g.txt, format: domains, licence: MIT, attribution: me}]
    keywords: [casino]
allow: [{path: a.txt, format: domains}]
canaries: {block: [x.test], allow: [y.test]}
"""


def test_good_file_loads_with_paths_relative_to_it(tmp_path: Path) -> None:
    f = tmp_path / "sources.yaml"
    f.write_text(GOOD)
    spec = load_sources(f)
    assert spec.version == 3 and spec.expires_days == 7
    (cat,) = spec.categories
    assert cat.name == "gambling" and cat.keywords == ("casino",)
    assert cat.sources[0].path == tmp_path / "g.txt"
    assert cat.sources[0].label == "gambling: g.txt"
    assert spec.allow[0].category is None and spec.allow[0].label == "allow: a.txt"
    assert spec.canaries == {"block": ["x.test"], "allow": ["y.test"]}


@pytest.mark.parametrize(
    "text, where, message",
    [
        ("version: 0\ncategories: {a: {}}\n", ":1:10", "version"),
        ("version: 1\ncategories: {}\n", ":2:13", "categories"),
        ("version: 1\ncategories:\n  Bad Name: {}\n", ":3:3", "bad category name"),
        ("version: 1\ncategories:\n  local: {}\n", ":3:3", "reserved"),
        ("version: 1\ncategories:\n  a:\n    sources: [{path: x, format: nope}]\n", ":4:33", "unknown format"),
        ("version: 1\ncategories:\n  a:\n    sources: [{format: domains}]\n", ":4:15", "needs a path"),
        ("version: 1\ncategories:\n  a: {colour: red}\n", ":3:7", "unknown key 'colour'"),
        ("version: 1\ncategories: {a: {}}\nextra: 1\n", ":3:1", "unknown key 'extra'"),
        ("version: 1\ncategories: [a\n", ":3:1", "YAML syntax"),
        ("version: 1\nversion: 2\ncategories: {a: {}}\n", ":2:1", "duplicate key"),
        ("version: 1\nexpires_days: 0\ncategories: {a: {}}\n", ":2:15", "expires_days"),
    ],
)
def test_bad_files_name_the_position(tmp_path: Path, text: str, where: str, message: str) -> None:
    f = tmp_path / "s.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_sources(f)
    assert str(info.value).startswith(f"{f}{where}:"), str(info.value)
    assert message in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_sources(tmp_path / "absent.yaml")


def test_demo_flag(tmp_path: Path) -> None:
    f = tmp_path / "sources.yaml"
    f.write_text(GOOD)
    assert load_sources(f).demo is False
    f.write_text(GOOD + "demo: true\n")
    assert load_sources(f).demo is True
    f.write_text(GOOD + "demo: yes please\n")
    with pytest.raises(ConfigError, match=r"sources.yaml:10:7: demo must be true or false"):
        load_sources(f)
