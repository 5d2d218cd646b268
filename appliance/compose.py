"""The composition root: a validated config turned into the running objects.

Everything that decides *which* objects make up a running appliance lives here, and nothing
below this module imports it (tests/unit/test_architecture.py). The serving objects receive
what they need to rebuild themselves as an :class:`Assembly` (the ``Builder`` protocol of
appliance/bundles/served.py, plus the update scheduler and the forked children):

    load_run_config   the config file, or the embedded default with a per-user state dir
    build             config + bundle -> matcher, policies, policy state (a ``Built``)
    policy_errors     what only the bundle can tell about a config (a block page's addresses)
    category_check    policies naming categories the bundle lacks: errors or warnings
                      (appliance/policy/categories.py)
    check_catalog     the categories ``check-config`` checks policies against
    Assembly          the above for one config path, handed to the DNS service, the
                      supervisor, the capture process and the web page

appliance/run.py starts the appliance with it; appliance/cli.py uses it for the commands
that read a config (lookup, status, inspect, check-config).
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, replace

from appliance.bundles.fallback import fallback_bundle
from appliance.bundles.select import DEMO_SOURCES, FoundBundle, open_selected, resolve_bundle
from appliance.bundles.served import Built
from appliance.child import ChildProcess
from appliance.config.defaults import DEFAULT_CONFIG, user_state_dir
from appliance.config.load import Config, ConfigErrors, load_config
from appliance.flows.capture import CaptureChild
from appliance.observe.stats import SharedStats
from appliance.policy.categories import (
    MissingCategories,
    hint,
    missing_categories,
    tolerated,
    warning_text,
    without_missing,
)
from appliance.policy.state import PolicyState
from appliance.updates.scheduler import UpdateScheduler
from appliance.web.process import start_web
from filters.catalog import Catalog
from filters.errors import ConfigError, SchoolgateError, Where
from signatures.bundle import open_bundle
from signatures.sources import load_sources

__all__ = ["load_run_config", "policy_errors", "category_check", "build", "check_catalog", "Assembly"]

log = logging.getLogger("schoolgate")


def load_run_config(path: str | None) -> Config:
    """The config at ``path``, or the embedded default with a per-user state directory."""
    if path is not None:
        return load_config(path)
    cfg = load_config(DEFAULT_CONFIG)
    return cfg if "state_dir" in cfg.raw else replace(cfg, state_dir=user_state_dir())


def policy_errors(cfg: Config, catalog: Catalog) -> list[ConfigError]:
    """What only the bundle can tell, whatever state the box is in: a block page with no
    address. (Unknown categories: :func:`category_check`.)"""
    return [ConfigError(f"policy {p.name}: block_mode blockpage needs dns.blockpage addresses",
                        p.where or Where(cfg.file))
            for p in cfg.policies.values() if p.block_mode == "blockpage" and not cfg.dns.blockpage]


def category_check(cfg: Config, catalog: Catalog, how: str,
                   missing: list[MissingCategories] | None = None) -> tuple[list[ConfigError], list[str]]:
    """(errors, warnings) for the categories the policies name and the bundle lacks: warnings
    while the configured repository has still to deliver (or with missing_categories:
    degrade), errors otherwise (appliance/policy/categories.py). ``missing``: those, when
    the caller has them already."""
    missing = missing_categories(cfg, catalog) if missing is None else missing
    if tolerated(cfg, how):
        return [], [warning_text(m, cfg, how) for m in missing]
    return [m.error(catalog, hint(cfg, how)) for m in missing], []


def build(cfg: Config, bundle_at: FoundBundle | None = None) -> Built:
    """Everything a config needs before it can serve; raises ConfigErrors / BundleError.
    ``bundle_at`` names the bundle; by default the one the config selects
    (installing the demo bundle when there is none)."""
    if bundle_at is None:
        try:
            bundle, how = open_selected(cfg)
        except SchoolgateError as exc:  # nothing opens: what config no_bundle says
            bundle, how = fallback_bundle(cfg, exc)
    else:
        bundle, how = open_bundle(bundle_at.path), bundle_at.how
    matcher = bundle.domain_matcher().with_local(cfg.local_block, cfg.local_allow)
    missing = missing_categories(cfg, bundle.catalog)
    errors, warnings = category_check(cfg, bundle.catalog, how, missing)
    errors = policy_errors(cfg, bundle.catalog) + errors
    if errors:
        raise ConfigErrors(errors)
    for m, text in zip(missing, warnings, strict=True):
        log.warning(text, extra={"policy": m.policy, "missing": list(m.missing)})
    served = without_missing(cfg, missing) if missing else cfg
    # Policies as in force now (schedules, temporary allows, SafeSearch, DoH): see
    # appliance/policy/state.py; without a default policy every category is blocked.
    state = PolicyState(served, bundle.catalog, matcher)
    matcher, policies = state.build()
    # Built.cfg stays the config as written: a later bundle (a swap, a reload) is checked
    # against every category it names.
    return Built(cfg, bundle, how, matcher, policies, state, degraded=tuple(m.record() for m in missing))


def check_catalog(cfg: Config) -> tuple[Catalog, str]:
    """The categories check-config validates policies against, and how their bundle was
    chosen: those of the bundle ``run`` would serve, without installing anything (before
    the demo bundle is installed, its categories come from the demo sources file)."""
    found = resolve_bundle(cfg)
    if found is not None:
        return open_bundle(found.path).catalog, found.how
    return Catalog(tuple(c.name for c in load_sources(DEMO_SOURCES).categories), ()), "demo"


@dataclass
class Assembly:
    """The appliance's parts for the config at ``config_path`` (None: the embedded default).

    Implements the ``Assembly`` protocol of appliance/dns/service.py (and so the ``Builder``
    of appliance/bundles/served.py): the serving processes call it to reload, to follow a
    new bundle, to (re)create the update scheduler and to fork the web and capture children.
    """

    config_path: str | None

    def config(self) -> Config:
        return load_run_config(self.config_path)

    def reload(self) -> Built:
        return build(self.config())

    def with_bundle(self, cfg: Config, found: FoundBundle) -> Built:
        return build(cfg, found)

    def scheduler(self, cfg: Config) -> UpdateScheduler | None:
        """The update scheduler for ``cfg`` (None without ``updates:`` or a config file)."""
        if cfg.updates is None or self.config_path is None:
            return None
        found = resolve_bundle(cfg)
        return UpdateScheduler(self.config_path, cfg.state_dir, cfg.updates,
                               have_signed_bundle=found is not None and found.how != "demo")

    def children(self, built: Built, stats: SharedStats | None,
                 close_in_child: list[socket.socket]) -> list[ChildProcess]:
        """Fork the owner's children: the web page (appliance/web/process.py; it closes the
        DNS sockets it inherits) and flow inspection (appliance/flows/capture.py)."""
        return [start_web(self, built, stats, close_in_child), CaptureChild(self, built, stats)]
