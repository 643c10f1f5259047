"""The province's SQLite store: ratings, prompt records, batches seen, quarantine, alarms.

One connection per worker thread. WAL with synchronous=FULL, so a commit the province has acked survives
a power cut (with NORMAL the last commits can roll back after power loss: an acked batch would be lost).
Writers take the lock up front (BEGIN IMMEDIATE): two workers may hold the same batch (a gateway resend
landing on the other worker), and the "seen?" check and the insert must be one step.

Dedup is on (device, epoch, seq), in the same transaction as the insert (DESIGN-BRIEF invariant 2). The
same key with a different COSE digest is a security alarm and the first copy is kept, never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from countersign.common.db import open_db
from countersign.protocol.context import Context
from countersign.protocol.outcome import Outcome

__all__ = ["Outcome", "PromptRow", "RatingRow", "Store", "connect", "digest"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS ratings (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('rating', 'no-rating')),
    score INTEGER, scale INTEGER,            -- NULL for a no-rating
    prompt INTEGER NOT NULL,                 -- prompt id; 0 = opened by the invite key
    press_s INTEGER,                         -- unix seconds of the press/expiry; NULL = device clock unknown
    delay_ms INTEGER, boot INTEGER,
    hall TEXT NOT NULL, window TEXT NOT NULL, clerk TEXT, service INTEGER NOT NULL, txn TEXT,
    prompt_ms INTEGER,                       -- gateway clock
    received_ms INTEGER NOT NULL,            -- when the gateway received it
    stored_ms INTEGER NOT NULL,              -- when the province stored it
    batch_hall TEXT NOT NULL, batch_id INTEGER NOT NULL,
    cose BLOB NOT NULL,                      -- the device's COSE_Mac0, unchanged: re-verifiable at any time
    digest BLOB NOT NULL,
    UNIQUE (device, epoch, seq)
);
CREATE INDEX IF NOT EXISTS ratings_hall ON ratings (hall, clerk);
CREATE TABLE IF NOT EXISTS prompts (
    id INTEGER PRIMARY KEY,
    hall TEXT NOT NULL, prompt INTEGER NOT NULL, device TEXT NOT NULL, window TEXT NOT NULL,
    clerk TEXT, service INTEGER NOT NULL, txn TEXT, opened_ms INTEGER NOT NULL, timeout INTEGER NOT NULL,
    batch_id INTEGER NOT NULL,
    UNIQUE (hall, prompt)
);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    hall TEXT NOT NULL, batch INTEGER NOT NULL, created_ms INTEGER NOT NULL, received_ms INTEGER NOT NULL,
    entries INTEGER NOT NULL, stored INTEGER NOT NULL, duplicates INTEGER NOT NULL,
    rejected TEXT NOT NULL,                  -- JSON [[index, reason], ...]
    ack BLOB NOT NULL,                       -- the signed ack, re-published as is when the batch comes again
    UNIQUE (hall, batch)
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    received_ms INTEGER NOT NULL, topic TEXT NOT NULL, hall TEXT, reason TEXT NOT NULL, detail TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS alarms (
    id INTEGER PRIMARY KEY,
    ms INTEGER NOT NULL, kind TEXT NOT NULL, hall TEXT, device TEXT, detail TEXT NOT NULL
);
"""

# A quarantined payload is kept for analysis, but a flood of 512 KB junk must not fill the disk.
MAX_QUARANTINE_BYTES = 4096


@dataclass(frozen=True)
class RatingRow:
    device: str
    epoch: int
    seq: int
    kind: str
    score: int | None
    scale: int | None
    prompt: int
    press_s: int | None
    delay_ms: int
    boot: int
    hall: str
    ctx: Context
    received_ms: int
    batch_hall: str
    batch_id: int
    cose: bytes


@dataclass(frozen=True)
class PromptRow:
    hall: str
    prompt: int
    device: str
    ctx: Context                 # prompt_ms: when the prompt was opened
    timeout: int
    batch_id: int


def connect(path: str | Path) -> sqlite3.Connection:
    """Open (and create) the store; autocommit mode, transactions are explicit (BEGIN IMMEDIATE)."""
    conn = open_db(path)
    conn.executescript(SCHEMA)
    return conn


def digest(cose: bytes) -> bytes:
    return hashlib.sha256(cose).digest()


class Store:
    """Statements used inside one open transaction; the caller owns begin/commit."""

    def __init__(self, conn: sqlite3.Connection, now_ms: int = 0) -> None:
        self.conn = conn
        self.now_ms = now_ms

    def begin(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def seen_batch(self, hall: str, batch_id: int) -> bytes | None:
        """The stored signed ack of a batch already processed, or None."""
        row = self.conn.execute("SELECT ack FROM batches WHERE hall = ? AND batch = ?",
                                (hall, batch_id)).fetchone()
        return None if row is None else bytes(row[0])

    def insert_rating(self, r: RatingRow) -> Outcome:
        d = digest(r.cose)
        cur = self.conn.execute(
            "INSERT INTO ratings (device, epoch, seq, kind, score, scale, prompt, press_s, delay_ms, boot,"
            " hall, window, clerk, service, txn, prompt_ms, received_ms, stored_ms, batch_hall, batch_id,"
            " cose, digest) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT (device, epoch, seq) DO NOTHING",
            (r.device, r.epoch, r.seq, r.kind, r.score, r.scale, r.prompt, r.press_s, r.delay_ms, r.boot,
             r.hall, r.ctx.window, r.ctx.clerk, r.ctx.service, r.ctx.txn, r.ctx.prompt_ms, r.received_ms,
             self.now_ms,
             r.batch_hall, r.batch_id, r.cose, d))
        if cur.rowcount == 1:
            return Outcome.STORED
        row = self.conn.execute("SELECT digest, hall, batch_hall, batch_id FROM ratings"
                                " WHERE device = ? AND epoch = ? AND seq = ?",
                                (r.device, r.epoch, r.seq)).fetchone()
        if bytes(row[0]) == d:
            return Outcome.DUPLICATE
        self.alarm("conflicting-rating", r.hall, r.device,
                   f"epoch {r.epoch} seq {r.seq}: batch {r.batch_hall}/{r.batch_id} carries different bytes"
                   f" than the copy stored from batch {row[2]}/{row[3]}; original kept")
        return Outcome.CONFLICT

    def insert_prompt(self, p: PromptRow) -> Outcome:
        cur = self.conn.execute(
            "INSERT INTO prompts (hall, prompt, device, window, clerk, service, txn, opened_ms, timeout,"
            " batch_id) VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT (hall, prompt) DO NOTHING",
            (p.hall, p.prompt, p.device, p.ctx.window, p.ctx.clerk, p.ctx.service, p.ctx.txn, p.ctx.prompt_ms,
             p.timeout, p.batch_id))
        return Outcome.STORED if cur.rowcount == 1 else Outcome.DUPLICATE

    def record_batch(self, hall: str, batch_id: int, created_ms: int, entries: int, stored: int,
                     duplicates: int, rejected: list[tuple[int, str]], ack: bytes) -> None:
        self.conn.execute(
            "INSERT INTO batches (hall, batch, created_ms, received_ms, entries, stored, duplicates,"
            " rejected, ack) VALUES (?,?,?,?,?,?,?,?,?)",
            (hall, batch_id, created_ms, self.now_ms, entries, stored, duplicates,
             json.dumps([[i, r] for i, r in rejected]), ack))

    def quarantine(self, topic: str, hall: str | None, reason: str, detail: str, payload: bytes) -> None:
        self.conn.execute(
            "INSERT INTO quarantine (received_ms, topic, hall, reason, detail, payload) VALUES (?,?,?,?,?,?)",
            (self.now_ms, topic, hall, reason, detail[:500], payload[:MAX_QUARANTINE_BYTES]))

    def alarm(self, kind: str, hall: str | None, device: str | None, detail: str) -> None:
        self.conn.execute("INSERT INTO alarms (ms, kind, hall, device, detail) VALUES (?,?,?,?,?)",
                          (self.now_ms, kind, hall, device, detail[:500]))
