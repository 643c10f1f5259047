"""Rows for the platform's analytics tests (rankings, trends, fleet, API), written into a real province
database (SQLite or PostgreSQL) at its current schema, the way the receiver stores them: one ratings row
per (device, epoch, seq), one prompts row per prompt, the day in the province's zone."""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from datetime import date, datetime
from zoneinfo import ZoneInfo

from countersign.province.db import Conn, Database
from countersign.province.migrations import upgrade

TZ = ZoneInfo("Asia/Shanghai")
# Cities and halls of the tests: two cities, three halls.
HALLS = {"hf01": ("合肥庐阳营业厅", "合肥"), "hf02": ("合肥蜀山营业厅", "合肥"),
         "wh01": ("芜湖镜湖营业厅", "芜湖")}


def noon_ms(day: str) -> int:
    d = date.fromisoformat(day)
    return int(datetime(d.year, d.month, d.day, 12, tzinfo=TZ).timestamp() * 1000)


@dataclass
class Rows:
    """Writes ratings and their prompts; seqs and prompt numbers are counted per device and hall."""

    conn: Conn
    seqs: dict[str, itertools.count[int]] = field(default_factory=dict)
    prompt_no: dict[str, itertools.count[int]] = field(default_factory=dict)

    def rating(self, hall: str, clerk: str | None, score: int | None, day: str, *, service: int = 2,
               window: str = "1", scale: int = 4, invite: bool = False, device: str | None = None,
               press: bool = True, cose: bytes | None = None) -> int:
        """One rating (score None: a no-rating) with its prompt record (none for the invite key)."""
        device = device or f"{hall}-w{int(window):02d}"
        seq = next(self.seqs.setdefault(device, itertools.count(1)))
        ms = noon_ms(day)
        prompt = 0
        if not invite:
            prompt = next(self.prompt_no.setdefault(hall, itertools.count(1)))
            self.conn.execute(
                'INSERT INTO prompts (hall, prompt, device, "window", clerk, service, txn, opened_ms,'
                " timeout, batch_id, day) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (hall, prompt, device, window, clerk, service, f"T{prompt}", ms - 20_000, 20, 1, day))
        cose = cose or f"{device}/{seq}/{score}".encode()
        kind = "rating" if score is not None else "no-rating"
        row = self.conn.one(
            "INSERT INTO ratings (device, epoch, seq, kind, score, scale, prompt, press_s, delay_ms, boot,"
            ' hall, "window", clerk, service, txn, prompt_ms, received_ms, stored_ms, batch_hall, batch_id,'
            " cose, digest, day)"
            " VALUES (?, 1, ?, ?, ?, ?, ?, ?, 3000, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?)"
            " RETURNING id",
            (device, seq, kind, score, scale if score is not None else None, prompt,
             ms // 1000 if press else None, hall, window, clerk, service, None if invite else f"T{prompt}",
             ms - 20_000, ms + 500, ms + 2000, hall, cose, hashlib.sha256(cose).digest(), day))
        return int(row[0])

    def many(self, hall: str, clerk: str | None, satisfied: int, dissatisfied: int, day: str, *,
             service: int = 2, window: str = "1") -> None:
        for _ in range(satisfied):
            self.rating(hall, clerk, 3, day, service=service, window=window)
        for _ in range(dissatisfied):
            self.rating(hall, clerk, 1, day, service=service, window=window)


def prepared(db: Database) -> Conn:
    """The database at the current schema, with the test halls; an open connection on it."""
    upgrade(db, TZ)
    conn = db.connect()
    for hall, (name, city) in HALLS.items():
        conn.execute("INSERT INTO halls (hall, name, city, county) VALUES (?, ?, ?, NULL)",
                     (hall, name, city))
    return conn
