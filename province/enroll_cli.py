"""`countersign province enroll list | import FILE | approve ID | refuse ID --reason TEXT`.

The administrator's command line for device enrollment (enroll.py), beside the platform's page
(/enrollments). Every change is one transaction with its audit row; the actor is ``cli:<unix user>``.
A refused request is one line on stderr and exit 2 (nothing changed); a database that cannot be reached,
exit 1. The key in a record is never printed.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from countersign.common.clock import wall_ms
from countersign.protocol.enrollment import MAX_RECORD

__all__ = ["actor", "register"]


def actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid-{os.getuid()}"


def register(sub: Any) -> None:
    """Add ``enroll`` to ``countersign province``'s subcommands (``sub``: its add_subparsers() object)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "enroll", help="keypad enrollments: list, import a technician's record, approve, refuse")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", required=True, help="the province's SQLite file or a postgresql:// URL")
    common.add_argument("--tz", default=None, help="the province's time zone (default Asia/Shanghai)")
    es = p.add_subparsers(dest="enroll_cmd", required=True, metavar="ACTION")

    a = es.add_parser("list", parents=[common], help="every enrollment, newest first, with its held ratings")
    a.add_argument("--state", choices=("pending", "approved", "refused"))
    a.set_defaults(func=_list)

    a = es.add_parser("import", parents=[common],
                      help="upload a technician's enrollment record (<device>-e<epoch>.enroll.json)")
    a.add_argument("file", type=Path)
    a.set_defaults(func=_import)

    a = es.add_parser("approve", parents=[common],
                      help="register the keypad's key and count its held ratings that verify")
    a.add_argument("id", type=int)
    a.set_defaults(func=_approve)

    a = es.add_parser("refuse", parents=[common], help="refuse it: its ratings stay held with the reason")
    a.add_argument("id", type=int)
    a.add_argument("--reason", required=True, help="shown beside every held rating of the keypad")
    a.set_defaults(func=_refuse)


def _tz(name: str | None) -> ZoneInfo:
    from .period import DEFAULT_TZ

    try:
        return ZoneInfo(name or DEFAULT_TZ)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise SystemExit(f"province enroll: unknown time zone {name!r}") from exc


def _run(args: argparse.Namespace, work: Any) -> int:
    from . import migrations
    from .db import Database, DatabaseError
    from .enroll import EnrollmentError
    from .errors import ProvinceError

    db = Database(args.db)
    tz = _tz(args.tz)
    try:
        migrations.upgrade(db, tz)
        with db.connect() as conn, conn.transaction():
            text: str = work(conn, tz)
    except EnrollmentError as exc:
        print(f"province enroll: {exc}", file=sys.stderr)
        return 2
    except ProvinceError as exc:
        print(f"province enroll: {exc}", file=sys.stderr)
        return 1
    except DatabaseError as exc:
        print(f"province enroll: {exc}", file=sys.stderr)
        return 1
    print(text, end="" if text.endswith("\n") else "\n")
    return 0


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _list(args: argparse.Namespace) -> int:
    from .enroll import held_counts, list_enrollments

    def work(conn: Any, _tz: ZoneInfo) -> str:
        rows = list_enrollments(conn, args.state)
        if not rows:
            return "no enrollments\n"
        out = [f"{'id':>4} {'state':8} {'device':16} {'hall':8} {'window':6} {'epoch':>5}  gateway notice"
               "        technician's record             kcv    held"]
        for e in rows:
            held = held_counts(conn, e.device)
            match = {True: "match", False: "DIFFER", None: "-"}[e.kcv_match]
            record = f"{e.technician} {_when(e.technician_ms)}" if e.has_key else "(none yet)"
            out.append(f"{e.id:>4} {e.state:8} {e.device:16} {e.hall:8} {e.window:6} {e.epoch:>5}  "
                       f"{_when(e.gateway_ms):20}  {record:30}  {match:6} "
                       f"{held.get('held', 0)} held, {held.get('released', 0)} released"
                       + (f"  ({e.reason})" if e.reason else ""))
        return "\n".join(out) + "\n"
    return _run(args, work)


def _import(args: argparse.Namespace) -> int:
    from .enroll import EnrollmentError, import_record

    try:
        with args.file.open("rb") as f:
            data = f.read(MAX_RECORD + 1)
    except OSError as exc:
        print(f"province enroll: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2

    def work(conn: Any, _tz: ZoneInfo) -> str:
        try:
            e = import_record(conn, data, actor(), wall_ms())
        except EnrollmentError as exc:
            raise EnrollmentError(f"{args.file}: {exc}") from exc
        notice = ("the hall gateway's notice is in: key check values "
                  + ("match" if e.kcv_match else "DIFFER") if e.gateway_ms is not None
                  else "no notice from the hall gateway yet")
        return (f"enrollment {e.id}: {e.device} (hall {e.hall}, window {e.window}, epoch {e.epoch}) by"
                f" {e.technician}, {e.state}; {notice}\n")
    return _run(args, work)


def _approve(args: argparse.Namespace) -> int:
    from .enroll import approve

    def work(conn: Any, tz: ZoneInfo) -> str:
        r = approve(conn, args.id, actor(), wall_ms(), tz)
        e = r.enrollment
        still = "".join(f", {reason} {n}" for reason, n in sorted(r.still_held.items()))
        return (f"enrollment {e.id} approved: {e.device} (hall {e.hall}, window {e.window}, epoch {e.epoch});"
                f" held ratings counted {r.released}, already counted {r.duplicates}; still held:"
                f" bad-mac {r.bad_mac}{still}\n")
    return _run(args, work)


def _refuse(args: argparse.Namespace) -> int:
    from .enroll import held_counts, refuse

    def work(conn: Any, _tz: ZoneInfo) -> str:
        e = refuse(conn, args.id, actor(), args.reason, wall_ms())
        held = held_counts(conn, e.device).get("held", 0)
        return f"enrollment {e.id} refused: {e.device}; {held} of its ratings stay held ({e.reason})\n"
    return _run(args, work)
