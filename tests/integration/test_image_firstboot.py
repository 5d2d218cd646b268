"""The image's first-boot config step (image/files/usr/lib/schoolgate/firstboot), on the host.

The script runs on a temporary tree (boot partition, state directory, /run) with this
checkout's `schoolgate check-config`, exactly as schoolgate-config.service runs it on the
device, minus the remounts and the machine id (--test).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from importlib.machinery import SourceFileLoader
from pathlib import Path

import pytest
import yaml

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
                      "--systemd-run", str(tmp_path / "systemd"),
                      "--schoolgate", f"{sys.executable} -m appliance.cli"])
        assert rc == 0
        return json.loads((state / "config-status.json").read_text())

    return boot, state, template, run


def test_password_hash_roundtrip() -> None:
    h = fb.hash_password("correct horse", salt=b"fixed-salt-16byt")
    assert h.startswith(f"scrypt${fb.SCRYPT_N}${fb.SCRYPT_R}${fb.SCRYPT_P}$Zml4ZWQtc2FsdC0xNmJ5dA$")
    assert "=" not in h  # base64 without padding, as the web page writes it
    assert fb.verify_password("correct horse", h)
    assert not fb.verify_password("wrong", h)
    assert not fb.verify_password("correct horse", "md5$x$y")
    assert not fb.verify_password("correct horse", "scrypt$32768$8$1$not*base64$AAAA")


def test_password_hash_is_what_the_web_page_verifies() -> None:
    # The hash written at first boot is checked at login by appliance/web/auth.py.
    auth = pytest.importorskip("appliance.web.auth", reason="appliance/web/auth.py not in this checkout")
    h = fb.hash_password("pass phrase for the web")
    auth.parse_password_hash(h)
    assert auth.verify_password("pass phrase for the web", h)
    assert not auth.verify_password("pass phrase for the wrong", h)
    # And the other way round: a hash from `schoolgate web hash-password` works here.
    assert fb.verify_password("from the web helper", auth.hash_password("from the web helper"))


def test_hash_in_text_keeps_every_other_line() -> None:
    text = 'a: 1\nweb:\n  listen: "0.0.0.0:80"\n  admin_password: "pw # not a comment"   # a comment\nz: 2\n'
    new, what = fb.hash_in_text(text, salt=b"s" * 16)
    assert what == "hashed"
    assert "pw # not a comment" not in new
    old_lines, new_lines = text.splitlines(), new.splitlines()
    assert len(old_lines) == len(new_lines)
    assert [a == b for a, b in zip(old_lines, new_lines)] == [True, True, True, False, True]
    assert new_lines[3].startswith('  admin_password_hash: "scrypt$') and new_lines[3].endswith("# a comment")
    assert fb.verify_password("pw # not a comment", json.loads(new_lines[3].split(": ", 1)[1].split("   #")[0]))
    # No password, an empty one, and a file that does not parse (blanked, not guessed at).
    assert fb.hash_in_text("web: {listen: x}\n") == ("web: {listen: x}\n", "none")
    assert fb.hash_in_text('web:\n  admin_password: ""\n')[1] == "none"
    broken, what = fb.hash_in_text('web:\n  admin_password: "secret\n  listen: [\n')
    assert what == "wiped" and "secret" not in broken


@pytest.mark.parametrize("text", [
    'web:\n  admin_password_hash: "scrypt$old"\n  listen: "0.0.0.0:8080"\n  admin_password: "new-pw"\n',
    'web:\n  admin_password: "new-pw"\n  admin_password_hash: "scrypt$old"\n',
    'web: {admin_password_hash: "scrypt$old", admin_password: "new-pw", listen: "0.0.0.0:8080"}\n',
    'web: {admin_password: "new-pw", admin_password_hash: "scrypt$old"}\n',
])
def test_new_password_replaces_the_old_hash(text: str) -> None:
    new, what = fb.hash_in_text(text)
    assert what == "hashed"
    assert "new-pw" not in new and "scrypt$old" not in new and new.count("\n") == text.count("\n")
    web = yaml.safe_load(new)["web"]
    assert "admin_password" not in web and fb.verify_password("new-pw", web["admin_password_hash"])


def test_for_service_leaves_out_an_empty_password() -> None:
    block = 'web:\n  listen: "0.0.0.0:8080"\n  admin_password: ""   # type it here\nz: 1\n'
    out = fb.for_service(block)
    assert yaml.safe_load(out) == {"web": {"listen": "0.0.0.0:8080"}, "z": 1}
    assert out.count("\n") == block.count("\n")  # line numbers in errors stay the admin's
    assert yaml.safe_load(fb.for_service('web: {admin_password: "", listen: x}\n')) == {"web": {"listen": "x"}}
    assert yaml.safe_load(fb.for_service('web: {listen: x, admin_password: ~}\n')) == {"web": {"listen": "x"}}
    kept = 'web:\n  admin_password_hash: "scrypt$x"\n'
    assert fb.for_service(kept) == kept
    assert fb.for_service("web: [unclosed\n") == "web: [unclosed\n"
    # The template's own config, as installed when the admin's file is unusable, is valid.
    assert "admin_password" not in (yaml.safe_load(fb.for_service(TEMPLATE.read_text()))["web"])


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
    # The template, less its empty admin_password (no key the appliance knows).
    installed = (state / "config" / "schoolgate.yaml").read_text()
    assert "block_mode: nxdomain" in installed and 'admin_password: ""' not in installed
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


def test_status_shows_the_boot_config_errors(tree) -> None:
    """What the console banner and the status page show: `schoolgate status` reads the
    outcome schoolgate-config wrote, errors with their line numbers."""
    boot, state, _, run = tree
    bad = TEMPLATE.read_text().replace("block_mode: nxdomain", "block_mode: sometimes")
    (boot / "schoolgate.yaml").write_text(bad)
    run()
    line = next(i for i, t in enumerate(bad.splitlines(), 1) if "block_mode: sometimes" in t)
    cfg = str(state / "config" / "schoolgate.yaml")
    p = subprocess.run([sys.executable, "-m", "appliance.cli", "status", "--json", "--config", cfg],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    cc = json.loads(p.stdout)["config_check"]
    assert cc["ok"] is False and cc["source"] == "default"
    assert any(e.startswith(f"schoolgate.yaml:{line}:") and "block_mode" in e for e in cc["errors"]), cc
    p = subprocess.run([sys.executable, "-m", "appliance.cli", "status", "--config", cfg],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert "ERRORS in schoolgate.yaml, using the SAFE DEFAULT" in p.stdout and f"schoolgate.yaml:{line}:" in p.stdout


def test_flow_filter_capabilities_only_when_flows_are_on(tree) -> None:
    boot, state, _, run = tree
    dropin = Path(state).parent / "systemd" / fb.FLOWS_DROPIN
    (boot / "schoolgate.yaml").write_text(TEMPLATE.read_text())
    run()
    assert not dropin.exists()  # DNS only: CAP_NET_BIND_SERVICE alone (the unit's own)
    (boot / "schoolgate.yaml").write_text(TEMPLATE.read_text() + "flows:\n  enabled: true\n  interface: eth1\n")
    st = run()
    assert st["ok"] and st["source"] == "boot", st
    text = dropin.read_text()
    assert "AmbientCapabilities=CAP_NET_RAW CAP_NET_ADMIN\n" in text and "RestrictAddressFamilies=AF_PACKET\n" in text
    (boot / "schoolgate.yaml").write_text(TEMPLATE.read_text()
                                          + "flows:\n  enabled: true\n  interface: eth1\n  mode: monitor\n")
    run()
    assert "CapabilityBoundingSet=CAP_NET_RAW CAP_NET_ADMIN\n" in dropin.read_text()  # nflog needs it
    assert fb.flows_dropin({"flows": {"enabled": True, "mode": "monitor", "capture": "bpf"}}).count(
        "=CAP_NET_RAW\n") == 2  # only watching, through an AF_PACKET socket: no nftables, no nflog
    (boot / "schoolgate.yaml").write_text(TEMPLATE.read_text() + "flows:\n  enabled: false\n")
    run()
    assert not dropin.exists()
