"""`countersign province ...`: run the receiver, print reports, make the signing key and broker config."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from countersign.protocol.keystore import (
    Keystore,
    KeystoreError,
    new_signing_key,
    public_bytes,
    save_signing_key,
    write_atomic,
)

if TYPE_CHECKING:
    from .db import Conn


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="province_cmd", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the provincial receiver")
    p.add_argument("--config", required=True, type=Path, help="province TOML config")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="satisfaction and participation report from the province store")
    p.add_argument("--db", required=True, help="the SQLite file or a postgresql:// URL")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--by", choices=("hall", "clerk", "service", "device"), action="append",
                   help="grouping (repeatable; default: all four)")
    p.add_argument("--from", dest="date_from", metavar="YYYY-MM-DD",
                   help="first day, inclusive (days in the province's zone, as stored with each rating)")
    p.add_argument("--to", dest="date_to", metavar="YYYY-MM-DD", help="last day, inclusive")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("keygen", help="create the province's Ed25519 signing key (acks)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--force", action="store_true", help="overwrite an existing key file")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("broker-config", help="write the provincial mosquitto config from the registry")
    p.add_argument("--registry", required=True, type=Path, help="registry JSON (halls and devices)")
    p.add_argument("--out", required=True, type=Path, help="folder for mosquitto.conf, passwd, acl")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--workers", type=int, default=4, help="province worker users to create")
    p.add_argument("--username", default="province", help="base username of the province workers")
    p.add_argument("--province-password-file", type=Path, required=True,
                   help="read the province password from here; created with a new one if missing")
    p.add_argument("--hall-passwords", type=Path, required=True,
                   help="JSON {hall: password}; passwords for new halls are generated and added")
    p.add_argument("--run-as", default=None, help="mosquitto `user` option")
    p.add_argument("--no-persistence", action="store_true")
    p.set_defaults(func=cmd_broker_config)

    p = sub.add_parser("bulletin", help="the monthly 通报 of the province or a city, as PDF or Excel")
    p.add_argument("--config", required=True, type=Path, help="province TOML config (database, timezone)")
    p.add_argument("--month", required=True, metavar="YYYY-MM",
                   help="the month (days in the province's zone)")
    p.add_argument("--city", default="", help="one city's bulletin (halls.city); default: the province's")
    p.add_argument("--version", type=int, default=None, help="assessment weights version (default: newest)")
    p.add_argument("--out", required=True, type=Path, help="the file to write: .pdf, or .xlsx for Excel")
    p.set_defaults(func=cmd_bulletin)

    # The platform's commands, each module adding its own (halls, enrollments, web and accounts, API).
    from . import api_cli, enroll_cli, halls, web_cli

    halls.add_parser(sub)
    enroll_cli.register(sub)
    web_cli.register(sub)
    api_cli.register(sub)


def cmd_run(args: argparse.Namespace) -> int:
    from .config import ProvinceConfig
    from .errors import ProvinceError
    from .province import Province

    cfg = ProvinceConfig.load(args.config)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_a: done.set())
    try:
        province = Province(cfg).start()
    except (ProvinceError, KeystoreError) as exc:
        print(f"province: {exc}", file=sys.stderr)
        return 1


    def _on_hup(_signum: int, _frame: object) -> None:
        # `countersign device provision|replace` rewrites the registry; SIGHUP makes it take effect.
        try:
            province.reload_registry()
        except (KeystoreError, ProvinceError) as exc:
            print(f"province: registry reload failed, keeping the old one: {exc}", file=sys.stderr)

    signal.signal(signal.SIGHUP, _on_hup)
    print("province ready", flush=True)
    try:
        done.wait()
    finally:
        province.stop()
    print(json.dumps(province.stats(), ensure_ascii=False), flush=True)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .db import Database, DatabaseError
    from .errors import ProvinceError
    from .migrations import MIGRATIONS
    from .report import GROUPINGS, Range, build_report, render_text

    db = Database(args.db)
    if db.dialect == "sqlite" and not db.path.exists():
        print(f"province report: no database at {db.path}", file=sys.stderr)
        return 2
    try:
        rng = Range(args.date_from, args.date_to)
    except ProvinceError as exc:
        print(f"province report: {exc} (whole days in the province's zone)", file=sys.stderr)
        return 2
    try:
        with db.connect() as conn:
            if (have := _schema(conn)) < MIGRATIONS[-1].version:
                print(f"province report: {db.display()} is at schema {have}, older than this program's"
                      f" {MIGRATIONS[-1].version}: start the receiver once (it upgrades the database)",
                      file=sys.stderr)
                return 1
            report = build_report(conn, tuple(args.by) if args.by else GROUPINGS, rng)
    except ProvinceError as exc:
        print(f"province report: {exc}", file=sys.stderr)
        return 1
    except DatabaseError as exc:
        print(f"province report: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=1))
    else:
        print(render_text(report), end="")
    return 0


def cmd_bulletin(args: argparse.Namespace) -> int:
    import getpass
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from countersign.common.clock import wall_ms

    from . import assessment, bulletin
    from .config import database_and_zone, read_toml
    from .db import DatabaseError
    from .errors import ProvinceError
    from .migrations import MIGRATIONS
    from .scope import Scope

    failures: tuple[type[Exception], ...] = (ProvinceError, ZoneInfoNotFoundError, *DatabaseError)
    suffix = args.out.suffix.lower()
    if suffix not in (".pdf", ".xlsx"):
        print("province bulletin: --out must end in .pdf or .xlsx", file=sys.stderr)
        return 2
    try:
        db, zone = database_and_zone(*read_toml(args.config))
        tz = ZoneInfo(zone)
        month = assessment.parse_month(args.month, tz)
        if db.dialect == "sqlite" and not db.path.exists():
            print(f"province bulletin: no database at {db.display()}", file=sys.stderr)
            return 2
        with db.connect() as conn:
            if (have := _schema(conn)) < MIGRATIONS[-1].version:
                print(f"province bulletin: {db.display()} is at schema {have}, older than this program's"
                      f" {MIGRATIONS[-1].version}: start the receiver once (it upgrades the database)",
                      file=sys.stderr)
                return 1
            if args.city and conn.scalar("SELECT 1 FROM halls WHERE city = ?", (args.city,)) is None:
                print(f"province bulletin: no hall in a city {args.city!r}", file=sys.stderr)
                return 2
            scope, label = ((Scope("city", args.city), f"{args.city} 市 City") if args.city
                            else (Scope("province"), "全省 Province"))
            b = bulletin.build(conn, month, scope, label, tz=tz, made_ms=wall_ms(),
                               made_by=f"cli:{getpass.getuser()}",
                               weights=assessment.version(conn, args.version))
    except failures as exc:
        print(f"province bulletin: {exc}", file=sys.stderr)
        return 1
    # A document to hand on, not a secret: readable like any report.
    write_atomic(args.out, bulletin.to_pdf(b) if suffix == ".pdf" else bulletin.to_xlsx(b), 0o644)
    print(args.out)
    return 0


def _schema(conn: Conn) -> int:
    """The schema version without writing anything (a report only reads); 0 before migrations existed."""
    if conn.dialect == "sqlite":
        exists = conn.scalar("SELECT 1 FROM sqlite_master WHERE type = 'table'"
                             " AND name = 'schema_migrations'")
    else:
        exists = conn.scalar("SELECT to_regclass('schema_migrations') IS NOT NULL")
    return int(conn.scalar("SELECT MAX(version) FROM schema_migrations") or 0) if exists else 0


def cmd_keygen(args: argparse.Namespace) -> int:
    if args.out.exists() and not args.force:
        print(f"{args.out} exists; use --force to replace it (gateways pinned the old public key)",
              file=sys.stderr)
        return 1
    key = new_signing_key()
    save_signing_key(args.out, key)
    print(public_bytes(key).hex())   # goes into every gateway's config as the province public key
    return 0


def _read_json_object(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def cmd_broker_config(args: argparse.Namespace) -> int:
    from .brokerconf import new_password, write_province_broker_files
    from .errors import ConfigError

    try:
        registry = Keystore.load(args.registry)
        hall_pw = {str(k): str(v) for k, v in _read_json_object(args.hall_passwords).items()}
    except (KeystoreError, ValueError) as exc:
        print(f"broker-config: {exc}", file=sys.stderr)
        return 1
    added = [h for h in sorted(registry.halls) if h not in hall_pw]
    for h in added:
        hall_pw[h] = new_password()
    if added:
        write_atomic(args.hall_passwords, json.dumps(hall_pw, indent=1, sort_keys=True) + "\n")
    if args.province_password_file.exists():
        province_pw = args.province_password_file.read_text(encoding="utf-8").strip()
    else:
        province_pw = new_password()
        write_atomic(args.province_password_file, province_pw + "\n")
    try:
        files = write_province_broker_files(args.out, registry, hall_pw, province_pw, port=args.port,
                                            bind=args.bind, run_as=args.run_as, province_user=args.username,
                                            workers=args.workers, persistence=not args.no_persistence)
    except (ConfigError, KeystoreError) as exc:        # KeystoreError: an unknown --run-as user
        print(f"broker-config: {exc}", file=sys.stderr)
        return 1
    print(files.conf)
    if added:
        print(f"new hall passwords for {', '.join(added)} in {args.hall_passwords}", file=sys.stderr)
    return 0
