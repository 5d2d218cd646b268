"""``schoolgate web hash-password``: make the value of ``web.admin_password_hash``.

The password is read from stdin (first line) when stdin is not a terminal or with
``--stdin``, else asked twice without echo. It never appears on the command line (where
``ps`` and shell history would show it).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import TextIO

from appliance.config.passwords import MIN_N, PasswordHashError, hash_password
from filters.errors import InputError

__all__ = ["add_parser", "cmd_hash_password"]


def cmd_hash_password(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:

    stdin = getattr(args, "stdin_stream", None) or sys.stdin
    if args.stdin or not stdin.isatty():
        password = stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("admin password: ")
        if getpass.getpass("again: ") != password:
            raise InputError("the two passwords differ")
    if len(password) < args.min_length:
        raise InputError(f"the password must have at least {args.min_length} characters")
    try:
        h = hash_password(password, n=args.n)
    except PasswordHashError as exc:
        raise InputError(f"--n: {exc} (at least {MIN_N})") from None
    print(json.dumps({"admin_password_hash": h}) if args.json else h, file=out)
    return 0


def add_parser(sub) -> None:
    web = sub.add_parser("web", help="the web status page's admin password")
    websub = web.add_subparsers(dest="web_command", required=True)
    hp = websub.add_parser("hash-password", help="print a scrypt hash for web.admin_password_hash")
    hp.add_argument("--stdin", action="store_true", help="read the password from stdin (first line)")
    hp.add_argument("--n", type=int, default=2 ** 15, help="scrypt cost N (a power of two; default 32768)")
    hp.add_argument("--min-length", type=int, default=10, help="refuse shorter passwords (default 10)")
    hp.add_argument("--json", action="store_true")
    hp.set_defaults(func=cmd_hash_password)
