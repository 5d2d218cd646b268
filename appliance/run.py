"""``schoolgate run``: the composition root's parts for one config, started.

One DNS worker (``dns.workers: 1``): this process is the whole appliance — the DNS service
(appliance/dns/service.py) with the update scheduler and the forked web and capture children.
Several: the supervisor (appliance/dns/workers.py) builds once, forks the workers, which
share the listen addresses with SO_REUSEPORT, and owns the scheduler and the children.
"""

from __future__ import annotations

import asyncio
import logging

from appliance.compose import Assembly, build
from appliance.dns.service import Service
from appliance.dns.workers import Supervisor

__all__ = ["run_service"]

log = logging.getLogger("schoolgate")


def run_service(config_path: str | None) -> int:
    assembly = Assembly(config_path)
    cfg = assembly.config()
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
