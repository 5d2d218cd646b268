"""Live flow inspection and enforcement inside ``schoolgate run`` (config ``flows:``).

One capture process, forked by the owner process (appliance/dns/service.py Service when it
owns the appliance, appliance/dns/workers.py Supervisor otherwise) through
:class:`CaptureChild`. Scapy is imported only in that child (it costs ~40 MB and a second).

**Selection in the kernel** (``flows.capture``). Scapy (or any Python) cannot look at every
packet of a school link, so the kernel passes only the packets that open a flow, one of two
ways:

- ``nflog``: the table ``inet schoolgate`` gets a ``capture`` chain on the forward hook
  (appliance/flows/nft.py capture_chain) that logs the first packets of each connection from the
  LAN — selected by conntrack's packet count, ``ct original packets 1-10`` for TCP to 80,
  443, 853, 8080, 8443, ``1-4`` for UDP 443, every DNS packet to 53 — to an nfnetlink_log
  group that this process reads (appliance/flows/nflog.py). Every segment of a ClientHello split
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
network, with the same matcher and PolicySet as the DNS service (a ``Built`` from
appliance/compose.py). Counters and block events go to the shared stats (appliance/observe/stats.py,
SLOT_CAPTURE) and ``<state_dir>/flows-state.json``.

**Enforcement** (mode ``enforce``; ``monitor`` only counts and logs): nftables table
``inet schoolgate`` (appliance/flows/nft.py), installed at start (replacing a table a killed run
left, in one transaction) and deleted at stop. A blocked TLS/HTTP connection is ended at
once: a RST to the client (sent on the LAN interface, with the sequence number the client
expects: the ACK of its own segment) and one to the server (routed by the kernel), and its
5-tuple goes into the table's timeout set so that every later packet of it in either
direction is reset. A blocked QUIC or DNS flow's 5-tuple is dropped from then on.

Modules: appliance/flows/sources.py (the selection filter and the two packet sources),
appliance/flows/inspector.py (decisions, counters, flows-state.json),
appliance/flows/enforcer.py (nftables table and resets), appliance/child.py (what every
forked child does first). This one is the process: its handle in the owner
(:class:`CaptureChild`) and its loop (:class:`CaptureLoop`, whose steps tests drive one by one).

Limits (also in docs/flows.md, "Limits"): the names come from the first flight only (TLS ClientHello,
QUIC Initial, HTTP request head); with ECH the outer (public) name is what is judged. With
``bpf`` capture a ClientHello split over several segments is not read live. Neither mode
holds a packet back while it is judged (NFLOG copies, unlike NFQUEUE): the server's first
reply may cross the gateway before the verdict (a few hundred µs of Python after the
ClientHello); the connection is still reset right after.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time

from appliance.bundles.select import resolve_bundle
from appliance.bundles.served import Builder, Built
from appliance.child import close_inherited_sockets, die_with_parent, reap, signal_child, stop_child
from appliance.config.load import Config
from appliance.flows.enforcer import Enforcer
from appliance.flows.inspector import FlowInspector, state_record, write_flows_state
from appliance.flows.nft import Nft, capture_script
from appliance.flows.sources import CAPTURE_BPF, CAPTURE_NFLOG, RECV_TIMEOUT, BpfSource, NflogSource, PacketSource
from appliance.observe.stats import SLOT_CAPTURE, SharedStats

__all__ = ["CaptureChild", "CaptureLoop", "capture_main", "WATCH_PERIOD"]

log = logging.getLogger("schoolgate")

# Packets read per loop iteration before housekeeping (state file, expiry, nft batches): a
# burst is worked off in bounded slices, and a stop request is seen within one slice.
BATCH = 256
_STATE_PERIOD = 2.0  # seconds between flows-state.json writes while counters change
_EXPIRE_PERIOD = 1.0
RESTART_DELAY = 5.0  # seconds between restarts of a failing capture process
# How often the loop looks at bundles/current (one readlink), as the DNS service does.
WATCH_PERIOD = 0.5
_REFUSED_RETRY = 60.0  # seconds before a refused bundle is looked at again
_STOP_GRACE = 10.0
# The capture process's nice value: its verdict races the server's first reply (a WAN round
# trip), so it goes before the DNS workers' batch work and anything else on a busy box.
CAPTURE_NICE = -5
_SPLIT_WARNING = ("ClientHellos split over several TCP segments (Chrome's post-quantum key share) "
                  "are not read in bpf capture")


def _open(cfg: Config, built: Built) -> tuple[PacketSource, Enforcer | None, bool]:
    """The packet source for ``flows.capture`` and, in enforce mode, the installed table;
    third: whether a table of ours is installed. ``auto`` tries nflog (bind the group first,
    so that nothing logged once the rules load is lost, then the table with the capture
    chain) and falls back to bpf with a warning."""
    f = cfg.flows
    assert f.interface is not None  # flows.enabled needs it (appliance/config/flows.py)
    socket.if_nametoindex(f.interface)  # OSError ENODEV: nftables would match a name that is not there
    if f.capture in ("auto", CAPTURE_NFLOG):
        source = enforcer = None
        try:
            source = NflogSource(f.nflog_group)
            if f.mode == "enforce":
                enforcer = Enforcer(cfg, built, f.interface, f.nflog_group)
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
        enforcer = Enforcer(cfg, built, f.interface)
    else:
        try:
            Nft().delete_table()  # monitor with bpf: no table; an earlier run's leftovers go
        except Exception:
            pass
    try:
        return BpfSource(f.interface), enforcer, enforcer is not None
    except BaseException:
        if enforcer is not None:
            enforcer.close()
        raise


class CaptureLoop:
    """The capture process's loop in steps a test can drive one by one: :meth:`read` a slice of
    packets (judged, blocks handed to the enforcer), then :meth:`housekeeping` (nft batches,
    flow expiry, following a reload or a new bundle, flows-state.json). :meth:`run` repeats the
    two until SIGTERM; :meth:`close` removes what the process installed."""

    def __init__(self, builder: Builder, built: Built, source: PacketSource, enforcer: Enforcer | None,
                 table: bool, inspector: FlowInspector, flags: set[int] | None = None) -> None:
        self.builder = builder
        self.built = built
        self.settings = built.cfg.flows  # as started: changes take effect at the next restart
        self.state_dir = built.cfg.state_dir
        self.source = source
        self.enforcer = enforcer
        self.table = table
        self.inspector = inspector
        self.flags = flags if flags is not None else set()  # signals seen (set by the handlers)
        self.dirty = False  # counters changed since flows-state.json was written
        self.next_state = self.next_expire = self.next_watch = time.monotonic()

    def write_state(self, running: bool = True) -> None:
        i = self.inspector
        write_flows_state(self.state_dir, state_record(self.built.cfg, running, None, self.table if running else False,
                                                      i.counters.as_dict(), list(i.events), self.source.name))

    def read(self) -> int:
        """Read and judge up to BATCH reads' worth of packets (fewer when one blocks: nft gets
        the flow at once, not after the batch). Returns the number of packets judged."""
        busy = self.enforcer is not None and (self.enforcer.pending or self.enforcer.proc is not None)
        self.source.settimeout(0.01 if busy else RECV_TIMEOUT)  # an nft run in flight: look again soon
        judged = 0
        for _ in range(BATCH):
            got = self.source.read()
            if got is None:
                break
            for data, version, hwaddr in got:
                judged += 1
                if self.packet(data, version, hwaddr):
                    self.flags.add(0)
            if self.flags:
                break
        self.flags.discard(0)
        return judged

    def packet(self, data: bytes, version: int, hwaddr: bytes | None) -> bool:
        """One packet; True when it blocked a flow. A bug of ours on one packet is logged
        (the first ten) and counted, and inspection goes on."""
        blocked = False
        try:
            for d in self.inspector.packet(time.time(), data, version):
                self.dirty = True
                if d.action in ("reset", "block") and self.enforcer is not None:
                    self.enforcer.block(d, hwaddr)
                    blocked = True
        except Exception:
            self.inspector.counters.internal_errors += 1
            if self.inspector.counters.internal_errors <= 10:
                log.exception("flow inspection: internal error on a packet")
        return blocked

    def housekeeping(self, now: float) -> None:
        if self.enforcer is not None:
            self.enforcer.flush()
        if now >= self.next_expire:
            self.inspector.expire(time.time())
            self.next_expire = now + _EXPIRE_PERIOD
        if signal.SIGHUP in self.flags or now >= self.next_watch:
            reload = signal.SIGHUP in self.flags
            self.flags.discard(signal.SIGHUP)
            self.follow(reload, now)
        if self.dirty and now >= self.next_state:
            self.inspector.counters.capture_drops = self.source.drops
            self.write_state()
            self.dirty = False
            self.next_state = now + _STATE_PERIOD

    def follow(self, reload: bool, now: float) -> bool:
        """Judge with a new config (``reload``: SIGHUP) or a newly activated bundle; a refused
        one leaves the running rules in place (a refused bundle is looked at again in a
        minute, not every tick). True when something new was installed."""
        self.next_watch = now + WATCH_PERIOD
        new: Built | None
        try:
            if reload:
                new = self.builder.reload()
            else:
                found = resolve_bundle(self.built.cfg)
                new = (self.builder.with_bundle(self.built.cfg, found)
                       if found is not None and found.path != self.built.bundle.path else None)
        except Exception as exc:  # refused: the running rules stay
            log.error("flow inspection keeps its rules: %s", exc)
            if not reload:
                self.next_watch = now + _REFUSED_RETRY
            return False
        if new is None:
            return False
        if new.cfg.flows != self.settings:
            log.warning("flows settings changed: they take effect at the next restart")
        self.built = new
        self.inspector.install(new)
        self.inspector.warm_up()
        if self.enforcer is not None:
            try:
                self.enforcer.install(new.cfg, new)
            except Exception as exc:
                log.error("nftables rules not replaced: %s", exc)
        return True

    def run(self) -> None:
        while not self.flags & {signal.SIGTERM, signal.SIGINT}:
            self.read()
            self.housekeeping(time.monotonic())

    def close(self) -> None:
        self.source.close()
        if self.enforcer is not None:
            self.enforcer.close()
        elif self.table:  # monitor with nflog: the capture chain's table
            try:
                Nft().delete_table()
            except Exception as exc:
                log.error("could not remove the nftables table: %s", exc)
        self.write_state(running=False)
        log.info("flow inspection stopped", extra={"counters": self.inspector.counters.as_dict()})


def capture_main(builder: Builder, built: Built, stats: SharedStats | None = None) -> int:
    """The capture process's body (after fork). Returns its exit status."""
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
    die_with_parent()  # the owner killed -9: stop and clean up too
    close_inherited_sockets()
    cfg = built.cfg
    f = cfg.flows
    slot = stats.slot(SLOT_CAPTURE) if stats is not None else None
    try:
        source, enforcer, table = _open(cfg, built)
    except Exception as exc:  # no such interface, no nft, no privilege: say so, DNS goes on
        msg = str(exc) if not isinstance(exc, OSError) else f"{f.interface}: {os.strerror(exc.errno or 0)}"
        log.error("flow inspection cannot start: %s", msg)
        write_flows_state(cfg.state_dir, state_record(cfg, False, msg, False))
        return 1
    inspector = FlowInspector(built, f.mode, f.max_flows, f.flow_timeout, slot)
    inspector.warm_up()
    try:
        os.setpriority(os.PRIO_PROCESS, 0, CAPTURE_NICE)
    except OSError:
        pass  # without CAP_SYS_NICE: normal priority
    loop = CaptureLoop(builder, built, source, enforcer, table, inspector, flags)
    loop.write_state()
    log.info("flow inspection started", extra={"interface": f.interface, "mode": f.mode, "capture": source.name,
                                               "pid": os.getpid()})
    try:
        loop.run()
    finally:
        loop.close()
    return 0


class CaptureChild:
    """The owner's handle on the capture process: fork, restart (at most every
    RESTART_DELAY), forward SIGHUP, stop. Without ``flows.enabled`` it only records that."""

    def __init__(self, builder: Builder, built: Built, stats: SharedStats | None = None) -> None:
        self.builder = builder
        self.built = built
        self.stats = stats
        self.pid: int | None = None
        self._last_start = 0.0
        self.enabled = built.cfg.flows.enabled
        if not self.enabled:
            write_flows_state(built.cfg.state_dir, state_record(built.cfg, False, None, False))
        else:
            self._spawn()

    def _spawn(self) -> None:
        self._last_start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = capture_main(self.builder, self.built, self.stats)
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
            status = reap(self.pid)
            if status is None:
                return
            log.error("flow inspection (pid %d) exited with status %d; restarting in %.0f s", self.pid,
                      os.waitstatus_to_exitcode(status), RESTART_DELAY)
            self.pid = None
        if time.monotonic() - self._last_start >= RESTART_DELAY:
            self._spawn()

    def reload(self, built: Built) -> None:
        """A new config was accepted: the capture process reloads it (SIGHUP)."""
        self.built = built
        signal_child(self.pid, signal.SIGHUP)

    def stop(self) -> None:
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        if not stop_child(pid, _STOP_GRACE):
            return
        # Killed before it could clean up: remove its table here (our own table only; monitor
        # mode has one too unless it captures with bpf).
        if self.built.cfg.flows.mode == "enforce" or self.built.cfg.flows.capture != CAPTURE_BPF:
            try:
                Nft().delete_table()
            except Exception as exc:
                log.error("could not remove the nftables table: %s", exc)
