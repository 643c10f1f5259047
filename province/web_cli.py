"""`countersign province web` (serve the platform) and `countersign province user add|remove|passwd|
disable|enable|list` (its accounts).

A password never travels in argv (every user of the machine can read it in the process list) and is
never printed: it is read from a prompt (twice) or from ``--password-file`` (its first line; the file
is the operator's, e.g. a 0600 file a provisioning tool wrote). Each change is written to the audit log
as ``cli:<unix user>`` in the change's transaction.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import signal
import sys
from pathlib import Path
from typing import Any

from countersign.common.clock import wall_ms

from . import users
from .db import Database, DatabaseError
from .errors import ProvinceError
from .migrations import upgrade
from .scope import ROLES
from .web import PlatformServer, create_app
from .web_config import WebConfig

__all__ = ["main", "register"]

_FAILURES: tuple[type[Exception], ...] = (ProvinceError, OSError, *DatabaseError)


def register(sub: Any) -> None:
    """Adds ``web`` and ``user`` to the ``countersign province`` sub-commands (``sub``: add_subparsers())."""
    p: argparse.ArgumentParser = sub.add_parser("web", help="serve the provincial platform (web pages, API)")
    p.add_argument("--config", required=True, type=Path,
                   help="province TOML config (database, timezone, [web])")
    p.add_argument("--bind", help="address to listen on (default: [web] bind, else 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: [web] port, else 8470)")
    p.set_defaults(func=cmd_web)

    u: argparse.ArgumentParser = sub.add_parser("user", help="the platform's accounts")
    cmds = u.add_subparsers(dest="user_cmd", required=True, metavar="ACTION")
    for name, helptext in (("add", "add an account"), ("remove", "remove an account (its sessions end)"),
                           ("passwd", "set a new password (the account's sessions end)"),
                           ("disable", "disable an account (its sessions end)"),
                           ("enable", "enable a disabled account"), ("list", "list the accounts")):
        c = cmds.add_parser(name, help=helptext)
        if name != "list":
            c.add_argument("username", help="log-in name: letters, digits, '.', '_', '-'")
        where = c.add_mutually_exclusive_group(required=True)
        where.add_argument("--config", type=Path, help="province TOML config (its database)")
        where.add_argument("--db", help="the province database: an SQLite path or postgresql://user@host/db")
        if name == "add":
            c.add_argument("--role", required=True, choices=ROLES,
                           help="province: everything and the accounts; city: its halls; hall: its own")
            c.add_argument("--scope", help="city: the city's name (halls.city); hall: the hall id")
            c.add_argument("--name", default="", help="the person's name as the pages show it")
        if name in ("add", "passwd"):
            c.add_argument("--password-file", type=Path,
                           help="read the password from this file's first line (else: a prompt)")
        c.set_defaults(func=cmd_user)


def _database(args: argparse.Namespace) -> Database:
    if args.config is not None:
        return WebConfig.load(args.config).database
    return Database.of(args.db)


def _password(args: argparse.Namespace) -> str:
    if args.password_file is not None:
        lines = args.password_file.read_text(encoding="utf-8").splitlines()
        if not lines or not lines[0]:
            raise users.UsersError(f"{args.password_file} is empty")
        return users.check_password(lines[0])
    if not sys.stdin.isatty():
        raise users.UsersError("no terminal to ask for the password: use --password-file")
    first = getpass.getpass("新密码 New password: ")
    users.check_password(first)
    if getpass.getpass("再输一次 Again: ") != first:
        raise users.UsersError("the two passwords differ")
    return first


def actor() -> str:
    return f"cli:{getpass.getuser()}"


def cmd_user(args: argparse.Namespace) -> int:
    try:
        db = _database(args)
        if db.dialect == "sqlite" and not db.path.exists():
            print(f"province user: no database at {db.display()}", file=sys.stderr)
            return 2
        upgrade(db)
        now = wall_ms()
        with db.connect() as conn:
            if args.user_cmd == "add":
                users.add(conn, args.username, args.name, _password(args), args.role, args.scope,
                          actor=actor(), now_ms=now)
                print(f"user {args.username} added ({args.role}{' ' + args.scope if args.scope else ''})",
                      file=sys.stderr)
            elif args.user_cmd == "remove":
                users.remove(conn, args.username, actor=actor(), now_ms=now)
                print(f"user {args.username} removed", file=sys.stderr)
            elif args.user_cmd == "passwd":
                users.passwd(conn, args.username, _password(args), actor=actor(), now_ms=now)
                print(f"user {args.username}: new password set, sessions ended", file=sys.stderr)
            elif args.user_cmd in ("disable", "enable"):
                users.disable(conn, args.username, args.user_cmd == "disable", actor=actor(), now_ms=now)
                print(f"user {args.username} {args.user_cmd}d", file=sys.stderr)
            else:
                for a in users.list_accounts(conn):
                    state = "disabled" if a.disabled else "active"
                    print(f"{a.username}\t{a.role}\t{a.scope or '-'}\t{state}\t{a.name}")
    except _FAILURES as exc:
        print(f"province user: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    try:
        cfg = WebConfig.load(args.config)
        server = PlatformServer(create_app(cfg), args.bind or cfg.bind, cfg.port if args.port is None
                                else args.port)
    except _FAILURES as exc:
        print(f"province web: {exc}", file=sys.stderr)
        return 1
    print(f"province web: serving {cfg.database.display()} at {server.url} (Ctrl-C ends)", file=sys.stderr)
    # uvicorn shuts down on SIGINT / SIGTERM, then raises the signal again for the handler it found: both
    # end here as a clean exit (0), which is what systemd and a person's Ctrl-C expect.
    signal.signal(signal.SIGTERM, _interrupt)
    with contextlib.suppress(KeyboardInterrupt):
        server.run_foreground()
    print("province web: stopped", file=sys.stderr)
    return 0


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """``python -m countersign.province.web_cli ...``: the same commands before province/cli.py has them."""
    parser = argparse.ArgumentParser(prog="countersign province")
    register(parser.add_subparsers(dest="province_cmd", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
