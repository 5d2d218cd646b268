"""The ``schoolgate`` command (its subcommands: docs/deployment.md, "Commands").

Human text by default, JSON with ``--json``; errors go to stderr, exit status 2 for bad
input (naming file:line:col where there is one), 1 for other failures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from filters.errors import ConfigError, InputError, SchoolgateError, Where

__all__ = ["main"]

# Rejected lines printed per source before the rest are summarised (all are counted, and
# --rejects FILE writes every one of them).
_REJECTS_SHOWN = 20


def _random_key() -> tuple[int, int]:
    return secrets.randbits(64), secrets.randbits(64)


def cmd_build(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from signatures.bundle import canary_problem, write_bundle
    from signatures.compile import compile_sources
    from signatures.sources import load_sources

    spec = load_sources(args.sources)
    problem = canary_problem(spec.canaries)
    if problem:  # refused now, not at publish after the whole compile
        raise ConfigError(problem, Where(spec.file))
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

    compiled = compile_sources(spec, now=datetime.now(UTC), new_key=_random_key,
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
        return ALL_CATEGORIES  # without a policy every category counts (docs/matching.md)
    if args.config is None:
        raise InputError("--policy needs --config (policies are defined in the config)")
    from appliance.config.load import load_config

    cfg = load_config(args.config)
    if args.policy not in cfg.policies:
        raise InputError(f"no policy {args.policy!r} in {args.config} (have: {', '.join(cfg.policies) or 'none'})")
    from filters.policy import blocked_categories

    p = cfg.policies[args.policy]  # its own categories and doh unless allowed (schedules not applied)
    return catalog.mask(blocked_categories(p.block, p.allow_doh, catalog.categories))


def _open_matcher(args: argparse.Namespace):
    """(bundle, domain matcher) of --bundle, else of the bundle the config (or, with neither,
    the default `schoolgate run`) serves: its own, the active signed one, else an installed
    demo. The caller notes a demo bundle (:func:`_demo_note`) once it has answers to give."""
    from signatures.bundle import open_bundle

    if args.bundle:
        bundle, local = open_bundle(args.bundle), None
    else:
        from appliance.bundles.select import resolve_bundle
        from appliance.compose import load_run_config
        from appliance.config.load import load_config

        cfg = load_config(args.config) if args.config else load_run_config(None)
        found = resolve_bundle(cfg)
        if found is None:
            how = ((f"run `schoolgate update --once --config {args.config}`, or set bundle: in the config"
                    if cfg.updates is not None else "add an updates: section (your district's repository) "
                    "or set bundle: in the config")
                   if args.config else "run `schoolgate run` once (it installs the demo bundle), "
                   "or give --bundle DIR or --config PATH")
            raise InputError(f"no active bundle in {cfg.state_dir} yet: {how}")
        bundle, local = open_bundle(found.path), cfg
    matcher = bundle.domain_matcher()
    return bundle, (matcher.with_local(local.local_block, local.local_allow) if local else matcher)


def _demo_note(bundle, err: TextIO) -> None:
    """Said after everything that can fail before the answers (bundle, policy): an error
    comes alone, not after a note about a bundle nothing was looked up in."""
    if bundle.demo:
        print(f"schoolgate: note: answers come from the DEMO bundle (version {bundle.version}: "
              "excerpts of public lists, not for real filtering)", file=err)


def _address(text: str):
    """``text`` as an IP address (v4 or v6), else None: a name."""
    import ipaddress

    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _passphrase(args: argparse.Namespace) -> bytes | None:
    var = getattr(args, "passphrase_env", None)
    if not var:
        return None
    value = os.environ.get(var)
    if not value:
        raise InputError(f"--passphrase-env {var}: the environment variable is unset or empty")
    return value.encode()


def _keyring(args: argparse.Namespace):
    from signatures.keys import Keyring

    return Keyring(*args.keys, passphrase=_passphrase(args))


def _now() -> datetime:
    return datetime.now(UTC)


def _print_result(args: argparse.Namespace, out: TextIO, err: TextIO, text: str, data: dict) -> int:
    for w in data.get("warnings", []):
        print(f"schoolgate: warning: {w}", file=err)
    print(json.dumps(data) if args.json else text, file=out)
    return 0


def cmd_keygen(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from signatures.keys import generate_key, generate_keys

    pw = _passphrase(args)
    keys = [generate_key(args.out, args.role, pw)] if args.role else generate_keys(args.out, pw)
    rows = [{"name": k.name, "role": k.role, "keyid": k.keyid} for k in keys]
    text = "\n".join(f"{r['name']}: {r['keyid']}" for r in rows)
    text += (f"\nwrote {len(rows)} key(s) to {args.out}" + ("" if pw else " (not encrypted: see --passphrase-env)")
             + ("; keep root-* offline" if not args.role else ""))
    return _print_result(args, out, err, text, {"keys": rows, "dir": str(args.out), "encrypted": bool(pw)})


def _versions(versions: dict) -> str:
    """``root 1, targets 2, snapshot 2, timestamp 2``: the metadata versions, for reading."""
    return ", ".join(f"{role} {v}" for role, v in versions.items())


def _result_json(r) -> dict:
    return {"version": r.version, "target": r.target_url_path, "length": r.length,
            "sha256": r.sha256, "metadata_versions": r.versions, "warnings": r.warnings}


def cmd_publish(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from signatures.repository import publish

    r = publish(args.repo, args.bundle, _keyring(args), _now())
    text = (f"published bundle version {r.version} as targets/{r.target_url_path} ({r.length:,} bytes)\n"
            f"metadata versions: {_versions(r.versions)}\n"
            f"devices trust {Path(args.repo) / 'metadata' / 'root.json'} (their updates.trusted_root)")
    return _print_result(args, out, err, text, _result_json(r))


def cmd_refresh(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from signatures.repository import refresh

    r = refresh(args.repo, _keyring(args), _now())
    text = f"re-signed snapshot and timestamp\nmetadata versions: {_versions(r.versions)}"
    return _print_result(args, out, err, text, _result_json(r))


def cmd_rotate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from signatures.repository import rotate_keys

    r = rotate_keys(args.repo, _keyring(args), args.role, _now(), add=args.add, revoke=args.revoke,
                    threshold=args.threshold)
    text = f"new root version {r.versions['root']} for the {args.role} keys\nmetadata versions: {_versions(r.versions)}"
    return _print_result(args, out, err, text, _result_json(r))


def cmd_update(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """One update check with --once; otherwise check at the configured interval (± jitter)
    until interrupted. The scheduler inside `schoolgate run` uses the same update_once."""
    from appliance.config.load import load_config
    from appliance.policy.categories import refusal_reason
    from appliance.updates.state import read_update_state
    from appliance.updates.updater import update_once
    from signatures.bundle import open_bundle

    cfg = load_config(args.config)
    if cfg.updates is None:
        raise InputError(f"{args.config}: no updates: section (repository, trusted_root)")

    def accept(staged: Path) -> str | None:  # a bundle the config's policies can use
        return refusal_reason(cfg, open_bundle(staged).catalog)

    while True:
        try:
            o = update_once(cfg.state_dir, cfg.updates, accept=accept)
        except SchoolgateError as exc:  # the state dir is unusable, or another update runs
            if args.once:
                raise
            print(f"schoolgate: update skipped: {exc}", file=err, flush=True)
        else:
            _report_update(args, o, out, err)
            if args.once:
                return 0 if o.ok else 1
        nxt = read_update_state(cfg.state_dir).get("next_check")
        wait = float(cfg.updates.interval)
        if isinstance(nxt, str):
            wait = max(1.0, (datetime.fromisoformat(nxt) - _now()).total_seconds())
        time.sleep(wait)


def _report_update(args: argparse.Namespace, o, out: TextIO, err: TextIO) -> None:
    if args.json:
        print(json.dumps({"result": o.result, "active_version": o.active_version,
                          "offered_version": o.offered_version, "error": o.error,
                          "bytes_downloaded": o.bytes_downloaded}), file=out, flush=True)
    elif o.ok:
        what = (f"updated to bundle version {o.active_version}" if o.result == "updated"
                else f"up to date at bundle version {o.active_version}")
        print(what, file=out, flush=True)
    if o.error:
        print(f"schoolgate: update {o.result}: {o.error}"
              + (f" (bundle version {o.active_version} stays active)" if o.active_version else ""),
              file=err, flush=True)


def cmd_warm_up(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Compile the DNS kernels into numba's cache now (an image build, a package's
    post-install), so that the first `run` loads them at once instead of compiling them
    in the background (appliance/dns/startup.py)."""
    from appliance.compose import build, load_run_config
    from appliance.dns.fastpath import warm_up

    t0 = time.monotonic()
    built = build(load_run_config(args.config))
    compiled = warm_up(built.matcher, built.policies)
    what = "compiled" if compiled else "already in the cache, loaded"
    print(f"DNS kernels {what} in {time.monotonic() - t0:.1f} s", file=out)
    return 0


def cmd_status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from appliance.compose import load_run_config
    from appliance.observe.status import collect_status, format_status

    st = collect_status(load_run_config(args.config))
    print(json.dumps(st) if args.json else format_status(st), file=out)
    return 0


# `run` and `check-config` import the config schema (YAML) and the whole appliance when used,
# not at every start-up: `inspect` and `lookup` with --bundle need neither.
def cmd_run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from appliance.observe.jsonlog import setup_logging
    from appliance.run import run_service

    setup_logging(logging.DEBUG if getattr(args, "verbose", False) else logging.INFO)
    try:
        return run_service(args.config)
    except KeyboardInterrupt:
        return 0
    except OSError as exc:  # listen errors say their address (appliance/observe/holders.py)
        print(f"schoolgate: error: {exc}", file=err)
        return 1


def cmd_check_config(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Exit 0 when the config is valid (warnings printed); else 2 with every error as
    file:line:col — schema, semantic and bundle errors in one pass, in file order."""
    from appliance.compose import category_check, check_catalog, load_run_config, policy_errors
    from appliance.config.load import Config, ConfigErrors
    from filters.errors import ConfigError

    errors: list[ConfigError] = []
    warnings: list[str] = []
    cfg: Config | None = None
    try:
        cfg = load_run_config(args.path)
    except ConfigErrors as exc:
        errors, cfg = list(exc.errors), exc.partial
    except ConfigError as exc:
        errors = [exc]
    if cfg is not None:  # what only the bundle can tell, also for a config with other errors
        warnings = list(cfg.warnings)
        try:
            catalog, how = check_catalog(cfg)
            bad, more = category_check(cfg, catalog, how)
            warnings += more
            errors += policy_errors(cfg, catalog) + bad
        except SchoolgateError as exc:  # the configured bundle cannot be opened
            errors.append(ConfigError(exc.message, exc.where))
    errors.sort(key=lambda e: (e.where.line, e.where.col) if e.where else (0, 0))
    if args.json:
        print(json.dumps({"ok": not errors, "errors": [
            {"file": e.where.file if e.where else args.path, "line": e.where.line if e.where else 0,
             "col": e.where.col if e.where else 0, "message": e.message} for e in errors],
            "warnings": warnings}), file=out)
    else:
        for e in errors:
            print(str(e), file=err)
        for w in warnings:
            print(f"{args.path}: warning: {w}", file=err)
        if not errors:
            print(f"{args.path}: ok" + (f" ({len(warnings)} warning{'s' if len(warnings) != 1 else ''})"
                                         if warnings else ""), file=out)
    return 2 if errors else 0


def cmd_lookup(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from filters.errors import BadNameError

    bundle, matcher = _open_matcher(args)
    mask = _policy_mask(matcher.catalog, args)
    _demo_note(bundle, err)
    cidrs = None  # mapped on the first address: names need only the domain table
    names: Iterable[str] = args.names
    if list(names) == ["-"]:
        names = (line.strip() for line in sys.stdin)
    bad = 0
    for name in names:
        if not name or name.startswith("#"):
            continue
        try:
            addr = _address(name)
            if addr is None:
                v = matcher.match(name, mask)
            else:  # the bundle's CIDR lists (what flow enforcement blocks), not its names
                cidrs = cidrs or bundle.cidr_matcher()
                v = cidrs.explain(cidrs.match(addr, mask), bundle.catalog, mask)
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


def cmd_inspect(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``schoolgate inspect PCAP`` (appliance/pcap/inspect.py): --bundle, else the bundle of
    --config, else the one `schoolgate run` serves (as lookup)."""
    from appliance.pcap.inspect import write_inspection
    from filters.verdicts import Verdicts

    bundle, matcher = _open_matcher(args)
    verdicts = Verdicts(matcher, _policy_mask(matcher.catalog, args))
    _demo_note(bundle, err)
    return write_inspection(args.pcap, verdicts, out, err, as_json=args.json, all_frames=args.all_frames)


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

    def passphrase(p: argparse.ArgumentParser) -> None:
        p.add_argument("--passphrase-env", metavar="VAR",
                       help="environment variable holding the private keys' passphrase")
        p.add_argument("--json", action="store_true")

    kg = sigsub.add_parser("keygen", help="create Ed25519 signing keys (3 root, targets, snapshot, timestamp)")
    kg.add_argument("--out", required=True, help="keys directory (private keys written with mode 0600)")
    kg.add_argument("--role", choices=["root", "targets", "snapshot", "timestamp"],
                    help="add one new key for this role (for rotate-key) instead of a full set")
    passphrase(kg)
    kg.set_defaults(func=cmd_keygen)

    def repo_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--repo", required=True, help="TUF repository directory (served as static files)")
        p.add_argument("--keys", required=True, action="append",
                       help="keys directory; repeat to combine (e.g. offline root keys on other media)")
        passphrase(p)

    pb = sigsub.add_parser("publish", help="sign a built bundle into the TUF repository (created on first use)")
    pb.add_argument("bundle", help="bundle directory from signatures build")
    repo_args(pb)
    pb.set_defaults(func=cmd_publish)
    rf = sigsub.add_parser("refresh", help="re-sign snapshot and timestamp before they expire (cron)")
    repo_args(rf)
    rf.set_defaults(func=cmd_refresh)
    rk = sigsub.add_parser("rotate-key", help="change a role's keys in a new root version")
    rk.add_argument("--role", required=True, choices=["root", "targets", "snapshot", "timestamp"])
    rk.add_argument("--add", action="append", default=[], metavar="NAME", help="key to add (e.g. targets-2)")
    rk.add_argument("--revoke", action="append", default=[], metavar="NAME", help="key to remove")
    rk.add_argument("--threshold", type=int, help="new signature threshold for the role")
    repo_args(rk)
    rk.set_defaults(func=cmd_rotate)

    up = sub.add_parser("update", help="fetch, verify and activate the newest signed bundle")
    up.add_argument("--config", required=True, help="config file with an updates: section")
    up.add_argument("--once", action="store_true", help="one check, then exit (0 ok, 1 refused or failed)")
    up.add_argument("--json", action="store_true")
    up.set_defaults(func=cmd_update)

    st = sub.add_parser("status", help="the appliance's state: bundle served (demo or not), updates, running")
    st.add_argument("--config", help="config file (default: as `schoolgate run` without one)")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    lk = sub.add_parser("lookup", help="is a name blocked, and why?")
    src = lk.add_mutually_exclusive_group()
    src.add_argument("--bundle", help="bundle directory")
    src.add_argument("--config", help="config file (uses its bundle and local lists)")
    lk.add_argument("--policy", help="policy name from the config (default: every category)")
    lk.add_argument("--json", action="store_true", help="one JSON object per line")
    lk.add_argument("names", nargs="+", help="names to look up, or - to read them from stdin")
    lk.set_defaults(func=cmd_lookup)

    ins = sub.add_parser("inspect", help="the names in a capture's flows, with their verdicts")
    ins.add_argument("pcap", help="capture file (pcap or pcapng)")
    src = ins.add_mutually_exclusive_group()
    src.add_argument("--bundle", help="bundle directory (default: the bundle `schoolgate run` serves)")
    src.add_argument("--config", help="config file (uses its bundle and local lists)")
    ins.add_argument("--policy", help="policy name from the config (default: every category)")
    ins.add_argument("--json", action="store_true", help="one JSON object per name")
    ins.add_argument("--all-frames", action="store_true",
                     help="feed every frame to the flow table (slow; the reference path)")
    ins.set_defaults(func=cmd_inspect)

    from appliance.web.cli import add_parser as add_web

    add_web(sub)  # schoolgate web hash-password (appliance/web/cli.py)

    rn = sub.add_parser("run", help="run the appliance (DNS service); no --config: embedded defaults")
    rn.add_argument("--config", help="config file (default: config/default.yaml, per-user state dir)")
    rn.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    rn.set_defaults(func=cmd_run)
    wu = sub.add_parser("warm-up", help="compile the DNS kernels into numba's cache (image builds, installs)")
    wu.add_argument("--config", help="config file (default: config/default.yaml, per-user state dir)")
    wu.set_defaults(func=cmd_warm_up)
    cc = sub.add_parser("check-config", help="validate a config: exit 0, or 2 with every error")
    cc.add_argument("path", help="config file")
    cc.add_argument("--json", action="store_true")
    cc.set_defaults(func=cmd_check_config)
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
