"""Live flow inspection and nftables enforcement, for real, in network namespaces.

    client ns (10.77.1.2) ── veth ── gateway ns (forwarding; `schoolgate run` with flows on
    the client-side veth; nft) ── veth ── server ns (10.77.2.2-5: HTTPS for several names,
    HTTP, DoT port, a UDP echo on 443)

Both capture modes run (flows.capture nflog and bpf). The client's route to SPLIT_IP has an
MTU of 576 and its veth builds no GSO super-packets (gso_max_segs 1), so a ClientHello to
that address leaves the client in several TCP segments, as on a real LAN with a large
(post-quantum) hello; the test checks with tshark that it really was split.

The servers wait WAN_DELAY before answering a connection: a real server is at least a WAN
round trip away, which is the time the gateway has to judge a ClientHello before the
server's reply (namespaces on one host have no such delay, and netem is not available
everywhere).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC
from pathlib import Path

import pytest

from tests.integration.netns import DEADLINE, namespaces, require_netns, veth, wait_for
from tests.tlscerts import self_signed

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CLIENT, GW_C, GW_S = "10.77.1.2", "10.77.1.1", "10.77.2.1"
SERVER, DOH_IP, BAD_IP, SPLIT_IP = "10.77.2.2", "10.77.2.3", "10.77.2.4", "10.77.2.5"
SPLIT_MTU = 576  # the minimum every IPv4 host accepts (RFC 791): MSS 536
# An OpenSSL 3.0 client offering an ffdhe8192 key share first sends a ~1.3 kB ClientHello
# (the key share is 1 kB), like Chrome's ~1.8 kB post-quantum one: 3 segments at MSS 536.
BIG_HELLO = ("--curves", "ffdhe8192:X25519")
ALLOWED, BLOCKED, HTTP_BLOCKED = "allowed.example", "blocked.example", "httpblocked.example"
WAN_DELAY = 0.05

SERVER_SCRIPT = textwrap.dedent("""
    import socket, ssl, sys, threading, time
    cert, key, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert, key)
    def handle(conn, tls):
        try:
            conn.settimeout(5)
            time.sleep(delay)  # a WAN round trip away
            if tls:
                conn = ctx.wrap_socket(conn, server_side=True)
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 7\\r\\nConnection: close\\r\\n\\r\\nserved\\n")
        except Exception:
            pass
        finally:
            conn.close()
    def listen(port, tls):
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port)); s.listen(64)
        while True:
            c, _ = s.accept()
            threading.Thread(target=handle, args=(c, tls), daemon=True).start()
    def echo(port):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", port))
        while True:
            d, a = u.recvfrom(4096); u.sendto(b"echo", a)
    for port, tls in ((443, True), (80, False), (853, False)):
        threading.Thread(target=listen, args=(port, tls), daemon=True).start()
    threading.Thread(target=echo, args=(443,), daemon=True).start()
    print("ready", flush=True)
    while True:
        time.sleep(3600)
""")

# Sends the datagram again (same 5-tuple) until the outcome is the one expected ("echo" or
# "none": no echo within 2 s) or the deadline passes, and prints the last outcome: the
# gateway's verdict reaches nftables some time after the first datagram, however long that
# takes here. A deadline of 0: one datagram, one outcome.
UDP_SCRIPT = textwrap.dedent("""
    import os, socket, sys, time
    sys.path.insert(0, sys.argv[1])
    from tests.wire import client_hello, crypto_frame, quic_initial
    name, dst, sport, expect = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    deadline = time.monotonic() + float(sys.argv[6])
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", sport)); u.settimeout(2.0)
    if name != "-":
        payload = quic_initial(os.urandom(8), crypto_frame(0, client_hello(name.encode())))
    else:
        payload = b"\\xc0" + bytes(1250)
    while True:
        u.sendto(payload, (dst, 443))
        try:
            u.recvfrom(100)
            got = "echo"
        except socket.timeout:
            got = "none"
        if got == expect or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    print(got)
""")


def _bundle(tmp: Path) -> Path:
    import secrets
    from datetime import datetime

    from signatures.bundle import write_bundle
    from signatures.compile import compile_sources
    from signatures.sources import load_sources

    src = tmp / "src"
    src.mkdir()
    (src / "gambling.txt").write_text(f"{BLOCKED}\n{HTTP_BLOCKED}\n")
    (src / "doh.txt").write_text(f"{DOH_IP}/32\n")
    (src / "badnet.txt").write_text(f"{BAD_IP}/32\n")
    (src / "allow.txt").write_text("fine.example\n")
    (src / "sources.yaml").write_text(textwrap.dedent(f"""\
        version: 1
        expires_days: 30
        categories:
          gambling: {{sources: [{{path: gambling.txt, format: domains, licence: CC0-1.0, attribution: tests}}]}}
          doh: {{sources: [{{path: doh.txt, format: cidr, licence: CC0-1.0, attribution: tests}}]}}
          badnet: {{sources: [{{path: badnet.txt, format: cidr, licence: CC0-1.0, attribution: tests}}]}}
        allow: [{{path: allow.txt, format: domains}}]
        canaries: {{block: [{BLOCKED}], allow: [{ALLOWED}]}}
        """))
    c = compile_sources(load_sources(src / "sources.yaml"), now=datetime.now(UTC),
                        new_key=lambda: (secrets.randbits(64), secrets.randbits(64)))
    return write_bundle(tmp / "bundle", c.arrays, c.manifest)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    require_netns("nft", "curl", "tcpdump", "tshark")
    tmp = tmp_path_factory.mktemp("flows")
    cert, key = self_signed(tmp, (ALLOWED, BLOCKED, HTTP_BLOCKED))
    bundle = _bundle(tmp)
    (tmp / "server.py").write_text(SERVER_SCRIPT)
    (tmp / "udp.py").write_text(UDP_SCRIPT)
    with namespaces("cli", "gw", "srv") as (cli, gw, srv):
        cli_lan, gw_lan = veth(cli, gw, f"{CLIENT}/24", f"{GW_C}/24")
        veth(gw, srv, f"{GW_S}/24", f"{SERVER}/24")
        for extra in (DOH_IP, BAD_IP, SPLIT_IP):
            srv.run("ip", "addr", "add", f"{extra}/32", "dev", "lo")
        gw.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        for extra in (DOH_IP, BAD_IP, SPLIT_IP):
            gw.run("ip", "route", "add", f"{extra}/32", "via", SERVER)
        cli.run("ip", "route", "add", "default", "via", GW_C)
        # veth hands TCP's GSO super-packets through whole: without this the gateway would
        # see one 1.3 kB packet however small the MSS.
        cli.run("ip", "link", "set", "dev", cli_lan, "gso_max_segs", "1")
        cli.run("ip", "route", "add", f"{SPLIT_IP}/32", "via", GW_C, "mtu", "lock", str(SPLIT_MTU))
        srv.run("ip", "route", "add", "default", "via", GW_S)
        p = srv.popen([sys.executable, str(tmp / "server.py"), str(cert), str(key), str(WAN_DELAY)],
                      stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        yield {"tmp": tmp, "bundle": bundle, "cli": cli, "gw": gw, "srv": srv, "lan": gw_lan}


def _start(lab: dict, name: str, **flows) -> tuple[subprocess.Popen, Path]:
    """schoolgate run in the gateway namespace with ``flows`` settings; waits until running."""
    tmp = lab["tmp"]
    state = tmp / f"state-{name}"
    state.mkdir()
    settings = {"enabled": True, "interface": lab["lan"], "mode": "enforce", **flows}
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(f"state_dir: {state}\nbundle: {lab['bundle']}\n"
                   f"dns: {{listen: ['127.0.0.1:5353'], upstreams: []}}\n"
                   f"flows: {json.dumps(settings)}\n")
    log = open(tmp / f"{name}.log", "w")
    p = lab["gw"].popen([sys.executable, "-m", "appliance.cli", "run", "--config", str(cfg)],
                        stderr=log, cwd=str(ROOT))
    wait_for(lambda: _flows_state(state).get("running") or p.poll() is not None, DEADLINE, "flow inspection to start")
    assert p.poll() is None, (tmp / f"{name}.log").read_text()
    return p, state


def _flows_state(state: Path) -> dict:
    try:
        return json.loads((state / "flows-state.json").read_text())
    except (OSError, ValueError):
        return {}


def _curl(lab: dict, url: str, name: str, ip: str = SERVER, *extra: str) -> subprocess.CompletedProcess:
    port = "443" if url.startswith("https") else "80"
    return lab["cli"].run("curl", "-sS", "-k", "-m", "30", *extra, "--resolve", f"{name}:{port}:{ip}", url,
                          check=False, timeout=60)


def _tables(lab: dict) -> str:
    return lab["gw"].run("nft", "list", "tables").stdout


def _set(lab: dict, name: str) -> list:
    out = lab["gw"].run("nft", "-j", "list", "set", "inet", "schoolgate", name).stdout
    return [s for item in json.loads(out)["nftables"] if "set" in item for s in item["set"].get("elem", [])]


def _connect(lab: dict, ip: str, port: int) -> str:
    code = (f"import socket\ns=socket.socket(); s.settimeout(3)\n"
            f"try:\n    s.connect(({ip!r}, {port})); print('open')\n"
            f"except ConnectionRefusedError: print('refused')\nexcept OSError as e: print('error', e)")
    return lab["cli"].run(sys.executable, "-c", code).stdout.strip()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    except OSError:
        return ""


def _udp(lab: dict, name: str, sport: int, dst: str = SERVER, expect: str = "echo",
         deadline: float = DEADLINE) -> str:
    """"echo" or "none" (see UDP_SCRIPT): sent until ``expect`` comes or ``deadline`` passes."""
    return lab["cli"].run(sys.executable, str(lab["tmp"] / "udp.py"), str(ROOT), name, dst, str(sport), expect,
                          str(deadline), timeout=deadline + 60).stdout.strip()


@pytest.mark.parametrize("capture", ["nflog", "bpf"])
def test_enforce_resets_blocked_names_and_refuses_bypasses(lab, capture) -> None:
    p, state = _start(lab, f"enforce-{capture}", capture=capture)
    try:
        assert "table inet schoolgate" in _tables(lab)
        assert _flows_state(state)["capture"] == capture
        ok = _curl(lab, f"https://{ALLOWED}/", ALLOWED)
        assert ok.returncode == 0 and ok.stdout == "served\n", ok.stderr
        bad = _curl(lab, f"https://{BLOCKED}/", BLOCKED)
        # 35: TLS handshake failed, 56: receive failure (connection reset); never 28 (timeout)
        assert bad.returncode in (35, 56), (bad.returncode, bad.stderr)
        assert "served" not in bad.stdout, bad.stderr
        elems = wait_for(lambda: _set(lab, "flows_v4"), DEADLINE, "the blocked flow in flows_v4")
        vals = [e["elem"]["val"]["concat"] for e in elems]
        assert any(v[0] == CLIENT and v[1] == "tcp" and v[3] == SERVER and v[4] == 443 for v in vals), vals
        # The same address still serves an allowed name (only the flow was blocked).
        assert _curl(lab, f"https://{ALLOWED}/", ALLOWED).returncode == 0
        hb = _curl(lab, f"http://{HTTP_BLOCKED}/", HTTP_BLOCKED)
        assert hb.returncode in (52, 56) and "served" not in hb.stdout, (hb.returncode, hb.stderr)
        assert _curl(lab, f"http://{ALLOWED}/", ALLOWED).stdout == "served\n"
        assert _connect(lab, SERVER, 853) == "refused"  # DoT
        assert _connect(lab, DOH_IP, 443) == "refused"  # a DoH resolver's address
        assert _connect(lab, BAD_IP, 443) == "refused"  # a blocked CIDR under the default policy
        assert _connect(lab, SERVER, 80) == "open"
        assert _udp(lab, "-", 40001) == "echo"  # QUIC not blocked by default
        assert _udp(lab, BLOCKED, 40002, expect="none") == "none"  # a QUIC Initial for a blocked name: dropped
        assert _udp(lab, ALLOWED, 40003) == "echo"
        # the state file is rewritten every 2 s: wait for the snapshot that has every flow
        st = wait_for(lambda: (s := _flows_state(state)).get("counters", {}).get("by_proto", {}).get("quic", 0) >= 2
                      and s, DEADLINE, "counters in flows-state.json")
        # both QUIC flows judged: the allowed one (and the non-QUIC one) still pass, the blocked one does not
        assert _udp(lab, ALLOWED, 40003, deadline=0) == "echo"
        assert _udp(lab, "-", 40001, deadline=0) == "echo"
        assert _udp(lab, BLOCKED, 40002, expect="none", deadline=0) == "none"
        c = st["counters"]
        assert c["reset"] >= 2 and c["blocked"] >= 3 and c["by_category"]["gambling"] >= 3, c
        assert c["dot_attempts"] >= 1 and c["capture_drops"] == 0, c
        assert st["mode"] == "enforce" and st["nft_table"] == "inet schoolgate" and st["error"] is None
    finally:
        lab["gw"].stop(p)
    assert p.returncode == 0
    assert "schoolgate" not in _tables(lab)
    assert _flows_state(state)["running"] is False


@pytest.mark.parametrize("capture", ["nflog", "bpf"])
def test_monitor_only_counts(lab, capture) -> None:
    p, state = _start(lab, f"monitor-{capture}", mode="monitor", block_dot=True, capture=capture)
    try:
        if capture == "bpf":
            assert "schoolgate" not in _tables(lab)
        else:  # the capture chain's log rules, and nothing that blocks
            table = lab["gw"].run("nft", "list", "table", "inet", "schoolgate").stdout
            assert "log group" in table and "chain capture" in table, table
            assert not any(w in table for w in ("reject", "drop", "set ", "chain forward")), table
        r = _curl(lab, f"https://{BLOCKED}/", BLOCKED)
        assert r.returncode == 0 and r.stdout == "served\n", r.stderr
        assert _connect(lab, SERVER, 853) == "open"
        st = wait_for(lambda: (s := _flows_state(state)).get("counters", {}).get("monitor", 0) >= 1 and s, DEADLINE,
                      "a monitor count")
        assert st["counters"]["blocked"] == 0 and st["capture"] == capture
        assert st["nft_table"] == (None if capture == "bpf" else "inet schoolgate")
        assert st["events"][0]["name"] == BLOCKED and st["events"][0]["action"] == "monitor"
    finally:
        lab["gw"].stop(p)
    assert "schoolgate" not in _tables(lab)


def test_quic_block_and_restart_after_kill9(lab) -> None:
    p, state = _start(lab, "quic", block_quic=True)  # capture auto: nflog works here
    assert _flows_state(state)["capture"] == "nflog"
    assert _udp(lab, "-", 40011, expect="none") == "none"
    assert _curl(lab, f"https://{ALLOWED}/", ALLOWED).returncode == 0  # TCP still fine
    # Killed outright (owner and capture): the table stays behind ...
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(10)
    wait_for(lambda: not [pid for pid in lab["gw"].pids() if "appliance.cli" in _cmdline(pid)], DEADLINE,
             "the killed run to be gone")
    assert "table inet schoolgate" in _tables(lab)
    # ... and the next start replaces it in one transaction; a stop removes it.
    p2, _ = _start(lab, "quic2", block_quic=False)
    try:
        assert _udp(lab, "-", 40012) == "echo"
        assert _tables(lab).count("schoolgate") == 1
    finally:
        lab["gw"].stop(p2)
    assert "schoolgate" not in _tables(lab)


def _hello_segments(lab: dict, pcap: Path) -> list[tuple[str, int]]:
    """(SNI, TCP segments) of every ClientHello in ``pcap``, as tshark reassembles them."""
    out = subprocess.run(["tshark", "-r", str(pcap), "-Y", "tls.handshake.type == 1", "-T", "fields",
                          "-e", "tls.handshake.extensions_server_name", "-e", "tcp.segment.count"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [(line.split("\t")[0], int(line.split("\t")[1] or 1)) for line in out.splitlines() if line.strip()]


@pytest.mark.parametrize("capture", ["nflog", "bpf"])
def test_split_client_hello(lab, capture) -> None:
    """A ClientHello in several segments: nflog reads and resets it; bpf cannot (its
    filter passes only the first segment) — the gap nflog closes."""
    pcap = lab["tmp"] / f"split-{capture}.pcap"
    # --immediate-mode: packets reach the file as they come, not when a buffer block fills
    # (a loaded machine may otherwise stop tcpdump with every packet still in its ring).
    dump = lab["gw"].popen(["tcpdump", "-i", lab["lan"], "--immediate-mode", "-U", "-w", str(pcap),
                            "tcp port 443 and host " + SPLIT_IP],
                           stderr=subprocess.PIPE)
    p, state = _start(lab, f"split-{capture}", capture=capture)
    try:
        wait_for(lambda: pcap.exists() and pcap.stat().st_size > 0, DEADLINE, "tcpdump to start")
        bad = _curl(lab, f"https://{BLOCKED}/", BLOCKED, SPLIT_IP, *BIG_HELLO)
        ok = _curl(lab, f"https://{ALLOWED}/", ALLOWED, SPLIT_IP, *BIG_HELLO)
        assert ok.returncode == 0 and ok.stdout == "served\n", ok.stderr
        if capture == "nflog":
            assert bad.returncode in (35, 56) and "served" not in bad.stdout, (bad.returncode, bad.stderr)
            elems = wait_for(lambda: _set(lab, "flows_v4"), DEADLINE, "the blocked flow in flows_v4")
            assert any(e["elem"]["val"]["concat"][3] == SPLIT_IP for e in elems), elems
            st = wait_for(lambda: (s := _flows_state(state)).get("counters", {}).get("reset", 0) >= 1 and s, DEADLINE,
                          "the reset counted")
            assert st["events"][0]["name"] == BLOCKED
        else:
            assert bad.returncode == 0 and bad.stdout == "served\n", (bad.returncode, bad.stderr)
            assert _flows_state(state).get("counters", {}).get("seen", 0) == 0
        # Both hellos, several segments each, are on file before tcpdump is stopped.
        wait_for(lambda: pcap.stat().st_size > 3000, DEADLINE, "tcpdump to write the hellos")
    finally:
        lab["gw"].stop(p)
        lab["gw"].stop(dump, signal.SIGINT)
    hellos = _hello_segments(lab, pcap)
    # tshark must find the blocked hello (the allowed one too, unless tcpdump missed a packet
    # of it on a loaded machine), each in several segments: really split on the wire
    assert BLOCKED in [n for n, _ in hellos], (hellos, dump.stderr.read() if dump.stderr else "")
    assert hellos and all(segments >= 2 for _, segments in hellos), hellos


def test_auto_falls_back_to_bpf_when_the_group_is_taken(lab) -> None:
    """Another socket holds the nflog group (one per group and namespace): ``capture: auto``
    runs with bpf, says why, and still enforces."""
    holder = lab["gw"].popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from appliance.flows.nflog import NflogSocket
        s = NflogSocket(2375)
        print("bound", flush=True)
        time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "bound"
    p, state = _start(lab, "fallback")
    try:
        assert _flows_state(state)["capture"] == "bpf"
        bad = _curl(lab, f"https://{BLOCKED}/", BLOCKED)
        assert bad.returncode in (35, 56), (bad.returncode, bad.stderr)
        assert "log group" not in lab["gw"].run("nft", "list", "table", "inet", "schoolgate").stdout
    finally:
        lab["gw"].stop(p)
        lab["gw"].stop(holder)
    log = (lab["tmp"] / "fallback.log").read_text()
    assert "nflog capture unavailable" in log and "split over several TCP segments" in log, log[-2000:]
