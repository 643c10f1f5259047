"""The gateway's durable store: SQLite, WAL, synchronous=FULL, one transaction per group of messages.

Dedup is on (device, epoch, seq) by a UNIQUE constraint checked in the same transaction as the insert;
the same key with a different digest is a security alarm and the newcomer goes to quarantine (the
original is never overwritten).

The uplink queue is here too, in the same file and written in the same transactions: storing a rating
(or opening a prompt) enqueues its entry for the province before the commit, so a committed rating is
always queued and a rolled-back one never is. The forwarder (forward.py) forms signed batches from that
queue on its own thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from countersign.common.db import open_db
from countersign.protocol import batch, cbor
from countersign.protocol.context import Context
from countersign.protocol.outcome import Outcome

from . import readback

__all__ = ["HELD_BATCH_ID", "Context", "Outcome", "PromptRow", "RatingRecord", "Store", "digest", "enqueue",
           "init_uplink_schema", "report_key", "uplink_backlog"]

# Entries that cannot be decoded back from the database (disk corruption, a schema bug) are marked with
# this batch id rather than put in a batch the province would refuse; they stay in the backlog, alarmed.
HELD_BATCH_ID = 0

UPLINK_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS batches (
        id INTEGER PRIMARY KEY,          -- the batch id the province dedups on, with the hall
        created_ms INTEGER NOT NULL,
        signed BLOB NOT NULL,            -- the COSE_Sign1 bytes, resent unchanged until acked
        entries INTEGER NOT NULL,
        sent_count INTEGER NOT NULL DEFAULT 0,
        last_sent_ms INTEGER,
        acked_ms INTEGER,                -- NULL until the province's signed ack: never aged out
        stored INTEGER, dups INTEGER,
        rejected TEXT                    -- JSON [[entry index, reason], ...] from the ack
    )""",
    "CREATE INDEX IF NOT EXISTS batches_unacked ON batches (id) WHERE acked_ms IS NULL",
    """CREATE TABLE IF NOT EXISTS uplink_entries (
        id INTEGER PRIMARY KEY,
        entry BLOB NOT NULL,             -- deterministic CBOR map of a batch entry (batch.Entry)
        kind INTEGER NOT NULL,           -- batch.EntryKind
        created_ms INTEGER NOT NULL,
        batch_id INTEGER,                -- NULL until put in a batch, 0 = held (undecodable, alarmed)
        report_key TEXT                  -- a report's subject (report_key()); NULL for ratings and prompts
    )""",
    "CREATE INDEX IF NOT EXISTS uplink_entries_unbatched ON uplink_entries (id) WHERE batch_id IS NULL",
    "CREATE INDEX IF NOT EXISTS uplink_entries_batch ON uplink_entries (batch_id)",
)

UPLINK_REPORT_INDEX = ("CREATE INDEX IF NOT EXISTS uplink_entries_report ON uplink_entries (report_key)"
                       " WHERE batch_id IS NULL AND report_key IS NOT NULL")


def init_uplink_schema(conn: sqlite3.Connection) -> None:
    """Create the uplink tables if they do not exist, and give an older queue the report_key column
    (idempotent; inside the caller's transaction, no commit of its work)."""
    for stmt in UPLINK_SCHEMA:
        conn.execute(stmt)
    if "report_key" not in {r[1] for r in conn.execute("PRAGMA table_info(uplink_entries)").fetchall()}:
        conn.execute("ALTER TABLE uplink_entries ADD COLUMN report_key TEXT")
    conn.execute(UPLINK_REPORT_INDEX)


def report_key(entry: batch.Entry) -> str | None:
    """What a report is about: a newer report of the same subject replaces one still queued. None for a
    device message or a prompt record, which are never replaced."""
    if isinstance(entry, batch.KeypadStatusEntry):
        return f"keypad:{entry.device}"
    if isinstance(entry, batch.GatewayStatusEntry):
        return "gateway"
    if isinstance(entry, batch.DayCountEntry):
        return f"day:{entry.device}:{entry.epoch}:{entry.day}"
    if isinstance(entry, batch.EnrollEntry):
        return f"enroll:{entry.device}:{entry.epoch}"
    return None


_KINDS: dict[type, batch.EntryKind] = {
    batch.KeypadStatusEntry: batch.EntryKind.KEYPAD_STATUS,
    batch.GatewayStatusEntry: batch.EntryKind.GATEWAY_STATUS,
    batch.DayCountEntry: batch.EntryKind.DAY_COUNT,
    batch.EnrollEntry: batch.EntryKind.ENROLL,
}


def enqueue(conn: sqlite3.Connection, entry: batch.Entry, created_ms: int | None = None) -> None:
    """Queue one entry for the province, inside the caller's open transaction (no commit here).

    ``created_ms`` defaults to the entry's own gateway timestamp (received or prompt-opened ms, or when
    a report was taken). A report replaces a report of the same subject that is not in a batch yet (a
    batched one is a fixed byte string until acked and stays).
    """
    if isinstance(entry, batch.DeviceEntry):
        kind, ms = batch.EntryKind.DEVICE_MESSAGE, entry.received_ms
    elif isinstance(entry, batch.PromptEntry):
        kind, ms = batch.EntryKind.PROMPT, entry.opened_ms
    elif type(entry) in _KINDS:
        kind, ms = _KINDS[type(entry)], entry.at_ms
    else:
        raise TypeError(f"cannot forward {type(entry).__name__}")
    key = report_key(entry)
    if key is not None:
        conn.execute("DELETE FROM uplink_entries WHERE report_key = ? AND batch_id IS NULL", (key,))
    conn.execute("INSERT INTO uplink_entries (entry, kind, created_ms, report_key) VALUES (?, ?, ?, ?)",
                 (cbor.dumps(entry.to_map()), int(kind), ms if created_ms is None else created_ms, key))


def uplink_backlog(conn: sqlite3.Connection) -> int:
    """Entries not yet acked by the province: unbatched, held, or in a batch not acked."""
    # One statement, so one snapshot: an entry moving into a batch is never counted twice or not at all.
    row = conn.execute(
        "SELECT (SELECT count(*) FROM uplink_entries WHERE batch_id IS NULL)"
        " + (SELECT count(*) FROM uplink_entries WHERE batch_id = ?)"
        " + (SELECT coalesce(sum(entries), 0) FROM batches WHERE acked_ms IS NULL)",
        (HELD_BATCH_ID,)).fetchone()
    return int(row[0])


SCHEMA = """
CREATE TABLE IF NOT EXISTS ratings (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('rating', 'no-rating')),
    score INTEGER, scale INTEGER,
    prompt INTEGER NOT NULL,
    press_time INTEGER,              -- device unix seconds; NULL = the device clock was unknown
    mono_ms INTEGER NOT NULL, boot INTEGER NOT NULL, delay_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    window TEXT NOT NULL, clerk TEXT, clerk_name TEXT, service INTEGER NOT NULL, txn TEXT,
    prompt_ms INTEGER,
    msg BLOB NOT NULL,               -- the device's COSE_Mac0, unchanged (the province re-verifies it)
    digest BLOB NOT NULL,            -- sha256(msg)
    UNIQUE (device, epoch, seq)
);
-- One outcome per prompt (rating or no-rating); invite-key prompts (id 0) are each their own.
CREATE UNIQUE INDEX IF NOT EXISTS ratings_prompt ON ratings (prompt) WHERE prompt > 0;
CREATE TABLE IF NOT EXISTS prompts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL, window TEXT NOT NULL, clerk TEXT NOT NULL, clerk_name TEXT,
    service INTEGER NOT NULL, txn TEXT NOT NULL, opened_ms INTEGER NOT NULL, timeout INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    window TEXT PRIMARY KEY, clerk TEXT NOT NULL, name TEXT, since_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    received_ms INTEGER NOT NULL, topic TEXT NOT NULL, device TEXT, reason TEXT NOT NULL,
    detail TEXT NOT NULL, payload BLOB NOT NULL, digest BLOB NOT NULL
);
-- Every quarantined message counted, per source (device, or topic without one) and reason, kept or not.
CREATE TABLE IF NOT EXISTS quarantine_tally (
    source TEXT NOT NULL, reason TEXT NOT NULL, n INTEGER NOT NULL, bytes INTEGER NOT NULL,
    first_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL, PRIMARY KEY (source, reason)
);
CREATE TABLE IF NOT EXISTS alarms (
    id INTEGER PRIMARY KEY,
    ms INTEGER NOT NULL, kind TEXT NOT NULL, device TEXT, detail TEXT NOT NULL, cleared_ms INTEGER,
    acked_ms INTEGER, acked_by TEXT  -- who acknowledged it on the hall page (ALARM_COLUMNS migrates)
);
-- Every raise and clear, written in the alarm's own transaction: notify.py pushes them from here.
CREATE TABLE IF NOT EXISTS alarm_events (
    id INTEGER PRIMARY KEY, alarm INTEGER NOT NULL,
    event TEXT NOT NULL CHECK (event IN ('raised', 'cleared')), ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS device_health (
    device TEXT PRIMARY KEY, last_seen_ms INTEGER NOT NULL, last TEXT, online INTEGER NOT NULL
);
"""


# A quarantined payload is kept for analysis (a device message is at most 256 bytes; the broker's packet
# limit bounds the rest), but not more of it than this.
MAX_QUARANTINE_BYTES = 1024


# Columns added to ``alarms`` after its first release, with their types: added to an older database file.
ALARM_COLUMNS = (("acked_ms", "INTEGER"), ("acked_by", "TEXT"))


def migrate_alarms(c: sqlite3.Connection) -> None:
    """Give an alarms table from an older gateway the columns it lacks (inside the caller's transaction)."""
    have = {r[1] for r in c.execute("PRAGMA table_info(alarms)").fetchall()}
    for name, typ in ALARM_COLUMNS:
        if name not in have:
            c.execute(f"ALTER TABLE alarms ADD COLUMN {name} {typ}")


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass
class RatingRecord:
    device: str
    epoch: int
    seq: int
    kind: str                   # 'rating' | 'no-rating'
    score: int | None
    scale: int | None
    prompt: int
    press_time: int | None
    mono_ms: int
    boot: int
    delay_ms: int
    received_ms: int
    ctx: Context
    msg: bytes

    def uplink_entry(self) -> batch.DeviceEntry:
        return batch.DeviceEntry(self.msg, self.received_ms, self.ctx.forwarded())


@dataclass
class PromptRow:
    id: int
    device: str
    ctx: Context                 # clerk, txn and prompt_ms always set: a prompt is opened for a clerk
    timeout: int


class Store:
    """One SQLite connection shared by the gateway's threads under a lock (writes are short)."""

    def __init__(self, path: Path, now_ms: Callable[[], int]) -> None:
        self.path, self.now_ms = Path(path), now_ms
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        # Shared by the gateway's threads, always under self._lock.
        self.conn = open_db(self.path, check_same_thread=False)
        self.conn.execute("BEGIN IMMEDIATE")
        init_uplink_schema(self.conn)
        self.conn.execute("COMMIT")
        self.conn.executescript("BEGIN IMMEDIATE;" + SCHEMA + "COMMIT;")
        with self.transaction() as c:
            migrate_alarms(c)
        with self.transaction() as c:
            readback.init_schema(c)      # txn once per hall, read-back and webhook deliveries

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (durable on return: synchronous=FULL), ROLLBACK on any error."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self.conn

    # --- writes, each inside the caller's transaction -------------------------------------------------

    @staticmethod
    def seen(c: sqlite3.Connection, device: str, epoch: int, seq: int, msg: bytes) -> Outcome | None:
        """DUPLICATE or CONFLICT if (device, epoch, seq) is stored already, else None."""
        row = c.execute("SELECT digest FROM ratings WHERE device=? AND epoch=? AND seq=?",
                        (device, epoch, seq)).fetchone()
        if row is None:
            return None
        return Outcome.DUPLICATE if bytes(row[0]) == digest(msg) else Outcome.CONFLICT

    def store_rating(self, c: sqlite3.Connection, r: RatingRecord) -> Outcome:
        """Dedup and insert in the caller's transaction; queue the entry for the province."""
        prior = self.seen(c, r.device, r.epoch, r.seq, r.msg)
        if prior is not None:
            return prior
        c.execute(
            "INSERT INTO ratings (device, epoch, seq, kind, score, scale, prompt, press_time, mono_ms, boot,"
            " delay_ms, received_ms, window, clerk, clerk_name, service, txn, prompt_ms, msg, digest)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (r.device, r.epoch, r.seq, r.kind, r.score, r.scale, r.prompt, r.press_time, r.mono_ms, r.boot,
             r.delay_ms, r.received_ms, r.ctx.window, r.ctx.clerk, r.ctx.clerk_name, r.ctx.service, r.ctx.txn,
             r.ctx.prompt_ms, r.msg, digest(r.msg)))
        enqueue(c, r.uplink_entry())
        if r.prompt > 0:
            # The prompt's webhook deliveries, in the transaction that stores its outcome.
            readback.prompt_ended(c, r.prompt, r.received_ms)
        return Outcome.STORED

    @staticmethod
    def quarantine(c: sqlite3.Connection, received_ms: int, topic: str, device: str | None, reason: str,
                   detail: str, payload: bytes, *, keep: int = 1000, sample: int = 100) -> bool:
        """Count a rejected message; keep it whole while its source has at most ``keep`` of them, then one
        in ``sample``. The payload kept is cut to MAX_QUARANTINE_BYTES (its digest is of all of it).
        -> True for the first message over ``keep`` (the caller raises the flood alarm once)."""
        source = device if device is not None else f"topic:{topic}"
        c.execute("INSERT INTO quarantine_tally (source, reason, n, bytes, first_ms, last_ms)"
                  " VALUES (?,?,1,?,?,?) ON CONFLICT (source, reason) DO UPDATE SET n = n + 1,"
                  " bytes = bytes + excluded.bytes, last_ms = excluded.last_ms",
                  (source, reason, len(payload), received_ms, received_ms))
        (total,) = c.execute("SELECT sum(n) FROM quarantine_tally WHERE source=?", (source,)).fetchone()
        if total <= keep or (total - keep) % sample == 0:
            c.execute("INSERT INTO quarantine (received_ms, topic, device, reason, detail, payload, digest)"
                      " VALUES (?,?,?,?,?,?,?)", (received_ms, topic, device, reason, detail,
                                                  payload[:MAX_QUARANTINE_BYTES], digest(payload)))
        return bool(total == keep + 1)

    @staticmethod
    def raise_alarm(c: sqlite3.Connection, ms: int, kind: str, device: str | None, detail: str, *,
                    once: bool = False) -> bool:
        """Record an alarm (and its 'raised' event, for the notifier); with ``once`` no second open alarm
        of the same kind and device is added."""
        if once and c.execute("SELECT 1 FROM alarms WHERE kind=? AND device IS ? AND cleared_ms IS NULL",
                              (kind, device)).fetchone():
            return False
        cur = c.execute("INSERT INTO alarms (ms, kind, device, detail) VALUES (?,?,?,?)",
                        (ms, kind, device, detail))
        c.execute("INSERT INTO alarm_events (alarm, event, ms) VALUES (?, 'raised', ?)", (cur.lastrowid, ms))
        return True

    @staticmethod
    def clear_alarms(c: sqlite3.Connection, ms: int, kind: str, device: str | None = None) -> int:
        """Close the open alarms of ``kind`` and ``device`` at ``ms``, each with a 'cleared' event."""
        ids = [r[0] for r in c.execute(
            "SELECT id FROM alarms WHERE kind=? AND device IS ? AND cleared_ms IS NULL", (kind, device))]
        for aid in ids:
            c.execute("UPDATE alarms SET cleared_ms=? WHERE id=?", (ms, aid))
            c.execute("INSERT INTO alarm_events (alarm, event, ms) VALUES (?, 'cleared', ?)", (aid, ms))
        return len(ids)

    @staticmethod
    def ack_alarm(c: sqlite3.Connection, alarm_id: int, ms: int, who: str) -> bool:
        """Acknowledge an open, unacknowledged alarm; False if there is none with that id."""
        cur = c.execute("UPDATE alarms SET acked_ms=?, acked_by=? WHERE id=? AND cleared_ms IS NULL"
                        " AND acked_ms IS NULL", (ms, who, alarm_id))
        return cur.rowcount == 1

    def insert_prompt(self, c: sqlite3.Connection, device: str, ctx: Context, timeout: int) -> int:
        """Record an opened prompt (``ctx.prompt_ms`` = opened) and queue its record for the province."""
        cur = c.execute("INSERT INTO prompts (device, window, clerk, clerk_name, service, txn, opened_ms,"
                        " timeout) VALUES (?,?,?,?,?,?,?,?)",
                        (device, ctx.window, ctx.clerk, ctx.clerk_name, ctx.service, ctx.txn, ctx.prompt_ms,
                         timeout))
        pid = cur.lastrowid
        if pid is None:
            raise sqlite3.DatabaseError("prompt insert returned no id")
        enqueue(c, batch.PromptEntry(pid, device, ctx.forwarded(), timeout))
        return pid

    @staticmethod
    def get_prompt(c: sqlite3.Connection, pid: int) -> PromptRow | None:
        row = c.execute("SELECT id, device, window, clerk, clerk_name, service, txn, opened_ms, timeout"
                        " FROM prompts WHERE id=?", (pid,)).fetchone()
        if row is None:
            return None
        pid, device, window, clerk, clerk_name, service, txn, opened_ms, timeout = row
        return PromptRow(pid, device, Context(window, clerk, service, txn, opened_ms, clerk_name), timeout)

    @staticmethod
    def prompt_rated(c: sqlite3.Connection, pid: int) -> bool:
        return c.execute("SELECT 1 FROM ratings WHERE prompt=?", (pid,)).fetchone() is not None

    @staticmethod
    def set_session(c: sqlite3.Connection, window: str, clerk: str | None, name: str | None, ms: int) -> None:
        if clerk is None:
            c.execute("DELETE FROM sessions WHERE window=?", (window,))
        else:
            c.execute("INSERT OR REPLACE INTO sessions (window, clerk, name, since_ms) VALUES (?,?,?,?)",
                      (window, clerk, name, ms))

    @staticmethod
    def get_session(c: sqlite3.Connection, window: str) -> tuple[str, str | None] | None:
        row = c.execute("SELECT clerk, name FROM sessions WHERE window=?", (window,)).fetchone()
        return None if row is None else (row[0], row[1])

    @staticmethod
    def update_health(c: sqlite3.Connection, device: str, ms: int, fields: dict[str, Any] | None) -> None:
        if fields is None:   # any authenticated message: seen, online; keep the last health report
            c.execute("INSERT INTO device_health (device, last_seen_ms, online) VALUES (?,?,1)"
                      " ON CONFLICT(device) DO UPDATE SET last_seen_ms=excluded.last_seen_ms, online=1",
                      (device, ms))
        else:
            c.execute("INSERT INTO device_health (device, last_seen_ms, last, online) VALUES (?,?,?,1)"
                      " ON CONFLICT(device) DO UPDATE SET last_seen_ms=excluded.last_seen_ms,"
                      " last=excluded.last, online=1", (device, ms, json.dumps(fields, sort_keys=True)))

    @staticmethod
    def set_offline(c: sqlite3.Connection, device: str) -> None:
        c.execute("UPDATE device_health SET online=0 WHERE device=?", (device,))

    # --- reads ------------------------------------------------------------------------------------------

    def backlog(self) -> int:
        with self.read() as c:
            return uplink_backlog(c)

    def count_ratings(self) -> int:
        with self.read() as c:
            n: int = c.execute("SELECT count(*) FROM ratings").fetchone()[0]
            return n

    def open_alarms(self) -> list[dict[str, Any]]:
        cols = ("id", "ms", "kind", "device", "detail", "acked_ms", "acked_by")
        with self.read() as c:
            rows = c.execute(f"SELECT {', '.join(cols)} FROM alarms WHERE cleared_ms IS NULL"
                             " ORDER BY id").fetchall()
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def quarantine_counts(self) -> dict[str, int]:
        with self.read() as c:
            return dict(c.execute("SELECT reason, sum(n) FROM quarantine_tally GROUP BY reason").fetchall())

    def devices(self) -> dict[str, dict[str, Any]]:
        with self.read() as c:
            rows = c.execute("SELECT device, last_seen_ms, last, online FROM device_health").fetchall()
        return {d: {"last_seen_ms": seen, "online": bool(on), "last": json.loads(last) if last else None}
                for d, seen, last, on in rows}

