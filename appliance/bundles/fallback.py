"""What DNS answers while no bundle can be opened (config ``no_bundle:``).

A bundle that will not open — the configured ``bundle:`` directory damaged or missing, the
active signed bundle corrupted on the SD card, the shipped demo repository gone — must not
silently turn the filter into a plain resolver (Pi-hole forwards unfiltered while its list
database is busy). The admin chooses:

- ``embedded`` (default): serve the signed demo bundle shipped with the appliance, labelled
  DEMO everywhere, until a real bundle opens again. Some filtering, never none.
- ``refuse``: answer REFUSED to every query. Clients move to their second resolver (if DHCP
  gave one) or fail: fail closed, for sites that must never browse unfiltered.
- ``forward``: answer everything from the upstreams with no category filtering (local
  block entries and the encrypted-DNS bypass rules still apply). The status page and
  ``schoolgate status`` say UNFILTERED in capitals for as long as it lasts.

The last two serve an empty bundle (the config's categories, no entries) built here under
``<state_dir>/no-bundle``, so that every policy still validates and the rest of the
service runs unchanged; ``Built.how`` says which mode is on ("refusing" or "unfiltered").
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime

from appliance.bundles.select import install_demo
from appliance.config.load import Config
from filters.errors import EnvironmentFault, SchoolgateError, Where
from signatures.bundle import Bundle, open_bundle, write_bundle
from signatures.compile import compile_sources
from signatures.sources import CategorySpec, SourcesSpec

__all__ = ["HOW_REFUSING", "HOW_UNFILTERED", "fallback_bundle", "empty_bundle"]

log = logging.getLogger("schoolgate")

HOW_REFUSING = "refusing"
HOW_UNFILTERED = "unfiltered"
_EMPTY_DIR = "no-bundle"


def _categories(cfg: Config) -> list[str]:
    return list(dict.fromkeys(c for p in cfg.policies.values() for c in p.categories))


def empty_bundle(cfg: Config, now: datetime | None = None) -> Bundle:
    """A bundle with the config's categories and no entries (written under the state dir)."""
    now = now or datetime.now(UTC)
    spec = SourcesSpec(file="<no bundle>", version=0, expires_days=3650,
                       categories=tuple(CategorySpec(c, "no bundle loaded", ()) for c in _categories(cfg)),
                       allow=())
    compiled = compile_sources(spec, now=now, new_key=lambda: (secrets.randbits(64), secrets.randbits(64)))
    out = cfg.state_dir / _EMPTY_DIR
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return open_bundle(write_bundle(out, compiled.arrays, compiled.manifest))
    except OSError as exc:
        raise EnvironmentFault(f"cannot write the empty bundle: {exc}", Where(str(out))) from exc


def fallback_bundle(cfg: Config, failure: SchoolgateError) -> tuple[Bundle, str]:
    """(bundle, how) to serve after ``failure`` opening the selected bundle, per ``no_bundle``.

    Raises ``failure`` again when even the fallback cannot be had (``embedded`` with the demo
    repository broken too falls back to refusing: never to forwarding unfiltered)."""
    mode = cfg.no_bundle
    if mode == "embedded":
        try:
            bundle = open_bundle(install_demo(cfg.state_dir))
            log.error("no bundle can be opened (%s): serving the embedded DEMO bundle "
                      "(config no_bundle: embedded)", failure)
            return bundle, "demo"
        except SchoolgateError as exc:
            log.error("no bundle can be opened (%s) and neither can the embedded one (%s): "
                      "refusing every query", failure, exc)
            mode = "refuse"
    bundle = empty_bundle(cfg)
    if mode == "refuse":
        log.error("no bundle can be opened (%s): answering REFUSED to every query "
                  "(config no_bundle: refuse)", failure)
        return bundle, HOW_REFUSING
    log.error("no bundle can be opened (%s): FORWARDING UNFILTERED (config no_bundle: forward)", failure)
    return bundle, HOW_UNFILTERED
