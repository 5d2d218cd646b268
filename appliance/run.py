"""The ``run`` and ``check-config`` commands (wired into appliance/cli.py)."""

from __future__ import annotations

import argparse
import json
import logging
from typing import TextIO

from appliance.config import ConfigErrors
from filters.errors import ConfigError, SchoolgateError

__all__ = ["cmd_run", "cmd_check_config"]


def cmd_run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from appliance.dns.service import run_service
    from appliance.jsonlog import setup_logging

    setup_logging(logging.DEBUG if getattr(args, "verbose", False) else logging.INFO)
    try:
        return run_service(args.config)
    except KeyboardInterrupt:
        return 0
    except OSError as exc:  # a listen address in use or not ours
        print(f"schoolgate: error: cannot listen: {exc}", file=err)
        return 1


def cmd_check_config(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Exit 0 when the config is valid; else 2 with every error as file:line:col."""
    from appliance.dns.service import check_catalog, load_run_config, policy_errors

    errors: list[ConfigError] = []
    try:
        cfg = load_run_config(args.path)
        errors += policy_errors(cfg, check_catalog(cfg))
    except ConfigErrors as exc:
        errors = list(exc.errors)
    except ConfigError as exc:
        errors = [exc]
    except SchoolgateError as exc:  # the configured bundle cannot be opened
        errors = [ConfigError(exc.message, exc.where)]
    if args.json:
        print(json.dumps({"ok": not errors, "errors": [
            {"file": e.where.file if e.where else args.path, "line": e.where.line if e.where else 0,
             "col": e.where.col if e.where else 0, "message": e.message} for e in errors]}), file=out)
    else:
        for e in errors:
            print(str(e), file=err)
        if not errors:
            print(f"{args.path}: ok", file=out)
    return 2 if errors else 0
