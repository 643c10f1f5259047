"""A hall gateway's own reports, stored by the receiver inside its open transaction, one call per entry.

The entries (protocol/batch.py kinds 3..6) are the gateway's word only: a keypad's last figures, the
gateway's backlog, what it stored per keypad and day, and that its keystore holds a device. None of them
counts a rating or can vouch for a key (PROTOCOL.md 9.5): an enrollment notice carries a key check value
the administrator compares with the technician's record, never a key.

Each function takes the hall the batch is signed by and ``known_hall``, the hall the province's registry
has for the entry's device (None: not registered yet), and returns what became of the entry:
``Outcome.STORED`` (new or newer figures kept), ``Outcome.DUPLICATE`` (nothing newer: a resent or older
report, as the ack counts it), or ``Refused`` with the reason for the batch ack (a hall reporting another
hall's keypad). None raises on a decoded entry: the rows are written in the common SQL of both backends,
and a report older than what is stored is dropped, not an error (the province keeps the latest by the
gateway's report time, ``at_ms``, which is what ``reported_ms`` holds).
"""

from __future__ import annotations

from dataclasses import dataclass

from countersign.protocol import batch
from countersign.protocol.kcv import key_check_value
from countersign.protocol.outcome import Outcome

from .db import Conn

__all__ = ["MISMATCH_ALARM", "Refused", "store_day_count", "store_enroll_notice", "store_gateway_status",
           "store_keypad_status", "store_report"]

MISMATCH_ALARM = "enrollment-mismatch"


@dataclass(frozen=True)
class Refused:
    """The entry is not this hall's to report: ``reason`` goes into the batch ack's ``rejected``."""

    reason: str
    detail: str


def _wrong_hall(hall: str, device: str, known_hall: str | None, stored_hall: str | None) -> Refused | None:
    """A hall may report only its own keypads: the registry's hall where it knows the device, else the hall
    that reported it first (an unregistered keypad's figures are not another hall's to overwrite)."""
    owner = known_hall if known_hall is not None else stored_hall
    if owner is not None and owner != hall:
        return Refused("wrong-hall", f"keypad {device} belongs to hall {owner}, not {hall}")
    return None


def stuck_keys_text(e: batch.KeypadStatusEntry) -> str | None:
    """keypad_status.stuck_keys: the keys held down, numbered from 1, as '1,3'; '' none; NULL unknown."""
    return None if e.stuck is None else ",".join(str(k) for k in e.stuck_keys)


def store_keypad_status(conn: Conn, hall: str, e: batch.KeypadStatusEntry, now_ms: int,
                        known_hall: str | None) -> Outcome | Refused:
    """Upsert keypad_status, only if the report is newer than the stored one."""
    del now_ms       # the row keeps the gateway's report time: the order the reports were taken in
    row = conn.one("SELECT hall FROM keypad_status WHERE device = ?", (e.device,))
    refused = _wrong_hall(hall, e.device, known_hall, None if row is None else row[0])
    if refused is not None:
        return refused
    reset = None if e.reset is None else str(e.reset)
    values = (hall, e.seen_ms, int(e.online), e.fw, reset, e.heap, e.outbox, e.rssi, stuck_keys_text(e),
              e.at_ms)
    cur = conn.execute("INSERT INTO keypad_status (device, hall, seen_ms, online, fw, reset_cause, free_heap,"
                       " outbox, rssi, stuck_keys, reported_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
                       " ON CONFLICT (device) DO NOTHING", (e.device, *values))
    if cur.rowcount == 1:
        return Outcome.STORED
    cur = conn.execute("UPDATE keypad_status SET hall = ?, seen_ms = ?, online = ?, fw = ?, reset_cause = ?,"
                       " free_heap = ?, outbox = ?, rssi = ?, stuck_keys = ?, reported_ms = ?"
                       " WHERE device = ? AND reported_ms < ?", (*values, e.device, e.at_ms))
    return Outcome.STORED if cur.rowcount == 1 else Outcome.DUPLICATE


def store_gateway_status(conn: Conn, hall: str, e: batch.GatewayStatusEntry, now_ms: int) -> Outcome:
    """Upsert gateway_status (backlog, when its oldest entry was queued), only if newer."""
    del now_ms
    cur = conn.execute("INSERT INTO gateway_status (hall, backlog, oldest_ms, reported_ms) VALUES (?,?,?,?)"
                       " ON CONFLICT (hall) DO NOTHING", (hall, e.backlog, e.oldest_ms, e.at_ms))
    if cur.rowcount == 1:
        return Outcome.STORED
    cur = conn.execute("UPDATE gateway_status SET backlog = ?, oldest_ms = ?, reported_ms = ?"
                       " WHERE hall = ? AND reported_ms < ?",
                       (e.backlog, e.oldest_ms, e.at_ms, hall, e.at_ms))
    return Outcome.STORED if cur.rowcount == 1 else Outcome.DUPLICATE


def store_day_count(conn: Conn, hall: str, e: batch.DayCountEntry, now_ms: int,
                    known_hall: str | None) -> Outcome | Refused:
    """Upsert day_counts keyed (device, epoch, day): the latest report wins (a late rating after a
    keypad's reboot makes the gateway send the day again, with a later report time)."""
    del now_ms
    row = conn.one("SELECT hall FROM day_counts WHERE device = ? AND epoch = ? AND day = ?",
                   (e.device, e.epoch, e.day))
    refused = _wrong_hall(hall, e.device, known_hall, None if row is None else row[0])
    if refused is not None:
        return refused
    figures = (e.ratings, e.no_ratings, e.first_seq, e.last_seq, e.at_ms)
    cur = conn.execute("INSERT INTO day_counts (hall, device, epoch, day, ratings, no_ratings, first_seq,"
                       " last_seq, reported_ms) VALUES (?,?,?,?,?,?,?,?,?)"
                       " ON CONFLICT (device, epoch, day) DO NOTHING",
                       (hall, e.device, e.epoch, e.day, *figures))
    if cur.rowcount == 1:
        return Outcome.STORED
    cur = conn.execute("UPDATE day_counts SET hall = ?, ratings = ?, no_ratings = ?, first_seq = ?,"
                       " last_seq = ?, reported_ms = ?"
                       " WHERE device = ? AND epoch = ? AND day = ? AND reported_ms < ?",
                       (hall, *figures, e.device, e.epoch, e.day, e.at_ms))
    return Outcome.STORED if cur.rowcount == 1 else Outcome.DUPLICATE


def store_enroll_notice(conn: Conn, hall: str, e: batch.EnrollEntry, now_ms: int, known_hall: str | None, *,
                        batch_id: int | None = None) -> Outcome:
    """Record the gateway's half of an enrollment: a 'pending' enrollments row with gateway_ms and kcv, or
    those filled into the technician's row for (device, epoch). A notice from another hall than the
    device's (registry or technician's record), or whose kcv is not the technician's key's, is recorded
    and flagged: one 'enrollment-mismatch' alarm per distinct finding. It never approves anything."""
    row = conn.one('SELECT id, hall, kcv, key, gateway_ms FROM enrollments WHERE device = ? AND epoch = ?',
                   (e.device, e.epoch))
    problems = []
    if known_hall is not None and known_hall != hall:
        problems.append(f"the registry has it at hall {known_hall}")
    if row is not None and row[1] != hall:
        problems.append(f"the technician enrolled it at hall {row[1]}")
    if row is not None and row[3] is not None and key_check_value(bytes(row[3])) != e.kcv:
        problems.append("its key check value is not that of the technician's key")
    registered = conn.one("SELECT key FROM devices WHERE device = ? AND epoch = ?", (e.device, e.epoch))
    if registered is not None and key_check_value(bytes(registered[0])) != e.kcv:
        problems.append("its key check value is not that of the registered key")
    outcome = Outcome.DUPLICATE
    if row is None:
        cur = conn.execute('INSERT INTO enrollments (device, hall, "window", epoch, scale, kcv, gateway_ms,'
                           " state) VALUES (?,?,?,?,?,?,?,'pending') ON CONFLICT (device, epoch) DO NOTHING",
                           (e.device, hall, e.window, e.epoch, e.scale, e.kcv, now_ms))
        outcome = Outcome.STORED if cur.rowcount == 1 else Outcome.DUPLICATE
    elif row[1] == hall and (row[2] != e.kcv or row[4] is None):
        # The technician's record (or an earlier notice) gets the gateway's half; the first arrival is kept.
        conn.execute("UPDATE enrollments SET kcv = ?, gateway_ms = coalesce(gateway_ms, ?),"
                     " scale = coalesce(scale, ?) WHERE id = ?", (e.kcv, now_ms, e.scale, row[0]))
        outcome = Outcome.STORED
    if problems:
        detail = (f"hall {hall} reports keypad {e.device} (epoch {e.epoch}, window {e.window}, kcv {e.kcv}),"
                  f" but {'; '.join(problems)}")
        seen = conn.one("SELECT 1 FROM alarms WHERE kind = ? AND device = ? AND detail = ?",
                        (MISMATCH_ALARM, e.device, detail))
        if seen is None:
            conn.execute("INSERT INTO alarms (ms, kind, hall, device, detail, batch_id) VALUES (?,?,?,?,?,?)",
                         (now_ms, MISMATCH_ALARM, hall, e.device, detail, batch_id))
    return outcome


def store_report(conn: Conn, hall: str, e: batch.ReportEntry, now_ms: int, known_hall: str | None, *,
                 batch_id: int | None = None) -> Outcome | Refused:
    """Any report entry: the one call per entry the receiver makes (``known_hall`` is unused for a
    gateway status, which names no keypad)."""
    if isinstance(e, batch.KeypadStatusEntry):
        return store_keypad_status(conn, hall, e, now_ms, known_hall)
    if isinstance(e, batch.GatewayStatusEntry):
        return store_gateway_status(conn, hall, e, now_ms)
    if isinstance(e, batch.DayCountEntry):
        return store_day_count(conn, hall, e, now_ms, known_hall)
    return store_enroll_notice(conn, hall, e, now_ms, known_hall, batch_id=batch_id)
