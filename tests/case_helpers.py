"""Helpers for the cases tests (test_4b_cases, test_4b_cases_browser): reading a database's cases,
their history and their audit rows the way a person checking the platform would, and the platform's
users by name."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from platform_helpers import TZ

from countersign.province.db import Conn, Database
from countersign.province.scope import User


def user(conn: Conn, username: str) -> User:
    r = conn.one("SELECT id, username, name, role, scope FROM users WHERE username = ?", (username,))
    assert r is not None, username
    return User(int(r[0]), str(r[1]), str(r[2]), r[3], r[4])


def local_ms(day: str, hhmm: str = "12:00") -> int:
    d, t = dt.date.fromisoformat(day), dt.time.fromisoformat(hhmm)
    return int(dt.datetime.combine(d, t, TZ).timestamp() * 1000)


def cases_of(db: Database | Conn) -> list[dict[str, Any]]:
    """Every case, oldest first, as a dict of its columns."""
    sql = ("SELECT id, hall, rating, source, title, state, opened_ms, opened_by, deadline, callback_ms,"
           " callback_by, callback_outcome, cause, measures, closed_ms, on_time, overdue_ms FROM cases"
           " ORDER BY id")
    keys = [k.strip() for k in sql[len("SELECT "):sql.index(" FROM")].split(",")]
    if isinstance(db, Conn):
        rows = db.all(sql)
    else:
        with db.connect() as conn:
            rows = conn.all(sql)
    return [dict(zip(keys, r, strict=True)) for r in rows]


def case_of_rating(conn: Conn, rating: int) -> dict[str, Any]:
    found = [c for c in cases_of(conn) if c["rating"] == rating]
    assert len(found) == 1, found
    return found[0]


def events_of(conn: Conn, case_id: int) -> list[tuple[str, str]]:
    return [(str(a), str(b)) for a, b in conn.all(
        "SELECT actor, action FROM case_events WHERE case_id = ? ORDER BY id", (case_id,))]


def audit_of(conn: Conn, case_id: int) -> list[tuple[str, str, dict[str, Any]]]:
    return [(str(a), str(b), json.loads(d)) for a, b, d in conn.all(
        "SELECT actor, action, detail FROM audit_log WHERE action LIKE 'case.%' AND target = ? ORDER BY id",
        (str(case_id),))]
