#!/usr/bin/env bash
# Boot the amd64 image in qemu and check it from the host, as an admin's first boot would go.
#
#   image/test-boot.sh [IMAGE]        # default: image/out/schoolgate-amd64.img
#   image/test-boot.sh image/out/schoolgate-arm64.img   # the Pi image in qemu's "virt" board
#
# The Pi image has no loader qemu can run (the Pi's GPU firmware boots it), so for arm64
# qemu-system-aarch64 -M virt -cpu cortex-a72 (the Pi 4's core) loads the kernel, initramfs
# and command line from its boot partition directly (console on the virt board's UART);
# everything after the kernel - initramfs, root by PARTUUID, units, the appliance - is the
# image's own. Always TCG (software emulation): minutes, not seconds.
#
# On a copy of the image (the built one stays pristine):
#   1. writes a schoolgate.yaml with an admin password onto the FAT boot partition (mtools);
#   2. starts dnsmasq on 127.0.0.1 as the "district resolver" (it knows www.example.org);
#   3. boots qemu-system-x86_64 (KVM when /dev/kvm works, else TCG) with UEFI (OVMF), a
#      virtio disk and user-mode networking whose port forwards put the box's DNS (UDP and
#      TCP) and web ports on 127.0.0.1;
#   4. checks with dig: www.0-casino.info is blocked (NXDOMAIN, from the demo bundle) over
#      UDP and TCP, www.example.org (allowed) is forwarded and answered 192.0.2.7;
#      GET /api/status (web.listen 0.0.0.0:8080) reports the demo bundle and the queries
#      just made, when the image's appliance has a web server (appliance/web/ beyond auth.py;
#      otherwise skipped, saying so: "web_check=skipped");
#      the console shows the ready banner with the config accepted; the password on the
#      boot partition was replaced by its hash.
# Prints the times (boot to first filtered DNS answer) and exits non-zero on any failure.
#
# Network safety: everything runs in a network namespace of its own with only loopback, so
# whatever the guest tries (NTP, its resolvers, updates) cannot leave this machine; its
# upstream is dnsmasq on that namespace's 127.0.0.1 (through qemu's 10.0.2.2).
#
# Environment: SG_ACCEL=kvm|tcg (default: kvm if usable), SG_BOOT_TIMEOUT (s, default 600),
# SG_KEEP=1 keeps the work directory.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
IMAGE=${1:-$HERE/out/schoolgate-amd64.img}
case "$(basename "$IMAGE")" in
    *arm64*) ARCH=arm64 ;;
    *) ARCH=amd64 ;;
esac
ARCH=${SG_ARCH:-$ARCH}
if [ "$ARCH" = arm64 ]; then TIMEOUT=${SG_BOOT_TIMEOUT:-1500}; else TIMEOUT=${SG_BOOT_TIMEOUT:-600}; fi
PASSWORD="first-boot-test-password"

log() { printf '[test-boot %5ss] %s\n' "$SECONDS" "$*" >&2; }
fail() {
    printf '[test-boot %5ss] FAIL: %s\n' "$SECONDS" "$*" >&2
    if [ -s "${WORK:-/nonexistent}/serial.log" ]; then
        echo "--- last 60 lines of the serial console ---" >&2
        tail -n 60 "$WORK/serial.log" | tr -d '\r' | sed 's/\x1b\[[0-9;]*[a-zA-Z]//g' >&2
    fi
    exit 1
}

QEMU_PID= DNSMASQ_PID= WORK= OVMF=
cleanup() {
    [ -n "$QEMU_PID" ] && kill "$QEMU_PID" 2>/dev/null && wait "$QEMU_PID" 2>/dev/null
    [ -n "$DNSMASQ_PID" ] && kill "$DNSMASQ_PID" 2>/dev/null && wait "$DNSMASQ_PID" 2>/dev/null
    if [ -n "$WORK" ] && [ "${SG_KEEP:-}" != 1 ]; then rm -rf "$WORK"; fi
    true
}
trap cleanup EXIT
trap 'fail "interrupted"' INT TERM

need() {
    local t missing=()
    for t in "$@"; do command -v "$t" >/dev/null || missing+=("$t"); done
    [ ${#missing[@]} = 0 ] || fail "missing tools: ${missing[*]} (apt-get install qemu-system-x86 ovmf mtools dnsutils dnsmasq fdisk e2fsprogs)"
}

# A port free for both UDP and TCP on 127.0.0.1.
free_port() {
    python3 - <<'EOF'
import socket
for _ in range(50):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0)); p = u.getsockname()[1]
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        t.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        t.close(); u.close()
    print(p); break
EOF
}

# Byte offset of partition N in the image (sfdisk's sector numbers).
part_offset() {
    sfdisk -J "$1" | python3 -c "import json,sys; print(json.load(sys.stdin)['partitiontable']['partitions'][$2 - 1]['start'] * 512)"
}

# dig against the forwarded port; prints "status answer..." on one line.
ask() {
    local name=$1 proto=${2:-udp} extra=()
    [ "$proto" = tcp ] && extra=(+tcp)
    { dig -p "$DNS_PORT" @127.0.0.1 "$name" A +time=2 +tries=1 "${extra[@]}" 2>/dev/null || true; } \
        | awk '/->>HEADER<<-/ {gsub(",", "", $6); st=$6} /^[^;].*\tIN\tA\t/ {a = a " " $5} END {print st a}'
}

# Boot the work copy; sets QEMU_PID and T0 (when qemu started).
start_qemu() {
    local accel=$1 cpu=max
    [ "$accel" = kvm ] && cpu=host
    log "booting $IMAGE with -accel $accel (DNS on 127.0.0.1:$DNS_PORT, web on 127.0.0.1:$WEB_PORT)"
    : > "$WORK/serial.log"
    T0=$SECONDS
    local machine=(qemu-system-x86_64 -accel "$accel" -cpu "$cpu" -bios "$OVMF")
    if [ "$ARCH" = arm64 ]; then
        machine=(qemu-system-aarch64 -M virt -accel tcg -cpu cortex-a72 -kernel "$WORK/vmlinuz"
                 -initrd "$WORK/initrd.img" -append "$KERNEL_CMDLINE")
    fi
    "${machine[@]}" -m 1024 -smp 2 \
        -drive file="$WORK/disk.img",format=raw,if=virtio,cache=unsafe \
        -netdev "user,id=n0,hostfwd=udp:127.0.0.1:$DNS_PORT-:53,hostfwd=tcp:127.0.0.1:$DNS_PORT-:53,hostfwd=tcp:127.0.0.1:$WEB_PORT-:8080" \
        -device virtio-net-pci,netdev=n0 -device i6300esb \
        -display none -monitor none -serial "file:$WORK/serial.log" -no-reboot 2>"$WORK/qemu.err" &
    QEMU_PID=$!
}

main() {
    # Only loopback, ever: the guest's user-mode network reaches the outside through this
    # process's sockets, so the whole test runs in a network namespace of its own that has
    # nothing but lo. dig, dnsmasq and the port forwards all live in it.
    if [ -z "${SG_IN_NETNS:-}" ]; then
        local how=(--net)
        [ "$(id -u)" = 0 ] || how=(--net --map-root-user)
        unshare "${how[@]}" true 2>/dev/null \
            || fail "cannot create a network namespace (unshare ${how[*]}): refusing to boot a guest that could reach the network"
        SG_IN_NETNS=1 exec unshare "${how[@]}" -- "$0" "$@"
    fi
    ip link set lo up
    need mcopy mtype sfdisk debugfs dig dnsmasq python3 curl unshare ip
    [ -f "$IMAGE" ] || fail "no image at $IMAGE (build it: image/build.sh $ARCH)"
    if [ "$ARCH" = arm64 ]; then
        need qemu-system-aarch64
    else
        need qemu-system-x86_64
        OVMF=/usr/share/ovmf/OVMF.fd
        [ -f "$OVMF" ] || fail "no UEFI firmware $OVMF (apt-get install ovmf)"
    fi
    WORK=$(mktemp -d /tmp/schoolgate-boot.XXXXXX)
    log "work directory $WORK"

    # 1. the image copy and the admin's schoolgate.yaml
    cp --sparse=always "$IMAGE" "$WORK/disk.img"
    # A bigger "SD card" than the image, as in real life: first boot grows the data partition.
    truncate -s +1G "$WORK/disk.img"
    local boot_off
    boot_off=$(part_offset "$WORK/disk.img" 1)
    UPSTREAM_PORT=$(free_port)
    MTOOLS_SKIP_CHECK=1 mtype -i "$WORK/disk.img@@$boot_off" ::/schoolgate.yaml > "$WORK/template.yaml"
    # The template with the test's upstream (the host's dnsmasq, via qemu's 10.0.2.2) and a password.
    sed -e "s|^  upstreams: .*|  upstreams: [\"10.0.2.2:$UPSTREAM_PORT\"]|" \
        -e "s|^  admin_password: \"\"|  admin_password: \"$PASSWORD\"|" "$WORK/template.yaml" > "$WORK/schoolgate.yaml"
    grep -q "10.0.2.2:$UPSTREAM_PORT" "$WORK/schoolgate.yaml" && grep -q "$PASSWORD" "$WORK/schoolgate.yaml" \
        || fail "the template on the boot partition does not have the expected upstreams:/admin_password: lines"
    MTOOLS_SKIP_CHECK=1 mcopy -o -i "$WORK/disk.img@@$boot_off" "$WORK/schoolgate.yaml" ::/schoolgate.yaml
    if [ "$ARCH" = arm64 ]; then
        # What the Pi firmware would load (config.txt: kernel=vmlinuz, initramfs initrd.img),
        # with cmdline.txt's console moved from the Pi's GPIO UART to the virt board's.
        MTOOLS_SKIP_CHECK=1 mcopy -n -i "$WORK/disk.img@@$boot_off" ::/vmlinuz ::/initrd.img ::/cmdline.txt "$WORK/"
        KERNEL_CMDLINE=$(sed -e 's/console=ttyS1[^ ]*/console=ttyAMA0,115200/' "$WORK/cmdline.txt" | tr -d '\n')
        log "kernel command line (from cmdline.txt): $KERNEL_CMDLINE"
    fi

    # Does the image's appliance have a web server? (appliance/web/ beyond the password
    # helpers; read from the root partition with debugfs, no mount.)
    WEB_MISSING=""
    local root_off web_files
    root_off=$(part_offset "$WORK/disk.img" 2)
    web_files=$(debugfs -R "ls -p /opt/schoolgate/venv/lib/python3.11/site-packages/appliance/web" \
        "$WORK/disk.img?offset=$root_off" 2>/dev/null | awk -F/ 'NF >= 6 && $6 ~ /\.py$/ {print $6}' | sort | tr '\n' ' ' | sed 's/ *$//')
    case " $web_files " in
        "  ") WEB_MISSING="the image's appliance has no appliance/web/ package (built before the web page landed: rebuild with image/build.sh $ARCH)" ;;
        " auth.py ") WEB_MISSING="the image's appliance/web/ holds only auth.py, no web server yet (rebuild with image/build.sh $ARCH once the web page lands)" ;;
    esac

    # 2. the district resolver
    dnsmasq --keep-in-foreground --no-resolv --no-hosts --no-poll --conf-file=/dev/null \
        --listen-address=127.0.0.1 --bind-interfaces --port="$UPSTREAM_PORT" --pid-file= \
        --address=/example.org/192.0.2.7 --log-queries --log-facility="$WORK/dnsmasq.log" \
        $( [ "$(id -u)" = 0 ] && echo --user=root ) &
    DNSMASQ_PID=$!

    # 3. boot
    DNS_PORT=$(free_port)
    WEB_PORT=$(free_port)
    # KVM where it works; some hosts' KVM (nested or paravirtual) cannot run the UEFI
    # firmware ("emulation failure"), which shows within seconds: then TCG.
    local accel=${SG_ACCEL:-}
    [ "$ARCH" = arm64 ] && accel=tcg
    if [ -z "$accel" ] && [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
        start_qemu kvm
        local i
        for i in $(seq 60); do
            if grep -qiE "emulation failure|internal error" "$WORK/qemu.err" 2>/dev/null \
               || ! kill -0 "$QEMU_PID" 2>/dev/null; then
                log "KVM cannot run this guest here ($(grep -m1 -iE 'emulation failure|internal error' "$WORK/qemu.err" || echo 'qemu exited')): falling back to TCG"
                kill "$QEMU_PID" 2>/dev/null; wait "$QEMU_PID" 2>/dev/null || true
                QEMU_PID=
                break
            fi
            [ -s "$WORK/serial.log" ] && break
            sleep 1
        done
        if [ -n "$QEMU_PID" ]; then accel=kvm; else accel=tcg; fi
    fi
    accel=${accel:-tcg}
    [ -n "$QEMU_PID" ] || start_qemu "$accel"
    local t0=$T0

    # 4. the first filtered answer
    local st first=""
    while :; do
        kill -0 "$QEMU_PID" 2>/dev/null || fail "qemu exited"
        [ $((SECONDS - t0)) -lt "$TIMEOUT" ] || fail "no filtered DNS answer within $TIMEOUT s"
        st=$(ask www.0-casino.info)
        if [ "${st%% *}" = NXDOMAIN ]; then first=$((SECONDS - t0)); break; fi
        sleep 1
    done
    log "first filtered DNS answer $first s after qemu started"
    local ok=0 bad=0
    check() {  # check DESCRIPTION EXPECTED ACTUAL
        if [ "$2" = "$3" ]; then log "ok: $1 ($3)"; ok=$((ok + 1)); else log "FAILED: $1: want '$2', got '$3'"; bad=$((bad + 1)); fi
    }
    check "blocked name over UDP" "NXDOMAIN" "$(ask www.0-casino.info udp)"
    check "blocked name over TCP" "NXDOMAIN" "$(ask www.0-casino.info tcp)"
    check "DoH canary (encrypted-DNS bypass)" "NXDOMAIN" "$(ask use-application-dns.net udp)"
    check "allowed name forwarded to the district resolver" "NOERROR 192.0.2.7" "$(ask www.example.org udp)"
    check "allowed name over TCP" "NOERROR 192.0.2.7" "$(ask www.example.org tcp)"

    # The console banner (schoolgate-console.service) says the config was taken.
    local banner=""
    while [ $((SECONDS - t0)) -lt "$TIMEOUT" ]; do
        if grep -q "end of status" "$WORK/serial.log" 2>/dev/null; then banner=$((SECONDS - t0)); break; fi
        sleep 1
    done
    tr -d '\r' < "$WORK/serial.log" | sed 's/\x1b\[[0-9;]*[a-zA-Z]//g' > "$WORK/serial.txt"
    if [ -n "$banner" ]; then
        check "console banner" "yes" "yes"
        check "config from the boot partition accepted" "yes" \
            "$(grep -q 'OK, using schoolgate.yaml from the boot partition' "$WORK/serial.txt" && echo yes || echo no)"
        sed -n '/====/,/end of status/p' "$WORK/serial.txt" | sed 's/^/    /' >&2
        check "data partition grown to the end of the disk" "yes" \
            "$(grep -q 'growdata: growing' "$WORK/serial.txt" && echo yes || echo no)"
    else
        check "console banner" "yes" "no (not printed within $TIMEOUT s)"
    fi

    # The web page, when the image's appliance has one (web.listen 0.0.0.0:8080 in the
    # template; schoolgate run starts it). Polled: the web process may start after DNS.
    if [ -n "$WEB_MISSING" ]; then
        log "web_check=skipped: $WEB_MISSING"
    else
        local api="" verdict="no answer from GET /api/status" tries=0
        # Healthy: the appliance runs, serves a bundle, and has counted the test's queries
        # (the counters reach the web process every few seconds, hence the retries).
        while [ $((SECONDS - t0)) -lt "$TIMEOUT" ] && [ $tries -lt 60 ]; do
            tries=$((tries + 1))
            if api=$(curl -fsS --max-time 5 "http://127.0.0.1:$WEB_PORT/api/status" 2>/dev/null); then
                verdict=$(printf '%s' "$api" | python3 -c '
import json, sys
try:
    d = json.load(sys.stdin)
except ValueError:
    print("no JSON from GET /api/status"); sys.exit()
bad = []
if (d.get("appliance") or {}).get("running") is False:
    bad.append("appliance.running is false")
if not (d.get("bundle") or {}).get("version"):
    bad.append("no bundle.version")
q = (d.get("dns") or {}).get("queries")
if not isinstance(q, int) or q < 1:
    bad.append(f"dns.queries is {q!r}, not >= 1 after the test queries")
err = ((d.get("flows") or {}).get("state") or {}).get("error")
if err:
    bad.append(f"flows error: {err}")
print("; ".join(bad) or "healthy")')
                [ "$verdict" = healthy ] && break
            fi
            sleep 2
        done
        [ "$verdict" = healthy ] && log "GET /api/status: $(printf '%s' "$api" | python3 -c '
import json, sys
d = json.load(sys.stdin)
print("bundle version %s, %s queries, %s blocked" % (d["bundle"]["version"], d["dns"]["queries"], d["dns"].get("blocked")))')"
        check "GET /api/status reports healthy (bundle version, queries counted)" "healthy" "$verdict"
        if [ "$verdict" = healthy ]; then log "web_check=ok"; else log "web_check=failed"; fi
    fi

    # The boot partition: the plaintext password is gone, its hash is there.
    local now_yaml
    now_yaml=$(MTOOLS_SKIP_CHECK=1 mtype -i "$WORK/disk.img@@$boot_off" ::/schoolgate.yaml)
    check "plaintext password wiped from the boot partition" "no" \
        "$(printf '%s' "$now_yaml" | grep -q "$PASSWORD" && echo yes || echo no)"
    check "admin_password_hash written" "yes" \
        "$(printf '%s' "$now_yaml" | grep -q 'admin_password_hash: "scrypt\$' && echo yes || echo no)"

    log "summary: arch=$ARCH accel=$accel first_filtered_answer_s=$first banner_s=${banner:-none} checks_ok=$ok checks_failed=$bad"
    [ "$bad" = 0 ] || fail "$bad check(s) failed"
    echo "boot test passed: first filtered DNS answer after ${first}s (-accel $accel)"
}

main "$@"
