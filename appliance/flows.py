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

Modules: appliance/capture_sources.py (the selection filter and the two packet sources),
appliance/flow_inspector.py (decisions, counters, flows-state.json),
appliance/flow_enforcer.py (nftables table and resets), appliance/child.py (what every
forked child does first). This one is the process: its handle in the owner and its loop.

Limits (also in README.md): the names come from the first flight only (TLS ClientHello,
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

from appliance.capture_sources import (CAPTURE_BPF, CAPTURE_NFLOG, RECV_TIMEOUT, BpfSource, NflogSource, attach_bpf,
                                       compile_bpf, open_capture, selection_filter)
from appliance.child import close_inherited_sockets, die_with_parent, reap, signal_child, stop_child
from appliance.flow_enforcer import Enforcer
from appliance.flow_inspector import (FLOWS_STATE, Decision, FlowInspector, read_flows_state, state_record,
                                      write_flows_state)

__all__ = ["FLOWS_STATE", "CAPTURE_BPF", "CAPTURE_NFLOG", "selection_filter", "compile_bpf", "attach_bpf", "open_capture", "FlowInspector", "Decision", "CaptureChild",
           "read_flows_state", "write_flows_state", "capture_main"]

log = logging.getLogger("schoolgate")

# Packets read per loop iteration before housekeeping (state file, expiry, nft batches): a
# burst is worked off in bounded slices, and a stop request is seen within one slice.
BATCH = 256
_STATE_PERIOD = 2.0  # seconds between flows-state.json writes while counters change
_EXPIRE_PERIOD = 1.0
RESTART_DELAY = 5.0  # seconds between restarts of a failing capture process
_STOP_GRACE = 10.0
# The capture process's nice value: its verdict races the server's first reply (a WAN round
# trip), so it goes before the DNS workers' batch work and anything else on a busy box.
CAPTURE_NICE = -5
_SPLIT_WARNING = ("ClientHellos split over several TCP segments (Chrome's post-quantum key share) "
                  "are not read in bpf capture")


def _open(cfg, built) -> tuple[object, Enforcer | None, bool]:
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
    die_with_parent()  # the owner killed -9: stop and clean up too
    close_inherited_sockets()
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
        write_flows_state(cfg.state_dir, state_record(cfg, False, msg, False))
        return 1
    capture = source.name
    inspector = FlowInspector(built, f.mode, f.max_flows, f.flow_timeout, slot)
    inspector.warm_up()
    try:
        os.setpriority(os.PRIO_PROCESS, 0, CAPTURE_NICE)
    except OSError:
        pass  # without CAP_SYS_NICE: normal priority
    write_flows_state(cfg.state_dir, state_record(cfg, True, None, table, inspector.counters.as_dict(), [], capture))
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
            source.settimeout(0.01 if busy else RECV_TIMEOUT)  # an nft run in flight: look again soon
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
                write_flows_state(cfg.state_dir, state_record(cfg, True, None, table, inspector.counters.as_dict(),
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
        write_flows_state(cfg.state_dir, state_record(cfg, False, None, False, inspector.counters.as_dict(),
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
            write_flows_state(built.cfg.state_dir, state_record(built.cfg, False, None, False))
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
            status = reap(self.pid)
            if status is None:
                return
            log.error("flow inspection (pid %d) exited with status %d; restarting in %.0f s", self.pid,
                      os.waitstatus_to_exitcode(status), RESTART_DELAY)
            self.pid = None
        if time.monotonic() - self._last_start >= RESTART_DELAY:
            self._spawn()

    def reload(self, built) -> None:
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
            from appliance.nft import Nft

            try:
                Nft().delete_table()
            except Exception as exc:
                log.error("could not remove the nftables table: %s", exc)
