"""The image's first-boot config step (image/files/usr/lib/schoolgate/firstboot), on the host.

The script runs on a temporary tree (boot partition, state directory, /run) with this
checkout's `schoolgate check-config`, exactly as schoolgate-config.service runs it on the
device, minus the remounts and the machine id (--test).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from importlib.machinery import SourceFileLoader
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIRSTBOOT = ROOT / "image" / "files" / "usr" / "lib" / "schoolgate" / "firstboot"
TEMPLATE = ROOT / "image" / "boot" / "schoolgate.yaml"


def _load():
    loader = SourceFileLoader("schoolgate_firstboot", str(FIRSTBOOT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = mod  # dataclasses look their module up there
    loader.exec_module(mod)
    return mod


fb = _load()


@pytest.fixture
def tree(tmp_path: Path):
    boot, state = tmp_path / "boot", tmp_path / "state"
    boot.mkdir()
    state.mkdir()
    # The template's state_dir is the device's; the test's own state directory instead.
    template = tmp_path / "template.yaml"
    template.write_text(TEMPLATE.read_text().replace("state_dir: /var/lib/schoolgate", f"state_dir: {state}"))

    def run() -> dict:
        rc = fb.main(["--test", "--boot", str(boot), "--state", str(state), "--template", str(template),
                      "--run", str(tmp_path / "run"), "--network-run", str(tmp_path / "network"),
                      "--schoolgate", f"{sys.executable} -m appliance.cli"])
        assert rc == 0
        return json.loads((state / "config-status.json").read_text())

    return boot, state, template, run


def test_password_hash_roundtrip() -> None:
    h = fb.hash_password("correct horse", salt="fixedsalt")
    assert h.startswith(f"scrypt:{fb.SCRYPT_N}:{fb.SCRYPT_R}:{fb.SCRYPT_P}$fixedsalt$")
    assert fb.verify_password("correct horse", h)
    assert not fb.verify_password("wrong", h)
    assert not fb.verify_password("correct horse", "md5$x$y")


def test_hash_in_text_keeps_every_other_line() -> None:
    text = 'a: 1\nweb:\n  listen: "0.0.0.0:80"\n  admin_password: "pw # not a comment"   # a comment\nz: 2\n'
    new, what = fb.hash_in_text(text, salt="s")
    assert what == "hashed"
    assert "pw # not a comment" not in new
    old_lines, new_lines = text.splitlines(), new.splitlines()
    assert len(old_lines) == len(new_lines)
    assert [a == b for a, b in zip(old_lines, new_lines)] == [True, True, True, False, True]
    assert new_lines[3].startswith('  admin_password_hash: "scrypt:') and new_lines[3].endswith("# a comment")
    assert fb.verify_password("pw # not a comment", json.loads(new_lines[3].split(": ", 1)[1].split("   #")[0]))
    # No password, an empty one, and a file that does not parse (blanked, not guessed at).
    assert fb.hash_in_text("web: {listen: x}\n") == ("web: {listen: x}\n", "none")
    assert fb.hash_in_text('web:\n  admin_password: ""\n')[1] == "none"
    broken, what = fb.hash_in_text('web:\n  admin_password: "secret\n  listen: [\n')
    assert what == "wiped" and "secret" not in broken


def test_valid_config_is_installed_and_the_password_wiped(tree) -> None:
    boot, state, _, run = tree
    cfg = TEMPLATE.read_text().replace('admin_password: ""', 'admin_password: "hunter2-hunter2"')
    (boot / "schoolgate.yaml").write_text(cfg)
    (boot / "root.json").write_text("{}")
    st = run()
    assert st["ok"] and st["source"] == "boot" and st["password"] == "hashed", st
    on_boot = (boot / "schoolgate.yaml").read_text()
    assert "hunter2" not in on_boot and "admin_password_hash:" in on_boot
    installed = (state / "config" / "schoolgate.yaml").read_text()
    assert installed == on_boot
    assert (state / "config" / "root.json").read_text() == "{}"  # trusted_root: root.json resolves
    assert not (boot / "schoolgate-errors.txt").exists()
    resolv = (Path(state).parent / "run" / "resolv.conf").read_text()
    assert "nameserver 9.9.9.9" in resolv
    # The same file at the next boot is not applied again (a config changed on the box stays).
    (state / "config" / "schoolgate.yaml").write_text(installed + "# changed on the box\n")
    st2 = run()
    assert st2["source"] == "boot" and st2["ok"]
    assert (state / "config" / "schoolgate.yaml").read_text().endswith("# changed on the box\n")


def test_invalid_config_falls_back_and_reports(tree) -> None:
    boot, state, _, run = tree
    # First boot with errors: the safe default is installed, errors go to the boot partition.
    bad = TEMPLATE.read_text().replace("block_mode: nxdomain", "block_mode: sometimes").replace(
        'admin_password: ""', 'admin_password: "pw-in-a-bad-file"')
    (boot / "schoolgate.yaml").write_text(bad)
    st = run()
    assert not st["ok"] and st["source"] == "default", st
    assert any("schoolgate.yaml:" in e and "block_mode" in e for e in st["errors"]), st["errors"]
    assert "pw-in-a-bad-file" not in (boot / "schoolgate.yaml").read_text()  # wiped even so
    errors_txt = (boot / "schoolgate-errors.txt").read_text()
    assert "block_mode" in errors_txt
    assert "admin_password" in (state / "config" / "schoolgate.yaml").read_text()  # the template
    # Fixed: applied, the errors file goes away.
    (boot / "schoolgate.yaml").write_text(TEMPLATE.read_text().replace("block_mode: nxdomain", "block_mode: refused"))
    st = run()
    assert st["ok"] and st["source"] == "boot"
    assert not (boot / "schoolgate-errors.txt").exists()
    # Broken again: the last good config stays (not the default).
    (boot / "schoolgate.yaml").write_text("dns: [unclosed\n")
    st = run()
    assert not st["ok"] and st["source"] == "previous"
    assert "block_mode: refused" in (state / "config" / "schoolgate.yaml").read_text()


def test_no_boot_file_keeps_what_is_installed(tree) -> None:
    boot, state, _, run = tree
    st = run()
    assert st["source"] == "default" and "note" in st
    (boot / "network").mkdir()
    (boot / "network" / "10-lan.network").write_text("[Match]\nName=eth1\n")
    (boot / "network" / "notes.txt").write_text("ignored")
    run()
    assert [p.name for p in (Path(state).parent / "network").iterdir()] == ["10-lan.network"]


def test_resolv_conf_from_upstreams() -> None:
    rc = fb.resolv_conf({"dns": {"upstreams": ["192.0.2.1:53", "[2001:db8::1]:53", "192.0.2.2:5353",
                                                "192.0.2.3", "192.0.2.4"]}})
    assert [line for line in rc.splitlines() if line.startswith("nameserver")] == [
        "nameserver 192.0.2.1", "nameserver 2001:db8::1", "nameserver 192.0.2.3"]
    own = fb.resolv_conf({"dns": {"upstreams": ["10.0.2.2:5399"], "listen": ["0.0.0.0:53"]}})
    assert "nameserver 127.0.0.1" in own
    assert "nameserver" not in fb.resolv_conf({"dns": {"upstreams": ["10.0.2.2:5399"], "listen": ["10.1.1.1:53"]}})
