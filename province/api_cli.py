"""`countersign province api-client add NAME | revoke NAME | list`: the read API's clients.

``add`` prints the new token once, alone on stdout (the one secret a person must copy, into the other
system's configuration); everything else goes to stderr, so ``token=$(countersign province api-client
add erp --db ...)`` captures only the token. The database keeps its SHA-256 only (apiclients.py). Each
change is in the audit log as ``cli:<unix user>``.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from countersign.common.clock import wall_ms

from .apiclients import ApiClientError, add_client, list_clients, revoke_client
from .db import Database, DatabaseError
from .errors import ConfigError, ProvinceError
from .migrations import upgrade
from .period import DEFAULT_TZ
from .web_config import WebConfig

__all__ = ["register"]


def register(sub: Any) -> None:
    """Adds ``api-client`` to the ``countersign province`` sub-commands (``sub``: add_subparsers())."""
    p: argparse.ArgumentParser = sub.add_parser("api-client", help="the read API's clients (tokens)")
    cmds = p.add_subparsers(dest="api_client_cmd", required=True, metavar="ACTION")
    for name, helptext in (("add", "add a client and print its token once"),
                           ("revoke", "revoke a client's token (refused from its next request on)"),
                           ("list", "list the clients")):
        c = cmds.add_parser(name, help=helptext)
        if name != "list":
            c.add_argument("name", help="the client's name, e.g. the system that calls the API")
        where = c.add_mutually_exclusive_group(required=True)
        where.add_argument("--config", type=Path, help="province TOML config (its database and timezone)")
        where.add_argument("--db", help="the province database: an SQLite path or postgresql://user@host/db")
        c.set_defaults(func=cmd_api_client)


# What ends the command with one line: the database unreachable, its schema too new, a statement refused.
_FAILURES: tuple[type[Exception], ...] = (ProvinceError, *DatabaseError)


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


def cmd_api_client(args: argparse.Namespace) -> int:
    try:
        if args.config is not None:
            cfg = WebConfig.load(args.config)
            db, tz = cfg.database, cfg.tz
        else:
            db, tz = Database.of(args.db), ZoneInfo(DEFAULT_TZ)
    except ConfigError as exc:
        print(f"province api-client: {exc}", file=sys.stderr)
        return 2
    if db.dialect == "sqlite" and not db.path.exists():
        print(f"province api-client: no database at {db.display()}", file=sys.stderr)
        return 2
    try:
        upgrade(db, tz)
        with db.connect() as conn:
            if args.api_client_cmd == "add":
                token = add_client(conn, args.name, _actor(), wall_ms())
                print(f"API client {args.name!r} added. Its token, shown this once (only its hash is kept):",
                      file=sys.stderr)
                print(token, flush=True)
            elif args.api_client_cmd == "revoke":
                revoke_client(conn, args.name, _actor(), wall_ms())
                print(f"API client {args.name!r} revoked", file=sys.stderr)
            else:
                for c in list_clients(conn):
                    state = "active" if c.revoked_ms is None else f"revoked {_when(c.revoked_ms, tz)}"
                    print(f"{c.name}\tadded {_when(c.created_ms, tz)} by {c.created_by}\t{state}")
    except ApiClientError as exc:
        print(f"province api-client: {exc}", file=sys.stderr)
        return 1
    except _FAILURES as exc:
        print(f"province api-client: {db.display()}: {exc}", file=sys.stderr)
        return 1
    return 0


def _when(ms: int, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(ms / 1000, tz).strftime("%Y-%m-%d %H:%M")
