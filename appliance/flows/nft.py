"""nftables enforcement of flow verdicts: one table of our own, ``inet schoolgate``.

Everything goes through the ``nft`` binary with script input (``nft -f -``), so what is
installed is exactly the text :func:`ruleset_script` returns (tests read it without root).
Nothing outside the table is touched: it is created by a script that first creates and
deletes it, so a table left by a run that was killed (kill -9) is replaced atomically in one
transaction, and :meth:`Nft.delete_table` removes all of it on stop.

The table (names are what `nft list table inet schoolgate` shows)::

    set flows_v4 / flows_v6   saddr . l4proto . sport . daddr . dport of connections whose
                              name was blocked; flags timeout (flows.flow_timeout)
    set doh_v4 / doh_v6       the bundle's "doh" CIDRs (flows.block_doh_addresses); interval
    set pol<i>_v4 / _v6       per policy: the addresses its blocked CIDR categories cover
                              (allow CIDRs subtracted as the matcher would); interval
    chain forward             hook forward: a flow in flows_* is reset (TCP, both directions)
                              or dropped (UDP); from the LAN interface: DoT (853) refused,
                              DoH addresses refused, QUIC (UDP 443) dropped if configured;
                              then the client's network decides its policy chain (goto)
    chain pol<i>              destination in the policy's CIDR sets: refused / dropped
    chain capture             hook forward, before ``forward``: logs each flow's first
                              packets from the LAN to an nfnetlink_log group (flows.capture
                              nflog; appliance/flows/nflog.py reads them); never drops anything.
                              ``monitor`` mode installs this chain alone.

The capture chain selects by conntrack, not by payload: ``ct original packets`` counts a
connection's packets from the client (the SYN is 1, the handshake's ACK 2), so the first
CAPTURE_TCP_PACKETS of a TCP flow to a port where names are read are logged — every segment
of a ClientHello split over several (Chrome's post-quantum key share), which a filter on
what a packet starts with cannot pass. nftables turns conntrack accounting on
(net.netfilter.nf_conntrack_acct) when a rule reads ``ct ... packets``.

Only the 5-tuple of a blocked connection is blocked, not its destination address: many
names share one address (CDNs, shared hosting), and blocking the address would block the
allowed ones with it. A client retrying gets a new source port, sends a new ClientHello and
is reset again.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from filters.errors import EnvironmentFault

__all__ = ["TABLE", "FAMILY", "DOH_CATEGORY", "MAX_SET_ELEMENTS", "PolicyCidrs", "RulesetSpec",
           "ruleset_script", "capture_script", "capture_chain", "policy_cidrs", "CategoryCidrs", "category_cidrs",
           "flow_element",
           "Nft", "CAPTURE_TCP_PORTS", "CAPTURE_TCP_PACKETS", "CAPTURE_UDP_PACKETS", "SNAPLEN"]

TABLE = "schoolgate"
FAMILY = "inet"
DOH_CATEGORY = "doh"  # the bundle category whose CIDRs are DoH resolvers (config/demo/sources.yaml)
# Blocked flows remembered at once per address family: each element is ~100 bytes of kernel
# memory; a school blocks a few flows a second, each for flow_timeout (2 min): far below this.
MAX_SET_ELEMENTS = 65536
_NFT_TIMEOUT = 30.0  # seconds for one nft run (a 100 k-CIDR ruleset loads in ~2 s on a Pi)
DOT_PORT = 853
QUIC_PORT = 443
# TCP ports whose flows' first packets are logged: HTTP (80, 8080), TLS (443, 8443) and DoT
# (853: counted, and refused by ``block_dot``). TLS on other ports is read by the bpf capture
# only (it sniffs any port); logging every TCP flow's start would cost ~6 messages per flow.
CAPTURE_TCP_PORTS = (80, 443, 853, 8080, 8443)
# Packets per TCP flow from the client: SYN (fixes where the stream starts), the handshake's
# ACK, then 8 data segments — a 4 KiB first flight at the smallest common MSS (536), 11 KiB
# at 1460; Chrome's post-quantum ClientHello (~1.8 kB) is 2 segments at 1460, 4 at 536.
CAPTURE_TCP_PACKETS = 10
# Datagrams per UDP 443 flow: a client's first flight is 1-2 Initials (2 with Chrome's
# post-quantum key share), a few more when lost Initials are retransmitted.
CAPTURE_UDP_PACKETS = 4
# Bytes copied per logged packet (nft ``snaplen``): headers plus the first flight's cap
# (filters/extract_tls.MAX_FIRST_FLIGHT, 20 KiB) — a GRO-merged forwarded packet can be 64 KiB
# and nothing past the cap is read. The queue threshold is left at the socket's 1
# (appliance/flows/nflog.py QTHRESH): batching messages would delay every verdict.
SNAPLEN = 20 * 1024 + 4096 + 256
Net = ipaddress.IPv4Network | ipaddress.IPv6Network


class CategoryCidrs(NamedTuple):
    """What a category mask blocks by address (category_cidrs; unpacks as ``v4, v6``)."""

    v4: list[ipaddress.IPv4Network]
    v6: list[ipaddress.IPv6Network]


@dataclass(frozen=True)
class PolicyCidrs:
    name: str
    clients: tuple[str, ...]  # client CIDRs of the networks with this policy ("" = default)
    v4: tuple[str, ...]
    v6: tuple[str, ...]


@dataclass(frozen=True)
class RulesetSpec:
    interface: str
    flow_timeout: int = 120
    block_quic: bool = False
    block_dot: bool = True
    doh_v4: tuple[str, ...] = ()
    doh_v6: tuple[str, ...] = ()
    # Most specific client network first; the default policy (clients ()) last.
    policies: tuple[PolicyCidrs, ...] = field(default_factory=tuple)
    max_elements: int = MAX_SET_ELEMENTS
    nflog_group: int | None = None  # add the capture chain (flows.capture nflog)


def _q(text: str) -> str:
    return json.dumps(text)  # an nft quoted string: interface names, comments


def _elements(items: Sequence[str]) -> str:
    return f"\t\telements = {{ {', '.join(items)} }}\n" if items else ""


def _interval_set(name: str, v6: bool, items: Sequence[str]) -> str:
    return (f"\tset {name} {{\n\t\ttype {'ipv6_addr' if v6 else 'ipv4_addr'}\n\t\tflags interval\n"
            f"\t\tauto-merge\n{_elements(items)}\t}}\n")


def capture_chain(interface: str, group: int) -> str:
    """The ``capture`` chain (module doc): log rules only, run before ``forward`` (priority
    filter - 10) so that a packet the forward chain resets or drops is still seen."""
    if not 0 <= group <= 0xFFFF:
        raise ValueError(f"an nflog group is 0-65535, not {group}")
    first = f"iifname {_q(interface)} ct direction original"
    log = f"log group {group} snaplen {SNAPLEN}"
    ports = ", ".join(map(str, CAPTURE_TCP_PORTS))
    rules = [f"{first} meta l4proto {{ tcp, udp }} th dport 53 {log} comment \"DNS\"",
             f"{first} tcp dport {{ {ports} }} ct original packets 1-{CAPTURE_TCP_PACKETS} {log} "
             "comment \"first packets: TLS, HTTP, DoT\"",
             f"{first} udp dport {QUIC_PORT} ct original packets 1-{CAPTURE_UDP_PACKETS} {log} "
             "comment \"first datagrams: QUIC\""]
    return ("\tchain capture {\n\t\ttype filter hook forward priority filter - 10; policy accept;\n"
            + "".join(f"\t\t{r}\n" for r in rules) + "\t}\n")


def capture_script(interface: str, group: int) -> str:
    """The table with the capture chain alone (``monitor`` mode: nothing is blocked), as an
    ``nft -f`` script that replaces any earlier table atomically."""
    return (f"table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\ntable {FAMILY} {TABLE} {{\n"
            f"{capture_chain(interface, group)}}}\n")


def ruleset_script(spec: RulesetSpec) -> str:
    """The whole table as an ``nft -f`` script that replaces any earlier one atomically."""
    iif = f"iifname {_q(spec.interface)}"
    out = [f"table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n", f"table {FAMILY} {TABLE} {{\n"]
    if spec.nflog_group is not None:
        out.append(capture_chain(spec.interface, spec.nflog_group))
    for fam, addr in (("v4", "ipv4_addr"), ("v6", "ipv6_addr")):
        out.append(f"\tset flows_{fam} {{\n\t\ttype {addr} . inet_proto . inet_service . {addr} . inet_service\n"
                   f"\t\tflags timeout\n\t\ttimeout {spec.flow_timeout}s\n\t\tsize {spec.max_elements}\n\t}}\n")
    out.append(_interval_set("doh_v4", False, spec.doh_v4))
    out.append(_interval_set("doh_v6", True, spec.doh_v6))
    for i, p in enumerate(spec.policies):
        out.append(_interval_set(f"pol{i}_v4", False, p.v4))
        out.append(_interval_set(f"pol{i}_v6", True, p.v6))
    rules = []
    for ip, fam in (("ip", "v4"), ("ip6", "v6")):
        fwd = f"{ip} saddr . meta l4proto . th sport . {ip} daddr . th dport @flows_{fam}"
        rev = f"{ip} daddr . meta l4proto . th dport . {ip} saddr . th sport @flows_{fam}"
        for match, what in ((fwd, "client to server"), (rev, "server to client")):
            rules.append(f"meta l4proto tcp {match} counter reject with tcp reset comment "
                         f"{_q('blocked flow, ' + what)}")
            rules.append(f"{match} counter drop comment {_q('blocked flow, ' + what)}")
    if spec.block_dot:
        rules.append(f"{iif} tcp dport {DOT_PORT} counter reject with tcp reset comment \"DNS over TLS\"")
        rules.append(f"{iif} udp dport {DOT_PORT} counter drop comment \"DNS over QUIC\"")
    for ip, fam in (("ip", "v4"), ("ip6", "v6")):
        if spec.doh_v4 if fam == "v4" else spec.doh_v6:
            rules.append(f"{iif} meta l4proto tcp {ip} daddr @doh_{fam} counter reject with tcp reset "
                         "comment \"DoH resolver\"")
            rules.append(f"{iif} {ip} daddr @doh_{fam} counter drop comment \"DoH resolver\"")
    if spec.block_quic:
        rules.append(f"{iif} udp dport {QUIC_PORT} counter drop comment \"QUIC: browsers fall back to TCP\"")
    # The client's network picks its policy, most specific network first (as
    # filters/policy.NetworkTable decides); ``goto`` so that the first match is the only one.
    dispatch = sorted(((ipaddress.ip_network(c).prefixlen, c, i) for i, p in enumerate(spec.policies)
                       for c in p.clients), key=lambda r: -r[0])
    for _, c, i in dispatch:
        p = spec.policies[i]
        ip = "ip6" if ipaddress.ip_network(c).version == 6 else "ip"
        verdict = f"goto pol{i}" if p.v4 or p.v6 else "accept"  # nothing to refuse: done here
        rules.append(f"{iif} {ip} saddr {c} {verdict} comment {_q('policy ' + p.name)}")
    for i, p in enumerate(spec.policies):
        if not p.clients and (p.v4 or p.v6):
            rules.append(f"{iif} goto pol{i} comment {_q('policy ' + p.name + ' (other clients)')}")
            break
    out.append("\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n")
    out.extend(f"\t\t{r}\n" for r in rules)
    out.append("\t}\n")
    for i, p in enumerate(spec.policies):
        if not (p.v4 or p.v6):
            continue
        out.append(f"\tchain pol{i} {{\n")
        for ip, fam in (("ip", "v4"), ("ip6", "v6")):
            out.append(f"\t\tmeta l4proto tcp {ip} daddr @pol{i}_{fam} counter reject with tcp reset\n")
            out.append(f"\t\t{ip} daddr @pol{i}_{fam} counter drop\n")
        out.append("\t}\n")
    out.append("}\n")
    return "".join(out)


def category_cidrs(cidr_matcher, mask: int) -> CategoryCidrs:
    """(v4, v6) CIDRs the bundle blocks under a category ``mask``: every entry whose
    categories meet it minus the allow entries inside it (docs/matching.md: an allow at least as
    specific as the block wins), collapsed. Exact: an address is blocked iff some blocking
    entry contains it and no allow entry inside that entry does."""
    t, classes = cidr_matcher.table, cidr_matcher.classes
    blocking: list[Net] = []
    allows: list[Net] = []
    for e in range(len(t)):
        c = int(t.cls[e])
        is_allow = bool(int(classes.allow[c]) & 1)  # ALLOW_BELOW, as the kernels read it
        if is_allow:
            allows.append(t.network(e))
        elif int(classes.mask[c]) & mask:
            blocking.append(t.network(e))
    out: list[Net] = []
    for b in blocking:
        parts = [b]
        for a in allows:
            if a.version != b.version or not a.subnet_of(b):  # type: ignore[arg-type]
                continue
            nxt: list[Net] = []
            for p in parts:
                if a.subnet_of(p):  # type: ignore[arg-type]
                    nxt.extend(p.address_exclude(a))  # type: ignore[arg-type]
                elif not p.subnet_of(a):  # type: ignore[arg-type]
                    nxt.append(p)
            parts = nxt
        out.extend(parts)
    v4 = list(ipaddress.collapse_addresses(n for n in out if n.version == 4))
    v6 = list(ipaddress.collapse_addresses(n for n in out if n.version == 6))
    return CategoryCidrs(v4, v6)


def policy_cidrs(built) -> tuple[PolicyCidrs, ...]:
    """Per policy of a built config (appliance.dns.service.Built): its client networks and
    the CIDRs it blocks. The default policy (for clients in no network) comes last with
    ``clients`` empty; the catch-all default applies to every other client."""
    cidr = built.bundle.cidr_matcher()
    nets = built.policies.networks
    cache: dict[int, CategoryCidrs] = {}
    clients: dict[str, list[str]] = {}
    for net, name in nets.ordered():
        clients.setdefault(name, []).append(str(net))
    out = []
    # The default policy appears twice when networks name it: with those networks (they must
    # win over less specific networks of other policies) and as the catch-all.
    for name, nets_of in [*clients.items(), (nets.default, [])]:
        mask = int(built.policies.rules[name].mask)
        if mask not in cache:
            cache[mask] = category_cidrs(cidr, mask)
        v4, v6 = cache[mask]
        out.append(PolicyCidrs(name, tuple(nets_of), tuple(map(str, v4)), tuple(map(str, v6))))
    return tuple(out)


def flow_element(src: bytes, proto: int, sport: int, dst: bytes, dport: int) -> tuple[str, str]:
    """(set family, element text) of one connection for flows_v4/flows_v6."""
    fam = "v4" if len(src) == 4 else "v6"
    return fam, (f"{ipaddress.ip_address(src)} . {proto} . {sport} . {ipaddress.ip_address(dst)} . {dport}")


class Nft:
    """Runs ``nft`` on our table only. ``binary``: the nft program (tests may wrap it)."""

    def __init__(self, binary: str | None = None) -> None:
        found = binary or shutil.which("nft") or "/usr/sbin/nft"
        self.binary = found

    def _run(self, args: list[str], script: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        try:
            res = subprocess.run([self.binary, *args], input=script, capture_output=True, text=True,
                                 timeout=_NFT_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise EnvironmentFault(f"nft failed to run: {exc}") from exc
        if check and res.returncode != 0:
            raise EnvironmentFault(f"nft {' '.join(args)} failed: {res.stderr.strip()[:2000]}")
        return res

    def apply(self, script: str) -> None:
        """Load a ruleset script in one transaction (all or nothing)."""
        self._run(["-f", "-"], script)

    def add_flows_script(self, elements: Iterable[tuple[str, str]]) -> str:
        by_fam: dict[str, list[str]] = {}
        for fam, el in elements:
            by_fam.setdefault(fam, []).append(el)
        return "".join(f"add element {FAMILY} {TABLE} flows_{fam} {{ {', '.join(els)} }}\n"
                       for fam, els in sorted(by_fam.items()))

    def add_flows_async(self, elements: Iterable[tuple[str, str]]) -> subprocess.Popen:
        """Start adding blocked flows; the caller reaps the process (poll) and keeps the loop
        running meanwhile (an nft run costs ~5 ms, several packets' time)."""
        script = self.add_flows_script(elements)
        p = subprocess.Popen([self.binary, "-f", "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
        assert p.stdin is not None
        p.stdin.write(script)
        p.stdin.close()
        return p

    def delete_table(self) -> bool:
        """Remove our table (and with it every set and rule); False when there was none."""
        res = self._run(["delete", "table", FAMILY, TABLE], check=False)
        return res.returncode == 0

    def has_table(self) -> bool:
        res = self._run(["list", "tables", FAMILY], check=False)
        return any(line.split()[-1:] == [TABLE] for line in res.stdout.splitlines())

    def set_elements(self, name: str) -> list:
        """The elements of one of our sets, as ``nft -j`` reports them."""
        res = self._run(["-j", "list", "set", FAMILY, TABLE, name])
        for item in json.loads(res.stdout).get("nftables", []):
            if "set" in item:
                return item["set"].get("elem", [])
        return []
