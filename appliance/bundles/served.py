"""What a serving process holds: a config built against its bundle (:class:`Built`), and the
one way lower layers may ask for a new one (:class:`Builder`).

The DNS service, the supervisor, the capture process and the web page all rebuild at run time
(SIGHUP reload, a bundle activated by an update). They do not know how: the composition root
(appliance/compose.py) hands each of them a :class:`Builder` and they call it. That keeps the
assembly of config -> bundle -> matcher -> policies in one module that nothing below imports.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Protocol

from appliance.bundles.select import FoundBundle
from appliance.config.load import Config
from appliance.policy.state import PolicyState
from filters.domain_matcher import DomainMatcher
from filters.policy import PolicySet
from signatures.bundle import Bundle

__all__ = ["Built", "Builder", "run_record", "log_serving"]

log = logging.getLogger("schoolgate")


@dataclass
class Built:
    """Everything a config needs before it can serve."""

    cfg: Config
    bundle: Bundle
    how: str  # configured | active | demo | refusing | unfiltered (appliance/bundles/fallback.py)
    matcher: DomainMatcher
    policies: PolicySet
    # Schedules and temporary allows: rebuilds matcher + policies when they change
    policy_state: PolicyState | None = None
    # Policies served without categories the bundle lacks: {"policy", "missing"} records
    # (appliance/policy/categories.py); shown by `schoolgate status` and the web page
    degraded: tuple[dict, ...] = ()


class Builder(Protocol):
    """How a serving process gets a new :class:`Built` (implemented by appliance/compose.py)."""

    def config(self) -> Config:
        """Load the config file again (the embedded default without one), not built; raises
        ConfigErrors."""
        ...

    def reload(self) -> Built:
        """Load the config file again and build it; raises ConfigErrors or SchoolgateError."""
        ...

    def with_bundle(self, cfg: Config, found: FoundBundle) -> Built:
        """``cfg`` built against the bundle ``found``; raises as :meth:`reload`."""
        ...


def run_record(built: Built, since: str, started: str, workers: int) -> dict:
    """run.json: what `schoolgate status` shows about the running appliance."""
    b = built.bundle
    return {"pid": os.getpid(), "started": started, "config": built.cfg.file, "workers": workers,
            "listen": [f"{h}:{p}" for h, p in built.cfg.dns.listen],
            "bundle": {"path": str(b.path), "version": b.version, "demo": b.demo, "how": built.how,
                       "since": since},
            "degraded": list(built.degraded)}


def log_serving(built: Built, what: str | None, worker: int | None = None) -> None:
    """Log the bundle served (``what``: the event) and, for the demo, a warning saying so."""
    b = built.bundle
    if what:
        log.info(what, extra={"worker": worker, "bundle": str(b.path), "bundle_version": b.version,
                              "bundle_source": built.how, "demo": b.demo})
    if b.demo:
        log.warning("serving the DEMO bundle (version %d: demo excerpts of public lists, signed with "
                    "public demo keys) - not for real filtering; configure updates: with your "
                    "district's repository", b.version, extra={"worker": worker})
