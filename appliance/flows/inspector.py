"""What the capture process decides about each selected packet, and what it reports.

Split out of appliance/flows/capture.py: :class:`FlowInspector` has no sockets (tests and
benchmarks drive it with packet bytes), so it lives apart from the process that feeds it.
It runs the pure flow table (filters/flow_table.py), judges each name found by the policy of
the client's network, and keeps the counters and recent block events that go to the shared
stats and to ``<state_dir>/flows-state.json`` (written and read here too).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from appliance.bundles.served import Built
from appliance.flows.nft import FAMILY, TABLE
from appliance.observe.stats import StatsSlot
from filters.flow_table import FlowTable, Found
from filters.packet import TCP, UDP, Drop, decode_ip
from filters.verdicts import MAX_CACHED_NAMES, NameVerdict, Verdicts
from signatures._atomic import write_atomic

__all__ = ["FLOWS_STATE", "FlowInspector", "Decision", "read_flows_state", "write_flows_state",
           "state_record"]

log = logging.getLogger("schoolgate")

FLOWS_STATE = "flows-state.json"
_ACTIONS = {"enforce": "reset", "monitor": "monitor"}


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

    ``built``: the matcher, policies and bundle to judge with; ``mode`` enforce or monitor;
    idle flow directions are forgotten after ``flow_timeout`` seconds; at most ``max_names``
    verdicts are cached per policy."""

    def __init__(self, built: Built, mode: str = "enforce", max_flows: int = 16384, flow_timeout: float = 120.0,
                 slot: StatsSlot | None = None, max_names: int = MAX_CACHED_NAMES) -> None:
        self.mode = mode
        self.max_names = max_names
        self.table = FlowTable(max_flows)
        self.flow_timeout = flow_timeout
        self.counters = _Counters()
        self.events: deque[dict] = deque(maxlen=50)
        self.slot = slot  # appliance.observe.stats.StatsSlot or None
        self._last_seen: OrderedDict[tuple, float] = OrderedDict()
        self.install(built)

    def install(self, built: Built) -> None:
        """Judge with ``built`` from now on (a new bundle or config)."""
        self.built = built
        self._verdicts: dict[str, Verdicts] = {}

    def _verdict(self, policy_name: str, mask: int, name: bytes) -> NameVerdict:
        v = self._verdicts.get(policy_name)
        if v is None:  # one per policy, bounded (filters/verdicts.py)
            v = self._verdicts[policy_name] = Verdicts(self.built.matcher, mask, self.max_names)
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
    return datetime.fromtimestamp(t, UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# -- the state file the web page reads ------------------------------------------------------------

def write_flows_state(state_dir: Path, record: dict) -> None:
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


def state_record(cfg, running: bool, error: str | None, table: bool, counters: dict | None = None,
                 events: list | None = None, capture: str | None = None) -> dict:
    """The flows-state.json record (the web page reads it: appliance/web/data.py)."""
    f = cfg.flows
    rec = {"enabled": f.enabled, "interface": f.interface, "mode": f.mode, "running": running, "error": error,
           "nft_table": f"{FAMILY} {TABLE}" if table else None, "updated": _rfc3339(time.time()),
           "pid": os.getpid() if running else None, "capture": capture}
    if counters is not None:
        rec["counters"] = counters
    if events is not None:
        rec["events"] = events
    return rec

