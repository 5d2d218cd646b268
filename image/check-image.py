#!/usr/bin/env python3
"""Structural checks of a built schoolgate image, without booting it.

    image/check-image.py image/out/schoolgate-arm64.img [--json]

Reads the image file directly — the partition table with sfdisk, the FAT boot partition with
mtools, the ext4 partitions with debugfs (at their byte offsets: no loop device, no mount,
works on any arch's image) — and checks what a boot needs: the partition layout, kernel,
initramfs, device trees and Pi firmware or the UEFI loader, config.txt/cmdline.txt or the
loader entry, fstab, the appliance's venv built for the right CPU, the units enabled, the
hardening in place, and the demo bundle and numba cache on the data partition.

Exit 0 when every check passes, 1 otherwise; one line per check (or JSON lines).
Needs: sfdisk (fdisk), mtools, debugfs (e2fsprogs).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# ELF e_machine values (the ELF spec's registry).
ELF_MACHINE = {"amd64": 0x3E, "arm64": 0xB7}
ENABLED_UNITS = {
    "multi-user.target.wants": ["schoolgate.service", "schoolgate-console.service", "systemd-networkd.service"],
    "sysinit.target.wants": ["schoolgate-config.service", "systemd-timesyncd.service", "nftables.service"],
    "local-fs.target.wants": ["schoolgate-growdata.service"],
}
# Raspberry Pi 4 family: GPU firmware the boot EEPROM loads, and the mainline device trees
# the firmware picks by board (upstream_kernel=1).
PI_FIRMWARE = ["start4.elf", "fixup4.dat"]
PI_DTBS = ["bcm2711-rpi-4-b.dtb", "bcm2711-rpi-400.dtb", "bcm2711-rpi-cm4-io.dtb"]
# Targets: <= 1 GB as flashed (fits the smallest cards sold), <= 400 MB to
# download (the .img.xz next to the image, when it was made).
MAX_IMAGE_BYTES = 1000 ** 3
MAX_COMPRESSED_BYTES = 400 * 1000 ** 2


@dataclass
class Report:
    results: list[tuple[str, bool, str]] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.results.append((name, bool(ok), detail))
        return bool(ok)

    @property
    def ok(self) -> bool:
        return all(r[1] for r in self.results)


def run(*argv: str, data: bool = False) -> str | bytes:
    p = subprocess.run(argv, capture_output=True, env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {p.stderr.decode(errors='replace').strip()}")
    return p.stdout if data else p.stdout.decode(errors="replace")


class Image:
    def __init__(self, path: Path) -> None:
        self.path = path
        table = json.loads(run("sfdisk", "-J", str(path)))["partitiontable"]
        self.table = table
        self.parts = table.get("partitions", [])

    def offset(self, n: int) -> int:
        return self.parts[n - 1]["start"] * 512

    # FAT (partition 1) through mtools
    def fat_files(self) -> list[str]:
        out = run("mdir", "-/", "-b", "-i", f"{self.path}@@{self.offset(1)}", "::/")
        return [line.strip().removeprefix("::/") for line in out.splitlines() if line.strip()]

    def fat_read(self, name: str) -> bytes:
        return run("mtype", "-i", f"{self.path}@@{self.offset(1)}", f"::/{name}", data=True)

    def fat_head(self, name: str, n: int = 4096) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            dst = Path(tmp) / "f"
            run("mcopy", "-n", "-i", f"{self.path}@@{self.offset(1)}", f"::/{name}", str(dst))
            with open(dst, "rb") as f:
                return f.read(n)

    # ext4 (partitions 2 and 3) through debugfs at an offset
    def _dev(self, n: int) -> str:
        return f"{self.path}?offset={self.offset(n)}"

    def ext_cmd(self, n: int, cmd: str) -> str:
        return run("debugfs", "-R", cmd, self._dev(n))

    def ext_read(self, n: int, path: str) -> str:
        return self.ext_cmd(n, f"cat {path}")

    def ext_head(self, n: int, path: str, size: int = 64) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            dst = Path(tmp) / "f"
            run("debugfs", "-R", f"dump {path} {dst}", self._dev(n))
            return dst.read_bytes()[:size] if dst.exists() else b""

    def ext_ls(self, n: int, path: str) -> list[str]:
        out = self.ext_cmd(n, f"ls -p {path}")
        names = []
        for line in out.splitlines():
            f = line.split("/")
            if len(f) >= 6 and f[5] not in (".", ".."):
                names.append(f[5])
        return names

    def ext_link(self, n: int, path: str) -> str | None:
        out = self.ext_cmd(n, f"stat {path}")
        m = re.search(r'Fast link dest: "([^"]*)"', out)
        return m.group(1) if m else None


def elf_machine(head: bytes) -> int | None:
    if head[:4] != b"\x7fELF" or len(head) < 20:
        return None
    return int.from_bytes(head[18:20], "little")


def check_image(path: Path, arch: str) -> Report:
    r = Report()
    img = Image(path)
    size = path.stat().st_size
    r.check("image size <= 1 GB", size <= MAX_IMAGE_BYTES, f"{size / 1e6:.0f} MB")
    xz = path.with_name(path.name + ".xz")
    if xz.exists():
        r.check("compressed image (.img.xz) <= 400 MB", xz.stat().st_size <= MAX_COMPRESSED_BYTES,
                f"{xz.stat().st_size / 1e6:.0f} MB")
    p = img.parts
    r.check("MBR partition table with 3 partitions", img.table.get("label") == "dos" and len(p) == 3,
            f"{img.table.get('label')}, {len(p)} partitions")
    if len(p) != 3:
        return r
    disk_id = img.table["id"].removeprefix("0x").lower().rjust(8, "0")
    want_boot = {"amd64": "ef", "arm64": "c"}[arch]
    r.check("p1 boot partition type", p[0]["type"] == want_boot and p[0].get("bootable", False),
            f"type {p[0]['type']}, bootable {p[0].get('bootable', False)}")
    r.check("p2/p3 Linux partitions", p[1]["type"] == "83" and p[2]["type"] == "83")
    r.check("partitions 4 MiB aligned", all(x["start"] % 8192 == 0 for x in p))

    files = img.fat_files()
    lower = {f.lower() for f in files}
    r.check("FAT: schoolgate.yaml template", "schoolgate.yaml" in lower)
    r.check("FAT: kernel and initramfs", {"vmlinuz", "initrd.img"} <= lower)
    head = img.fat_head("vmlinuz", 0x40)
    if arch == "arm64":
        # arm64 Image header: "ARM\x64" at 0x38 (Documentation/arch/arm64/booting.rst); Debian's
        # is an EFI-stub Image ("MZ"), or gzip-compressed, which the Pi firmware also loads.
        r.check("kernel is an arm64 Image", head[0x38:0x3C] == b"ARM\x64" or head[:2] == b"\x1f\x8b",
                head[:4].hex())
        r.check("Pi 4 firmware files", all(f in lower for f in PI_FIRMWARE),
                ", ".join(f for f in PI_FIRMWARE if f not in lower) or "present")
        r.check("Pi 4 device trees", all(f in lower for f in PI_DTBS),
                ", ".join(f for f in PI_DTBS if f not in lower) or f"{sum(f.endswith('.dtb') for f in lower)} dtbs")
        cfg = img.fat_read("config.txt").decode(errors="replace") if "config.txt" in lower else ""
        for line in ("arm_64bit=1", "kernel=vmlinuz", "initramfs initrd.img followkernel", "upstream_kernel=1"):
            r.check(f"config.txt: {line}", re.search(rf"^{re.escape(line)}\s*$", cfg, re.M) is not None)
        cmd = img.fat_read("cmdline.txt").decode(errors="replace") if "cmdline.txt" in lower else ""
        r.check("config.txt: hardware watchdog", re.search(r"^dtparam=watchdog=on\s*$", cfg, re.M) is not None)
        r.check("cmdline.txt: one line", cmd.count("\n") <= 1 and cmd.strip() != "", repr(cmd[:80]))
        r.check("cmdline.txt: root by PARTUUID, read-only",
                f"root=PARTUUID={disk_id}-02" in cmd.split() and "ro" in cmd.split(), cmd.strip())
    else:
        r.check("kernel is an x86 bzImage", head[:2] == b"MZ" or head[0x202:0x206] == b"HdrS", head[:4].hex())
        efi = {f.lower() for f in run("mdir", "-/", "-b", "-i", f"{path}@@{img.offset(1)}", "::/EFI").split()}
        r.check("UEFI removable-media loader EFI/BOOT/BOOTX64.EFI", any(f.endswith("bootx64.efi") for f in efi))
        entry = img.fat_read("loader/entries/schoolgate.conf").decode(errors="replace")
        r.check("loader entry: root by PARTUUID, read-only",
                f"root=PARTUUID={disk_id}-02" in entry.split() and " ro " in f" {entry} ",
                entry.strip().splitlines()[-1])

    fstab = img.ext_read(2, "/etc/fstab")
    r.check("fstab: root read-only",
            re.search(rf"^PARTUUID={disk_id}-02\s+/\s+ext4\s+ro\b", fstab, re.M) is not None)
    r.check("fstab: data partition on /var",
            re.search(rf"^PARTUUID={disk_id}-03\s+/var\s+ext4\s+rw", fstab, re.M) is not None)
    r.check("fstab: boot partition",
            re.search(rf"^PARTUUID={disk_id}-01\s+/boot/firmware\s+vfat", fstab, re.M) is not None)
    r.check("fstab: /tmp on tmpfs", re.search(r"^tmpfs\s+/tmp\s+tmpfs", fstab, re.M) is not None)
    kvers = img.ext_ls(2, "/usr/lib/modules")
    r.check("kernel modules installed",
            len(kvers) == 1 and "modules.dep" in img.ext_ls(2, f"/usr/lib/modules/{kvers[0]}"), ", ".join(kvers))
    py = img.ext_link(2, "/opt/schoolgate/venv/bin/python") or ""
    target = "/usr/bin/python3.11" if py.startswith(("python3", "/usr/bin/python3")) else py
    if not target.startswith("/"):
        target = "/usr/bin/" + target
    r.check("python built for the image's CPU", elf_machine(img.ext_head(2, target)) == ELF_MACHINE[arch], target)
    llvm = "/opt/schoolgate/venv/lib/python3.11/site-packages/llvmlite/binding/libllvmlite.so"
    r.check("llvmlite (numba) built for the image's CPU", elf_machine(img.ext_head(2, llvm)) == ELF_MACHINE[arch])
    r.check("schoolgate CLI installed", "schoolgate" in img.ext_ls(2, "/opt/schoolgate/venv/bin"))
    for target_dir, units in ENABLED_UNITS.items():
        have = set(img.ext_ls(2, f"/etc/systemd/system/{target_dir}"))
        missing = [u for u in units if u not in have]
        r.check(f"units enabled ({target_dir})", not missing, ", ".join(missing) or ", ".join(units))
    unit = img.ext_read(2, "/usr/lib/systemd/system/schoolgate.service")
    for line in ("User=schoolgate", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE", "ProtectSystem=strict",
                 "PrivateTmp=yes", "NoNewPrivileges=yes", "ReadWritePaths=/var/lib/schoolgate"):
        r.check(f"schoolgate.service: {line}", re.search(rf"^{re.escape(line)}$", unit, re.M) is not None)
    r.check("schoolgate.service: only CAP_NET_BIND_SERVICE",
            re.search(r"^AmbientCapabilities=CAP_NET_BIND_SERVICE$", unit, re.M) is not None
            and not re.search(r"^(User=root|PrivilegedMode=|CapabilityBoundingSet=.*CAP_SYS)", unit, re.M))
    passwd = img.ext_read(2, "/etc/passwd")
    r.check("dedicated user schoolgate (no login shell)",
            re.search(r"^schoolgate:x:\d+:\d+:[^:]*:/var/lib/schoolgate:/usr/sbin/nologin$", passwd, re.M) is not None)
    # systemd never sets the clock before this file's mtime at boot: the floor for a board
    # without a battery-backed clock (a Pi) until timesyncd has the time.
    epoch = img.ext_cmd(2, "stat /usr/lib/clock-epoch")
    r.check("clock floor /usr/lib/clock-epoch", "Inode:" in epoch and "File not found" not in epoch)
    r.check("nftables base ruleset", "table inet schoolgate_base {" in img.ext_read(2, "/etc/nftables.conf"))
    r.check("IP forwarding sysctl",
            "net.ipv4.ip_forward = 1" in img.ext_read(2, "/etc/sysctl.d/60-schoolgate-gateway.conf"))
    r.check("journald size limits",
            "SystemMaxUse=" in img.ext_read(2, "/etc/systemd/journald.conf.d/60-schoolgate.conf"))
    r.check("hardware watchdog",
            "RuntimeWatchdogSec=" in img.ext_read(2, "/etc/systemd/system.conf.d/60-schoolgate-watchdog.conf"))
    r.check("empty machine-id (one per device)", img.ext_read(2, "/etc/machine-id").strip() == "")

    r.check("data: demo bundle active", img.ext_link(3, "/lib/schoolgate/demo/bundles/current") is not None)
    r.check("data: numba cache warmed", len(img.ext_ls(3, "/lib/schoolgate/numba-cache")) > 0)
    r.check("data: installed config", "schoolgate.yaml" in img.ext_ls(3, "/lib/schoolgate/config"))
    # Nothing from the build's warm-up run that must be each box's own (the query log's
    # client-hashing key) or would mislead (its counters, its pid).
    left = sorted(set(img.ext_ls(3, "/lib/schoolgate")) & {"logs", "counters.json", "run.json", "flows-state.json"})
    r.check("data: no warm-up leftovers (query log key, counters)", not left, ", ".join(left))
    r.check("data: no apt package lists", len(img.ext_ls(3, "/lib/apt/lists")) <= 2)
    # The admin's template on the boot partition: DNS on every address, the status page on
    # the LAN at :8080, a place for the admin password (hashed at first boot).
    tmpl = img.fat_read("schoolgate.yaml").decode(errors="replace") if "schoolgate.yaml" in lower else ""
    for line in ('listen: ["0.0.0.0:53", "[::]:53"]', 'listen: "0.0.0.0:8080"', 'admin_password: ""'):
        r.check(f"FAT schoolgate.yaml: {line}", re.search(rf"^\s+{re.escape(line)}\s*$", tmpl, re.M) is not None)
    installed = img.ext_read(3, "/lib/schoolgate/config/schoolgate.yaml")
    r.check("data: installed config has no empty admin_password",
            re.search(r"^\s+admin_password:", installed, re.M) is None)
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="structural checks of a schoolgate image")
    ap.add_argument("image", type=Path)
    ap.add_argument("--arch", choices=sorted(ELF_MACHINE), help="default: from the file name")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    arch = args.arch or next((a for a in ELF_MACHINE if a in args.image.name), None)
    if arch is None:
        ap.error("cannot tell the arch from the file name: give --arch")
    try:
        rep = check_image(args.image, arch)
    except (RuntimeError, OSError, KeyError, ValueError) as exc:
        print(f"check-image: error: {exc}", file=sys.stderr)
        return 1
    for name, ok, detail in rep.results:
        if args.json:
            print(json.dumps({"check": name, "ok": ok, "detail": detail}))
        else:
            print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f" ({detail})" if detail else ""))
    failed = sum(not ok for _, ok, _ in rep.results)
    if not args.json:
        print(f"{len(rep.results) - failed} passed, {failed} failed")
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
