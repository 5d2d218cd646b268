"""The ``schoolgate`` command (DESIGN.md §5).

Human text by default, JSON with ``--json``; errors go to stderr, exit status 2 for bad
input (naming file:line:col where there is one), 1 for other failures.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence, TextIO

from filters.errors import InputError, SchoolgateError

__all__ = ["main"]

# Rejected lines printed per source before the rest are summarised (all are counted, and
# --rejects FILE writes every one of them).
_REJECTS_SHOWN = 20


def _random_key() -> tuple[int, int]:
    return secrets.randbits(64), secrets.randbits(64)


def cmd_build(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from signatures.bundle import write_bundle
    from signatures.compile import compile_sources
    from signatures.sources import load_sources

    spec = load_sources(args.sources)
    t0 = time.perf_counter()
    total = len(spec.all_sources)
    done = [0]

    def progress(r) -> None:
        done[0] += 1
        if args.quiet:
            return
        print(f"[{done[0]}/{total}] {r.label}: {r.entries:,} entries from {r.lines:,} lines, "
              f"{len(r.rejected):,} rejected, {r.unsupported:,} unsupported ({r.seconds:.2f} s)",
              file=err, flush=True)
        for rej in r.rejected[:_REJECTS_SHOWN]:
            print(f"  {rej}", file=err)
        if len(r.rejected) > _REJECTS_SHOWN:
            print(f"  ... {len(r.rejected) - _REJECTS_SHOWN:,} more rejected lines"
                  + ("" if args.rejects else " (--rejects FILE lists them all)"), file=err)

    compiled = compile_sources(spec, now=datetime.now(timezone.utc), new_key=_random_key,
                               progress=progress)
    if args.rejects:
        with open(args.rejects, "w", encoding="utf-8") as f:
            for r in compiled.reports:
                for rej in r.rejected:
                    f.write(f"{rej.file}\t{rej.line}\t{rej.reason}\t{rej.text}\n")
    path = write_bundle(args.output, compiled.arrays, compiled.manifest)
    m = compiled.manifest
    nbytes = sum(a.nbytes for a in compiled.arrays.values())
    summary = {
        "bundle": str(path), "version": m["version"], "expires": m["expires"],
        "counts": m["counts"], "array_bytes": nbytes,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if args.json:
        print(json.dumps(summary), file=out)
    else:
        c = m["counts"]
        print(f"bundle version {m['version']} written to {path}: {c['domains']:,} domains, "
              f"{c['cidrs']:,} CIDRs, {c['keywords']:,} keywords, {c['rejected']:,} lines rejected; "
              f"{nbytes:,} bytes of arrays; expires {m['expires']} ({summary['seconds']} s)", file=out)
    return 0


def _policy_mask(catalog, args: argparse.Namespace) -> int:
    from filters.catalog import ALL_CATEGORIES

    if args.policy is None:
        return ALL_CATEGORIES  # DESIGN.md §5: without a policy every category counts
    if args.config is None:
        raise InputError("--policy needs --config (policies are defined in the config)")
    from appliance.config import load_config

    cfg = load_config(args.config)
    if args.policy not in cfg.policies:
        raise InputError(f"no policy {args.policy!r} in {args.config} (have: {', '.join(cfg.policies) or 'none'})")
    return catalog.mask(cfg.policies[args.policy].block)


def _open_matcher(args: argparse.Namespace):
    from signatures.bundle import open_bundle

    if args.bundle:
        return open_bundle(args.bundle).domain_matcher()
    if args.config:
        from appliance.config import load_config

        cfg = load_config(args.config)
        matcher = open_bundle(cfg.bundle_path()).domain_matcher()
        return matcher.with_local(cfg.local_block, cfg.local_allow)
    raise InputError("give --bundle DIR or --config PATH")


def cmd_lookup(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from filters.errors import BadNameError

    matcher = _open_matcher(args)
    mask = _policy_mask(matcher.catalog, args)
    names: Sequence[str] = args.names
    if list(names) == ["-"]:
        names = (line.strip() for line in sys.stdin)
    bad = 0
    for name in names:
        if not name or name.startswith("#"):
            continue
        try:
            v = matcher.match(name, mask)
        except BadNameError as exc:
            bad += 1
            if args.json:
                print(json.dumps({"name": name, "verdict": "error", "error": exc.reason}), file=out)
            else:
                print(f"{name}: error: {exc.reason}", file=err)
            continue
        if args.json:
            print(json.dumps(v.to_json()), file=out)
        else:
            line = f"{v.name}: {'BLOCK' if v.blocked else 'allow'}"
            if v.categories:
                line += f" [{', '.join(v.categories)}]"
            if v.rule:
                line += f" rule {v.rule} from {'; '.join(v.sources)}"
            print(line, file=out)
    return 2 if bad else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="schoolgate", description="School network filtering gateway")
    sub = p.add_subparsers(dest="command", required=True)

    sig = sub.add_parser("signatures", help="compile, sign and publish category lists")
    sigsub = sig.add_subparsers(dest="sigcommand", required=True)
    b = sigsub.add_parser("build", help="compile SOURCES.yaml into a bundle directory")
    b.add_argument("sources", help="SOURCES.yaml")
    b.add_argument("-o", "--output", required=True, help="bundle directory to write")
    b.add_argument("--rejects", help="write every rejected line (file, line, reason, text) here")
    b.add_argument("-q", "--quiet", action="store_true", help="no per-source progress lines")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_build)

    lk = sub.add_parser("lookup", help="is a name blocked, and why?")
    src = lk.add_mutually_exclusive_group()
    src.add_argument("--bundle", help="bundle directory")
    src.add_argument("--config", help="config file (uses its bundle and local lists)")
    lk.add_argument("--policy", help="policy name from the config (default: every category)")
    lk.add_argument("--json", action="store_true", help="one JSON object per line")
    lk.add_argument("names", nargs="+", help="names to look up, or - to read them from stdin")
    lk.set_defaults(func=cmd_lookup)
    return p


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, out, err)
    except InputError as exc:
        print(f"schoolgate: error: {exc}", file=err)
        return 2
    except SchoolgateError as exc:
        print(f"schoolgate: error: {exc}", file=err)
        return 1
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
