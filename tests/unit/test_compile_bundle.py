"""Compiling sources into a bundle, writing it atomically and mapping it back."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from filters.catalog import ALL_CATEGORIES
from filters.errors import BundleError, ConfigError, ListFormatError, SignatureError
from signatures.bundle import open_bundle, write_bundle
from signatures.compile import compile_sources
from signatures.sources import load_sources

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def _key() -> tuple[int, int]:
    return secrets.randbits(64), secrets.randbits(64)


def _write_sources(tmp: Path, extra_sources: str = "", canaries: str = "") -> Path:
    (tmp / "gambling.txt").write_text("casino.test\n# comment\nBAD..name\n*.wild.test\n1.2.3.4\n")
    (tmp / "adult.hosts").write_text("0.0.0.0 casino.test adult.test\n127.0.0.1 localhost\n")
    (tmp / "ads.txt").write_text("||ads.test^\n@@||ok.ads.test^\n##.banner\n")
    (tmp / "nets.txt").write_text("10.0.0.0/8\n10.1.0.0/16\n2001:db8::/32\n")
    (tmp / "allow.txt").write_text("fine.casino.test\n")
    f = tmp / "sources.yaml"
    f.write_text(f"""\
version: 7
expires_days: 10
categories:
  gambling:
    description: Gambling
    sources: [{{path: gambling.txt, format: domains, licence: MIT, attribution: tester}}]
    keywords: [poker]
  adult:
    sources: [{{path: adult.hosts, format: hosts}}]
  ads:
    sources: [{{path: ads.txt, format: adblock}}, {{path: nets.txt, format: cidr}}{extra_sources}]
allow: [{{path: allow.txt, format: domains}}]
{canaries}
""")
    return f


def test_compile_merges_sources_and_accounts_for_every_line(tmp_path: Path) -> None:
    spec = load_sources(_write_sources(tmp_path))
    seen = []
    c = compile_sources(spec, now=NOW, new_key=_key, progress=seen.append)
    assert [r.label for r in seen] == [
        "gambling: gambling.txt", "adult: adult.hosts", "ads: ads.txt", "ads: nets.txt", "allow: allow.txt"]
    g = seen[0]
    assert g.lines == 5 and g.entries == 3 and g.ignored == 1
    assert [(r.line, r.reason) for r in g.rejected] == [(3, "empty label")]
    assert g.rejected[0].file.endswith("gambling.txt")
    assert seen[2].unsupported == 1
    m = c.manifest
    assert m["version"] == 7 and m["created"] == "2026-11-24T12:00:00Z"
    assert m["expires"] == "2026-12-04T12:00:00Z"
    assert [x["name"] for x in m["categories"]] == ["gambling", "adult", "ads"]
    assert m["sources"][0]["licence"] == "MIT" and m["sources"][0]["rejected"] == 1
    # casino.test, wild.test, adult.test, ads.test, ok.ads.test, fine.casino.test
    assert m["counts"]["domains"] == 6
    assert m["counts"]["cidrs"] == 4  # 1.2.3.4/32 from the domain list + 3
    assert m["counts"]["keywords"] == 1


def test_bundle_round_trip_through_disk(tmp_path: Path) -> None:
    spec = load_sources(_write_sources(tmp_path))
    c = compile_sources(spec, now=NOW, new_key=_key)
    out = write_bundle(tmp_path / "bundle", c.arrays, c.manifest)
    b = open_bundle(out)
    b.verify_files()
    assert b.version == 7
    assert all(not a.flags.writeable for a in b.arrays.values() if a.size)
    dm = b.domain_matcher()
    v = dm.match("www.casino.test", ALL_CATEGORIES)
    assert v.blocked and set(v.categories) == {"gambling", "adult"} and v.rule == "casino.test"
    assert set(v.sources) == {"gambling: gambling.txt", "adult: adult.hosts"}
    only_adult = b.catalog.mask(["adult"])
    assert dm.match("casino.test", only_adult).blocked
    assert not dm.match("casino.test", b.catalog.mask(["ads"])).blocked
    allowed = dm.match("x.fine.casino.test", ALL_CATEGORIES)
    assert not allowed.blocked and allowed.rule == "fine.casino.test"
    assert allowed.sources == ("allow: allow.txt",)
    assert not dm.match("wild.test", ALL_CATEGORIES).blocked
    assert dm.match("a.wild.test", ALL_CATEGORIES).blocked
    ok = dm.match("ok.ads.test", ALL_CATEGORIES)
    assert not ok.blocked and ok.sources == ("ads: ads.txt (exceptions)",)
    cm = b.cidr_matcher()
    ip = cm.match("10.1.2.3", ALL_CATEGORIES)
    assert ip.blocked and ip.rule == "10.1.0.0/16"
    assert cm.match("1.2.3.4", b.catalog.mask(["gambling"])).blocked
    assert cm.match("2001:db8::1", ALL_CATEGORIES).blocked
    assert not cm.match("192.0.2.1", ALL_CATEGORIES).blocked
    mask, first = b.keyword_scanner().scan(b"GET /Poker/table")
    assert first == 0 and mask == b.catalog.mask(["gambling"])


def test_tampered_file_fails_verification(tmp_path: Path) -> None:
    c = compile_sources(load_sources(_write_sources(tmp_path)), now=NOW, new_key=_key)
    out = write_bundle(tmp_path / "bundle", c.arrays, c.manifest)
    fps = out / "domain_fps.npy"
    raw = bytearray(fps.read_bytes())
    raw[-1] ^= 1
    fps.write_bytes(bytes(raw))
    with pytest.raises(SignatureError, match="domain_fps.npy"):
        open_bundle(out).verify_files()


def test_rewriting_a_bundle_replaces_it_whole(tmp_path: Path) -> None:
    c = compile_sources(load_sources(_write_sources(tmp_path)), now=NOW, new_key=_key)
    out = tmp_path / "bundle"
    write_bundle(out, c.arrays, c.manifest)
    c.manifest["version"] = 8
    write_bundle(out, c.arrays, c.manifest)
    assert open_bundle(out).version == 8
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_refuses_to_overwrite_a_directory_that_is_not_a_bundle(tmp_path: Path) -> None:
    c = compile_sources(load_sources(_write_sources(tmp_path)), now=NOW, new_key=_key)
    target = tmp_path / "precious"
    target.mkdir()
    (target / "thesis.txt").write_text("do not delete")
    with pytest.raises(BundleError, match="not a bundle"):
        write_bundle(target, c.arrays, c.manifest)
    assert (target / "thesis.txt").read_text() == "do not delete"


def test_failing_canary_refuses_the_bundle(tmp_path: Path) -> None:
    f = _write_sources(tmp_path, canaries="canaries: {block: [casino.test, not-listed.test]}")
    with pytest.raises(ConfigError, match="canary 'not-listed.test' should be blocked"):
        compile_sources(load_sources(f), now=NOW, new_key=_key)
    f = _write_sources(tmp_path, canaries="canaries: {allow: [casino.test]}")
    with pytest.raises(ConfigError, match="should be allowed"):
        compile_sources(load_sources(f), now=NOW, new_key=_key)


def test_missing_source_file_is_a_clear_error(tmp_path: Path) -> None:
    f = _write_sources(tmp_path, extra_sources=", {path: absent.txt, format: domains}")
    with pytest.raises(ListFormatError) as info:
        compile_sources(load_sources(f), now=NOW, new_key=_key)
    assert str(info.value).endswith("absent.txt: list file not found")


def test_ut1_source_must_be_a_directory(tmp_path: Path) -> None:
    f = _write_sources(tmp_path, extra_sources=", {path: ads.txt, format: ut1}")
    with pytest.raises(ListFormatError, match="must be a directory"):
        compile_sources(load_sources(f), now=NOW, new_key=_key)


def test_binary_junk_huge_line_and_empty_file_lose_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "junk.bin").write_bytes(bytes(range(256)) * 64 + b"\nreal.test\n")
    (tmp_path / "huge.txt").write_bytes(b"a" * (10 << 20) + b"\nafter-huge.test\n")
    (tmp_path / "empty.txt").write_bytes(b"")
    f = _write_sources(tmp_path, extra_sources=(
        ", {path: junk.bin, format: domains}, {path: huge.txt, format: domains}"
        ", {path: empty.txt, format: domains}"))
    reports = []
    c = compile_sources(load_sources(f), now=NOW, new_key=_key, progress=reports.append)
    junk, huge, empty = reports[4:7]
    assert junk.entries == 1 and len(junk.rejected) >= 1
    assert all(r.reason for r in junk.rejected)
    assert huge.entries == 1 and huge.rejected[0].line == 1
    assert "longer than" in huge.rejected[0].reason
    assert empty.lines == 0 and empty.entries == 0 and empty.rejected == []
    out = write_bundle(tmp_path / "b", c.arrays, c.manifest)
    dm = open_bundle(out).domain_matcher()
    assert dm.match("real.test", ALL_CATEGORIES).blocked
    assert dm.match("x.after-huge.test", ALL_CATEGORIES).blocked
    assert dm.match("casino.test", ALL_CATEGORIES).blocked


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "manifest.json").unlink(), "no manifest.json"),
    (lambda d: (d / "manifest.json").write_text("{not json"), "not JSON"),
    (lambda d: (d / "domain_fps.npy").unlink(), "array file missing"),
    (lambda d: (d / "domain_cls.npy").write_bytes(b"garbage"), "unreadable array"),
    (lambda d: _edit_manifest(d, format=99), "unsupported bundle format"),
    (lambda d: _edit_manifest(d, files={"../etc/passwd.npy": {}}), "bad file"),
])
def test_damaged_bundles_are_refused(tmp_path: Path, damage, message: str) -> None:
    c = compile_sources(load_sources(_write_sources(tmp_path)), now=NOW, new_key=_key)
    out = write_bundle(tmp_path / "bundle", c.arrays, c.manifest)
    damage(out)
    with pytest.raises(BundleError, match=message):
        open_bundle(out).domain_matcher()


def test_arrays_inconsistent_with_each_other_are_refused(tmp_path: Path) -> None:
    c = compile_sources(load_sources(_write_sources(tmp_path)), now=NOW, new_key=_key)
    c.arrays["domain_cls"] = c.arrays["domain_cls"][:-1]
    out = write_bundle(tmp_path / "bundle", c.arrays, c.manifest)
    with pytest.raises(BundleError, match="entry count"):
        open_bundle(out).domain_matcher()


def _edit_manifest(d: Path, **changes) -> None:
    m = json.loads((d / "manifest.json").read_text())
    m.update(changes)
    (d / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("name, corrupt, message", [
    ("domain_offsets", lambda a: np.concatenate([a[:1], a[-1:] + 5, a[2:]]).astype(a.dtype), "not sorted"),
    ("class_src_offsets", lambda a: a + 1, "class_src_offsets"),
    ("class_src_ids", lambda a: a + 1000, "source the manifest lacks"),
])
def test_arrays_that_would_index_out_of_bounds_are_refused(tmp_path: Path, name, corrupt, message) -> None:
    c = compile_sources(load_sources(_write_sources(tmp_path)), now=NOW, new_key=_key)
    c.arrays[name] = corrupt(np.asarray(c.arrays[name]))
    out = write_bundle(tmp_path / "bundle", c.arrays, c.manifest)
    with pytest.raises(BundleError, match=message):
        open_bundle(out).domain_matcher()
