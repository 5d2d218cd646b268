"""Live capture path: new TLS flows per second on one core (target: >= 5 k/s).

    python -m benchmarks.bench_flows_live [--flows N] [--netns] [--rates 5000,10000,20000]

1. **Inspector** (no sockets): N TLS flows through appliance.flows.inspector.FlowInspector — the same
   object the capture process feeds — as each capture mode delivers them:
   - ``bpf``: the ClientHello's (first) segment only, one packet per flow;
   - ``nflog``: what the capture chain logs for a connection: SYN, the handshake's ACK and
     the hello's segments, each wrapped in an nfnetlink_log message and parsed by
     appliance.flows.nflog.parse first — with a 517-byte hello (curl, one segment) and a 1.8 kB
     one in two segments (Chrome's post-quantum X25519MLKEM768 share);
   one name in ten is blocked (the inspector decides, counts and records the event; no nft
   and no resets). Figures are CPU time of this one process.
2. **netns** (``--netns``, root, nft): a client namespace sends each flow's hello
   segment(s) with a raw socket (no SYN: conntrack picks the connection up mid-stream,
   nf_conntrack_tcp_loose), paced at each rate for 3 s, through a gateway namespace whose
   table logs them (appliance/flows/nft.py capture chain) into a process that reads the group
   and inspects (appliance.flows.nflog.NflogSocket + FlowInspector, as capture_main does); the
   gateway forwards them into a sink (a veth whose peer drops them). Reported: flows judged / flows sent, messages
   the kernel dropped (ENOBUFS) and the reader's CPU seconds per flow.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from benchmarks._common import ROOT, machine, table

BLOCK_EVERY = 10


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f">{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _ipv4_tcp(src: bytes, dst: bytes, sport: int, seq: int, flags: int, payload: bytes = b"",
              dport: int = 443) -> bytes:
    """An IPv4 TCP packet with correct checksums (conntrack drops bad TCP checksums as invalid)."""
    tcp = struct.pack(">HHIIBBHHH", sport, dport, seq, 1, 5 << 4, flags, 64240, 0, 0) + payload
    c = _csum(src + dst + struct.pack(">BBH", 0, 6, len(tcp)) + tcp)
    tcp = tcp[:16] + struct.pack(">H", c) + tcp[18:]
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, src, dst)
    return ip[:10] + struct.pack(">H", _csum(ip)) + ip[12:] + tcp


def _hellos(n: int, big: bool) -> list[bytes]:
    from tests.wire import client_hello, records

    out = []
    for i in range(n):
        name = b"casino.test" if i % BLOCK_EVERY == 0 else b"site%d.example.org" % i
        # Chrome's share: X25519MLKEM768 is 1,216 bytes of key share; ALPN padding stands in
        hs = client_hello(name, alpn=(b"x" * 200,) * (7 if big else 1))
        out.append(records(hs))
    return out


def flows(n: int, big: bool, with_handshake: bool, one_client: bytes | None = None) -> list[list[bytes]]:
    """Per flow, the IP packets a capture delivers: [SYN, ACK,] hello segment(s). Flows
    differ by client address, or (``one_client``) by source and destination port. Source
    ports stay clear of the ports that choose an extractor (5353 mDNS, 5355 LLMNR)."""
    hellos = _hellos(min(n, 2000), big)
    dst = b"\x0a\x09\x00\x01"
    out = []
    for i in range(n):
        if one_client is None:
            src, sport, dport = bytes([10, 1, (i >> 8) & 0xFF, i & 0xFF]), 10000 + (i * 7919) % 50000, 443
        else:
            src, sport, dport = one_client, 10000 + i % 50000, 443 + i // 50000
        hello = hellos[i % len(hellos)]
        segs = [hello[:1448], hello[1448:]] if len(hello) > 1448 else [hello]
        pkts = []
        if with_handshake:
            pkts += [_ipv4_tcp(src, dst, sport, 999, 0x02, dport=dport),
                     _ipv4_tcp(src, dst, sport, 1000, 0x10, dport=dport)]
        seq = 1000
        for s in segs:
            pkts.append(_ipv4_tcp(src, dst, sport, seq, 0x18, s, dport=dport))
            seq += len(s)
        out.append(pkts)
    return out


def _nflog_msg(ip: bytes, group: int = 2375) -> bytes:
    """One NFULNL_MSG_PACKET as the kernel sends it (header, hwaddr, payload attributes)."""
    def attr(t: int, v: bytes) -> bytes:
        raw = struct.pack("=HH", 4 + len(v), t) + v
        return raw + bytes(-len(raw) % 4)

    body = (struct.pack(">BBH", 2, 0, group) + attr(1, struct.pack(">HBB", 0x0800, 2, 0))
            + attr(4, struct.pack(">I", 2)) + attr(8, struct.pack(">HH", 6, 0) + bytes(8)) + attr(9, ip))
    return struct.pack("=IHHII", 16 + len(body), 0x0400, 0, 0, 0) + body


def _built(tmp: Path):
    from appliance.compose import build
    from appliance.config.load import load_config
    from tests.bundles import make_bundle

    bundle = make_bundle(tmp / "bundle", 1)
    cfg = tmp / "c.yaml"
    cfg.write_text(f"state_dir: {tmp / 'state'}\nbundle: {bundle}\n")
    return build(load_config(cfg))


def bench_inspector(n: int, tmp: Path) -> list[dict]:
    from appliance.flows.inspector import FlowInspector
    from appliance.flows.nflog import parse

    built = _built(tmp)
    rows = []
    size = {big: len(_hellos(1, big)[0]) for big in (False, True)}
    for label, big, nflog in (("bpf: the hello's segment only ({} B)", False, False),
                              ("nflog: SYN, ACK, hello ({} B, 1 segment)", False, True),
                              ("nflog: SYN, ACK, hello ({} B, 2 segments)", True, True)):
        label = label.format(size[big])
        fl = flows(n, big, nflog)
        feed = [[_nflog_msg(p) for p in f] for f in fl] if nflog else fl
        best = None
        for _ in range(3):
            insp = FlowInspector(built, "enforce", max_flows=16384)
            decided = 0
            t0 = time.process_time()
            for f in feed:
                for item in f:
                    if nflog:
                        for p in parse(item)[0]:
                            decided += len(insp.packet(1.0, p.payload, p.version))
                    else:
                        decided += len(insp.packet(1.0, item, 4))
            cpu = time.process_time() - t0
            assert decided == n, (label, decided)
            best = cpu if best is None else min(best, cpu)
        rows.append({"path": label, "flows": n, "packets/flow": len(fl[0]), "cpu s": f"{best:.2f}",
                     "flows/s (1 core)": f"{n / best:,.0f}", "µs/flow": f"{best / n * 1e6:.0f}"})
    return rows


READER = textwrap.dedent("""
    import json, resource, sys, time
    sys.path.insert(0, sys.argv[1])
    from appliance.config.load import load_config
    from appliance.compose import build
    from appliance.flows.inspector import FlowInspector
    from appliance.flows.nflog import NflogSocket
    built = build(load_config(sys.argv[2]))
    nl = NflogSocket(2375, timeout=0.5)
    insp = FlowInspector(built, "enforce", max_flows=65536)
    print("ready", flush=True)
    decided = 0
    idle = 0
    t0 = None
    while idle < 4:  # two seconds without a message: the run is over
        got = nl.recv()
        if not got:
            idle += 1
            continue
        idle = 0
        if t0 is None:
            t0 = time.process_time()
        for p in got:
            decided += len(insp.packet(time.time(), p.payload, p.version))
    cpu = time.process_time() - (t0 or 0)
    print(json.dumps({"decided": decided, "drops": nl.drops, "cpu": cpu}), flush=True)
""")

SENDER = textwrap.dedent("""
    import pickle, socket, sys, time
    flows, rate = pickle.load(open(sys.argv[1], "rb")), float(sys.argv[2])
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    t0 = time.perf_counter()
    for i, f in enumerate(flows):
        due = t0 + i / rate
        while time.perf_counter() < due:
            pass
        for p in f:
            s.sendto(p, ("10.9.0.1", 0))
    print(time.perf_counter() - t0)
""")


def bench_netns(rates: list[int], tmp: Path) -> list[dict]:
    import pickle

    from appliance.flows.nft import capture_script
    from tests.bundles import make_bundle
    from tests.integration.netns import namespaces, veth

    bundle = make_bundle(tmp / "nsbundle", 1)
    cfg = tmp / "ns.yaml"
    cfg.write_text(f"state_dir: {tmp / 'nsstate'}\nbundle: {bundle}\n")
    (tmp / "reader.py").write_text(READER)
    (tmp / "sender.py").write_text(SENDER)
    rows = []
    for big in (False, True):
        for rate in rates:
            n = rate * 3
            # from the client namespace's own address to one behind the gateway's dummy device
            fl = flows(n, big, with_handshake=False, one_client=bytes([10, 8, 0, 2]))
            (tmp / "flows.pickle").write_bytes(pickle.dumps(fl))
            with namespaces("bcli", "bgw") as (cli, gw):
                cli_if, gw_if = veth(cli, gw, "10.8.0.2/24", "10.8.0.1/24")
                cli.run("ip", "route", "add", "default", "via", "10.8.0.1")
                # no ARP exchange at the start (packets queued for it would be dropped)
                mac = gw.run("cat", f"/sys/class/net/{gw_if}/address").stdout.strip()
                cli.run("ip", "neigh", "replace", "10.8.0.1", "lladdr", mac, "dev", cli_if, "nud", "permanent")
                gw.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
                # a sink: a veth pair inside the gateway, the next hop a MAC nobody has
                gw.run("ip", "link", "add", "sink0", "type", "veth", "peer", "name", "sink1")
                for dev in ("sink0", "sink1"):
                    gw.run("ip", "link", "set", dev, "up")
                gw.run("ip", "route", "add", "10.9.0.0/16", "dev", "sink0")
                gw.run("ip", "neigh", "add", "10.9.0.1", "lladdr", "02:00:00:00:00:09", "dev", "sink0",
                       "nud", "permanent")
                script = capture_script(gw_if, 2375).replace("tcp dport { 80, 443, 853, 8080, 8443 }",
                                                               "tcp dport 443-1000")
                gw.run("nft", "-f", "-", input=script)
                reader = gw.popen([sys.executable, str(tmp / "reader.py"), str(ROOT), str(cfg)],
                                  stdout=subprocess.PIPE, text=True)
                assert reader.stdout is not None and reader.stdout.readline().strip() == "ready"
                took = float(cli.run(sys.executable, str(tmp / "sender.py"), str(tmp / "flows.pickle"), str(rate),
                                     timeout=120).stdout)
                res = json.loads(reader.stdout.readline())
                reader.wait(10)
            rows.append({"hello": f"{len(_hellos(1, big)[0])} B, {len(fl[0])} segment(s)", "offered flows/s": rate,
                         "sent flows/s": f"{n / took:,.0f}", "judged": f"{res['decided']}/{n}",
                         "kernel drops": res["drops"],
                         "reader cpu µs/flow": f"{res['cpu'] / max(1, res['decided']) * 1e6:.0f}"})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=20000)
    ap.add_argument("--netns", action="store_true", help="also through network namespaces (root, nft)")
    ap.add_argument("--rates", default="5000,10000,20000")
    args = ap.parse_args(argv)
    random.seed(1)
    print(machine())
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print(table(bench_inspector(args.flows, tmp), ["path", "flows", "packets/flow", "cpu s",
                                                       "flows/s (1 core)", "µs/flow"]))
        if args.netns:
            if os.geteuid() != 0:
                print("--netns needs root", file=sys.stderr)
                return 2
            rows = bench_netns([int(r) for r in args.rates.split(",")], tmp)
            print(table(rows, ["hello", "offered flows/s", "sent flows/s", "judged", "kernel drops",
                               "reader cpu µs/flow"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
