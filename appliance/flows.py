"""Live flow inspection and enforcement inside ``schoolgate run`` (config ``flows:``).

One capture process, forked by the owner process (appliance/dns/service.py Service when it
owns the appliance, appliance/dns/workers.py Supervisor otherwise) through
:class:`CaptureChild`. Scapy is imported only in that child (it costs ~40 MB and a second).

**Selection in the kernel** (``flows.capture``). Scapy (or any Python) cannot look at every
packet of a school link, so the kernel passes only the packets that open a flow, one of two
ways:

- ``nflog``: the table ``inet schoolgate`` gets a ``capture`` chain on the forward hook
  (appliance/nft.py capture_chain) that logs the first packets of each connection from the
  LAN — selected by conntrack's packet count, ``ct original packets 1-10`` for TCP to 80,
  443, 853, 8080, 8443, ``1-4`` for UDP 443, every DNS packet to 53 — to an nfnetlink_log
  group that this process reads (appliance/nflog.py). Every segment of a ClientHello split
  over several (Chrome's post-quantum key share) arrives, and the flow table reassembles
  it. Packets arrive as IP packets, with the client's MAC (for the reset to the client).
- ``bpf``: a cBPF program compiled by libpcap (through scapy) from :func:`selection_filter`
  attached to an AF_PACKET socket on the LAN interface (SOCK_DGRAM: the program sees the IP
  header first, whatever the link type). Passed: TCP segments whose payload starts a TLS
  handshake record carrying a ClientHello; TCP segments to port 80 whose payload starts with
  an upper-case letter (a request line); QUIC long-header packets in UDP datagrams of >= 1200
  bytes to port 443 (RFC 9000 §14.1: client Initials are padded to 1200); DNS to port 53;
  SYNs to 853 (DoT attempts). Outgoing packets (the LAN side's replies) are not delivered
  (PACKET_IGNORE_OUTGOING). A program can only judge what a packet starts with, so only the
  *first* segment of a ClientHello passes: a hello split over segments is not read.
- ``auto`` (the default): nflog when the group can be bound and the log rules load, else
  bpf, with a warning that split ClientHellos are missed. flows-state.json says which
  (``capture``).

**Inspection.** Each selected packet goes through the same pure flow table as
``schoolgate inspect`` (filters/flow_table.py), with a bounded number of flows and idle
flows expired after ``flow_timeout``. A name found is judged by the policy of the client's
network, with the same matcher and PolicySet as the DNS service (appliance/dns/service.py
build). Counters and block events go to the shared stats (appliance/stats.py,
SLOT_CAPTURE) and ``<state_dir>/flows-state.json``.

**Enforcement** (mode ``enforce``; ``monitor`` only counts and logs): nftables table
``inet schoolgate`` (appliance/nft.py), installed at start (replacing a table a killed run
left, in one transaction) and deleted at stop. A blocked TLS/HTTP connection is ended at
once: a RST to the client (sent on the LAN interface, with the sequence number the client
expects: the ACK of its own segment) and one to the server (routed by the kernel), and its
5-tuple goes into the table's timeout set so that every later packet of it in either
direction is reset. A blocked QUIC or DNS flow's 5-tuple is dropped from then on.

Limits (also in README.md): the names come from the first flight only (TLS ClientHello,
QUIC Initial, HTTP request head); with ECH the outer (public) name is what is judged. With
``bpf`` capture a ClientHello split over several segments is not read live. Neither mode
holds a packet back while it is judged (NFLOG copies, unlike NFQUEUE): the server's first
reply may cross the gateway before the verdict (a few hundred µs of Python after the
ClientHello); the connection is still reset right after.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import json
import logging
import os
import signal
import socket
import stat
import struct
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

from filters.flow_table import FlowTable, Found
from filters.packet import TCP, UDP, Drop, decode_ip

__all__ = ["FLOWS_STATE", "CAPTURE_BPF", "CAPTURE_NFLOG", "selection_filter", "compile_bpf", "attach_bpf", "open_capture", "FlowInspector", "Decision", "CaptureChild",
           "read_flows_state", "write_flows_state", "capture_main"]

log = logging.getLogger("schoolgate")

FLOWS_STATE = "flows-state.json"
# Packets read per loop iteration before housekeeping (state file, expiry, nft batches): a
# burst is worked off in bounded slices, and a stop request is seen within one slice.
BATCH = 256
_RECV_TIMEOUT = 0.2  # seconds: how long one recv waits (bounds the reaction to signals)
_STATE_PERIOD = 2.0  # seconds between flows-state.json writes while counters change
_EXPIRE_PERIOD = 1.0
RESTART_DELAY = 5.0  # seconds between restarts of a failing capture process
_STOP_GRACE = 10.0
# Socket receive buffer: 4 MiB holds ~20k selected packets (~200 B each in the kernel's
# accounting) — seconds of a school's flow-opening rate if the process is briefly busy.
RCVBUF = 4 << 20
_ETH_P_ALL = 0x0003
_ETH_P_IP, _ETH_P_IPV6 = 0x0800, 0x86DD
_SOL_PACKET = 263
_PACKET_IGNORE_OUTGOING = 23  # Linux 4.20
_PACKET_STATISTICS = 6
_SO_ATTACH_FILTER = 26
_PR_SET_PDEATHSIG = 1
DLT_RAW = 12  # libpcap's DLT for "starts with the IP header" (LINKTYPE_RAW)
_RST = 0x04
_ACTIONS = {"enforce": "reset", "monitor": "monitor"}
# Verdicts cached per policy (name -> verdict): a school's working set of names is a few tens
# of thousands; past this the cache starts again (a lookup costs µs, memory stays bounded).
MAX_CACHED_NAMES = 65536
# The capture process's nice value: its verdict races the server's first reply (a WAN round
# trip), so it goes before the DNS workers' batch work and anything else on a busy box.
CAPTURE_NICE = -5
CAPTURE_BPF, CAPTURE_NFLOG = "bpf", "nflog"
_SPLIT_WARNING = ("ClientHellos split over several TCP segments (Chrome's post-quantum key share) "
                  "are not read in bpf capture")


def selection_filter(http_ports: tuple[int, ...] = (80,)) -> str:
    """The libpcap expression of the packets that open a flow (module doc), for packets
    starting at the IP header. Header-only tests come first: a payload load past the end of
    a packet ends a cBPF program with "reject", so payload tests must come last."""
    hp = " or ".join(f"tcp dst port {p}" for p in http_ports)
    p4 = "((tcp[12] & 0xf0) >> 2)"
    p6 = "(40 + ((ip6[52] & 0xf0) >> 2))"
    v4 = (f"(ip and ((udp dst port 53) or (tcp dst port 53) or (tcp dst port 853 and tcp[13] & 0x12 = 0x02)"
          f" or (udp dst port 443 and udp[4:2] >= 1208 and udp[8] & 0xc0 = 0xc0)"
          f" or (tcp and tcp[{p4}] = 0x16 and tcp[{p4} + 5] = 0x01)"
          f" or (({hp}) and tcp[{p4}] >= 0x41 and tcp[{p4}] <= 0x5a)))")
    # IPv6: libpcap reads upper-layer bytes only after the fixed header (ip6[40...]), so
    # packets with extension headers before TCP/UDP are not selected (rare for flow starts).
    v6 = (f"(ip6 and ((udp dst port 53) or (tcp dst port 53)"
          f" or (ip6[6] = 6 and tcp dst port 853 and ip6[53] & 0x12 = 0x02)"
          f" or (ip6[6] = 17 and udp dst port 443 and ip6[44:2] >= 1208 and ip6[48] & 0xc0 = 0xc0)"
          f" or (ip6[6] = 6 and ip6[{p6}] = 0x16 and ip6[{p6} + 5] = 0x01)"
          f" or (ip6[6] = 6 and ({hp}) and ip6[{p6}] >= 0x41 and ip6[{p6}] <= 0x5a)))")
    return f"{v4} or {v6}"


def compile_bpf(expression: str) -> bytes:
    """The cBPF instructions (struct sock_filter array) libpcap compiles ``expression`` to,
    for packets that start at the IP header. Imports scapy (the capture process only)."""
    from scapy.arch.common import compile_filter, free_filter

    prog = compile_filter(expression, linktype=DLT_RAW)
    try:
        insns = prog.bf_insns
        return b"".join(struct.pack("=HBBI", insns[i].code, insns[i].jt, insns[i].jf, insns[i].k)
                        for i in range(prog.bf_len))
    finally:
        free_filter(prog)


def attach_bpf(sock: socket.socket, code: bytes) -> None:
    """SO_ATTACH_FILTER with ``code`` (see compile_bpf)."""
    n = len(code) // 8
    buf = ctypes.create_string_buffer(code, len(code))

    class _Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = _Fprog(n, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, bytes(memoryview(fprog).cast("B")))


def open_capture(interface: str) -> socket.socket:
    """An AF_PACKET SOCK_DGRAM socket on ``interface`` passing only selected packets.
    The filter is attached before the socket is bound, so nothing unfiltered is queued."""
    code = compile_bpf(selection_filter())
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)  # protocol 0: receives nothing yet
    try:
        attach_bpf(s, code)
        try:
            s.setsockopt(_SOL_PACKET, _PACKET_IGNORE_OUTGOING, 1)
        except OSError:
            pass  # kernels before 4.20: outgoing packets are skipped by pkttype below
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        s.bind((interface, _ETH_P_ALL))
        s.settimeout(_RECV_TIMEOUT)
    except BaseException:
        s.close()
        raise
    return s


@dataclass(frozen=True)
class Decision:
    """A name seen in a live flow and what was done about it."""

    found: Found
    verdict: str  # block | allow | error
    categories: tuple[str, ...]
    rule: str | None
    policy: str
    action: str | None  # reset | block | monitor | None (allowed)
    ack: int = 0  # the client segment's ACK number (the RST to the client uses it)
    seq_end: int = 0  # the sequence number after the client segment (the RST to the server)
    transport: int = TCP  # TCP or UDP (filters.packet)


@dataclass
class _Counters:
    seen: int = 0
    blocked: int = 0
    reset: int = 0
    monitor: int = 0
    dot_attempts: int = 0
    internal_errors: int = 0
    capture_drops: int = 0  # lost in the kernel before we read them (receive buffer full)
    by_proto: Counter = field(default_factory=Counter)
    by_category: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"seen": self.seen, "blocked": self.blocked, "reset": self.reset, "monitor": self.monitor,
                "dot_attempts": self.dot_attempts, "internal_errors": self.internal_errors,
                "capture_drops": self.capture_drops, "by_proto": dict(self.by_proto),
                "by_category": dict(self.by_category)}


class FlowInspector:
    """Selected packets in, decisions out (no sockets: tests drive it with packet bytes).

    ``built`` is appliance.dns.service.Built (matcher, policies, bundle); ``mode`` enforce
    or monitor; idle flow directions are forgotten after ``flow_timeout`` seconds."""

    def __init__(self, built, mode: str = "enforce", max_flows: int = 16384, flow_timeout: float = 120.0,
                 slot=None) -> None:
        self.mode = mode
        self.table = FlowTable(max_flows)
        self.flow_timeout = flow_timeout
        self.counters = _Counters()
        self.events: deque[dict] = deque(maxlen=50)
        self.slot = slot  # appliance.stats.StatsSlot or None
        self._last_seen: OrderedDict[tuple, float] = OrderedDict()
        self.install(built)

    def install(self, built) -> None:
        """Judge with ``built`` from now on (a new bundle or config)."""
        from appliance.inspect import Verdicts

        self.built = built
        self._verdicts: dict[str, Verdicts] = {}

    def _verdict(self, policy_name: str, mask: int, name: bytes):
        v = self._verdicts.get(policy_name)
        if v is None:
            from appliance.inspect import Verdicts

            v = self._verdicts[policy_name] = Verdicts(self.built.matcher, mask)
        elif len(v._cache) > MAX_CACHED_NAMES:  # a live process sees names for months: bounded
            v._cache.clear()
        return v(name)

    def warm_up(self) -> None:
        """Judge one name per policy now: the first lookup loads the matcher's compiled
        kernels (hundreds of ms on a cold Pi), which must not delay the first real verdict —
        it races the server's reply."""
        for name, rule in self.built.policies.rules.items():
            self._verdict(name, int(rule.mask), b"warm-up.invalid")

    def packet(self, ts: float, data: bytes, version: int) -> list[Decision]:
        """One selected packet (starting at its IP header)."""
        pkt = decode_ip(data, 0, version)
        if isinstance(pkt, Drop):
            self.table.stats[("malformed: " if pkt.malformed else "skipped: ") + pkt.reason] += 1
            return []
        key = (pkt.src, pkt.sport, pkt.dst, pkt.dport, pkt.proto)
        self._last_seen[key] = ts
        self._last_seen.move_to_end(key)
        if pkt.proto == TCP and pkt.dport == 853 and pkt.tcp_flags & 0x12 == 0x02:
            self.counters.dot_attempts += 1
        found = self.table.packet(ts, pkt)
        if not found:
            return []
        ack = seq_end = 0
        if pkt.proto == TCP:
            ack = _tcp_ack(data, version)
            seq_end = (pkt.seq + len(pkt.payload)) & 0xFFFFFFFF
        return [self._decide(f, ack, seq_end, pkt.proto) for f in found]

    def _decide(self, f: Found, ack: int, seq_end: int, transport: int) -> Decision:
        client = str(ipaddress.ip_address(f.src))
        rule = self.built.policies.for_client(client)
        verdict, cats, why = self._verdict(rule.name, int(rule.mask), f.name)
        c = self.counters
        c.seen += 1
        c.by_proto[f.proto] += 1
        action = None
        if verdict == "block":
            action = _ACTIONS[self.mode]
            if transport == UDP and action == "reset":
                action = "block"  # UDP: the flow is dropped, there is nothing to reset
            c.blocked += action != "monitor"
            c.reset += action == "reset"
            c.monitor += action == "monitor"
            for cat in cats:
                c.by_category[cat] += 1
        if self.slot is not None:
            self.slot.add_flow(f.proto, action)
        if action is not None:
            name = f.name.decode("ascii", "backslashreplace")
            if self.slot is not None:
                try:
                    mask = self.built.bundle.catalog.mask(cats)
                except Exception:  # a category name only a newer bundle knows: no mask
                    mask = 0
                self.slot.record_event(f.proto, name, mask, rule.name, client, action)
            self.events.appendleft({"ts": _rfc3339(time.time()), "kind": f.proto, "name": name,
                                    "categories": list(cats), "policy": rule.name, "action": action})
            log.info("flow %s", action, extra={"kind": f.proto, "flow_name": name, "categories": list(cats),
                                               "policy": rule.name, "rule": why, "dport": f.dport})
        return Decision(f, verdict, tuple(cats), why, rule.name, action, ack, seq_end, transport)

    def expire(self, now: float) -> int:
        """Forget flow directions idle for flow_timeout; returns how many."""
        n = 0
        seen = self._last_seen
        while seen:
            key, ts = next(iter(seen.items()))
            if now - ts < self.flow_timeout:
                break
            seen.popitem(last=False)
            self.table.forget(key)
            n += 1
        # Bounded like the table itself: keys of packets that never made a flow.
        while len(seen) > 2 * self.table.max_flows:
            key, _ = seen.popitem(last=False)
            self.table.forget(key)
        return n


def _tcp_ack(data: bytes, version: int) -> int:
    off = (data[0] & 0x0F) * 4 if version == 4 else 40
    if len(data) < off + 12:
        return 0
    return int.from_bytes(data[off + 8:off + 12], "big")


def _rfc3339(t: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(t, timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# -- the state file the web page reads ------------------------------------------------------------

def write_flows_state(state_dir: Path, record: dict) -> None:
    from signatures._atomic import write_atomic

    try:
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        write_atomic(Path(state_dir) / FLOWS_STATE, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
    except OSError as exc:
        log.error("cannot write %s: %s", FLOWS_STATE, exc)


def read_flows_state(state_dir: Path) -> dict:
    try:
        data = json.loads((Path(state_dir) / FLOWS_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _state(cfg, running: bool, error: str | None, table: bool, counters: dict | None = None,
           events: list | None = None, capture: str | None = None) -> dict:
    f = cfg.flows
    from appliance.nft import FAMILY, TABLE

    rec = {"enabled": f.enabled, "interface": f.interface, "mode": f.mode, "running": running, "error": error,
           "nft_table": f"{FAMILY} {TABLE}" if table else None, "updated": _rfc3339(time.time()),
           "pid": os.getpid() if running else None, "capture": capture}
    if counters is not None:
        rec["counters"] = counters
    if events is not None:
        rec["events"] = events
    return rec


# -- the capture process ---------------------------------------------------------------------------

class _Enforcer:
    """nftables table and resets for one capture process. ``nflog_group``: the table also
    gets the capture chain logging to that group (capture ``nflog``)."""

    def __init__(self, cfg, built, interface: str, nflog_group: int | None = None) -> None:
        from appliance.nft import Nft

        self.cfg = cfg
        self.nft = Nft()
        self.interface = interface
        self.nflog_group = nflog_group
        self.pending: list[tuple[str, str]] = []
        self.proc = None
        self.raw4: socket.socket | None = None
        self.raw6: socket.socket | None = None
        self.tx: socket.socket | None = None
        self.installed = False
        # Imported now, not at the first block: scapy's layers take ~1 s to import, by which
        # time the connection to reset has long finished its handshake.
        from scapy.layers.inet import IP, TCP as STCP  # noqa: F401
        from scapy.layers.inet6 import IPv6  # noqa: F401
        self.install(cfg, built)

    def install(self, cfg, built) -> None:
        from appliance.nft import DOH_CATEGORY, RulesetSpec, category_cidrs, policy_cidrs, ruleset_script

        self.cfg = cfg
        f = cfg.flows
        doh4: list = []
        doh6: list = []
        if f.block_doh_addresses and DOH_CATEGORY in built.bundle.catalog.categories:
            doh4, doh6 = category_cidrs(built.bundle.cidr_matcher(), built.bundle.catalog.mask([DOH_CATEGORY]))
        spec = RulesetSpec(f.interface, f.flow_timeout, f.block_quic, f.block_dot,
                           tuple(map(str, doh4)), tuple(map(str, doh6)), policy_cidrs(built),
                           nflog_group=self.nflog_group)
        self.nft.apply(ruleset_script(spec))
        self.installed = True

    def block(self, d: Decision, hwaddr: bytes | None) -> None:
        """Reset (TCP) and remember a blocked flow; ``hwaddr``: the client's link-layer
        address as captured (None: unknown, no reset to the client)."""
        from appliance.nft import flow_element

        f = d.found
        self.pending.append(flow_element(f.src, d.transport, f.sport, f.dst, f.dport))
        if d.action == "reset":
            self._resets(d, hwaddr)

    def _resets(self, d: Decision, hwaddr: bytes | None) -> None:
        """RST to the client (on the LAN, as if from the server) and to the server."""
        from scapy.layers.inet import IP, TCP as STCP
        from scapy.layers.inet6 import IPv6

        f = d.found
        v6 = len(f.src) == 16
        ip_c = (IPv6 if v6 else IP)(src=str(ipaddress.ip_address(f.dst)), dst=str(ipaddress.ip_address(f.src)))
        to_client = bytes(ip_c / STCP(sport=f.dport, dport=f.sport, flags="R", seq=d.ack, window=0))
        ip_s = (IPv6 if v6 else IP)(src=str(ipaddress.ip_address(f.src)), dst=str(ipaddress.ip_address(f.dst)))
        to_server = bytes(ip_s / STCP(sport=f.sport, dport=f.dport, flags="R", seq=d.seq_end, window=0))
        try:
            if hwaddr is not None:
                if self.tx is None:
                    # Protocol 0: a socket that sends on the LAN interface and receives nothing.
                    self.tx = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
                self.tx.sendto(to_client, (self.interface, _ETH_P_IPV6 if v6 else _ETH_P_IP, 0, 0, hwaddr))
        except OSError as exc:
            log.warning("cannot send a reset to the client: %s", exc)
        try:
            raw = self._raw(v6)
            raw.sendto(to_server, (str(ipaddress.ip_address(f.dst)), 0))
        except OSError as exc:
            log.warning("cannot send a reset to the server: %s", exc)

    def _raw(self, v6: bool) -> socket.socket:
        if v6:
            if self.raw6 is None:
                self.raw6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
            return self.raw6
        if self.raw4 is None:
            self.raw4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        return self.raw4

    def flush(self) -> None:
        """Hand the pending set elements to nft (one run at a time, not waited for)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                return
            if self.proc.returncode != 0:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                log.error("nft could not add blocked flows: %s", err.strip()[:500])
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None
        if self.pending:
            batch, self.pending = self.pending[:1000], self.pending[1000:]
            try:
                self.proc = self.nft.add_flows_async(batch)
            except OSError as exc:
                log.error("cannot run nft: %s", exc)

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(5)
            except Exception:
                self.proc.kill()
        for s in (self.raw4, self.raw6, self.tx):
            if s is not None:
                s.close()
        if self.installed:
            self.nft.delete_table()
            self.installed = False


class _BpfSource:
    """Selected packets from the AF_PACKET socket (capture ``bpf``)."""

    name = CAPTURE_BPF

    def __init__(self, interface: str) -> None:
        self.sock = open_capture(interface)
        self._drops = 0

    @property
    def drops(self) -> int:
        """Packets the kernel dropped for want of buffer (PACKET_STATISTICS, which resets
        on each read: summed here)."""
        try:
            _, dropped = struct.unpack("=II", self.sock.getsockopt(_SOL_PACKET, _PACKET_STATISTICS, 8))
            self._drops += dropped
        except OSError:
            pass
        return self._drops

    def settimeout(self, t: float) -> None:
        self.sock.settimeout(t)

    def read(self) -> list[tuple[bytes, int, bytes | None]] | None:
        """[(IP packet, version, client hwaddr)] — [] for a packet skipped; None when
        nothing came within the timeout."""
        try:
            data, addr = self.sock.recvfrom(65535)
        except socket.timeout:
            return None
        except OSError as exc:
            if exc.errno in (errno.EINTR, errno.EAGAIN):
                return None
            raise
        if addr[2] == socket.PACKET_OUTGOING:
            return []
        version = 4 if addr[1] == _ETH_P_IP else 6 if addr[1] == _ETH_P_IPV6 else 0
        return [(data, version, addr[4])] if version else []

    def close(self) -> None:
        self.sock.close()


class _NflogSource:
    """Packets the capture chain logged, from the nfnetlink_log group (capture ``nflog``)."""

    name = CAPTURE_NFLOG

    def __init__(self, group: int) -> None:
        from appliance.nflog import NflogSocket

        self.nl = NflogSocket(group)

    @property
    def drops(self) -> int:
        """Receive-buffer overflows (ENOBUFS: each lost one or more logged packets)."""
        return self.nl.drops

    def settimeout(self, t: float) -> None:
        self.nl.settimeout(t)

    def read(self) -> list[tuple[bytes, int, bytes | None]] | None:
        try:
            got = self.nl.recv()
        except OSError as exc:
            if exc.errno in (errno.EINTR, errno.EAGAIN):
                return None
            raise
        if not got:
            return None
        return [(p.payload, p.version, p.hwaddr) for p in got if p.version]

    def close(self) -> None:
        self.nl.close()


def _open(cfg, built) -> tuple[object, _Enforcer | None, bool]:
    """The packet source for ``flows.capture`` and, in enforce mode, the installed table;
    third: whether a table of ours is installed. ``auto`` tries nflog (bind the group first,
    so that nothing logged once the rules load is lost, then the table with the capture
    chain) and falls back to bpf with a warning."""
    from appliance.nft import Nft, capture_script

    f = cfg.flows
    socket.if_nametoindex(f.interface)  # OSError ENODEV: nftables would match a name that is not there
    if f.capture in ("auto", CAPTURE_NFLOG):
        source = enforcer = None
        try:
            source = _NflogSource(f.nflog_group)
            if f.mode == "enforce":
                enforcer = _Enforcer(cfg, built, f.interface, f.nflog_group)
            else:
                Nft().apply(capture_script(f.interface, f.nflog_group))  # log rules only: nothing blocked
            return source, enforcer, True
        except Exception as exc:
            if source is not None:
                source.close()
            if enforcer is not None:
                enforcer.close()
            if f.capture == CAPTURE_NFLOG:
                raise
            log.warning("flow inspection: nflog capture unavailable (%s); using bpf capture: %s", exc,
                        _SPLIT_WARNING)
    elif f.capture == CAPTURE_BPF:
        log.warning("flow inspection: bpf capture: %s", _SPLIT_WARNING)
    enforcer = None
    if f.mode == "enforce":
        enforcer = _Enforcer(cfg, built, f.interface)
    else:
        try:
            Nft().delete_table()  # monitor with bpf: no table; an earlier run's leftovers go
        except Exception:
            pass
    try:
        return _BpfSource(f.interface), enforcer, enforcer is not None
    except BaseException:
        if enforcer is not None:
            enforcer.close()
        raise


def _close_inherited_sockets() -> None:
    """The owner's listening DNS sockets are inherited through fork; a capture process that
    outlives a stopping owner must not keep the ports bound."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd < 3:
            continue
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                os.close(fd)
        except OSError:
            pass


def capture_main(config_path: str | None, built, stats=None) -> int:
    """The capture process's body (after fork). Returns its exit status."""
    from appliance.dns.service import WATCH_PERIOD, build, load_run_config
    from appliance.embedded import resolve_bundle

    flags: set[int] = set()
    try:
        signal.set_wakeup_fd(-1)  # the owner's event loop's, whose socket is closed below
    except ValueError:
        pass
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: flags.add(s))
    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)  # the owner killed -9: stop and clean up too
    except (OSError, AttributeError):
        pass
    _close_inherited_sockets()
    cfg = built.cfg
    f = cfg.flows
    slot = None
    if stats is not None:
        from appliance.stats import SLOT_CAPTURE

        slot = stats.slot(SLOT_CAPTURE)
    try:
        source, enforcer, table = _open(cfg, built)
    except Exception as exc:  # no such interface, no nft, no privilege: say so, DNS goes on
        msg = str(exc) if not isinstance(exc, OSError) else f"{f.interface}: {os.strerror(exc.errno or 0)}"
        log.error("flow inspection cannot start: %s", msg)
        write_flows_state(cfg.state_dir, _state(cfg, False, msg, False))
        return 1
    capture = source.name
    inspector = FlowInspector(built, f.mode, f.max_flows, f.flow_timeout, slot)
    inspector.warm_up()
    try:
        os.setpriority(os.PRIO_PROCESS, 0, CAPTURE_NICE)
    except OSError:
        pass  # without CAP_SYS_NICE: normal priority
    write_flows_state(cfg.state_dir, _state(cfg, True, None, table, inspector.counters.as_dict(), [], capture))
    log.info("flow inspection started", extra={"interface": f.interface, "mode": f.mode, "capture": capture,
                                               "pid": os.getpid()})
    next_state = next_expire = next_watch = time.monotonic()
    dirty = False
    read = source.read
    try:
        while True:
            if flags & {signal.SIGTERM, signal.SIGINT}:
                break
            busy = enforcer is not None and (enforcer.pending or enforcer.proc is not None)
            source.settimeout(0.01 if busy else _RECV_TIMEOUT)  # an nft run in flight: look again soon
            for _ in range(BATCH):
                got = read()
                if got is None:
                    break
                for data, version, hwaddr in got:
                    try:
                        for d in inspector.packet(time.time(), data, version):
                            dirty = True
                            if d.action in ("reset", "block") and enforcer is not None:
                                enforcer.block(d, hwaddr)
                                flags.add(0)  # hand the flow to nft now, not after the batch
                    except Exception:  # a bug of ours on one packet: log it, keep inspecting
                        inspector.counters.internal_errors += 1
                        if inspector.counters.internal_errors <= 10:
                            log.exception("flow inspection: internal error on a packet")
                if flags:
                    break
            now = time.monotonic()
            flags.discard(0)
            if enforcer is not None:
                enforcer.flush()
            if now >= next_expire:
                inspector.expire(time.time())
                next_expire = now + _EXPIRE_PERIOD
            if signal.SIGHUP in flags or now >= next_watch:
                reload = signal.SIGHUP in flags
                flags.discard(signal.SIGHUP)
                next_watch = now + WATCH_PERIOD
                try:
                    if reload:
                        new = build(load_run_config(config_path))
                    else:
                        found = resolve_bundle(built.cfg)
                        new = (build(built.cfg, found) if found is not None and found[0] != built.bundle.path
                               else None)
                except Exception as exc:  # refused: the running rules stay
                    log.error("flow inspection keeps its rules: %s", exc)
                    new = None
                    if not reload:
                        next_watch = now + 60  # a refused bundle is not retried every tick
                if new is not None:
                    if new.cfg.flows != f:
                        log.warning("flows settings changed: they take effect at the next restart")
                    built = new
                    inspector.install(built)
                    inspector.warm_up()
                    if enforcer is not None:
                        try:
                            enforcer.install(built.cfg, built)
                        except Exception as exc:
                            log.error("nftables rules not replaced: %s", exc)
            if dirty and now >= next_state:
                inspector.counters.capture_drops = source.drops
                write_flows_state(cfg.state_dir, _state(cfg, True, None, table, inspector.counters.as_dict(),
                                                        list(inspector.events), capture))
                dirty = False
                next_state = now + _STATE_PERIOD
    finally:
        source.close()
        if enforcer is not None:
            enforcer.close()
        elif table:  # monitor with nflog: the capture chain's table
            from appliance.nft import Nft

            try:
                Nft().delete_table()
            except Exception as exc:
                log.error("could not remove the nftables table: %s", exc)
        write_flows_state(cfg.state_dir, _state(cfg, False, None, False, inspector.counters.as_dict(),
                                                list(inspector.events), capture))
        log.info("flow inspection stopped", extra={"counters": inspector.counters.as_dict()})
    return 0


class CaptureChild:
    """The owner's handle on the capture process: fork, restart (at most every
    RESTART_DELAY), forward SIGHUP, stop. Without ``flows.enabled`` it only records that."""

    def __init__(self, config_path: str | None, built, stats=None) -> None:
        self.config_path = config_path
        self.built = built
        self.stats = stats
        self.pid: int | None = None
        self._last_start = 0.0
        self.enabled = built.cfg.flows.enabled
        if not self.enabled:
            write_flows_state(built.cfg.state_dir, _state(built.cfg, False, None, False))
        else:
            self._spawn()

    def _spawn(self) -> None:
        self._last_start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = capture_main(self.config_path, self.built, self.stats)
            except BaseException:
                log.exception("flow inspection failed")
            finally:
                logging.shutdown()
                os._exit(code)
        self.pid = pid

    def poll(self) -> None:
        """Reap a capture process that exited; start it again after RESTART_DELAY."""
        if not self.enabled:
            return
        if self.pid is not None:
            try:
                done, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                done, status = self.pid, 0
            if done == 0:
                return
            log.error("flow inspection (pid %d) exited with status %d; restarting in %.0f s", self.pid,
                      os.waitstatus_to_exitcode(status), RESTART_DELAY)
            self.pid = None
        if time.monotonic() - self._last_start >= RESTART_DELAY:
            self._spawn()

    def reload(self, built) -> None:
        """A new config was accepted: the capture process reloads it (SIGHUP)."""
        self.built = built
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGHUP)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + _STOP_GRACE
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return
            if done:
                return
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        # Killed before it could clean up: remove its table here (our own table only; monitor
        # mode has one too unless it captures with bpf).
        if self.built.cfg.flows.mode == "enforce" or self.built.cfg.flows.capture != CAPTURE_BPF:
            from appliance.nft import Nft

            try:
                Nft().delete_table()
            except Exception as exc:
                log.error("could not remove the nftables table: %s", exc)
