"""The policies in force, over time: schedules and temporary allows -> matcher + PolicySet.

What a DNS process answers with depends on the clock (schedules, filters/schedule.py) and
on ``<state_dir>/temporary-allow.json`` (appliance/policy/temporary_allow.py). Neither is looked
at per query: every WATCH_PERIOD the service calls :meth:`PolicyState.refresh`, which
computes the effective categories of every policy at ``now`` and the set of temporary
allows in force (a stat of the file; it is read only when it changed), and only when that
differs from what is served builds a new matcher overlay and PolicySet
(filters.policy.compile_policies: a few milliseconds for a school's config). The service
then swaps its pipeline; the fast path rebuilds its tables for the new one on the next
batch. The hot path pays nothing.

The wall clock is injectable (``clock`` returns an aware datetime) so tests drive schedule
boundaries and expiries without waiting for real times.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import datetime

from appliance.clock import utc_now
from appliance.config.dns import DEFAULT_POLICY
from appliance.config.load import Config
from appliance.policy import temporary_allow
from filters.catalog import ALL_CATEGORIES, Catalog
from filters.dns_answer import BlockAnswers
from filters.domain_matcher import DomainMatcher
from filters.policy import CompiledPolicies, NetworkTable, PolicySpec, blocked_categories, compile_policies
from filters.schedule import effective_blocks, load_zone

__all__ = ["PolicyState"]

log = logging.getLogger("schoolgate.dns")


class PolicyState:
    """Builds what a config's policies mean at a moment; remembers what it built last."""

    def __init__(self, cfg: Config, catalog: Catalog, matcher: DomainMatcher,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.cfg = cfg
        self.catalog = catalog
        self.matcher = matcher  # the bundle's matcher; the overlay is rebuilt from the config
        self.clock = clock
        self.zone = load_zone(cfg.timezone)
        d = cfg.dns
        self._answers = {p.name: BlockAnswers(p.block_mode or d.block_mode, d.block_ttl, d.blockpage)
                         for p in cfg.policies.values()}
        cats = catalog.categories
        self._timed = {p.name: (blocked_categories(p.block, p.allow_doh, cats), p.schedule)
                       for p in cfg.policies.values()}
        self._networks = NetworkTable([(c, n.policy) for n in cfg.networks for c in n.cidrs], DEFAULT_POLICY)
        self._file_sig: tuple | None = None
        self._entries: list[temporary_allow.TemporaryAllow] = []
        self.key: tuple | None = None  # what the last build was for
        self.rebuilds = 0

    # -- inputs ----------------------------------------------------------------------------
    def _temporary(self, now: datetime) -> tuple[tuple[str, str], ...]:
        """(name, policy) of every temporary allow in force at ``now``; the file is read
        again only when its stat changes."""
        path = self.cfg.state_dir / temporary_allow.FILE
        try:
            st = os.stat(path)
            sig: tuple | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            sig = None
        if sig != self._file_sig:
            self._file_sig = sig
            self._entries = temporary_allow.read_all(self.cfg.state_dir) if sig is not None else []
        return tuple(sorted({(e.name, e.policy) for e in self._entries if e.until > now}))

    def state_key(self, now: datetime) -> tuple:
        """What the policies depend on at ``now``: effective categories, temporary allows."""
        blocks = effective_blocks(self._timed, self.zone, now)
        return tuple(sorted(blocks.items())), self._temporary(now)

    # -- building --------------------------------------------------------------------------
    def build(self, now: datetime | None = None) -> CompiledPolicies:
        """The matcher and PolicySet in force at ``now`` (default: the clock)."""
        now = self.clock() if now is None else now
        key = self.state_key(now)
        out = self._build(key)
        self.key = key
        return out

    def _build(self, key: tuple) -> CompiledPolicies:
        blocks, temporary = dict(key[0]), key[1]
        d = self.cfg.dns
        specs = [PolicySpec(p.name, blocks[p.name], self._answers[p.name], p.safesearch, p.allow_doh)
                 for p in self.cfg.policies.values()]
        if DEFAULT_POLICY not in self.cfg.policies:  # no default policy: every category is blocked
            specs.append(PolicySpec(DEFAULT_POLICY, tuple(self.catalog.categories),
                                    BlockAnswers(d.block_mode, d.block_ttl, d.blockpage)))
        matcher, policies = compile_policies(self.matcher, self.cfg.local_block, self.cfg.local_allow, specs,
                                             self._networks, temporary)
        if DEFAULT_POLICY not in self.cfg.policies:
            rule = policies.rules[DEFAULT_POLICY]
            policies.rules[DEFAULT_POLICY] = type(rule)(
                rule.name, rule.categories, matcher.policy_mask(ALL_CATEGORIES), rule.answers, rule.safesearch,
                rule.temp_allowed, rule.divert)
        self.rebuilds += 1
        return CompiledPolicies(matcher, policies)

    def refresh(self, now: datetime | None = None) -> CompiledPolicies | None:
        """A new (matcher, PolicySet) when what is in force changed since the last build,
        else None."""
        now = self.clock() if now is None else now
        key = self.state_key(now)
        if key == self.key:
            return None
        out = self._build(key)
        if self.key is not None:
            old_b, old_t = dict(self.key[0]), set(self.key[1])
            changed = sorted(p for p, c in key[0] if old_b.get(p) != c)
            log.info("policies changed", extra={"policies": changed,
                                                "temporary_allows": len(key[1]),
                                                "allows_added": sorted(f"{n}@{p}" for n, p in set(key[1]) - old_t),
                                                "allows_ended": sorted(f"{n}@{p}" for n, p in old_t - set(key[1]))})
        self.key = key
        return out
