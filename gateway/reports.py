"""What the gateway tells the province about itself: keypad status, its backlog, day counts, enrollments.

These are the batch entry kinds 3..6 (protocol/batch.py, PROTOCOL.md 9.4). The reporter runs on the
forwarder's thread, once per forwarding round (rounds follow every ingest commit, so a heartbeat that
changes something is reported within a round), and says when it next has something due, so the thread
sleeps until then instead of polling:

- a keypad's status when it changes meaningfully (online/offline, firmware, reset cause or a reboot,
  stuck keys) and otherwise at most every ``every_s`` while its figures move, never per heartbeat;
- the gateway's backlog every ``every_s``;
- per keypad, key epoch and local day, what the gateway stored, once the day has ended, and again with the
  new figures whenever ratings of an ended day arrive later (a keypad's outbox drained after a reboot);
- a notice for every (device, epoch) the keystore holds and the province has not been told of, with the
  key's check value (never the key).

The tables here are the reporter's memory of what it sent; what it sends is queued with ``enqueue`` like
any entry, so it travels in signed batches and is kept until the province acks it. A report still
waiting in the queue (the uplink is down) is replaced by a newer one of the same subject instead of
piling up: the province keeps the latest of each anyway.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from countersign.protocol import batch, cbor
from countersign.protocol.errors import ProtocolError
from countersign.protocol.kcv import key_check_value
from countersign.protocol.keystore import Keystore

from .alarms import MISSED_HEARTBEATS
from .store import HELD_BATCH_ID, enqueue, report_key

log = logging.getLogger(__name__)

__all__ = ["REPORT_SCHEMA", "ReportConfig", "Reporter", "init_report_schema"]

REPORT_SCHEMA = (
    # The status last sent per keypad: the figures that matter at once, and all of them.
    """CREATE TABLE IF NOT EXISTS report_keypads (
        device TEXT PRIMARY KEY, sent_ms INTEGER NOT NULL, major TEXT NOT NULL, figures TEXT NOT NULL
    )""",
    # What the gateway stored per keypad, epoch and local day; dirty = changed since last sent.
    """CREATE TABLE IF NOT EXISTS report_days (
        device TEXT NOT NULL, epoch INTEGER NOT NULL, day TEXT NOT NULL,
        ratings INTEGER NOT NULL, no_ratings INTEGER NOT NULL, first_seq INTEGER NOT NULL,
        last_seq INTEGER NOT NULL, dirty INTEGER NOT NULL, sent_ms INTEGER,
        PRIMARY KEY (device, epoch, day)
    )""",
    "CREATE INDEX IF NOT EXISTS report_days_dirty ON report_days (day) WHERE dirty = 1",
    # Enrollment notices sent, per (device, epoch), with what they said.
    """CREATE TABLE IF NOT EXISTS report_enrolled (
        device TEXT NOT NULL, epoch INTEGER NOT NULL, "window" TEXT NOT NULL, scale INTEGER NOT NULL,
        kcv TEXT NOT NULL, sent_ms INTEGER NOT NULL, PRIMARY KEY (device, epoch)
    )""",
    # name -> integer: 'ratings_tallied' (the last ratings.id counted), 'gateway_status_ms'.
    "CREATE TABLE IF NOT EXISTS report_state (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)

# Ratings read per tally step: a first run over a year of a hall's ratings is a few steps, not one.
TALLY_CHUNK = 20_000


def init_report_schema(conn: sqlite3.Connection) -> None:
    """Create the reporter's tables (inside the caller's transaction; idempotent)."""
    for stmt in REPORT_SCHEMA:
        conn.execute(stmt)


@dataclass(frozen=True)
class ReportConfig:
    keystore: Callable[[], Keystore]      # the gateway's current keystore (reloaded on SIGHUP)
    timezone: str = "Asia/Shanghai"       # the hall's zone: the days of the day counts
    heartbeat_s: int = 60                 # the keypads' heartbeat period: offline after MISSED_HEARTBEATS
    every_s: float = 300.0                # keypad figures and the backlog at most / at least this often
    # Rounds follow every ingest commit (hundreds a second under load); the reports are looked at no more
    # often than this, so a busy hall's forwarding pays for them once a second, not per commit.
    min_interval_s: float = 1.0

    def check(self) -> None:
        ZoneInfo(self.timezone)
        if self.heartbeat_s < 1 or self.every_s <= 0 or self.min_interval_s < 0:
            raise ValueError("reports: heartbeat_s >= 1, every_s > 0, min_interval_s >= 0")


def _state(conn: sqlite3.Connection, name: str) -> int | None:
    row = conn.execute("SELECT value FROM report_state WHERE name = ?", (name,)).fetchone()
    return None if row is None else int(row[0])


def _set_state(conn: sqlite3.Connection, name: str, value: int) -> None:
    conn.execute("INSERT INTO report_state (name, value) VALUES (?, ?)"
                 " ON CONFLICT (name) DO UPDATE SET value = excluded.value", (name, value))


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


class Reporter:
    """One hall's reports; ``run`` is called on the forwarder's thread with its connection."""

    def __init__(self, cfg: ReportConfig, now_ms: Callable[[], int],
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        cfg.check()
        self.cfg, self.now_ms, self.monotonic = cfg, now_ms, monotonic
        self._last_run: float | None = None
        self.tz = ZoneInfo(cfg.timezone)
        self._offline_ms = MISSED_HEARTBEATS * cfg.heartbeat_s * 1000
        self._every_ms = int(cfg.every_s * 1000)
        self._kcv: dict[bytes, str] = {}      # key -> its check value: one HMAC per key, not per round

    def run(self, conn: sqlite3.Connection) -> float | None:
        """Queue what is due now; return the seconds until the next report falls due by time alone
        (None: only a change can make one due). Reads outside a transaction; writes, when there is
        something to send, in one (this thread alone writes the reporter's tables). Within
        ``min_interval_s`` of the last look it only says when to look again."""
        mono = self.monotonic()
        if self._last_run is not None and mono - self._last_run < self.cfg.min_interval_s:
            return self._last_run + self.cfg.min_interval_s - mono
        self._last_run = mono
        now = self.now_ms()
        tally = self._read_tally(conn)
        keypads, next_keypad = self._keypads(conn, now)
        gateway_due, next_gateway = self._gateway_due(conn, now)
        enrolls = self._enrollments(conn, now)
        today = self._day(now)
        if tally[1] or keypads or gateway_due or enrolls or self._days_due(conn, today):
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._write_tally(conn, tally)
                for entry, major, figures in keypads:
                    enqueue(conn, entry)
                    conn.execute("INSERT INTO report_keypads (device, sent_ms, major, figures)"
                                 " VALUES (?,?,?,?) ON CONFLICT (device) DO UPDATE SET"
                                 " sent_ms = excluded.sent_ms, major = excluded.major,"
                                 " figures = excluded.figures",
                                 (entry.device, now, major, figures))
                for e in enrolls:
                    enqueue(conn, e)
                    conn.execute('INSERT INTO report_enrolled (device, epoch, "window", scale, kcv, sent_ms)'
                                 " VALUES (?,?,?,?,?,?) ON CONFLICT (device, epoch) DO UPDATE SET"
                                 ' "window" = excluded."window", scale = excluded.scale, kcv = excluded.kcv,'
                                 " sent_ms = excluded.sent_ms",
                                 (e.device, e.epoch, e.window, e.scale, e.kcv, now))
                self._send_days(conn, today, now)
                if gateway_due:
                    # Last, so the backlog counts this round's other reports; the status still queued
                    # goes first, so the backlog does not count what this one replaces.
                    conn.execute("DELETE FROM uplink_entries WHERE report_key = ? AND batch_id IS NULL",
                                 (report_key(batch.GatewayStatusEntry(now, 0, None)),))
                    enqueue(conn, batch.GatewayStatusEntry(now, *_backlog(conn, now)))
                    _set_state(conn, "gateway_status_ms", now)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        midnight = self._next_midnight(conn, today)
        dues = [d for d in (next_keypad, next_gateway, midnight) if d is not None]
        if len(tally[1]) >= TALLY_CHUNK:
            dues.append(now)            # more ratings to count: come back at once
        return None if not dues else max(0.0, (min(dues) - now) / 1000)

    # ---- keypad status -------------------------------------------------------------------------------

    def _keypads(self, conn: sqlite3.Connection, now: int
                 ) -> tuple[list[tuple[batch.KeypadStatusEntry, str, str]], int | None]:
        sent = {d: (ms, major, figures) for d, ms, major, figures in
                conn.execute("SELECT device, sent_ms, major, figures FROM report_keypads").fetchall()}
        out: list[tuple[batch.KeypadStatusEntry, str, str]] = []
        due: int | None = None
        for device, seen, last, online_flag in conn.execute(
                "SELECT device, last_seen_ms, last, online FROM device_health ORDER BY device").fetchall():
            try:
                entry, boot = self._status(now, device, int(seen), last, bool(online_flag))
            except (ProtocolError, ValueError, TypeError) as exc:
                # A health row this code cannot read (written by another version): reported nowhere,
                # said here; the other keypads and the ratings go on.
                log.error("keypad %s: its health figures cannot be reported: %s", device, exc)
                continue
            major = json.dumps([entry.online, entry.fw, entry.reset, entry.stuck, boot])
            figures = json.dumps([entry.seen_ms, entry.heap, entry.outbox, entry.rssi])
            prev = sent.get(device)
            if prev is None or prev[1] != major:
                out.append((entry, major, figures))
            elif prev[2] != figures:
                if now - prev[0] >= self._every_ms:
                    out.append((entry, major, figures))
                else:
                    due = _min(due, prev[0] + self._every_ms)
            if entry.online:        # it turns offline by time alone: report that when it happens
                due = _min(due, entry.seen_ms + self._offline_ms + 1)
        return out, due

    def _status(self, now: int, device: str, seen: int, last: str | None,
                online_flag: bool) -> tuple[batch.KeypadStatusEntry, int | None]:
        h: dict[str, Any] = json.loads(last) if last else {}
        # Offline as the gateway's alarms judge it: a last will, or no message for MISSED_HEARTBEATS.
        online = online_flag and now - seen <= self._offline_ms
        rssi = h.get("rssi")
        entry = batch.KeypadStatusEntry(
            device, now, seen, online, h.get("fw"), _opt_int(h.get("reset")), _opt_int(h.get("heap")),
            _opt_int(h.get("outbox")), None if rssi is None else int(rssi), _opt_int(h.get("stuck")))
        # Checked as the province will decode it, so a bad figure is caught here, not in a batch.
        batch.decode_entry(cbor.dumps(entry.to_map()))
        return entry, _opt_int(h.get("boot"))

    # ---- gateway status ------------------------------------------------------------------------------

    def _gateway_due(self, conn: sqlite3.Connection, now: int) -> tuple[bool, int]:
        last = _state(conn, "gateway_status_ms")
        if last is not None and now - last < self._every_ms:
            return False, last + self._every_ms
        return True, now + self._every_ms

    # ---- enrollment notices --------------------------------------------------------------------------

    def _enrollments(self, conn: sqlite3.Connection, now: int) -> list[batch.EnrollEntry]:
        sent = {(d, e): (w, s, k) for d, e, w, s, k in
                conn.execute('SELECT device, epoch, "window", scale, kcv FROM report_enrolled').fetchall()}
        out = []
        for device, dk in sorted(self.cfg.keystore().devices.items()):
            if dk.revoked:
                continue
            kcv = self._kcv.get(dk.key) or self._kcv.setdefault(dk.key, key_check_value(dk.key))
            if sent.get((device, dk.epoch)) != (dk.window, dk.scale, kcv):
                try:
                    out.append(batch.EnrollEntry(device, dk.window, dk.epoch, dk.scale, kcv, now))
                except ProtocolError as exc:      # e.g. a window label over 64 bytes in the keystore
                    log.error("keypad %s: no enrollment notice: %s", device, exc)
        return out

    # ---- day counts ----------------------------------------------------------------------------------

    def _day(self, ms: int) -> str:
        return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).astimezone(self.tz).date().isoformat()

    def _read_tally(self, conn: sqlite3.Connection) -> tuple[int, list[tuple[Any, ...]]]:
        done = _state(conn, "ratings_tallied") or 0
        rows = conn.execute("SELECT id, device, epoch, seq, kind, press_time, received_ms FROM ratings"
                            " WHERE id > ? ORDER BY id LIMIT ?", (done, TALLY_CHUNK)).fetchall()
        return done, rows

    def _write_tally(self, conn: sqlite3.Connection, tally: tuple[int, list[tuple[Any, ...]]]) -> None:
        _done, rows = tally
        if not rows:
            return
        days: dict[tuple[str, int, str], list[int]] = {}
        for _id, device, epoch, seq, kind, press_s, received_ms in rows:
            # The province's rule (province/period.py rating_day): the press time's day, or the day the
            # gateway received it when the keypad's clock was unknown.
            day = self._day(press_s * 1000 if press_s is not None else received_ms)
            t = days.setdefault((device, epoch, day), [0, 0, seq, seq])
            t[0 if kind == "rating" else 1] += 1
            t[2], t[3] = min(t[2], seq), max(t[3], seq)
        conn.executemany(
            "INSERT INTO report_days (device, epoch, day, ratings, no_ratings, first_seq, last_seq, dirty)"
            " VALUES (?,?,?,?,?,?,?,1) ON CONFLICT (device, epoch, day) DO UPDATE SET"
            " ratings = ratings + excluded.ratings, no_ratings = no_ratings + excluded.no_ratings,"
            " first_seq = min(first_seq, excluded.first_seq), last_seq = max(last_seq, excluded.last_seq),"
            " dirty = 1", [(*k, *v) for k, v in days.items()])
        _set_state(conn, "ratings_tallied", int(rows[-1][0]))

    @staticmethod
    def _days_due(conn: sqlite3.Connection, today: str) -> bool:
        return conn.execute("SELECT 1 FROM report_days WHERE dirty = 1 AND day < ? LIMIT 1",
                            (today,)).fetchone() is not None

    @staticmethod
    def _send_days(conn: sqlite3.Connection, today: str, now: int) -> None:
        rows = conn.execute("SELECT device, epoch, day, ratings, no_ratings, first_seq, last_seq"
                            " FROM report_days WHERE dirty = 1 AND day < ? ORDER BY day, device, epoch",
                            (today,)).fetchall()
        for device, epoch, day, ratings, no_ratings, first_seq, last_seq in rows:
            try:
                e = batch.DayCountEntry(device, epoch, day, ratings, no_ratings, first_seq, last_seq, now)
            except ProtocolError as exc:     # cannot happen with distinct seqs; said, never sent broken
                log.error("keypad %s: day count of %s cannot be reported: %s", device, day, exc)
                continue
            enqueue(conn, e)
        conn.executemany("UPDATE report_days SET dirty = 0, sent_ms = ?"
                         " WHERE device = ? AND epoch = ? AND day = ?",
                         [(now, r[0], r[1], r[2]) for r in rows])

    def _next_midnight(self, conn: sqlite3.Connection, today: str) -> int | None:
        """The end of today, if a count of today (or later) waits for its day to end."""
        if conn.execute("SELECT 1 FROM report_days WHERE dirty = 1 AND day >= ? LIMIT 1",
                        (today,)).fetchone() is None:
            return None
        d = dt.date.fromisoformat(today) + dt.timedelta(days=1)
        return int(dt.datetime(d.year, d.month, d.day, tzinfo=self.tz).timestamp() * 1000)


def _min(a: int | None, b: int) -> int:
    return b if a is None else min(a, b)


def _backlog(conn: sqlite3.Connection, now: int) -> tuple[int, int | None]:
    """Entries not acked by the province and when the oldest was queued (in the caller's transaction, so
    both figures are of one moment)."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM uplink_entries WHERE batch_id IS NULL OR batch_id = ?)"
        " + (SELECT coalesce(sum(entries), 0) FROM batches WHERE acked_ms IS NULL),"
        " (SELECT min(created_ms) FROM uplink_entries WHERE batch_id IS NULL OR batch_id = ?),"
        " (SELECT min(created_ms) FROM uplink_entries WHERE batch_id IN"
        "  (SELECT id FROM batches WHERE acked_ms IS NULL))",
        (HELD_BATCH_ID, HELD_BATCH_ID)).fetchone()
    n = int(row[0])
    if n == 0:
        return 0, None
    # n > 0 means some entry is unacked, so one of the minima exists; ``now`` only keeps the entry valid.
    return n, min((int(v) for v in row[1:] if v is not None), default=now)
