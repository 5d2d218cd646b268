"""One DNS query in, one decision out — the step every listener drives the same way.

``Pipeline.handle(buf, client, udp)`` returns the answer bytes, None (drop), or a
:class:`Forward` the listener resolves upstream and hands back to ``Pipeline.finish``. No
sockets and no clock here: time comes from the injected ``clock``, so tests drive it.

The fast path (one class-IN question, the common case): the matcher reads the QNAME in the
packet (hashing every suffix, ~1 µs) and reports where it ends; the header, QTYPE, QCLASS
and OPT are read around it; then bypass names, blocked names (answer templates), the wire
cache, and otherwise a Forward. Everything else goes to slowpath.py (dnslib).

Failure policy (STYLE.md 3), all in ``handle``/``finish``:

- a runt (shorter than a header) or a response (QR set): dropped, no answer;
- a header we can read but a message we cannot parse: FORMERR (RFC 1035 §4.1.1);
- opcodes other than QUERY: NOTIMP; classes other than IN: REFUSED;
- an exception of our own: SERVFAIL, logged (rate-limited), and the server goes on;
- upstreams failing: a stale cached answer (RFC 8767), else SERVFAIL.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from appliance.dns.cache import WireCache
from appliance.dns.ratelimit import RateLimiter
from filters import _domain_kernels as K
from filters.dns_fast import counter_values, new_counters
from filters.dns_answer import (TYPE_ANY, badvers_response, error_response, minimal_any,
                                negative_answer, opt_record, render_cached)
from filters.dns_response import (RCODE_NOERROR, RCODE_NXDOMAIN, RCODE_REFUSED, RCODE_SERVFAIL,
                                  Normalised, normalise_response)
from filters.dns_wire import HEADER_LEN, MAX_MESSAGE, MAX_UDP_PAYLOAD, MIN_UDP_PAYLOAD, Query, parse_query
from filters.domain_matcher import DomainMatcher
from filters.errors import PacketError, RuntPacketError
from filters.policy import PolicyRule, PolicySet, bypass_action

__all__ = ["Forward", "Counters", "Pipeline"]

log = logging.getLogger("schoolgate.dns")
# Internal errors are logged at most this often (a packet of death repeated at line rate
# must not fill the disk); the counter still counts every one.
_ERROR_LOG_INTERVAL = 10.0


@dataclass(slots=True)
class Forward:
    """A query that needs an upstream answer: the listener sends ``upstream_query(id)``
    and passes the response (or None when every upstream failed) to Pipeline.finish."""

    buf: bytes  # the client's query as received
    query: Query
    key: bytes  # cache key: lower-case QNAME wire + QTYPE + QCLASS + DO
    rule: PolicyRule
    limit: int  # largest answer the client takes (UDP payload size, or 65535 over TCP)

    def upstream_query(self, qid: int) -> bytes:
        """Our query: a fresh ID, RD, the client's CD bit, the lower-cased question and an
        OPT (UDP payload 1232, the client's DO bit) so large answers come back over UDP."""
        question = self.key[:-1]
        return (qid.to_bytes(2, "big") + bytes((0x01, self.buf[3] & 0x10)) + b"\x00\x01\x00\x00\x00\x00\x00\x01"
                + question + opt_record(do=self.query.do))

    @property
    def question(self) -> bytes:
        return self.key[:-1]


@dataclass
class Counters:
    queries: int = 0
    blocked: int = 0
    blocked_by_mask: dict[int, int] = field(default_factory=dict)  # category mask -> count
    bypass: int = 0
    cache_hits: int = 0
    stale_answers: int = 0
    forwarded: int = 0
    upstream_errors: int = 0
    cname_blocked: int = 0
    formerr: int = 0
    dropped: int = 0
    rate_limited: int = 0
    servfail: int = 0
    internal_errors: int = 0
    slow_path: int = 0
    # What the UDP fast path (filters/_dns_kernels.py) counted itself; snapshot adds it in.
    fast: np.ndarray = field(default_factory=new_counters)

    def snapshot(self, category_names: Callable[[int], list[str]]) -> dict:
        out = {k: v for k, v in vars(self).items() if k not in ("blocked_by_mask", "fast")}
        named, bits = counter_values(self.fast)
        for k, v in named.items():
            out[k] = out.get(k, 0) + v
        per: dict[str, int] = {}
        masks = [(mask, n) for mask, n in self.blocked_by_mask.items()] + [(1 << b, n) for b, n in bits.items()]
        for mask, n in masks:
            for name in category_names(mask):
                per[name] = per.get(name, 0) + n
        out["blocked_by_category"] = per
        return out


class Pipeline:
    def __init__(self, matcher: DomainMatcher, policies: PolicySet, cache: WireCache, *,
                 limiter: RateLimiter | None = None, max_ttl: int = 86400,
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

    # -- the failure policy wrapper --------------------------------------------------------
    def handle(self, buf: bytes, client: str, udp: bool = True, rate_checked: bool = False) -> bytes | Forward | None:
        """``rate_checked``: the UDP fast path already took this query's token."""
        c = self.counters
        c.queries += 1
        try:
            if self.limiter is not None and not rate_checked and not self.limiter.allow(client, self.clock()):
                c.rate_limited += 1
                return None
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
        if status == K.ST_BLOCK:
            c.blocked += 1
            mask = int(self._row[K.R_UNION])
            c.blocked_by_mask[mask] = c.blocked_by_mask.get(mask, 0) + 1
            return rule.answers.answer(buf, q)
        if q.qtype == TYPE_ANY:
            return minimal_any(buf, q, rule.answers.ttl)  # RFC 8482
        limit = (min(q.udp_size, MAX_UDP_PAYLOAD) if q.edns else MIN_UDP_PAYLOAD) if udp else MAX_MESSAGE
        key = qname + buf[end:end + 4] + (b"\x01" if q.do else b"\x00")
        now = self.clock()
        entry = self.cache.get(key, now)
        if entry is not None:
            c.cache_hits += 1
            if entry.norm.cname_targets and self._cname_blocked(entry.norm, rule):
                return rule.answers.answer(buf, q)
            return render_cached(buf, q, entry.norm, entry.body(now), limit)
        c.forwarded += 1
        return Forward(buf, q, key, rule, limit)

    def _slow(self, buf: bytes, client: str, udp: bool, q: Query | None) -> bytes | Forward | None:
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
            if self.matcher.match_wire(target, 0, rule.mask) == K.ST_BLOCK:
                self.counters.cname_blocked += 1
                self.counters.blocked += 1
                mask = int(self._row[K.R_UNION])
                self.counters.blocked_by_mask[mask] = self.counters.blocked_by_mask.get(mask, 0) + 1
                return True
        return False

    def _finish(self, fwd: Forward, response: bytes | None) -> bytes | None:
        c = self.counters
        now = self.clock()
        norm = None
        if response is not None:
            try:
                norm = normalise_response(response, fwd.query.question_end, self.max_ttl)
            except PacketError:
                c.upstream_errors += 1
                norm = None
        if norm is None or norm.rcode not in (RCODE_NOERROR, RCODE_NXDOMAIN):
            # RFC 8767 §4: serve stale when upstreams fail or answer SERVFAIL/REFUSED.
            stale = self.cache.get_stale(fwd.key, now)
            if stale is not None:
                c.stale_answers += 1
                if stale.norm.cname_targets and self._cname_blocked(stale.norm, fwd.rule):
                    return fwd.rule.answers.answer(fwd.buf, fwd.query)
                return render_cached(fwd.buf, fwd.query, stale.norm, stale.stale_body(), fwd.limit)
            if norm is None or norm.rcode == RCODE_REFUSED:
                c.servfail += 1
                return error_response(fwd.buf, RCODE_SERVFAIL, fwd.query)
        self.cache.put(fwd.key, norm, now)
        if norm.cname_targets and self._cname_blocked(norm, fwd.rule):
            return fwd.rule.answers.answer(fwd.buf, fwd.query)
        return render_cached(fwd.buf, fwd.query, norm, norm.body, fwd.limit)
