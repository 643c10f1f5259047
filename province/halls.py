"""Hall metadata (name, city, county) for the ``halls`` table, imported from a CSV file.

Why a CSV and not the registry file: the registry is rewritten by ``countersign device provision`` and
``replace`` through ``Keystore.save``, which keeps only a hall's public key, so anything else put there
would be lost at the next provisioning. The utility's hall list (营业厅名录) is a spreadsheet anyway:

    hall,name,city,county
    hf01,合肥市供电公司政务中心营业厅,合肥市,蜀山区

UTF-8, with or without the BOM Excel writes; the header row is required; ``county`` may be empty. The
whole file is checked before anything is written, and written in one transaction with one audit row: a
bad line changes nothing and names its line number. A hall already in the table gets the file's values.
``countersign province halls --db URL --csv halls.csv``.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import io
import sys
from dataclasses import dataclass
from pathlib import Path

from countersign.common.clock import wall_ms
from countersign.protocol.topics import check_id

from . import audit
from .db import Conn, Database, DatabaseError
from .errors import ProvinceError

__all__ = ["HallRow", "HallsError", "add_parser", "cmd_halls", "import_halls", "read_halls_csv"]

COLUMNS = ("hall", "name", "city", "county")
MAX_FIELD = 200


class HallsError(ProvinceError, ValueError):
    reason = "bad-halls-file"


@dataclass(frozen=True)
class HallRow:
    hall: str
    name: str
    city: str
    county: str | None


def read_halls_csv(data: bytes, source: str = "halls.csv") -> list[HallRow]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise HallsError(f"{source}: not UTF-8 ({exc}); save it as 'CSV UTF-8'") from exc
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip().lower() for h in next(reader, [])]
    if header[:3] != list(COLUMNS[:3]) or header[3:] not in ([], ["county"]):
        raise HallsError(f"{source}: the first line must be {','.join(COLUMNS)} (county optional),"
                         f" not {','.join(header) or 'empty'}")
    rows: list[HallRow] = []
    seen: set[str] = set()
    for line, fields in enumerate(reader, start=2):
        if not any(f.strip() for f in fields):
            continue
        if len(fields) > len(header):
            raise HallsError(f"{source} line {line}: {len(fields)} fields, the header has {len(header)}")
        hall, name, city, county = [*(f.strip() for f in fields), "", "", "", ""][:4]
        try:
            check_id(hall, "hall id")
        except ValueError as exc:
            raise HallsError(f"{source} line {line}: {exc}") from exc
        if not name or not city:
            raise HallsError(f"{source} line {line}: hall {hall} needs a name and a city")
        if max(len(name), len(city), len(county)) > MAX_FIELD:
            raise HallsError(f"{source} line {line}: a field is longer than {MAX_FIELD} characters")
        if hall in seen:
            raise HallsError(f"{source} line {line}: hall {hall} is listed twice")
        seen.add(hall)
        rows.append(HallRow(hall, name, city, county or None))
    return rows


def import_halls(conn: Conn, rows: list[HallRow], actor: str, now_ms: int) -> tuple[int, int]:
    """Insert or update every row in one transaction; return (added, changed)."""
    added = changed = 0
    with conn.transaction():
        for r in rows:
            old = conn.one("SELECT name, city, county FROM halls WHERE hall = ?", (r.hall,))
            if old is None:
                conn.execute("INSERT INTO halls (hall, name, city, county) VALUES (?, ?, ?, ?)",
                             (r.hall, r.name, r.city, r.county))
                added += 1
            elif tuple(old) != (r.name, r.city, r.county):
                conn.execute("UPDATE halls SET name = ?, city = ?, county = ? WHERE hall = ?",
                             (r.name, r.city, r.county, r.hall))
                changed += 1
        if added or changed:
            audit.record(conn, actor, "halls-import", None, {"added": added, "changed": changed,
                                                             "halls": [r.hall for r in rows]}, now_ms)
    return added, changed


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``countersign province halls``: for province/cli.py's ``register``."""
    p = sub.add_parser("halls", help="import hall names, cities and counties from a CSV file")
    p.add_argument("--db", required=True, help="the SQLite file or a postgresql:// URL")
    p.add_argument("--csv", required=True, type=Path, help="hall,name,city,county (UTF-8, BOM or not)")
    p.set_defaults(func=cmd_halls)


def cmd_halls(args: argparse.Namespace) -> int:
    from .migrations import upgrade

    try:
        rows = read_halls_csv(args.csv.read_bytes(), str(args.csv))
    except OSError as exc:
        print(f"province halls: cannot read {args.csv}: {exc.strerror}", file=sys.stderr)
        return 2
    except HallsError as exc:
        print(f"province halls: {exc}", file=sys.stderr)
        return 2
    db = Database(args.db)
    try:
        upgrade(db)
        with db.connect() as conn:
            added, changed = import_halls(conn, rows, f"cli:{getpass.getuser()}", wall_ms())
    except ProvinceError as exc:
        print(f"province halls: {exc}", file=sys.stderr)
        return 1
    except DatabaseError as exc:
        print(f"province halls: {exc}", file=sys.stderr)
        return 1
    print(f"{len(rows)} halls: {added} added, {changed} changed")
    return 0
