#!/usr/bin/env bash
# Build the schoolgate appliance image from Debian bookworm packages.
#
#   image/build.sh amd64     # UEFI PC / VM image (systemd-boot), also what test-boot.sh boots
#   image/build.sh arm64     # Raspberry Pi 4 image (raspi-firmware, linux-image-arm64)
#
# Output: image/out/schoolgate-ARCH.img (raw disk image) and .img.xz (for dd / Raspberry Pi
# Imager), plus image/out/ARCH/ (root tree, wheels, build log). Runs as root, no Docker:
# mmdebstrap builds the root tree in a directory, the appliance is installed into it by
# chroot (qemu-user through binfmt_misc for arm64), and the three file systems are made
# from directories (mkfs.ext4 -d, mtools) and written into a partitioned file, so the
# build needs no loop device and no mount of the image at all.
#
# Disk layout (MBR, the same on both arches; the disk id is random per build):
#   p1  FAT32  SGBOOT  160 MiB   kernel, initrd, firmware/boot loader, schoolgate.yaml
#   p2  ext4   SGROOT            the system, mounted read-only
#   p3  ext4   SGDATA            /var (bundles, config, logs, numba cache); grown to the
#                                end of the card at first boot
#
# Environment: MIRROR (default http://deb.debian.org/debian), SG_KEEP_ROOTFS=1 keeps
# image/out/ARCH/rootfs after the build (for inspection), SG_NO_XZ=1 skips compression,
# SG_REUSE_ROOTFS=1 starts from the root tree a failed build left (see reuse_root).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
OUTROOT="$HERE/out"
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SUITE=bookworm
PY=python3.11                       # bookworm's Python: the wheels are built for it
VENV=/opt/schoolgate/venv
STATE=/var/lib/schoolgate
# Kernel + initrd + firmware take ~40 MB (amd64) to ~70 MB (Pi); room for one more set.
BOOT_MIB=160
# Free space left in the root file system: enough for the one-time machine-id commit and
# a little slack, small because nothing else ever writes there (it is mounted read-only).
# (The 10 % added to the tree's size covers the file system's own metadata.)
ROOT_SLACK_MIB=16
# The data partition as shipped; first boot grows it to the end of the card.
DATA_MIB=64

log() { printf '\n==> [%s %ss] %s\n' "${ARCH:-?}" "$SECONDS" "$*" >&2; }
die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
    echo "usage: $0 amd64|arm64" >&2
    exit 2
}

# --- cleanup: every mount made by this script is recorded and undone on exit ---------------
MOUNTS=()
cleanup() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount -l "${MOUNTS[i]}" 2>/dev/null || true
    done
    MOUNTS=()
    # What an interrupted mmdebstrap may have left mounted in the tree.
    if [ -n "${ROOTFS:-}" ] && [ -d "$ROOTFS" ]; then
        local m
        for m in $(awk -v d="$(realpath "$ROOTFS")/" 'index($2 "/", d) == 1 {print $2}' /proc/mounts | sort -r); do
            umount -l "$m" 2>/dev/null || true
        done
    fi
}
trap cleanup EXIT
trap 'die "interrupted"' INT TERM

# A build that was killed (or an interrupted mmdebstrap) can leave proc, sys, dev/pts or a
# bind of the host's /dev/shm mounted inside the old root tree: unmount all of it before
# anything deletes that tree, and refuse to go on if something stays mounted there.
unmount_under() {
    local dir=$1 m
    [ -d "$dir" ] || return 0
    dir=$(realpath "$dir")
    for m in $(awk -v d="$dir/" 'index($2 "/", d) == 1 {print $2}' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    ! awk -v d="$dir/" 'index($2 "/", d) == 1 {found = 1} END {exit !found}' /proc/mounts \
        || die "still mounted under $dir (see /proc/mounts): not deleting it"
}

# Delete a tree made by this script, never crossing into another file system.
remove_tree() {
    unmount_under "$1"
    rm -rf --one-file-system "$1"
}

chroot_mounts() {
    local root=$1 d
    for d in proc sys dev dev/pts; do
        mkdir -p "$root/$d"
    done
    mount -t proc proc "$root/proc" && MOUNTS+=("$root/proc")
    mount --rbind /sys "$root/sys" && mount --make-rslave "$root/sys" && MOUNTS+=("$root/sys")
    mount --rbind /dev "$root/dev" && mount --make-rslave "$root/dev" && MOUNTS+=("$root/dev")
    # The build's own /tmp: pip and numba write there, and the host's /tmp stays clean.
    mount -t tmpfs -o size=2G tmpfs "$root/tmp" && MOUNTS+=("$root/tmp")
}

# Run a command in the image. No network namespace of its own: callers that start servers
# use in_chroot_netns instead.
in_chroot() {
    chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"
}

# The same in a fresh network namespace with only loopback up, so that a warm-up run of the
# DNS service on 127.0.0.1:5353 can neither clash with the host's ports nor reach any network.
in_chroot_netns() {
    unshare --net -- sh -c 'ip link set lo up && exec "$@"' sh \
        chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"
}

# --- 0. host checks -------------------------------------------------------------------------
check_host() {
    [ "$(id -u)" = 0 ] || die "run as root (mmdebstrap, chroot and mkfs need it)"
    local t missing=()
    for t in mmdebstrap sfdisk mkfs.ext4 mkfs.vfat mcopy mmd unshare xz "$PY_HOST"; do
        command -v "$t" >/dev/null || missing+=("$t")
    done
    [ ${#missing[@]} = 0 ] || die "missing tools: ${missing[*]} (apt-get install mmdebstrap fdisk e2fsprogs dosfstools mtools util-linux xz-utils)"
    # mkfs.ext4 -d (populate from a directory) needs e2fsprogs >= 1.43.
    { mkfs.ext4 2>&1 || true; } | grep -q -- '-d root-directory' || die "mkfs.ext4 has no -d (e2fsprogs too old)"
    if [ "$ARCH" = arm64 ] && [ "$(uname -m)" != aarch64 ]; then
        # Maintainer scripts and the warm-up run arm64 binaries: qemu-user via binfmt_misc,
        # registered with the F flag so that it works inside the chroot.
        command -v qemu-aarch64-static >/dev/null || die "apt-get install qemu-user-static binfmt-support"
        if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
            mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || die "cannot mount binfmt_misc"
        fi
        [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 \
            || die "cannot register qemu-aarch64 with binfmt_misc"
    fi
}

# --- 1. Python wheels for the target -------------------------------------------------------
# The project's wheel from this checkout, and binary wheels of its dependencies for the
# target's platform and bookworm's Python 3.11, pinned by image/constraints.txt. Nothing is
# compiled in the chroot.
fetch_wheels() {
    log "wheels for $ARCH (project from $REPO, dependencies pinned by image/constraints.txt)"
    local wh="$WORK/wheels" src="$WORK/src"
    rm -rf "$wh" "$src"
    mkdir -p "$wh" "$src"
    # Build from a copy so the shared checkout gets no build/ or egg-info churn.
    (cd "$REPO" && tar --exclude=./.git --exclude=./image/out --exclude=./.venv --exclude=./build \
        --exclude='*.egg-info' --exclude=__pycache__ --exclude=./.hypothesis -cf - .) | tar -xf - -C "$src"
    # Without build isolation when the host has the build backend (offline, quick); its
    # failure (no wheel package) is not an error: then pip fetches the backend itself.
    "$PY_HOST" -m pip wheel -q --no-deps --no-build-isolation -w "$wh" "$src" 2>/dev/null \
        || "$PY_HOST" -m pip wheel -q --no-deps -w "$wh" "$src"
    local plat=() p
    for p in $PLATFORMS; do plat+=(--platform "$p"); done
    "$PY_HOST" -m pip download -q --only-binary=:all: "${plat[@]}" --python-version 3.11 \
        --implementation cp --abi cp311 -c "$HERE/constraints.txt" -d "$wh" "$wh"/schoolgate-*.whl
    ls "$wh" >&2
}

# --- 2. Debian root tree -------------------------------------------------------------------
# The packages of the image (the rest comes with them). tzdata: the policies' schedules
# name IANA time zones (Python's zoneinfo reads /usr/share/zoneinfo).
COMMON_PACKAGES=(systemd-sysv udev kmod dbus systemd-timesyncd nftables iproute2 iputils-ping
                 netbase ca-certificates "$PY"-venv python3-venv e2fsprogs dosfstools fdisk
                 initramfs-tools zstd less tzdata)

debootstrap_root() {
    if [ "${SG_REUSE_ROOTFS:-}" = 1 ] && [ -e "$ROOTFS/etc/debian_version" ] \
       && compgen -G "$ROOTFS/boot/vmlinuz-*" >/dev/null; then
        reuse_root
        return
    fi
    log "mmdebstrap $SUITE ($ARCH) into $ROOTFS"
    remove_tree "$ROOTFS"
    local common=("${COMMON_PACKAGES[@]}")
    # Trimmed from the image: documentation and translations (an appliance has no man
    # pages; copyright files stay), and kernel modules for hardware a filtering gateway
    # never has (video capture, InfiniBand, ISDN, Wi-Fi and Bluetooth, amateur radio, CAN,
    # staging drivers, industrial sensors). Kernel paths are /lib/modules in the packages.
    local excl=(
        'path-exclude=/usr/share/man/*' 'path-exclude=/usr/share/info/*'
        'path-exclude=/usr/share/doc/*' 'path-include=/usr/share/doc/*/copyright'
        'path-exclude=/usr/share/locale/*' 'path-include=/usr/share/locale/locale.alias'
    )
    local m
    for m in drivers/media drivers/infiniband drivers/isdn drivers/staging drivers/iio \
             drivers/net/wireless drivers/bluetooth net/bluetooth drivers/net/hamradio net/hamradio \
             drivers/net/can net/can drivers/nfc net/nfc "${ARCH_MODULE_EXCLUDES[@]}"; do
        excl+=("path-exclude=/lib/modules/*/kernel/$m/*" "path-exclude=/usr/lib/modules/*/kernel/$m/*")
    done
    # Keep the config files we put in place before the packages (raspi-firmware's defaults)
    # instead of stopping at dpkg's question.
    local dpkgopts=(--dpkgopt=force-confold --dpkgopt=force-confdef) e
    for e in "${excl[@]}"; do dpkgopts+=(--dpkgopt="$e"); done
    # /boot/firmware exists before the kernel's maintainer scripts run: raspi-firmware's
    # hooks copy kernel, initrd and device trees there.
    # The initramfs is made once, by the kernel's postinst (every package is unpacked by
    # then, and initramfs-tools' own dependencies configured); its dpkg trigger would make
    # it all over again (update_initramfs=no until the end), ~10 min under qemu-user.
    # merged-usr hook: /usr is merged by mmdebstrap itself, not by the usrmerge package
    # (which would pull in perl, 40 MB the appliance never uses).
    mmdebstrap --mode=root --variant=apt --arch="$ARCH" \
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
        --include="$(IFS=,; echo "${common[*]} ${ARCH_PACKAGES[*]}" | tr ' ' ,)" \
        "${dpkgopts[@]}" \
        --setup-hook='mkdir -p "$1/boot/firmware" "$1/etc/default" "$1/etc/initramfs-tools"' \
        --setup-hook='printf "update_initramfs=no\nbackup_initramfs=no\n" > "$1/etc/initramfs-tools/update-initramfs.conf"' \
        "${ARCH_HOOKS[@]}" \
        --essential-hook='echo "schoolgate" > "$1/etc/hostname"' \
        --customize-hook='rm -f "$1/etc/resolv.conf"' \
        --customize-hook='printf "update_initramfs=yes\nbackup_initramfs=no\n" > "$1/etc/initramfs-tools/update-initramfs.conf"' \
        "$SUITE" "$ROOTFS" \
        "deb $MIRROR $SUITE main non-free-firmware" \
        "deb $MIRROR $SUITE-updates main non-free-firmware" \
        "deb $SECURITY_MIRROR $SUITE-security main non-free-firmware" 2>&1 | progress_filter
}

# SG_REUSE_ROOTFS=1 (for development: an arm64 root tree takes ~half an hour under
# qemu-user): keep the tree a failed build left and only add packages missing from it,
# with apt inside the tree (its sources and dpkg excludes are mmdebstrap's). Every later
# step redoes its work, so the result is that of a full build as long as no package was
# removed from the list.
reuse_root() {
    log "reusing the root tree in $ROOTFS (SG_REUSE_ROOTFS=1)"
    unmount_under "$ROOTFS"
    local missing=() pkg
    for pkg in "${COMMON_PACKAGES[@]}" "${ARCH_PACKAGES[@]}"; do
        chroot "$ROOTFS" dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
    done
    [ ${#missing[@]} = 0 ] && return 0
    log "installing into the reused tree: ${missing[*]}"
    chroot_mounts "$ROOTFS"
    rm -f "$ROOTFS/etc/resolv.conf"
    cp -L /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
    in_chroot apt-get update -q >/dev/null
    in_chroot env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confold "${missing[@]}" 2>&1 | progress_filter
    # As mmdebstrap leaves it: no package lists or downloaded packages (~80 MB in /var).
    in_chroot apt-get clean
    rm -rf "$ROOTFS"/var/lib/apt/lists/*
    rm -f "$ROOTFS/etc/resolv.conf"
    cleanup
}

# mmdebstrap is chatty; keep its step lines (I:) and errors, drop dpkg's per-file noise.
progress_filter() {
    tee -a "$WORK/mmdebstrap.log" | grep --line-buffered -E '^(I|E|W): |rror' || true
}

# --- 3. the appliance ----------------------------------------------------------------------
# Kernel modules compressed with xz (kmod loads .ko.xz; the initramfs, already built,
# keeps its own copies): about a third of their size, the largest part of the root.
compress_modules() {
    log "compressing kernel modules (xz)"
    local kver
    kver=$(basename "$(ls -d "$ROOTFS"/usr/lib/modules/* | sort -V | tail -1)")
    find "$ROOTFS/usr/lib/modules/$kver" -name '*.ko' -print0 \
        | xargs -0 -r -P 2 -n 64 xz --check=crc32 --lzma2=preset=6,dict=1MiB -T1 -q
    in_chroot depmod -a "$kver"
}

install_files() {
    log "system files (units, nftables, sysctl, journald, watchdog, fstab)"
    # Static files, copied as they are (owner root).
    (cd "$HERE/files" && tar --owner=0 --group=0 -cf - .) | tar -xf - -C "$ROOTFS" --no-same-owner
    chmod 0755 "$ROOTFS"/usr/lib/schoolgate/{firstboot,growdata,console-status,schoolgate}
    # PARTUUIDs of this build's disk: root=, fstab and the boot loader all name partitions
    # by them, so a second disk carrying the same labels (a USB stick flashed with the same
    # image) cannot be mounted by mistake.
    sed -e "s/@DISKID@/$DISKID/g" "$HERE/fstab.in" > "$ROOTFS/etc/fstab"
    # /etc/resolv.conf is written at boot (schoolgate-config) from the config's upstreams.
    ln -sfn ../run/schoolgate/resolv.conf "$ROOTFS/etc/resolv.conf"
    # Empty machine-id: every device gets its own at first boot (committed once to the
    # read-only root by schoolgate-config, see image/files/usr/lib/schoolgate/firstboot).
    : > "$ROOTFS/etc/machine-id"
    rm -f "$ROOTFS/var/lib/dbus/machine-id"
    ln -sfn /etc/machine-id "$ROOTFS/var/lib/dbus/machine-id" 2>/dev/null || true
    install -D -m 0644 "$HERE/boot/schoolgate.yaml" "$ROOTFS/usr/share/schoolgate/schoolgate.yaml.template"
    # The clock never starts before the image was built (systemd reads this file's mtime at
    # boot; a Pi has no battery clock): expiry checks start from a sane floor.
    touch "$ROOTFS/usr/lib/clock-epoch"
    # The read-only root needs mount points for everything on other file systems.
    mkdir -p "$ROOTFS/boot/firmware" "$ROOTFS/var" "$ROOTFS/tmp"
}

setup_system() {
    log "users, units and services"
    # The service user comes from image/files/usr/lib/sysusers.d/schoolgate.conf; created
    # now so that files made at build time can be owned by it.
    in_chroot systemd-sysusers >/dev/null
    local uid gid
    uid=$(in_chroot id -u schoolgate)
    gid=$(in_chroot id -g schoolgate)
    install -d -o "$uid" -g "$gid" -m 0750 "$ROOTFS$STATE" "$ROOTFS$STATE/config"
    in_chroot systemctl enable schoolgate.service schoolgate-config.service schoolgate-growdata.service \
        schoolgate-console.service nftables.service systemd-networkd.service systemd-timesyncd.service >/dev/null 2>&1
    # No apt on an appliance with a read-only root: its timers would only try the network.
    in_chroot systemctl mask apt-daily.timer apt-daily-upgrade.timer apt-daily.service \
        apt-daily-upgrade.service e2scrub_all.timer e2scrub_reap.service >/dev/null 2>&1
    # A getty on the serial console (Pi UART, VM serial) and the screen, nothing else.
    in_chroot systemctl set-default multi-user.target >/dev/null
    # Root has no password: the console login is locked until an admin sets one on a PC
    # (the appliance is managed through schoolgate.yaml and the web page).
    in_chroot usermod -p '!' root 2>/dev/null || sed -i -e 's/^root:[^:]*:/root:!:/' "$ROOTFS/etc/shadow"
}

install_venv() {
    log "virtualenv $VENV from the wheels"
    rm -rf "$ROOTFS/opt/schoolgate"
    mkdir -p "$ROOTFS/tmp/wheels"
    cp "$WORK"/wheels/*.whl "$ROOTFS/tmp/wheels/"
    in_chroot "$PY" -m venv "$VENV"
    in_chroot "$VENV/bin/pip" install -q --no-index --no-cache-dir --disable-pip-version-check \
        --find-links /tmp/wheels schoolgate
    # appliance/bundles/select.py finds the default config and the demo repository next to the
    # packages (<site-packages>/config): ship them there, but not the demo's private keys.
    local site
    site=$(in_chroot "$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    mkdir -p "$ROOTFS$site/config"
    (cd "$REPO/config" && tar --owner=0 --group=0 --exclude=./demo/keys-DEMO-NOT-SECRET \
        -cf - default.yaml demo examples) | tar -xf - -C "$ROOTFS$site/config" --no-same-owner
    # The admin's `schoolgate` runs with the service's environment and user.
    ln -sfn /usr/lib/schoolgate/schoolgate "$ROOTFS/usr/local/bin/schoolgate"
    # The dependencies' own test suites (numpy's, numba's: ~33 MB) never run on a box.
    find "$ROOTFS$site" -mindepth 2 -type d -name tests -prune -exec rm -rf {} +
    # Byte-compile now: the root is read-only on the device, so .pyc files written later
    # would be lost at every start.
    in_chroot "$VENV/bin/python" -m compileall -q -j 0 "$VENV/lib" >/dev/null || true
    in_chroot "$VENV/bin/pip" freeze --all > "$WORK/versions.txt"
    install -m 0644 "$WORK/versions.txt" "$ROOTFS/opt/schoolgate/versions.txt"
    # Nothing is ever installed on the device (read-only root): no pip, no setuptools.
    in_chroot "$VENV/bin/python" -m pip uninstall -q -y pip setuptools >/dev/null 2>&1 || true
}

# The template as the installed config: its empty admin_password (the admin's invitation to
# type one) is no key the appliance knows, so it goes, as schoolgate-config does at boot.
install_template() {
    sed -e 's/^\(\s*\)admin_password: ""/\1# admin_password: ""/' "$HERE/boot/schoolgate.yaml" > "$ROOTFS$1"
    chmod 0640 "$ROOTFS$1"
    in_chroot chown root:schoolgate "$1"
}

# Install the demo bundle and warm the numba cache exactly as the service will run: as the
# schoolgate user, with the unit's environment (NUMBA_CACHE_DIR on the data partition,
# NUMBA_CPU_NAME=generic so the cached machine code is valid on any CPU of the arch), then
# `schoolgate warm-up`, one DNS answer from a short `schoolgate run` and one lookup.
warm_up() {
    log "first active bundle (demo) and numba cache warm-up (slow under qemu-user for arm64)"
    local cfg="$STATE/config/schoolgate.yaml" t0=$SECONDS
    # From an empty state directory (a reused tree may hold an earlier attempt's).
    find "$ROOTFS$STATE" -mindepth 1 -delete
    install -d -o "$(in_chroot id -u schoolgate)" -g "$(in_chroot id -g schoolgate)" -m 0750 "$ROOTFS$STATE/config"
    install_template "$cfg"
    # The warm-up listens on loopback only, inside its own network namespace.
    sed -i -e 's/^\(  listen: \)\[.*/\1["127.0.0.1:5353"]/' "$ROOTFS$cfg"
    in_chroot_netns /bin/sh -c "
        set -e
        set -a; . /usr/lib/schoolgate/environment; set +a
        # the fast path's kernels (a first run would compile them in the background, after
        # its first answer: the check below alone would not wait for them)
        runuser -u schoolgate -- $VENV/bin/schoolgate warm-up --config $cfg
        runuser -u schoolgate -- $VENV/bin/schoolgate run --config $cfg >/tmp/warm-run.log 2>&1 &
        pid=\$!
        i=0
        until $VENV/bin/python - <<'EOF'
import socket, sys
q = bytes.fromhex('abcd01000001000000000000') + b'\x03www\x080-casino\x04info\x00\x00\x01\x00\x01'
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
try:
    s.sendto(q, ('127.0.0.1', 5353)); r = s.recv(512)
except OSError:
    sys.exit(1)
sys.exit(0 if r[3] & 15 == 3 else 2)   # NXDOMAIN: blocked by the demo bundle
EOF
        do
            i=\$((i + 1)); [ \$i -lt 1800 ] || { echo 'warm-up: no DNS answer' >&2; cat /tmp/warm-run.log >&2; exit 1; }
            kill -0 \$pid 2>/dev/null || { echo 'warm-up: schoolgate run died' >&2; cat /tmp/warm-run.log >&2; exit 1; }
            sleep 1
        done
        kill -TERM \$pid; wait \$pid || true
        runuser -u schoolgate -- $VENV/bin/schoolgate lookup --config $cfg www.0-casino.info example.org
    "
    WARM_SECONDS=$((SECONDS - t0))
    log "warm-up took ${WARM_SECONDS}s"
    # The installed config starts as the template; schoolgate-config replaces it at first
    # boot with the admin's (validated) schoolgate.yaml from the boot partition.
    install_template "$cfg"
    # Only what every box may share stays: the config, the demo bundle, the numba cache.
    # The warm-up's counters and query log go, and so does the query log's hashing key,
    # which must be each box's own (made at its first start).
    find "$ROOTFS$STATE" -mindepth 1 -maxdepth 1 ! -name config ! -name demo ! -name bundles \
        ! -name numba-cache -printf '    removing the warm-up'"'"'s %P\n' -exec rm -rf {} + >&2
    echo "$WARM_SECONDS" > "$WORK/warmup-seconds"
}

# --- 4. boot partition ----------------------------------------------------------------------
boot_amd64() {
    # systemd-boot as the removable-media loader: no NVRAM entry needed, any UEFI VM boots it.
    local fw="$ROOTFS/boot/firmware" kver
    kver=$(basename "$(ls -d "$ROOTFS"/usr/lib/modules/* | sort -V | tail -1)")
    rm -rf "${fw:?}"/*
    install -D -m 0644 "$ROOTFS/usr/lib/systemd/boot/efi/systemd-bootx64.efi" "$fw/EFI/BOOT/BOOTX64.EFI"
    install -m 0644 "$ROOTFS/boot/vmlinuz-$kver" "$fw/vmlinuz"
    install -m 0644 "$ROOTFS/boot/initrd.img-$kver" "$fw/initrd.img"
    mkdir -p "$fw/loader/entries"
    printf 'default schoolgate.conf\ntimeout 0\neditor no\n' > "$fw/loader/loader.conf"
    cat > "$fw/loader/entries/schoolgate.conf" <<EOF
title   schoolgate ($kver)
linux   /vmlinuz
initrd  /initrd.img
options root=PARTUUID=$DISKID-02 ro rootwait fsck.repair=yes console=tty0 console=ttyS0,115200 net.ifnames=0
EOF
}

boot_arm64() {
    # raspi-firmware's kernel hook already copied the GPU firmware, kernel, initrd and the
    # device trees into /boot/firmware; config.txt and cmdline.txt are ours (the hook's
    # defaults mount the root read-write and name it by label).
    local fw="$ROOTFS/boot/firmware" kver
    kver=$(basename "$(ls -d "$ROOTFS"/usr/lib/modules/* | sort -V | tail -1)")
    [ -e "$fw/start4.elf" ] || cp "$ROOTFS"/usr/lib/raspi-firmware/* "$fw/"
    [ -e "$fw/bcm2711-rpi-4-b.dtb" ] || cp "$ROOTFS/usr/lib/linux-image-$kver"/broadcom/bcm27*.dtb "$fw/"
    install -m 0644 "$ROOTFS/boot/vmlinuz-$kver" "$fw/vmlinuz"
    install -m 0644 "$ROOTFS/boot/initrd.img-$kver" "$fw/initrd.img"
    rm -f "$fw"/vmlinuz-* "$fw"/initrd.img-*
    sed -e "s/@KVER@/$kver/g" "$HERE/pi/config.txt" > "$fw/config.txt"
    printf 'console=tty0 console=ttyS1,115200 root=PARTUUID=%s-02 ro rootwait fsck.repair=yes net.ifnames=0 cma=64M\n' \
        "$DISKID" > "$fw/cmdline.txt"
}

# --- 5. file systems and disk ---------------------------------------------------------------
mib_of() { du -sm --apparent-size "$1" | cut -f1; }

make_image() {
    log "file systems and the disk image"
    local fs="$WORK/fs"
    rm -rf "$fs" "$IMG.xz"
    mkdir -p "$fs"
    # The boot partition also carries the admin's template.
    install -m 0644 "$HERE/boot/schoolgate.yaml" "$ROOTFS/boot/firmware/schoolgate.yaml"
    install -m 0644 "$HERE/boot/README.txt" "$ROOTFS/boot/firmware/README.txt"

    # Split the tree: /var goes to the data partition, /boot/firmware to FAT, the rest is root.
    # The root image is made from the tree with those two emptied (their mount points stay).
    mv "$ROOTFS/var" "$WORK/var.tree" && mkdir -m 0755 "$ROOTFS/var"
    mv "$ROOTFS/boot/firmware" "$WORK/boot.tree" && mkdir -m 0755 "$ROOTFS/boot/firmware"
    # Restore the tree even if mkfs fails, so a rerun of only this step works.
    local rc=0
    {
        local root_mib data_mib
        # Sizes in whole 4 MiB units, so that every partition starts 4 MiB aligned.
        root_mib=$(( ($(mib_of "$ROOTFS") * 110 / 100 + ROOT_SLACK_MIB + 3) / 4 * 4 ))
        data_mib=$(( ($(mib_of "$WORK/var.tree") + DATA_MIB + 3) / 4 * 4 ))
        mkfs.ext4 -q -F -L SGROOT -J size=4 -m 0 -i 16384 -U random -d "$ROOTFS" "$fs/root.ext4" "${root_mib}M"
        mkfs.ext4 -q -F -L SGDATA -m 1 -U random -d "$WORK/var.tree" "$fs/data.ext4" "${data_mib}M"
        mkfs.vfat -F 32 -n SGBOOT -i "${DISKID}" -C "$fs/boot.vfat" $((BOOT_MIB * 1024)) >/dev/null
        # mtools copies the tree without mounting (MTOOLS_SKIP_CHECK: a file, not a floppy).
        MTOOLS_SKIP_CHECK=1 mcopy -s -Q -i "$fs/boot.vfat" "$WORK/boot.tree"/* ::/
    } || rc=$?
    rmdir "$ROOTFS/var" "$ROOTFS/boot/firmware"
    mv "$WORK/var.tree" "$ROOTFS/var"
    mv "$WORK/boot.tree" "$ROOTFS/boot/firmware"
    [ $rc = 0 ] || die "making file systems failed"

    # Partitions start at 4 MiB (Pi and flash-friendly erase-block alignment).
    local start=$((4 * 2048)) boot_s=$((BOOT_MIB * 2048)) root_s data_s total
    root_s=$(( $(stat -c %s "$fs/root.ext4") / 512 ))
    data_s=$(( $(stat -c %s "$fs/data.ext4") / 512 ))
    total=$(( start + boot_s + root_s + data_s + 2048 ))
    rm -f "$IMG"
    truncate -s $((total * 512)) "$IMG"
    sfdisk -q "$IMG" <<EOF
label: dos
label-id: 0x$DISKID
unit: sectors

start=$start, size=$boot_s, type=$BOOT_TYPE, bootable
start=$((start + boot_s)), size=$root_s, type=83
start=$((start + boot_s + root_s)), size=$data_s, type=83
EOF
    dd if="$fs/boot.vfat" of="$IMG" bs=1M seek=$((start / 2048)) conv=notrunc,sparse status=none
    dd if="$fs/root.ext4" of="$IMG" bs=512 seek=$((start + boot_s)) conv=notrunc,sparse status=none
    dd if="$fs/data.ext4" of="$IMG" bs=512 seek=$((start + boot_s + root_s)) conv=notrunc,sparse status=none
    rm -rf "$fs"
    sfdisk -l "$IMG" >&2
}

compress_image() {
    [ "${SG_NO_XZ:-}" = 1 ] && return 0
    log "compressing (xz -T2): $IMG.xz"
    rm -f "$IMG.xz"
    xz -T2 -6 -k "$IMG"
}

report() {
    local raw xzs
    raw=$(stat -c %s "$IMG")
    xzs=$( [ -e "$IMG.xz" ] && stat -c %s "$IMG.xz" || echo 0)
    cat > "$WORK/build-report.txt" <<EOF
arch=$ARCH
image=$IMG
image_bytes=$raw
xz_bytes=$xzs
build_seconds=$SECONDS
warmup_seconds=$(cat "$WORK/warmup-seconds" 2>/dev/null || echo ?)
disk_id=$DISKID
EOF
    log "done: $IMG ($((raw / 1048576)) MiB raw, $((xzs / 1048576)) MiB xz) in ${SECONDS}s"
    cat "$WORK/build-report.txt" >&2
}

main() {
    [ $# = 1 ] || usage
    ARCH=$1
    case "$ARCH" in
        amd64)
            ARCH_PACKAGES=(linux-image-amd64 systemd-boot-efi)
            ARCH_HOOKS=()
            # Desktop GPUs and sound cards: a VM or PC gateway needs neither (its console is
            # the EFI framebuffer, virtio-gpu or bochs).
            ARCH_MODULE_EXCLUDES=(sound drivers/gpu/drm/amd drivers/gpu/drm/nouveau
                                  drivers/gpu/drm/i915 drivers/gpu/drm/radeon)
            PLATFORMS="manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 linux_x86_64"
            BOOT_TYPE=ef   # EFI system partition (UEFI firmware looks for its loader there)
            ;;
        arm64)
            ARCH_PACKAGES=(linux-image-arm64 raspi-firmware)
            # The Pi's HDMI driver (vc4) links against the sound modules: keep both.
            ARCH_MODULE_EXCLUDES=()
            # raspi-firmware's hook reads its settings when the kernel is installed.
            ARCH_HOOKS=(--setup-hook="cp '$HERE/pi/raspi-firmware' \"\$1/etc/default/raspi-firmware\"")
            PLATFORMS="manylinux_2_28_aarch64 manylinux_2_27_aarch64 manylinux_2_17_aarch64 manylinux2014_aarch64 linux_aarch64"
            BOOT_TYPE=c    # FAT32 (LBA): what the Pi's boot ROM/EEPROM reads
            ;;
        *) usage ;;
    esac
    PY_HOST=${PYTHON:-python3}
    WORK="$OUTROOT/$ARCH"
    ROOTFS="$WORK/rootfs"
    IMG="$OUTROOT/schoolgate-$ARCH.img"
    DISKID=$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')
    mkdir -p "$WORK"
    : > "$WORK/mmdebstrap.log"
    check_host
    fetch_wheels
    debootstrap_root
    install_files
    chroot_mounts "$ROOTFS"
    compress_modules
    setup_system
    install_venv
    warm_up
    in_chroot rm -rf /tmp/wheels
    cleanup
    "boot_$ARCH"
    # The boot loader reads kernel and initrd from the boot partition: the copies in the
    # root's /boot would only take space (the kernel's config and System.map stay). Set
    # aside rather than deleted, so that SG_REUSE_ROOTFS=1 can start from this tree again.
    rm -rf "$WORK/boot.aside" && mkdir -p "$WORK/boot.aside"
    mv "$ROOTFS"/boot/vmlinuz-* "$ROOTFS"/boot/initrd.img-* "$WORK/boot.aside/"
    rm -f "$ROOTFS"/vmlinuz* "$ROOTFS"/initrd.img*
    make_image
    mv "$WORK/boot.aside"/* "$ROOTFS/boot/" && rmdir "$WORK/boot.aside"
    compress_image
    [ "${SG_KEEP_ROOTFS:-}" = 1 ] || remove_tree "$ROOTFS"
    report
}

main "$@"
