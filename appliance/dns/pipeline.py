"""One DNS query in, one decision out — the step every listener drives the same way.

``Pipeline.handle(buf, client, udp)`` returns the answer bytes, None (drop), or a
:class:`Forward` the listener resolves upstream and hands back to ``Pipeline.finish``. No
sockets and no clock here: time comes from the injected ``clock``, so tests drive it.

The fast path (one class-IN question, the common case): the matcher reads the QNAME in the
packet (hashing every suffix, ~1 µs) and reports where it ends; the header, QTYPE, QCLASS
and OPT are read around it; then bypass names, blocked names (answer templates), the wire
cache, and otherwise a Forward. Everything else goes to slowpath.py (dnslib).

Failure policy (hostile input is answered or dropped, never a crash), all in
``handle``/``finish``:

- a runt (shorter than a header) or a response (QR set): dropped, no answer;
- a header we can read but a message we cannot parse: FORMERR (RFC 1035 §4.1.1);
- opcodes other than QUERY: NOTIMP; classes other than IN: REFUSED;
- an exception of our own: SERVFAIL, logged (rate-limited), and the server goes on;
- upstreams failing: a stale cached answer (RFC 8767), else SERVFAIL.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from appliance.dns.cache import AnswerCache
from appliance.dns.ratelimit import ClientLimiter
from appliance.observe.querylog import QueryLog
from appliance.observe.stats import FAST_WIDTH, StatsSlot
from filters import _domain_kernels as K
from filters.dns_answer import (
    TYPE_ANY,
    badvers_response,
    error_response,
    minimal_any,
    negative_answer,
    opt_record,
    render_cached,
)
from filters.dns_fast import counter_values, new_counters
from filters.dns_response import (
    RCODE_NOERROR,
    RCODE_NXDOMAIN,
    RCODE_REFUSED,
    RCODE_SERVFAIL,
    Normalised,
    normalise_response,
)
from filters.dns_wire import HEADER_LEN, MAX_MESSAGE, MAX_UDP_PAYLOAD, MIN_UDP_PAYLOAD, Query, parse_query
from filters.domain_matcher import DomainMatcher
from filters.errors import PacketError, RuntPacketError
from filters.policy import PolicyRule, PolicySet, bypass_action
from filters.safesearch import rewrite_answer

__all__ = ["Forward", "Counters", "Pipeline", "key_flags", "ZONE_TRANSFERS"]

log = logging.getLogger("schoolgate.dns")
# Zone transfers (IXFR, RFC 1995; AXFR, RFC 5936) are for a zone's secondaries, not for a
# forwarder's clients: REFUSED here, at once. Forwarded, an IXFR (rewritten without its SOA)
# would draw an upstream's FORMERR, and so let any client make upstreams look broken.
TYPE_IXFR, TYPE_AXFR = 251, 252
ZONE_TRANSFERS = (TYPE_IXFR, TYPE_AXFR)
_DO_KEY, _CD_KEY = 0x01, 0x02


def key_flags(buf: bytes, q: Query) -> bytes:
    """The cache key's last byte: 1 for DO (a DNSSEC client gets the RRSIGs, RFC 3225), 2 for
    CD (RFC 4035 §3.2.2: with CD=1 a validating upstream passes on data it would reject, so
    such an answer must never reach a CD=0 client). The fast path's kernel builds the same
    byte (filters/_dns_kernels.py, process_batch)."""
    return bytes(((_DO_KEY if q.do else 0) | (_CD_KEY if buf[3] & 0x10 else 0),))


# Internal errors are logged at most this often (a packet of death repeated at line rate
# must not fill the disk); the counter still counts every one.
_ERROR_LOG_INTERVAL = 10.0


@dataclass(slots=True)
class Forward:
    """A query that needs an upstream answer: the listener sends ``upstream_query(id)``
    and passes the response (or None when every upstream failed) to Pipeline.finish."""

    buf: bytes  # the client's query as received
    query: Query
    key: bytes  # cache key: lower-case QNAME wire + QTYPE + QCLASS + key_flags (DO, CD)
    rule: PolicyRule
    limit: int  # largest answer the client takes (UDP payload size, or 65535 over TCP)
    client: str | None = None  # the client address (query log, block events)
    # SafeSearch: the endpoint (wire) the client's name is rewritten to; ``key`` is then the
    # endpoint's question, and the answer a CNAME to it plus its records (filters/safesearch.py)
    rewrite: bytes | None = None

    def upstream_query(self, qid: int) -> bytes:
        """Our query: a fresh ID, RD, the client's CD bit, the lower-cased question and an
        OPT (UDP payload 1232, the client's DO bit) so large answers come back over UDP."""
        question = self.key[:-1]
        return (qid.to_bytes(2, "big") + bytes((0x01, self.buf[3] & 0x10)) + b"\x00\x01\x00\x00\x00\x00\x00\x01"
                + question + opt_record(do=self.query.do))

    @property
    def question(self) -> bytes:
        return self.key[:-1]

    @property
    def qname(self) -> bytes:
        """The client's QNAME (wire; for the query log: ``key`` may be a SafeSearch endpoint's)."""
        return self.buf[HEADER_LEN:self.query.qname_end]


_PIPELINE_COUNTERS = ("queries", "blocked", "bypass", "cache_hits", "stale_answers", "forwarded",
                      "upstream_errors", "cname_blocked", "formerr", "dropped", "rate_limited", "servfail",
                      "internal_errors", "slow_path")


class Counters:
    """The pipeline's counters, kept in a :class:`appliance.observe.stats.StatsSlot`: under ``run``
    a slot of the shared mapping (one writer per slot, so every process can sum all workers),
    else a private one. Attributes read and add like ints (``c.queries += 1``) and hold what
    the Python path counted; ``fast`` is the fast path kernel's counters array — a view into
    the same slot, so the jitted code adds into shared memory directly; ``snapshot`` adds both.
    """

    # The Python path's counts: one property over the slot per _PIPELINE_COUNTERS name, added
    # after the class (declared here for the type checker).
    queries: int
    blocked: int
    bypass: int
    cache_hits: int
    stale_answers: int
    forwarded: int
    upstream_errors: int
    cname_blocked: int
    formerr: int
    dropped: int
    rate_limited: int
    servfail: int
    internal_errors: int
    slow_path: int

    def __init__(self, slot: StatsSlot | None = None) -> None:
        self.slot = slot if slot is not None else StatsSlot.private()
        width = new_counters().shape[0]
        if width > FAST_WIDTH:  # the kernel grew past the room the slot layout reserves
            raise ValueError(f"the fast path keeps {width} counters; "
                             f"appliance.observe.stats.FAST_WIDTH is {FAST_WIDTH}")
        self.fast: np.ndarray = self.slot.fast[:width]

    def count_blocked(self, mask: int) -> None:
        """One blocked query whose matching entries' categories are ``mask``."""
        self.slot.count_blocked(mask)

    def both(self, name: str) -> int:
        """``name`` counted by the Python path plus by the fast path."""
        named, _bits = counter_values(self.fast)
        return self.slot.get(name) + named.get(name, 0)

    def roll(self, now: float | None = None) -> None:
        """Fold what was counted since the last call into the minute history (call ~1/s)."""
        named, _bits = counter_values(self.fast)
        self.slot.roll(self.slot.get("queries") + named.get("queries", 0),
                       self.slot.get("blocked") + named.get("blocked", 0), now)

    def snapshot(self, category_names: Callable[[int], list[str]]) -> dict:
        """This pipeline's counts (one worker): both paths added, blocked per category name."""
        out: dict[str, Any] = {k: self.slot.get(k) for k in _PIPELINE_COUNTERS}
        named, bits = counter_values(self.fast)
        for k, v in named.items():
            out[k] = out.get(k, 0) + v
        per: dict[str, int] = {}
        for b in range(64):
            n = int(self.slot.categories[b]) + bits.get(b, 0)
            if n:
                for name in category_names(1 << b):
                    per[name] = per.get(name, 0) + n
        out["blocked_by_category"] = per
        return out


def _counter(name: str) -> property:
    return property(lambda self: self.slot.get(name), lambda self, v: self.slot.set(name, v),
                    doc=f"{name} (Python path)")


for _n in _PIPELINE_COUNTERS:
    setattr(Counters, _n, _counter(_n))


class Pipeline:
    def __init__(self, matcher: DomainMatcher, policies: PolicySet, cache: AnswerCache, *,
                 limiter: ClientLimiter | None = None, max_ttl: int = 86400,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.matcher = matcher
        self.policies = policies
        self.cache = cache
        self.limiter = limiter
        self.max_ttl = max_ttl
        self.clock = clock
        self.counters = Counters()
        self._row = matcher.last_row
        self._last_error_log = -1e9
        # The query log and block events (appliance/observe/querylog.py); None: neither.
        self.qlog: QueryLog | None = None
        # No bundle opens and the config says no_bundle: refuse (appliance/bundles/fallback.py).
        self.refuse_all = False

    # -- the failure policy wrapper --------------------------------------------------------
    def handle(self, buf: bytes, client: str, udp: bool = True, rate_checked: bool = False) -> bytes | Forward | None:
        """``rate_checked``: the UDP fast path already took this query's token."""
        c = self.counters
        c.queries += 1
        try:
            if self.limiter is not None and not rate_checked and not self.limiter.allow(client, self.clock()):
                c.rate_limited += 1
                return None
            if self.refuse_all:
                return self._refuse(buf)
            return self._fast(buf, client, udp)
        except RuntPacketError:
            c.dropped += 1
            return None
        except PacketError:
            c.formerr += 1
            return error_response(buf, 1)
        except Exception:  # our own fault: answer SERVFAIL, keep serving
            return self._internal_error(buf, "handling a query")

    def finish(self, fwd: Forward, response: bytes | None) -> bytes | None:
        """The answer for ``fwd`` given the upstream's (validated) response, or None when
        every upstream failed or timed out."""
        try:
            return self._finish(fwd, response)
        except Exception:
            return self._internal_error(fwd.buf, "finishing a forwarded query")

    def policy_name(self, client: str | None) -> str:
        """The name of the policy ``client`` gets (for the query log)."""
        return self.policies.for_client(client or "").name

    def _refuse(self, buf: bytes) -> bytes | None:
        """REFUSED, keeping the question: no bundle opens (config ``no_bundle: refuse``)."""
        if len(buf) < HEADER_LEN or buf[2] & 0x80:
            raise RuntPacketError("a runt or a response")
        try:
            q: Query | None = parse_query(buf)
        except PacketError:
            q = None  # the header alone still says REFUSED
        return error_response(buf, RCODE_REFUSED, q)

    def _internal_error(self, buf: bytes, what: str) -> bytes | None:
        self.counters.internal_errors += 1
        self.counters.servfail += 1
        now = self.clock()
        if now - self._last_error_log >= _ERROR_LOG_INTERVAL:
            self._last_error_log = now
            log.exception("internal error while %s; answered SERVFAIL", what)
        try:
            return error_response(buf, RCODE_SERVFAIL)
        except Exception:
            return None

    # -- the fast path ---------------------------------------------------------------------
    def _fast(self, buf: bytes, client: str, udp: bool, slow_ok: bool = True) -> bytes | Forward | None:
        if len(buf) < HEADER_LEN:
            raise RuntPacketError("runt")
        rule = self.policies.for_client(client)
        status = self.matcher.match_wire(buf, HEADER_LEN, rule.mask)
        if status == K.ST_MALFORMED:
            if buf[2] & 0x80:
                raise RuntPacketError("a response")
            if not slow_ok:
                raise PacketError("question name still malformed after the slow path")
            return self._slow(buf, client, udp, None)
        end = int(self._row[K.R_END])
        q = parse_query(buf, end)
        if not q.fast:
            if not slow_ok:
                raise PacketError("not a plain query after the slow path")
            return self._slow(buf, client, udp, q)
        if q.edns and q.edns_version:
            return badvers_response(buf, q)
        c = self.counters
        qname = buf[HEADER_LEN:end].lower()
        action = bypass_action(qname)
        if action is not None:
            c.bypass += 1
            return negative_answer(buf, q, RCODE_NXDOMAIN if action == "nxdomain" else RCODE_NOERROR,
                                   rule.answers.ttl)
        if status == K.ST_BLOCK and not (rule.temp_allowed and  # an admin's temporary allow
                                         rule.temporarily_allowed(qname, int(self._row[K.R_BLOCK_DEPTH]))):
            mask = int(self._row[K.R_UNION])
            c.count_blocked(mask)
            if self.qlog is not None:
                self.qlog.blocked(qname, q.qtype, client, mask, rule.name, self.matcher.catalog.names)
            return rule.answers.answer(buf, q)
        if q.qtype in ZONE_TRANSFERS:
            return error_response(buf, RCODE_REFUSED, q)  # RFC 5936 §4.2, RFC 1995: not a zone server
        if rule.safesearch and qname in rule.safesearch:
            return self._safesearch(buf, q, qname, rule, client, udp)
        if q.qtype == TYPE_ANY and not q.do:
            # RFC 8482 for ANY; a DNSSEC client (DO=1) could not validate a synthesised record
            # ("insecurity proof failed"), so its ANY is forwarded: one real RRset and its RRSIGs.
            return minimal_any(buf, q, rule.answers.ttl)
        limit = (min(q.udp_size, MAX_UDP_PAYLOAD) if q.edns else MIN_UDP_PAYLOAD) if udp else MAX_MESSAGE
        key = qname + buf[end:end + 4] + key_flags(buf, q)
        now = self.clock()
        entry = self.cache.get(key, now)
        if entry is not None:
            c.cache_hits += 1
            if entry.norm.cname_targets and self._cname_blocked(entry.norm, rule):
                self._log_cname_block(qname, q.qtype, client, rule)
                return rule.answers.answer(buf, q)
            if self.qlog is not None and self.qlog.all:
                self.qlog.allowed(qname, q.qtype, client, rule.name, "cache")
            return render_cached(buf, q, entry.norm, entry.body(now), limit)
        c.forwarded += 1
        return Forward(buf, q, key, rule, limit, client)

    def _safesearch(self, buf: bytes, q: Query, qname: bytes, rule: PolicyRule, client: str,
                    udp: bool) -> bytes | Forward:
        """A SafeSearch name: CNAME to the safe endpoint plus the endpoint's records of the
        query type, from the cache or upstream (the endpoint's answer is cached as its own)."""
        target = rule.safesearch[qname]
        limit = (min(q.udp_size, MAX_UDP_PAYLOAD) if q.edns else MIN_UDP_PAYLOAD) if udp else MAX_MESSAGE
        if q.qtype == TYPE_ANY:
            return rewrite_answer(buf, q, target, None, b"", limit)  # the CNAME alone (RFC 8482)
        key = target + buf[q.qname_end:q.qname_end + 4] + key_flags(buf, q)
        now = self.clock()
        entry = self.cache.get(key, now)
        if entry is not None:
            self.counters.cache_hits += 1
            return rewrite_answer(buf, q, target, entry.norm, entry.body(now), limit)
        self.counters.forwarded += 1
        return Forward(buf, q, key, rule, limit, client, target)

    def _render(self, fwd: Forward, norm: Normalised, body: bytes) -> bytes:
        if fwd.rewrite is not None:
            return rewrite_answer(fwd.buf, fwd.query, fwd.rewrite, norm, body, fwd.limit)
        return render_cached(fwd.buf, fwd.query, norm, body, fwd.limit)

    def _slow(self, buf: bytes, client: str, udp: bool, q: Query | None) -> bytes | Forward | None:
        # dnslib (~1 MB) is loaded by the first query that needs it, not by every server.
        from appliance.dns.slowpath import canonical_query

        self.counters.slow_path += 1
        clean = canonical_query(buf, q)  # bytes of a plain query, or an answer (bytes) / None
        if isinstance(clean, tuple):
            return clean[0]
        return self._fast(clean, client, udp, slow_ok=False)

    # -- CNAME chains and answers from upstream -------------------------------------------
    def _cname_blocked(self, norm: Normalised, rule: PolicyRule) -> bool:
        """A CNAME (or DNAME) target the policy blocks blocks the whole answer: otherwise
        ``harmless.example CNAME casino.example`` would slip past the list."""
        for target in norm.cname_targets:
            if self.matcher.match_wire(target, 0, rule.mask) == K.ST_BLOCK and not (
                    rule.temp_allowed and rule.temporarily_allowed(target, int(self._row[K.R_BLOCK_DEPTH]))):
                self.counters.cname_blocked += 1
                self.counters.count_blocked(int(self._row[K.R_UNION]))
                return True
        return False

    def _log_cname_block(self, qname: bytes, qtype: int, client: str | None, rule: PolicyRule) -> None:
        """Log a block by CNAME target (right after _cname_blocked: the row is the target's)."""
        if self.qlog is not None:
            self.qlog.blocked(qname, qtype, client, int(self._row[K.R_UNION]), rule.name,
                              self.matcher.catalog.names, answer="cname")

    def _finish(self, fwd: Forward, response: bytes | None) -> bytes | None:
        c = self.counters
        now = self.clock()
        norm = None
        if response is not None:
            try:
                # The question we asked: the client's, or a SafeSearch endpoint's.
                norm = normalise_response(response, HEADER_LEN + len(fwd.key) - 1, self.max_ttl)
            except PacketError:
                c.upstream_errors += 1
                norm = None
        if norm is None or norm.rcode in (RCODE_SERVFAIL, RCODE_REFUSED):
            # RFC 8767 §4: serve stale when upstreams fail or answer SERVFAIL/REFUSED. Else
            # an upstream's own verdict on this query (FORMERR, NOTIMP, SERVFAIL: perhaps on
            # one a client crafted) is passed on as it is; its REFUSED becomes our SERVFAIL
            # (as unbound does): the client was not refused by us, its resolver's upstream
            # would not serve the name.
            stale = self.cache.get_stale(fwd.key, now)
            if stale is not None:
                c.stale_answers += 1
                if stale.norm.cname_targets and self._cname_blocked(stale.norm, fwd.rule):
                    self._log_cname_block(fwd.qname, fwd.query.qtype, fwd.client, fwd.rule)
                    return fwd.rule.answers.answer(fwd.buf, fwd.query)
                if self.qlog is not None and self.qlog.all:
                    self.qlog.allowed(fwd.qname, fwd.query.qtype, fwd.client, fwd.rule.name, "stale")
                return self._render(fwd, stale.norm, stale.stale_body())
            if norm is None or norm.rcode == RCODE_REFUSED:
                c.servfail += 1
                if self.qlog is not None and self.qlog.all:
                    self.qlog.allowed(fwd.qname, fwd.query.qtype, fwd.client, fwd.rule.name, "servfail")
                return error_response(fwd.buf, RCODE_SERVFAIL, fwd.query)
        self.cache.put(fwd.key, norm, now)
        if norm.cname_targets and self._cname_blocked(norm, fwd.rule):
            self._log_cname_block(fwd.qname, fwd.query.qtype, fwd.client, fwd.rule)
            return fwd.rule.answers.answer(fwd.buf, fwd.query)
        if self.qlog is not None and self.qlog.all:
            self.qlog.allowed(fwd.qname, fwd.query.qtype, fwd.client, fwd.rule.name, "upstream")
        return self._render(fwd, norm, norm.body)
