"""The signed demo bundle: the copy shipped in config/demo installs through the updater,
is labelled demo, stays valid for years and matches its lists; rebuilding keeps the chain
of trust; and the demo never gets in the way of a district's own repository."""

from __future__ import annotations

import hashlib
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.bundles.demo import build_demo
from appliance.bundles.select import (
    DEMO_DIR,
    DEMO_REPO,
    DEMO_ROOT,
    demo_updates,
    open_selected,
    resolve_bundle,
    select_bundle,
)
from appliance.config.load import UpdatesConfig, load_config
from appliance.updates.state import active_bundle_dir
from appliance.updates.updater import update_once
from filters.catalog import ALL_CATEGORIES
from filters.errors import InputError
from signatures.bundle import open_bundle
from signatures.keys import Keyring, generate_keys
from signatures.repository import load_repo, publish
from tests.bundles import make_bundle

NOW = datetime.now(UTC)


def test_the_shipped_demo_installs_through_the_updater(tmp_path: Path) -> None:
    o = update_once(tmp_path, demo_updates())
    assert (o.result, o.error) == ("updated", None)
    b = open_bundle(active_bundle_dir(tmp_path))
    assert b.demo and b.manifest["demo"] is True
    m = b.domain_matcher()
    assert m.match("www.0-casino.info", ALL_CATEGORIES).blocked
    assert not m.match("example.org", ALL_CATEGORIES).blocked
    assert DEMO_ROOT.read_bytes() == (DEMO_REPO / "metadata" / "root.json").read_bytes()


def test_the_shipped_demo_stays_valid_for_years(tmp_path: Path) -> None:
    o = update_once(tmp_path, demo_updates(), now=NOW + timedelta(days=3 * 365))
    assert o.result == "updated", o.error


def test_the_shipped_demo_was_built_from_the_current_lists(tmp_path: Path) -> None:
    update_once(tmp_path, demo_updates())
    b = open_bundle(active_bundle_dir(tmp_path))
    for src in b.manifest["sources"]:
        path = DEMO_DIR / src["path"]
        if path.is_dir():
            path = path / "domains"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == src["sha256"], (
            f"{src['path']} changed since the demo was built: run `python -m appliance.bundles.demo`")


def test_the_shipped_repository_is_small() -> None:
    files = [p for p in DEMO_REPO.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 256 << 10
    assert len(list((DEMO_REPO / "targets").iterdir())) == 1


def _demo_copy(tmp: Path) -> dict:
    src = tmp / "src"
    shutil.copytree(DEMO_DIR / "lists", src / "lists")
    shutil.copyfile(DEMO_DIR / "sources.yaml", src / "sources.yaml")
    return {"sources": src / "sources.yaml", "keys": tmp / "keys", "repo": tmp / "repo",
            "trust": tmp / "trust" / "root.json"}


def test_rebuilding_publishes_the_next_version_under_the_same_root(tmp_path: Path) -> None:
    paths = _demo_copy(tmp_path)
    r1 = build_demo(now=NOW, **paths)
    root1 = paths["trust"].read_bytes()
    cfg = UpdatesConfig(paths["repo"].as_uri() + "/", paths["trust"])
    assert update_once(tmp_path / "state", cfg).active_version == r1.version == 1
    assert "README.md" in {p.name for p in paths["keys"].iterdir()}
    r2 = build_demo(now=NOW, **paths)
    assert r2.version == 2 and paths["trust"].read_bytes() == root1
    o = update_once(tmp_path / "state", cfg)
    assert (o.result, o.active_version) == ("updated", 2)
    # only what devices need stays: every root, the current snapshot/targets, one archive
    meta = sorted(p.name for p in (paths["repo"] / "metadata").iterdir())
    state = load_repo(paths["repo"])
    assert meta == sorted(["1.root.json", "root.json", "timestamp.json",
                           f"{state.snapshot.signed.version}.snapshot.json",
                           f"{state.targets.signed.version}.targets.json"])
    assert len(list((paths["repo"] / "targets").iterdir())) == 1
    # metadata lasts ten years, not the day a timestamp normally does
    assert state.timestamp.signed.expires > NOW + timedelta(days=3000)
    r3 = build_demo(now=NOW, fresh=True, **paths)
    assert r3.version == 1 and paths["trust"].read_bytes() != root1


def test_sources_without_demo_true_are_refused(tmp_path: Path) -> None:
    paths = _demo_copy(tmp_path)
    text = paths["sources"].read_text().replace("demo: true\n", "")
    paths["sources"].write_text(text)
    with pytest.raises(InputError, match="demo: true"):
        build_demo(now=NOW, **paths)


def _config(tmp: Path, extra: str = "") -> Path:
    cfg = tmp / "sg.yaml"
    cfg.write_text(f"state_dir: state\n{extra}")
    return cfg


def test_the_demo_lives_in_its_own_state_directory(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path))
    assert resolve_bundle(cfg) is None
    path, how = select_bundle(cfg)
    assert how == "demo" and path.parent.parent == cfg.state_dir / "demo"
    assert active_bundle_dir(cfg.state_dir) is None
    assert resolve_bundle(cfg) == (path, "demo")


def test_a_district_bundle_numbered_below_the_demo_is_not_a_rollback(tmp_path: Path) -> None:
    keys, repo = tmp_path / "keys", tmp_path / "repo"
    generate_keys(keys)
    publish(repo, make_bundle(tmp_path / "b1", 1, now=NOW), Keyring(keys), NOW)
    cfg = load_config(_config(tmp_path, f'updates:\n  repository: "{repo.as_uri()}/"\n'
                                        f"  trusted_root: {repo / 'metadata' / 'root.json'}\n"))
    # a demo numbered 5 is installed and served
    paths = _demo_copy(tmp_path / "demo-src")
    build_demo(now=NOW, version=5, **paths)
    demo = UpdatesConfig(paths["repo"].as_uri() + "/", paths["trust"])
    assert update_once(cfg.state_dir / "demo", demo).active_version == 5
    assert resolve_bundle(cfg)[1] == "demo"
    # the district's first bundle, version 1, installs all the same
    o = update_once(cfg.state_dir, cfg.updates)
    assert (o.result, o.active_version) == ("updated", 1)
    path, how = select_bundle(cfg)
    assert how == "active" and open_bundle(path).version == 1 and not open_bundle(path).demo


def test_a_damaged_active_bundle_gives_way_to_the_demo(tmp_path: Path, caplog) -> None:
    keys, repo = tmp_path / "keys", tmp_path / "repo"
    generate_keys(keys)
    publish(repo, make_bundle(tmp_path / "b1", 1, now=NOW), Keyring(keys), NOW)
    cfg = load_config(_config(tmp_path, f'updates:\n  repository: "{repo.as_uri()}/"\n'
                                        f"  trusted_root: {repo / 'metadata' / 'root.json'}\n"))
    assert update_once(cfg.state_dir, cfg.updates).ok
    (active_bundle_dir(cfg.state_dir) / "manifest.json").unlink()
    bundle, how = open_selected(cfg)
    assert how == "demo" and bundle.demo
    assert "cannot be opened" in caplog.text
