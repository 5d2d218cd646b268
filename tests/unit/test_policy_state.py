"""appliance.policy.state: schedules and temporary allows turned into what is served,
with an injected clock (no waiting for real times)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.config.load import load_config
from appliance.policy import temporary_allow as ta
from appliance.policy.state import PolicyState
from filters import _domain_kernels as K
from filters.names import name_to_wire
from filters.policy import blocked_categories
from signatures.bundle import open_bundle, write_bundle
from signatures.compile import compile_sources
from signatures.sources import load_sources
from tests.bundles import NOW


def doh_bundle(out: Path) -> Path:
    src = out.with_name(out.name + ".src")
    src.mkdir(parents=True)
    (src / "gambling.txt").write_text("casino.test\n")
    (src / "games.txt").write_text("games.test\n")
    (src / "doh.txt").write_text("dns.resolver.test\n")
    (src / "sources.yaml").write_text("""\
version: 1
expires_days: 30
categories:
  gambling: {sources: [{path: gambling.txt, format: domains, licence: CC0-1.0, attribution: tests}]}
  games: {sources: [{path: games.txt, format: domains, licence: CC0-1.0, attribution: tests}]}
  doh: {sources: [{path: doh.txt, format: domains, licence: CC0-1.0, attribution: tests}]}
""")
    c = compile_sources(load_sources(src / "sources.yaml"), now=NOW,
                        new_key=lambda: (secrets.randbits(64), secrets.randbits(64)))
    return write_bundle(out, c.arrays, c.manifest)


CONFIG = """\
state_dir: {tmp}/state
bundle: {tmp}/bundle
timezone: Europe/Paris
networks:
  students: {{cidrs: [10.10.0.0/16], policy: students}}
  staff: {{cidrs: [10.20.0.0/16], policy: staff}}
policies:
  students:
    block: [gambling]
    safesearch: {{google: true, youtube: strict}}
    schedule:
      - {{days: mon-fri, time: "08:00-16:00", block: [games]}}
  staff: {{block: [], allow_doh: true}}
"""


class FakeClock:
    def __init__(self, t: datetime) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t


@pytest.fixture()
def state(tmp_path: Path):
    bundle = open_bundle(doh_bundle(tmp_path / "bundle"))
    (tmp_path / "state").mkdir()
    (tmp_path / "c.yaml").write_text(CONFIG.format(tmp=tmp_path))
    cfg = load_config(tmp_path / "c.yaml")
    clock = FakeClock(datetime(2024, 4, 1, 5, 0, tzinfo=UTC))  # Monday 07:00 Paris
    return PolicyState(cfg, bundle.catalog, bundle.domain_matcher(), clock), clock, cfg


def blocked(matcher, policies, policy: str, name: str) -> bool:
    rule = policies.rules[policy]
    wire = name_to_wire(name)
    if matcher.match_wire(wire, 0, rule.mask) != K.ST_BLOCK:
        return False
    return not rule.temporarily_allowed(wire, int(matcher.last_row[K.R_BLOCK_DEPTH]))


def test_doh_blocked_unless_allowed() -> None:
    cats = ("gambling", "doh")
    assert blocked_categories(["gambling"], False, cats) == ("gambling", "doh")
    assert blocked_categories(["gambling"], True, cats) == ("gambling",)
    assert blocked_categories(["gambling"], False, ("gambling",)) == ("gambling",)  # bundle without doh


def test_schedule_switch_and_doh(state) -> None:
    ps, clock, _cfg = state
    m, p = ps.build()
    assert blocked(m, p, "students", "dns.resolver.test") and not blocked(m, p, "staff", "dns.resolver.test")
    assert blocked(m, p, "default", "games.test")  # no default policy: everything blocked
    assert not blocked(m, p, "students", "games.test")  # 07:00: before school
    assert ps.refresh() is None  # nothing changed
    clock.t += timedelta(hours=1)  # 08:00 Paris
    got = ps.refresh()
    assert got is not None and blocked(*got, "students", "games.test")
    assert ps.refresh() is None
    clock.t = datetime(2024, 4, 1, 14, 0, tzinfo=UTC)  # 16:00 Paris: school is out
    got = ps.refresh()
    assert got is not None and not blocked(*got, "students", "games.test")


def test_temporary_allow_applies_and_expires(state, tmp_path: Path) -> None:
    ps, clock, cfg = state
    m, p = ps.build()
    assert blocked(m, p, "students", "www.casino.test")
    ta.add(cfg.state_dir, "casino.test", "students", clock.t + timedelta(seconds=2), "admin", clock.t)
    ta.add(cfg.state_dir, "dns.resolver.test", "*", clock.t + timedelta(seconds=60), "admin", clock.t)
    m, p = ps.refresh()
    assert not blocked(m, p, "students", "www.casino.test") and blocked(m, p, "default", "casino.test")
    assert not blocked(m, p, "default", "dns.resolver.test")
    assert p.rules["students"].divert and p.rules["students"].divert != p.rules["staff"].divert
    clock.t += timedelta(seconds=2)  # expired at `until`
    m, p = ps.refresh()
    assert blocked(m, p, "students", "www.casino.test") and not blocked(m, p, "students", "dns.resolver.test")
    assert ta.remove(cfg.state_dir, "dns.resolver.test", "*")
    m, p = ps.refresh()
    assert blocked(m, p, "students", "dns.resolver.test")
    assert ps.rebuilds == 4


def test_safesearch_names_divert_and_explain(state) -> None:
    ps, _clock, _cfg = state
    m, p = ps.build()
    rule = p.rules["students"]
    assert rule.safesearch[name_to_wire("www.google.fr")] == name_to_wire("forcesafesearch.google.com")
    assert rule.safesearch[name_to_wire("www.youtube.com")] == name_to_wire("restrict.youtube.com")
    assert not p.rules["staff"].safesearch and int(p.rules["staff"].divert) == 0
    m.match_wire(name_to_wire("www.google.fr"), 0, rule.mask)
    assert int(m.last_row[K.R_UNION]) & int(rule.divert)
    v = m.match("www.google.fr", 0)  # "why" copes with the divert source
    assert not v.blocked and v.categories == ()
