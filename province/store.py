"""The province's store: ratings, prompt records, held ratings, batches seen, quarantine, alarms.

Over ``province.db.Conn``, so one text serves SQLite and PostgreSQL; the schema is migrations.py's. One
connection per worker thread, transactions owned by the caller (``begin``/``commit``): on SQLite BEGIN
IMMEDIATE takes the write lock up front, so the "seen?" check and the insert are one step; on PostgreSQL
the unique constraints do that work (see db.py), and a race on batches (hall, batch) ends in an
IntegrityError the worker retries, after which ``seen_batch`` finds the batch.

Dedup is on (device, epoch, seq), in the same transaction as the insert (DESIGN-BRIEF invariant 2). The
same key with a different COSE digest is a security alarm and the first copy is kept, never overwritten.
A held rating (``held``: kept, not counted) dedups on its digest, and the same (device, epoch, seq) with
other bytes is the same alarm.

Every row gets its ``day`` ('YYYY-MM-DD' in the province's zone, period.py) when it is written, so "per
day" is one column in both dialects.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from countersign.protocol.context import Context
from countersign.protocol.messages import NoRating, Rating
from countersign.protocol.outcome import Outcome

from .db import Conn
from .period import DEFAULT_TZ, day_of, rating_day

__all__ = ["HeldRow", "Outcome", "PromptRow", "RatingRow", "Store", "digest"]

# A quarantined payload is kept for analysis, but a flood of 512 KB junk must not fill the disk.
MAX_QUARANTINE_BYTES = 4096
MAX_DETAIL = 500


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

    @classmethod
    def of(cls, msg: Rating | NoRating, device: str, hall: str, ctx: Context, received_ms: int,
           batch_hall: str, batch_id: int, cose: bytes) -> RatingRow:
        """The row of a verified outcome: its fields from the device's own payload."""
        rating = msg if isinstance(msg, Rating) else None
        return cls(device=device, epoch=msg.epoch, seq=msg.seq, kind="rating" if rating else "no-rating",
                   score=rating.score if rating else None, scale=rating.scale if rating else None,
                   prompt=msg.prompt, press_s=msg.time, delay_ms=msg.delay, boot=msg.boot, hall=hall,
                   ctx=ctx, received_ms=received_ms, batch_hall=batch_hall, batch_id=batch_id, cose=cose)


@dataclass(frozen=True)
class HeldRow:
    """A device entry kept but not counted. For an unknown device the fields are read from the payload
    before any MAC check (None where unreadable): they are for people to look at, never for a figure."""

    device: str
    epoch: int | None
    seq: int | None
    kind: str | None
    score: int | None
    scale: int | None
    prompt: int | None
    press_s: int | None
    delay_ms: int | None
    boot: int | None
    hall: str
    ctx: Context
    received_ms: int
    batch_hall: str
    batch_id: int
    cose: bytes

    @classmethod
    def of(cls, r: RatingRow) -> HeldRow:
        return cls(r.device, r.epoch, r.seq, r.kind, r.score, r.scale, r.prompt, r.press_s, r.delay_ms,
                   r.boot, r.hall, r.ctx, r.received_ms, r.batch_hall, r.batch_id, r.cose)


@dataclass(frozen=True)
class PromptRow:
    hall: str
    prompt: int
    device: str
    ctx: Context                 # prompt_ms: when the prompt was opened
    timeout: int
    batch_id: int


def digest(cose: bytes) -> bytes:
    return hashlib.sha256(cose).digest()


_HELD_COLS = ("id, hall, device, epoch, seq, kind, score, scale, prompt, press_s, delay_ms, boot,"
              ' "window", clerk, service, txn, prompt_ms, received_ms, batch_hall, batch_id, cose, reason')


class Store:
    """Statements used inside one open transaction; the caller owns begin/commit."""

    def __init__(self, conn: Conn, now_ms: int = 0, tz: ZoneInfo | None = None) -> None:
        self.conn = conn
        self.now_ms = now_ms
        self.tz = tz or ZoneInfo(DEFAULT_TZ)

    def begin(self) -> None:
        self.conn.begin()

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()

    # batches ---------------------------------------------------------------------------------------------
    def seen_batch(self, hall: str, batch_id: int) -> bytes | None:
        """The stored signed ack of a batch already processed, or None."""
        row = self.conn.one("SELECT ack FROM batches WHERE hall = ? AND batch = ?", (hall, batch_id))
        return None if row is None else bytes(row[0])

    def record_batch(self, hall: str, batch_id: int, created_ms: int, entries: int, stored: int,
                     duplicates: int, rejected: list[tuple[int, str]], ack: bytes) -> None:
        # No ON CONFLICT: a second receiver that processed the same batch at the same time must fail
        # here (and retry, then find the first one's ack), never record a second, different ack.
        self.conn.execute(
            "INSERT INTO batches (hall, batch, created_ms, received_ms, entries, stored, duplicates,"
            " rejected, ack) VALUES (?,?,?,?,?,?,?,?,?)",
            (hall, batch_id, created_ms, self.now_ms, entries, stored, duplicates,
             json.dumps([[i, r] for i, r in rejected]), ack))

    # ratings ---------------------------------------------------------------------------------------------
    def insert_rating(self, r: RatingRow) -> Outcome:
        d = digest(r.cose)
        cur = self.conn.execute(
            'INSERT INTO ratings (device, epoch, seq, kind, score, scale, prompt, press_s, delay_ms, boot,'
            ' hall, "window", clerk, service, txn, prompt_ms, received_ms, stored_ms, batch_hall, batch_id,'
            " cose, digest, day) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT (device, epoch, seq) DO NOTHING",
            (r.device, r.epoch, r.seq, r.kind, r.score, r.scale, r.prompt, r.press_s, r.delay_ms, r.boot,
             r.hall, r.ctx.window, r.ctx.clerk, r.ctx.service, r.ctx.txn, r.ctx.prompt_ms, r.received_ms,
             self.now_ms, r.batch_hall, r.batch_id, r.cose, d, rating_day(r.press_s, r.received_ms, self.tz)))
        if cur.rowcount == 1:
            return Outcome.STORED
        row = self.conn.one("SELECT digest, hall, batch_hall, batch_id FROM ratings"
                            " WHERE device = ? AND epoch = ? AND seq = ?", (r.device, r.epoch, r.seq))
        if bytes(row[0]) == d:
            return Outcome.DUPLICATE
        self.alarm("conflicting-rating", r.hall, r.device,
                   f"epoch {r.epoch} seq {r.seq}: batch {r.batch_hall}/{r.batch_id} carries different bytes"
                   f" than the copy stored from batch {row[2]}/{row[3]}; original kept", batch_id=r.batch_id)
        return Outcome.CONFLICT

    def kept(self, r: HeldRow | RatingRow) -> Outcome | None:
        """What storing this message comes to because of a copy already kept (counted or held):
        DUPLICATE, CONFLICT (security alarm raised, the first copy kept), or None when nothing of its key
        (device, epoch, seq) nor its bytes is kept yet."""
        d = digest(r.cose)
        if self.conn.one("SELECT 1 FROM held WHERE digest = ?", (d,)) is not None:
            return Outcome.DUPLICATE
        if r.epoch is None or r.seq is None:
            return None
        key = (r.device, r.epoch, r.seq)
        row = self.conn.one("SELECT digest, batch_hall, batch_id FROM ratings WHERE device = ? AND epoch = ?"
                            " AND seq = ?", key)
        if row is None:
            row = self.conn.one("SELECT digest, batch_hall, batch_id FROM held WHERE device = ? AND epoch = ?"
                                " AND seq = ? ORDER BY id LIMIT 1", key)
        if row is None:
            return None
        if bytes(row[0]) == d:
            return Outcome.DUPLICATE
        self.alarm("conflicting-rating", r.hall, r.device,
                   f"epoch {r.epoch} seq {r.seq}: batch {r.batch_hall}/{r.batch_id} carries different bytes"
                   f" than the copy kept from batch {row[1]}/{row[2]}; original kept", batch_id=r.batch_id)
        return Outcome.CONFLICT

    def outcome_for_prompt(self, hall: str, prompt: int) -> tuple[str, int, int] | None:
        """(device, epoch, seq) of the outcome already stored for a prompt of the hall, or None."""
        row = self.conn.one("SELECT device, epoch, seq FROM ratings WHERE hall = ? AND prompt = ?"
                            " ORDER BY id LIMIT 1", (hall, prompt))
        return None if row is None else (str(row[0]), int(row[1]), int(row[2]))

    # held ------------------------------------------------------------------------------------------------
    def hold(self, row: HeldRow | RatingRow, reason: str, detail: str) -> Outcome:
        """Keep a device entry without counting it. STORED (a new held row), DUPLICATE (these bytes are
        kept already, held or counted), or CONFLICT (the same (device, epoch, seq) is kept with other
        bytes: security alarm, the first copy kept)."""
        h = row if isinstance(row, HeldRow) else HeldRow.of(row)
        d = digest(h.cose)
        seen = self.kept(h)
        if seen is not None:
            return seen
        day = rating_day(h.press_s, h.received_ms, self.tz)
        cur = self.conn.execute(
            'INSERT INTO held (hall, device, epoch, seq, kind, score, scale, prompt, press_s, delay_ms, boot,'
            ' "window", clerk, service, txn, prompt_ms, received_ms, stored_ms, batch_hall, batch_id, cose,'
            " digest, reason, detail, day) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT (digest) DO NOTHING",
            (h.hall, h.device, h.epoch, h.seq, h.kind, h.score, h.scale, h.prompt, h.press_s, h.delay_ms,
             h.boot, h.ctx.window, h.ctx.clerk, h.ctx.service, h.ctx.txn, h.ctx.prompt_ms, h.received_ms,
             self.now_ms, h.batch_hall, h.batch_id, h.cose, d, reason, detail[:MAX_DETAIL], day))
        return Outcome.STORED if cur.rowcount == 1 else Outcome.DUPLICATE

    def held_waiting(self, hall: str, prompt: int) -> list[tuple[int, RatingRow]]:
        """Verified ratings held for want of their prompt record ('no-prompt-record'), oldest first."""
        rows = self.conn.all(f"SELECT {_HELD_COLS} FROM held WHERE hall = ? AND prompt = ? AND"
                             " reason = 'no-prompt-record' AND state = 'held' ORDER BY id", (hall, prompt))
        out = []
        for row in rows:
            r = held_rating_row(row)
            if r is not None:
                out.append((int(row[0]), r))
        return out

    def held_rating(self, held_id: int) -> RatingRow | None:
        """A held row as the rating it would be (None if missing or its fields were unreadable): for
        releasing it once it is verified."""
        row = self.conn.one(f"SELECT {_HELD_COLS} FROM held WHERE id = ?", (held_id,))
        return None if row is None else held_rating_row(row)

    def mark_released(self, held_id: int, rating_id: int | None, actor: str, decision: str) -> None:
        self.conn.execute("UPDATE held SET state = 'released', decided_ms = ?, decided_by = ?, decision = ?,"
                          " rating_id = ? WHERE id = ?", (self.now_ms, actor, decision, rating_id, held_id))

    def rehold(self, held_id: int, reason: str, detail: str) -> None:
        """A held row's reason changes (a waiting rating whose prompt record came and does not match)."""
        self.conn.execute("UPDATE held SET reason = ?, detail = ? WHERE id = ?",
                          (reason, detail[:MAX_DETAIL], held_id))

    def rating_id(self, device: str, epoch: int, seq: int) -> int | None:
        v = self.conn.scalar("SELECT id FROM ratings WHERE device = ? AND epoch = ? AND seq = ?",
                             (device, epoch, seq))
        return None if v is None else int(v)

    # prompts ---------------------------------------------------------------------------------------------
    def insert_prompt(self, p: PromptRow) -> Outcome:
        opened = p.ctx.prompt_ms if p.ctx.prompt_ms is not None else self.now_ms
        cur = self.conn.execute(
            'INSERT INTO prompts (hall, prompt, device, "window", clerk, service, txn, opened_ms, timeout,'
            " batch_id, day) VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (hall, prompt) DO NOTHING",
            (p.hall, p.prompt, p.device, p.ctx.window, p.ctx.clerk, p.ctx.service, p.ctx.txn, opened,
             p.timeout, p.batch_id, day_of(opened, self.tz)))
        if cur.rowcount == 1:
            return Outcome.STORED
        kept = self.prompt(p.hall, p.prompt)
        if kept is not None and (kept.device, kept.ctx.window, kept.ctx.clerk, kept.ctx.service,
                                 kept.ctx.txn) != (p.device, p.ctx.window, p.ctx.clerk, p.ctx.service,
                                                   p.ctx.txn):
            # A second record for a prompt already on file must not re-bind its outcome: the first is kept.
            self.alarm("conflicting-prompt", p.hall, p.device,
                       f"prompt {p.prompt} in batch {p.hall}/{p.batch_id} differs from the record kept from"
                       f" batch {kept.batch_id}; the first kept", batch_id=p.batch_id)
            return Outcome.CONFLICT
        return Outcome.DUPLICATE

    def prompt(self, hall: str, prompt: int) -> PromptRow | None:
        row = self.conn.one('SELECT device, "window", clerk, service, txn, opened_ms, timeout, batch_id'
                            " FROM prompts WHERE hall = ? AND prompt = ?", (hall, prompt))
        if row is None:
            return None
        device, window, clerk, service, txn, opened, timeout, batch_id = row
        ctx = Context(str(window), clerk, int(service), txn, int(opened))
        return PromptRow(hall, prompt, str(device), ctx, int(timeout), int(batch_id))

    # quarantine, alarms ------------------------------------------------------------------------------------
    def quarantine(self, topic: str, hall: str | None, reason: str, detail: str, payload: bytes) -> None:
        self.conn.execute(
            "INSERT INTO quarantine (received_ms, topic, hall, reason, detail, payload) VALUES (?,?,?,?,?,?)",
            (self.now_ms, topic, hall, reason, detail[:MAX_DETAIL], payload[:MAX_QUARANTINE_BYTES]))

    def alarm(self, kind: str, hall: str | None, device: str | None, detail: str, *,
              batch_id: int | None = None) -> None:
        self.conn.execute("INSERT INTO alarms (ms, kind, hall, device, detail, batch_id)"
                          " VALUES (?,?,?,?,?,?)",
                          (self.now_ms, kind, hall, device, detail[:MAX_DETAIL], batch_id))


def held_rating_row(row: tuple[object, ...] | list[object]) -> RatingRow | None:
    """A row of ``SELECT {_HELD_COLS} FROM held`` as a RatingRow, or None if a needed field is NULL."""
    (_id, hall, device, epoch, seq, kind, score, scale, prompt, press_s, delay_ms, boot, window, clerk,
     service, txn, prompt_ms, received_ms, batch_hall, batch_id, cose, _reason) = row
    if epoch is None or seq is None or kind is None or prompt is None or delay_ms is None or boot is None:
        return None
    return RatingRow(
        device=str(device), epoch=_int(epoch), seq=_int(seq), kind=str(kind),
        score=None if score is None else _int(score), scale=None if scale is None else _int(scale),
        prompt=_int(prompt), press_s=None if press_s is None else _int(press_s), delay_ms=_int(delay_ms),
        boot=_int(boot), hall=str(hall),
        ctx=Context(str(window), None if clerk is None else str(clerk), _int(service),
                    None if txn is None else str(txn), None if prompt_ms is None else _int(prompt_ms)),
        received_ms=_int(received_ms), batch_hall=str(batch_hall), batch_id=_int(batch_id),
        cose=bytes(cose) if isinstance(cose, bytes | bytearray | memoryview) else b"")


def _int(v: object) -> int:
    if not isinstance(v, int):
        raise TypeError(f"expected an integer column, got {type(v).__name__}")
    return v
