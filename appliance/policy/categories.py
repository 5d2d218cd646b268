"""Policies naming categories the bundle does not have: a warning, an error, or degraded.

A district config names the district's categories (``malware``, ``adult``, …) before its
bundle has reached a fresh box, which serves the demo bundle until then. Refusing such a
config would leave the box on its safe defaults (or down) exactly when it is being set up,
so the rule is:

- **pending** — ``updates:`` is configured and the repository has not delivered a bundle
  yet (the box serves the demo or a fallback, or no check has succeeded): an unknown
  category is a *warning*; the policy blocks the categories the bundle has and is shown as
  degraded until the repository's bundle arrives (the scheduler asks at once at start).
- **delivered** — the active bundle came from the repository: an unknown category is an
  *error* (check-config exits 2, a reload is refused, the running config stays), and the
  updater refuses a new bundle lacking a category some policy blocks, with that reason —
  unless ``updates.missing_categories: degrade``, where it is activated and the policies
  concerned are marked degraded instead.
- without ``updates:`` nothing will ever bring the category: an error, with that hint.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from appliance.config.load import Config
from appliance.updates.state import read_update_state
from filters.catalog import LOCAL_CATEGORY, Catalog
from filters.errors import ConfigError, Where

__all__ = ["MissingCategories", "missing_categories", "categories_pending", "tolerated", "hint", "warning_text",
           "without_missing", "refusal_reason"]


@dataclass(frozen=True)
class MissingCategories:
    """One policy's categories (its own and its schedules') that the bundle lacks."""

    policy: str
    missing: tuple[str, ...]
    where: Where | None

    def error(self, catalog: Catalog, hint: str) -> ConfigError:
        names = ", ".join(repr(c) for c in self.missing)
        known = ", ".join(catalog.categories) or "none"
        word = "category" if len(self.missing) == 1 else "categories"
        return ConfigError(f"policy {self.policy}: unknown {word} {names} (known: {known}){hint}", self.where)

    def record(self) -> dict:
        return {"policy": self.policy, "missing": list(self.missing)}


def missing_categories(cfg: Config, catalog: Catalog) -> list[MissingCategories]:
    known = set(catalog.categories) | {LOCAL_CATEGORY}
    out = []
    for p in cfg.policies.values():
        missing = tuple(c for c in p.categories if c not in known)
        if missing:
            out.append(MissingCategories(p.name, missing, p.where))
    return out


def categories_pending(cfg: Config, how: str) -> bool:
    """Has the configured repository still to deliver its first bundle? ``how``: how the
    bundle in use was chosen (appliance/bundles/select.py, fallback.py)."""
    if cfg.updates is None or how == "configured":
        return False
    if how != "active":
        return True  # the demo, or a fallback while no bundle opens
    state = read_update_state(cfg.state_dir)
    return state.get("repository") != cfg.updates.repository or not state.get("last_success")


def tolerated(cfg: Config, how: str) -> bool:
    """Are unknown categories served degraded (True) or refused (False)?"""
    if cfg.updates is not None and cfg.updates.missing_categories == "degrade":
        return True
    return categories_pending(cfg, how)


def hint(cfg: Config, how: str) -> str:
    if cfg.updates is None:
        return ("; no updates: section is configured, so no bundle will bring it: add your "
                "district's repository, or remove the category")
    if how == "configured":
        return f"; the configured bundle {cfg.bundle} lacks it"
    return (f"; the bundle from {cfg.updates.repository} lacks it: publish one with it, or set "
            "updates.missing_categories: degrade")


def warning_text(m: MissingCategories, cfg: Config, how: str) -> str:
    names = ", ".join(m.missing)
    if categories_pending(cfg, how) and cfg.updates is not None:
        return (f"policy {m.policy}: {names} not in the bundle in use yet; blocking its other "
                f"categories until {cfg.updates.repository} delivers a bundle with them")
    return f"policy {m.policy}: {names} not in the active bundle; blocking its other categories (degraded)"


def without_missing(cfg: Config, missing: list[MissingCategories]) -> Config:
    """``cfg`` with the missing category names left out of the policies they are in."""
    gone = {m.policy: set(m.missing) for m in missing}
    policies = {}
    for name, p in cfg.policies.items():
        drop = gone.get(name)
        if drop:
            p = replace(p, block=tuple(c for c in p.block if c not in drop),
                        schedule=tuple(replace(e, block=tuple(c for c in e.block if c not in drop))
                                       for e in p.schedule))
        policies[name] = p
    return replace(cfg, policies=policies)


def refusal_reason(cfg: Config, catalog: Catalog) -> str | None:
    """Why the updater must not activate a bundle with ``catalog`` for ``cfg`` (None: it may)."""
    if cfg.updates is not None and cfg.updates.missing_categories == "degrade":
        return None
    missing = missing_categories(cfg, catalog)
    if not missing:
        return None
    parts = "; ".join(f"policy {m.policy} blocks {', '.join(m.missing)}" for m in missing)
    return (f"the offered bundle lacks categories the config needs ({parts}): not activated; "
            "set updates.missing_categories: degrade to activate such a bundle anyway")
