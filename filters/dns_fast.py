"""The DNS fast path's Python API: tables built from a pipeline's policies, and batch buffers.

A batch of UDP queries is answered in one jitted call (filters/_dns_kernels.py): parsing,
policy, matching, answers from templates and from the wire cache. This module builds what
that call reads — the client CIDR → policy table, per-policy answer templates, the bypass
names — from the same objects the Python pipeline uses (PolicySet, BlockAnswers, the
matcher), so both answer alike; and it owns the batch buffers. Sockets are not here:
appliance/dns/fastpath.py fills the buffers with recvmmsg and sends with sendmmsg; tests fill
them from lists of packets (:meth:`Batch.run_packets`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import numpy as np

from filters import _dns_kernels as K
from filters.dns_answer import minimal_any, negative_answer
from filters.dns_response import RCODE_NOERROR, RCODE_NXDOMAIN
from filters.dns_wire import MAX_UDP_PAYLOAD, parse_query
from filters.domain_matcher import DomainMatcher
from filters.errors import InputError
from filters.names import name_to_wire
from filters.policy import BYPASS_NODATA, BYPASS_NXDOMAIN, DIVERT_ALL, PolicySet

__all__ = ["FastTables", "Batch", "new_counters", "counter_values", "client_key", "ACT_SEND", "ACT_DROP",
           "ACT_PYTHON", "DEFAULT_BATCH", "RX_WIDTH", "TX_WIDTH"]

ACT_SEND, ACT_DROP, ACT_PYTHON = K.ACT_SEND, K.ACT_DROP, K.ACT_PYTHON
# Datagrams per batch (per recvmmsg). 64 amortises the per-call costs (the jitted call's
# argument unboxing, the two system calls) to well under 0.1 µs a query while keeping the
# buffers small (64 × 4 KiB in, 64 × 1.2 KiB out).
DEFAULT_BATCH = 64
# What one datagram may be, as the Python loop reads it (server.UDP_RECV_SIZE): longer ones
# are cut and then fail to parse (FORMERR), the same on both paths.
RX_WIDTH = 4096
# Every answer the kernels write fits in the largest UDP payload we send (1232: cached
# answers larger than the client's limit go out truncated; templates are a few hundred bytes).
TX_WIDTH = MAX_UDP_PAYLOAD
# A query to render templates from: answers to it, minus header and question, are records.
_PROBE_QUERY = b"\x00\x00\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x00\x00\x01\x00\x01"
_PROBE_QEND = len(_PROBE_QUERY)


def new_counters() -> np.ndarray:
    """The fast path's counters (see _dns_kernels C_*), added to the pipeline's."""
    return np.zeros(K.N_COUNTERS, dtype=np.int64)


def counter_values(counters: np.ndarray) -> tuple[dict[str, int], dict[int, int]]:
    """({counter name: value}, {category bit: blocked count}) from a counters array."""
    named = {name: int(counters[i]) for i, name in enumerate(K.COUNTER_NAMES)}
    bits = {b: int(counters[K.C_CATEGORY + b]) for b in range(64) if counters[K.C_CATEGORY + b]}
    return named, bits


def client_key(address: str) -> np.ndarray:
    """A client address as the kernels see it: uint8[17], family then address bytes
    (scope suffixes such as ``%eth0`` ignored, as the policy table ignores them)."""
    row = np.zeros(K.ADDR_WIDTH, dtype=np.uint8)
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return row  # not an address: family 0, the default policy
    row[0] = ip.version
    row[1:1 + len(ip.packed)] = np.frombuffer(ip.packed, dtype=np.uint8)
    return row


def _records(answer: bytes) -> bytes:
    """The records of an answer to _PROBE_QUERY (everything after the question)."""
    return answer[_PROBE_QEND:]


@dataclass(frozen=True)
class FastTables:
    """What the batch kernel reads about policies, built from a pipeline's objects."""

    tables: tuple  # see _dns_kernels.process_batch
    match: tuple
    policy_names: tuple[str, ...]

    @classmethod
    def build(cls, policies: PolicySet, matcher: DomainMatcher) -> FastTables:
        names = tuple(policies.rules)
        index = {n: i for i, n in enumerate(names)}
        v4, v6, v6pol = [], [], []
        for net, pol in policies.networks.ordered():
            if net.version == 4:
                v4.append((int(net.network_address), int(net.netmask), index[pol]))
            else:
                a, m = int(net.network_address), int(net.netmask)
                v6.append((a >> 64, a & (2**64 - 1), m >> 64, m & (2**64 - 1)))
                v6pol.append(index[pol])
        tb = bytearray()
        tt = np.full((len(names), K.T_ROWS, K.T_WIDTH), -1, dtype=np.int64)
        probe = parse_query(_PROBE_QUERY)

        def row(p: int, r: int, qtype: int, rcode: int, counts: bytes, records: bytes) -> None:
            tt[p, r] = (qtype, rcode, int.from_bytes(counts[0:2], "big"), int.from_bytes(counts[2:4], "big"),
                        int.from_bytes(counts[4:6], "big"), len(tb), len(records))
            tb.extend(records)

        for p, name in enumerate(names):
            answers = policies.rules[name].answers
            default, typed = answers.templates()
            if len(typed) > K.T_ROWS - K.T_TYPED:
                raise InputError(f"policy {name}: more typed block answers than the fast path holds")
            row(p, K.T_DEFAULT, -1, *default)
            # The negative answer and RFC 8482 HINFO of this policy's TTL, as the pipeline
            # renders them (negative_answer, minimal_any), so both paths agree byte for byte.
            neg = _records(negative_answer(_PROBE_QUERY, probe, RCODE_NXDOMAIN, answers.ttl))
            row(p, K.T_NEGATIVE, -1, RCODE_NXDOMAIN, b"\x00\x00\x00\x01\x00\x00", neg)
            row(p, K.T_ANY, -1, RCODE_NOERROR, b"\x00\x01\x00\x00\x00\x00",
                _records(minimal_any(_PROBE_QUERY, probe, answers.ttl)))
            for r, (qtype, t) in enumerate(sorted(typed.items()), K.T_TYPED):
                row(p, r, qtype, *t)
        # Every divert bit in use (filters/policy.py): taken out of the blocked masks the
        # kernel reports. DIVERT_ALL (no bit was free) marks no bit.
        divert_bits = 0
        for n in names:
            d = int(policies.rules[n].divert)
            if d != int(DIVERT_ALL):
                divert_bits |= d
        bb = bytearray()
        bt = []
        for names_, rcode in ((BYPASS_NXDOMAIN, RCODE_NXDOMAIN), (BYPASS_NODATA, RCODE_NOERROR)):
            for n in names_:
                wire = name_to_wire(n).lower()
                bt.append((len(bb), len(wire), rcode))
                bb.extend(wire)
        tables = (
            np.array(v4, dtype=np.int64).reshape(-1, 3),
            np.array(v6, dtype=np.uint64).reshape(-1, 4),
            np.array(v6pol, dtype=np.int64),
            index[policies.networks.default],
            np.array([policies.rules[n].mask for n in names], dtype=np.uint64),
            tt,
            np.frombuffer(bytes(tb) or b"\x00", dtype=np.uint8),
            np.array(bt, dtype=np.int64).reshape(-1, 3),
            np.frombuffer(bytes(bb), dtype=np.uint8),
            np.array([policies.rules[n].divert for n in names], dtype=np.uint64),
            np.uint64(~divert_bits & ((1 << 64) - 1)),
        )
        return cls(tables, matcher.kernel_args, names)


class Batch:
    """Buffers for one batch: datagrams in (``rx``, ``rxlen``, ``addrs``), answers out
    (``tx``, ``txlen``, ``txsrc``), and what happened to each datagram (``act``, and
    ``blocked_mask``: the categories of a blocked answer)."""

    def __init__(self, size: int = DEFAULT_BATCH) -> None:
        if size < 1:
            raise ValueError("a batch holds at least one datagram")
        self.size = size
        self.rx = np.zeros((size, RX_WIDTH), dtype=np.uint8)
        self.rxlen = np.zeros(size, dtype=np.int64)
        self.addrs = np.zeros((size, K.ADDR_WIDTH), dtype=np.uint8)
        self.tx = np.zeros((size, TX_WIDTH), dtype=np.uint8)
        self.txlen = np.zeros(size, dtype=np.int64)
        self.txsrc = np.zeros(size, dtype=np.int64)
        self.act = np.zeros(size, dtype=np.int64)
        # Per datagram: the category mask of a blocked answer, else 0 (for the query log).
        self.blocked_mask = np.zeros(size, dtype=np.uint64)
        self.scratch = K.new_scratch(size)

    def run(self, count: int, fast: FastTables, cache: tuple, limiter: tuple, counters: np.ndarray,
            now: float) -> int:
        """Process datagrams 0..count-1 already in the buffers; returns the answer count."""
        return K.process_batch(count, self.rx, self.rxlen, self.addrs, self.tx, self.txlen, self.txsrc,
                               self.act, self.blocked_mask, fast.tables, fast.match, cache, limiter, counters,
                               self.scratch, float(now))

    def run_packets(self, packets: list[bytes], clients: list[str], fast: FastTables, cache: tuple,
                    limiter: tuple, counters: np.ndarray, now: float) -> list[bytes | int]:
        """Answer ``packets`` (at most ``size``) from ``clients``: per packet its answer
        bytes, or ACT_DROP / ACT_PYTHON. For tests and for driving the kernel without sockets."""
        if len(packets) > self.size or len(packets) != len(clients):
            raise ValueError("more packets than the batch holds, or not one client each")
        for i, (p, c) in enumerate(zip(packets, clients)):
            n = min(len(p), RX_WIDTH)
            self.rx[i, :n] = np.frombuffer(p[:n], dtype=np.uint8)
            self.rxlen[i] = n
            self.addrs[i] = client_key(c)
        nsend = self.run(len(packets), fast, cache, limiter, counters, now)
        out: list[bytes | int] = [int(a) for a in self.act[:len(packets)]]
        for j in range(nsend):
            out[int(self.txsrc[j])] = self.tx[j, :self.txlen[j]].tobytes()
        return out
