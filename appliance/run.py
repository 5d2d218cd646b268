"""``schoolgate run``: the composition root's parts for one config, started.

One DNS worker (``dns.workers: 1``): this process is the whole appliance — the DNS service
(appliance/dns/service.py) with the update scheduler and the forked web and capture children.
Several: the supervisor (appliance/dns/workers.py) builds once, forks the workers, which
share the listen addresses with SO_REUSEPORT, and owns the scheduler and the children.
"""

from __future__ import annotations

import asyncio
import logging

from appliance.compose import Assembly, build, category_check, check_catalog, policy_errors
from appliance.config.load import Config, ConfigErrors
from appliance.dns.server import open_sockets
from appliance.dns.service import Service
from appliance.dns.workers import Supervisor
from filters.errors import SchoolgateError

__all__ = ["run_service"]

log = logging.getLogger("schoolgate")


def run_service(config_path: str | None) -> int:
    assembly = Assembly(config_path)
    cfg = assembly.config()
    _refuse_early(cfg)
    # run.json, counters, logs and flow state live here even when the config names its own
    # bundle (nothing else would create the directory then). Not being able to is not fatal:
    # filtering matters more than the reports, and each writer says what failed.
    try:
        cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    except OSError as exc:
        log.error("cannot create the state directory %s: %s", cfg.state_dir, exc)
    if cfg.dns.workers > 1:
        return Supervisor(assembly, build(cfg)).run()
    return asyncio.run(Service(assembly).run())


def _refuse_early(cfg: Config) -> None:
    """What would stop the start, found before anything is installed, created or logged (the
    demo bundle, the state directory): such an error comes first and alone. The categories
    the policies name, against the bundle `run` would serve (as check-config checks them;
    build checks them again against the bundle it opens), and the listen addresses: bound
    once and closed (the service binds them again)."""
    try:
        catalog, how = check_catalog(cfg)
    except SchoolgateError:  # the configured bundle does not open: build falls back (no_bundle)
        pass
    else:
        errors, _ = category_check(cfg, catalog, how)
        errors = policy_errors(cfg, catalog) + errors
        if errors:
            raise ConfigErrors(errors)
    for pair in open_sockets(cfg.dns.listen, reuse_port=cfg.dns.workers > 1):
        for s in pair:
            s.close()
