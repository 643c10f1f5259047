"""Helpers of the appeals and flags tests (test_4c_*): platform users as the pages see them, ratings at a
chosen local time with a chosen key delay (queued for the supervisor by the ratings table's trigger,
whatever writes them), and the flags the database holds."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from analytics_helpers import TZ, Rows

from countersign.province.db import Conn
from countersign.province.period import rating_day
from countersign.province.scope import User


def user(conn: Conn, username: str) -> User:
    r = conn.one("SELECT id, username, name, role, scope FROM users WHERE username = ?", (username,))
    assert r is not None, username
    return User(int(r[0]), str(r[1]), str(r[2]), r[3], r[4])


def local_ms(day: str, hhmm: str) -> int:
    d, t = dt.date.fromisoformat(day), dt.time.fromisoformat(hhmm)
    return int(dt.datetime.combine(d, t, TZ).timestamp() * 1000)


def rate(rows: Rows, hall: str, score: int | None, day: str, *, at: str = "12:00", delay_ms: int = 3000,
         invite: bool = False, window: str = "1", clerk: str | None = "10001", scale: int = 4,
         txn: str | None = None) -> int:
    """One rating written by analytics_helpers.Rows, then moved to ``at`` (local time of ``day``) with the
    keypad's key delay (the database's trigger queued it for the supervisor)."""
    rid = rows.rating(hall, clerk, score, day, window=window, invite=invite, scale=scale)
    ms = local_ms(day, at)
    sets: list[Any] = [ms // 1000, ms + 500, delay_ms, rating_day(ms // 1000, ms + 500, TZ)]
    extra = ""
    if txn is not None:
        extra = ", txn = ?"
        sets.append(txn)
    rows.conn.execute(f"UPDATE ratings SET press_s = ?, received_ms = ?, delay_ms = ?, day = ?{extra}"
                      " WHERE id = ?", [*sets, rid])
    return rid


def flags_of(conn: Conn, kind: str | None = None) -> list[dict[str, Any]]:
    where, args = ("", []) if kind is None else (" WHERE kind = ?", [kind])
    rows = conn.all(f"SELECT id, kind, hall, device, clerk, dedup, why, ratings, state FROM flags{where}"
                    " ORDER BY id", args)
    return [{"id": int(r[0]), "kind": r[1], "hall": r[2], "device": r[3], "clerk": r[4], "dedup": r[5],
             "why": r[6], "ratings": json.loads(r[7]), "state": r[8]} for r in rows]
