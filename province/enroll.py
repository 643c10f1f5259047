"""Device enrollment: a keypad the province does not know yet loses no rating, and no gateway can make one up.

Two parties vouch for a new keypad, each for what it knows (PROTOCOL.md, "Enrollment"):

- the **technician** who provisioned it, by the enrollment record (protocol/enrollment.py: device, hall,
  window, epoch, scale, key) carried by their own channel and uploaded here (``import_record``);
- the **hall gateway**, by its enroll notice in a signed batch (hallreports.store_enroll_notice): that
  this keypad, with the key whose check value it sends, is in its keystore. It never carries the key, so
  a gateway alone cannot enroll a device.

An **administrator** then approves (``approve``) or refuses (``refuse``). Until then the keypad's ratings
are held (``held``, reason 'unknown-device': stored, counted nowhere, its batches acked so nothing is
resent for ever). On approval the key goes into ``devices`` (source 'enrollment') and every held rating
of that keypad is verified with it (its MAC, exactly as the receiver does) and checked against its
prompt record (prompts.py), then counted through the receiver's own ``Store.insert_rating``, so a held
rating and one that arrives after the approval are deduplicated on the same (device, epoch, seq). On
refusal they stay held, with the decision. No held row is ever deleted.

Every function runs inside the caller's open transaction and writes one audit row (audit.record), so a
rolled-back change leaves no trace and a committed one is always in the log. A bad record or a request
that does not fit the enrollment's state raises ``EnrollmentError`` before anything is written.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from countersign.protocol import cose, messages
from countersign.protocol.enrollment import EnrollmentRecord
from countersign.protocol.errors import ProtocolError
from countersign.protocol.kcv import key_check_value
from countersign.protocol.outcome import Outcome

from . import audit
from .db import Conn
from .errors import ProvinceError
from .prompts import prompt_problem
from .store import RatingRow, Store, held_rating_row

__all__ = ["UNKNOWN_DEVICE", "ApproveResult", "Enrollment", "EnrollmentError", "EnrollmentNotFound",
           "approve", "get", "held_counts", "import_record", "list_enrollments", "refuse"]

UNKNOWN_DEVICE = "unknown-device"
MAX_REASON = 500

_COLS = ('id, device, hall, "window", epoch, scale, kcv, key, gateway_ms, technician_ms, technician, state,'
         " decided_ms, decided_by, reason")
_HELD_COLS = ("id, hall, device, epoch, seq, kind, score, scale, prompt, press_s, delay_ms, boot,"
              ' "window", clerk, service, txn, prompt_ms, received_ms, batch_hall, batch_id, cose, reason')


class EnrollmentError(ProvinceError, ValueError):
    """A record or a decision the platform refuses; nothing was changed. The message says why."""

    reason = "enrollment-refused"


class EnrollmentNotFound(EnrollmentError, LookupError):
    reason = "no-such-enrollment"


@dataclass(frozen=True)
class Enrollment:
    id: int
    device: str
    hall: str
    window: str
    epoch: int
    scale: int | None
    gateway_kcv: str | None          # from the hall gateway's notice (None: no notice yet)
    technician_kcv: str | None       # recomputed from the technician's key (None: no record yet)
    gateway_ms: int | None
    technician_ms: int | None
    technician: str | None
    state: str
    decided_ms: int | None
    decided_by: str | None
    reason: str | None

    @property
    def has_key(self) -> bool:
        return self.technician_kcv is not None

    @property
    def kcv_match(self) -> bool | None:
        """True/False once both halves are in, None while one is missing."""
        if self.gateway_kcv is None or self.technician_kcv is None:
            return None
        return self.gateway_kcv == self.technician_kcv


@dataclass(frozen=True)
class ApproveResult:
    enrollment: Enrollment
    released: int                    # held ratings now counted
    duplicates: int                  # held copies of ratings already counted (released, pointing at them)
    bad_mac: int                     # held ratings whose MAC fails with the enrolled key: still held
    still_held: Counter[str]         # the others that stay held, by their new reason


def _enrollment(row: tuple[object, ...] | list[object]) -> Enrollment:
    (id_, device, hall, window, epoch, scale, kcv, key, gateway_ms, technician_ms, technician, state,
     decided_ms, decided_by, reason) = row
    return Enrollment(
        id=_i(id_), device=str(device), hall=str(hall), window=str(window), epoch=_i(epoch),
        scale=None if scale is None else _i(scale), gateway_kcv=None if kcv is None else str(kcv),
        technician_kcv=None if key is None else key_check_value(_b(key)),
        gateway_ms=_oi(gateway_ms), technician_ms=_oi(technician_ms),
        technician=None if technician is None else str(technician), state=str(state),
        decided_ms=_oi(decided_ms), decided_by=None if decided_by is None else str(decided_by),
        reason=None if reason is None else str(reason))


def get(conn: Conn, enrollment_id: int) -> Enrollment:
    row = conn.one(f"SELECT {_COLS} FROM enrollments WHERE id = ?", (enrollment_id,))
    if row is None:
        raise EnrollmentNotFound(f"no enrollment {enrollment_id}")
    return _enrollment(row)


def list_enrollments(conn: Conn, state: str | None = None, hall_sql: tuple[str, list[object]] = ("", [])
                     ) -> list[Enrollment]:
    """Newest first; ``hall_sql`` is a scope condition (scope.Scope.sql())."""
    cond, args = hall_sql
    sql = f"SELECT {_COLS} FROM enrollments WHERE 1 = 1{cond}"
    params: list[object] = list(args)
    if state is not None:
        sql += " AND state = ?"
        params.append(state)
    return [_enrollment(r) for r in conn.all(sql + " ORDER BY id DESC", params)]


def held_counts(conn: Conn, device: str) -> dict[str, int]:
    """The device's held rows by state ('held', 'released', ...)."""
    return {str(s): int(n) for s, n in conn.all("SELECT state, COUNT(*) FROM held WHERE device = ?"
                                                " GROUP BY state", (device,))}


# technician's record ---------------------------------------------------------------------------------------
def import_record(conn: Conn, data: bytes, actor: str, now_ms: int) -> Enrollment:
    """Take the technician's enrollment record (the file's bytes) into ``enrollments``.

    Refused (EnrollmentError, nothing changed): a record that does not parse strictly; an epoch not newer
    than the one the registry has for the device; a (device, epoch) already decided; a gateway notice for
    the same (device, epoch) from another hall, for another window, or with another key check value; a
    pending record for it with another key. Uploading the same record again changes nothing."""
    try:
        rec = EnrollmentRecord.parse(data)
    except ProtocolError as exc:
        raise EnrollmentError(str(exc)) from exc
    registered = conn.one("SELECT epoch, source FROM devices WHERE device = ?", (rec.device,))
    if registered is not None and rec.epoch <= int(registered[0]):
        raise EnrollmentError(f"{rec.device} is registered with epoch {registered[0]} ({registered[1]}):"
                              f" a new enrollment needs a newer epoch than {rec.epoch}")
    row = conn.one(f"SELECT {_COLS} FROM enrollments WHERE device = ? AND epoch = ?", (rec.device, rec.epoch))
    if row is None:
        cur = conn.execute(
            'INSERT INTO enrollments (device, hall, "window", epoch, scale, key, technician_ms, technician,'
            " state) VALUES (?,?,?,?,?,?,?,?,'pending') RETURNING id",
            (rec.device, rec.hall, rec.window, rec.epoch, rec.scale, rec.key, now_ms, rec.technician))
        new_id = int(cur.fetchone()[0])
        audit.record(conn, actor, "enrollment.import", f"enrollment:{new_id}",
                     {"device": rec.device, "epoch": rec.epoch, "hall": rec.hall, "window": rec.window,
                      "kcv": rec.kcv, "technician": rec.technician, "gateway_notice": False}, now_ms)
        return get(conn, new_id)
    have = _enrollment(row)
    if have.state != "pending":
        raise EnrollmentError(f"enrollment {have.id} ({have.device} epoch {have.epoch}) is already"
                              f" {have.state}: a new provisioning needs a new epoch")
    problems = []
    if have.hall != rec.hall:
        problems.append(f"the hall gateway {have.hall} reports it, the record says hall {rec.hall}")
    if have.window != rec.window:
        problems.append(f"the gateway reports window {have.window}, the record says window {rec.window}")
    if have.scale is not None and have.scale != rec.scale:
        problems.append(f"the gateway reports a {have.scale}-key scale, the record says {rec.scale}")
    if have.gateway_kcv is not None and have.gateway_kcv != rec.kcv:
        problems.append(f"the gateway's key check value is {have.gateway_kcv}, the record's key gives"
                        f" {rec.kcv} (the gateway holds another key)")
    if have.technician_kcv is not None and have.technician_kcv != rec.kcv:
        problems.append("a record with another key was uploaded for it already")
    if problems:
        raise EnrollmentError(f"record for {rec.device} epoch {rec.epoch} refused: " + "; ".join(problems))
    if have.technician_kcv is not None:
        return have                                   # the same record again: nothing to change
    conn.execute("UPDATE enrollments SET key = ?, technician_ms = ?, technician = ?, scale = ? WHERE id = ?",
                 (rec.key, now_ms, rec.technician, rec.scale, have.id))
    audit.record(conn, actor, "enrollment.import", f"enrollment:{have.id}",
                 {"device": rec.device, "epoch": rec.epoch, "hall": rec.hall, "window": rec.window,
                  "kcv": rec.kcv, "technician": rec.technician,
                  "gateway_notice": have.gateway_ms is not None}, now_ms)
    return get(conn, have.id)


# decisions -------------------------------------------------------------------------------------------------
def _pending(conn: Conn, enrollment_id: int) -> Enrollment:
    e = get(conn, enrollment_id)
    if e.state != "pending":
        raise EnrollmentError(f"enrollment {e.id} ({e.device} epoch {e.epoch}) is already {e.state}")
    return e


def approve(conn: Conn, enrollment_id: int, actor: str, now_ms: int, tz: ZoneInfo) -> ApproveResult:
    """Register the technician's key and count the device's held ratings that verify with it."""
    e = _pending(conn, enrollment_id)
    key_row = conn.one("SELECT key FROM enrollments WHERE id = ?", (e.id,))
    if key_row is None or key_row[0] is None:
        raise EnrollmentError(f"enrollment {e.id} ({e.device}) has no technician's record yet: the key comes"
                              " only with it (upload the record first)")
    key = _b(key_row[0])
    if e.kcv_match is False:
        raise EnrollmentError(f"enrollment {e.id} ({e.device}): the gateway's key check value"
                              f" {e.gateway_kcv} is not that of the technician's key ({e.technician_kcv});"
                              " refuse it, or re-provision the keypad")
    registered = conn.one("SELECT epoch FROM devices WHERE device = ?", (e.device,))
    if registered is not None and e.epoch <= int(registered[0]):
        raise EnrollmentError(f"{e.device} is registered with epoch {registered[0]} meanwhile: enrollment"
                              f" {e.id} (epoch {e.epoch}) is stale; refuse it")
    scale = e.scale if e.scale is not None else 4
    cur = conn.execute(
        'UPDATE devices SET hall = ?, key = ?, epoch = ?, "window" = ?, scale = ?, revoked = 0,'
        " source = 'enrollment', changed_ms = ?, changed_by = ? WHERE device = ?",
        (e.hall, key, e.epoch, e.window, scale, now_ms, actor, e.device))
    if cur.rowcount == 0:
        conn.execute('INSERT INTO devices (device, hall, key, epoch, "window", scale, revoked, source,'
                     " changed_ms, changed_by) VALUES (?,?,?,?,?,?,0,'enrollment',?,?)",
                     (e.device, e.hall, key, e.epoch, e.window, scale, now_ms, actor))
    conn.execute("UPDATE enrollments SET state = 'approved', decided_ms = ?, decided_by = ? WHERE id = ?",
                 (now_ms, actor, e.id))
    released, duplicates, bad_mac, still = _release(conn, e, key, actor, now_ms, tz)
    audit.record(conn, actor, "enrollment.approve", f"enrollment:{e.id}",
                 {"device": e.device, "epoch": e.epoch, "hall": e.hall, "window": e.window,
                  "kcv": e.technician_kcv, "gateway_notice": e.gateway_ms is not None, "released": released,
                  "duplicates": duplicates, "bad_mac": bad_mac, "still_held": dict(still)}, now_ms)
    return ApproveResult(get(conn, e.id), released, duplicates, bad_mac, still)


def _release(conn: Conn, e: Enrollment, key: bytes, actor: str, now_ms: int, tz: ZoneInfo
             ) -> tuple[int, int, int, Counter[str]]:
    s = Store(conn, now_ms, tz)
    kid = e.device.encode()
    released = duplicates = bad_mac = 0
    still: Counter[str] = Counter()
    rows = conn.all(f"SELECT {_HELD_COLS} FROM held WHERE device = ? AND reason = ? AND state = 'held'"
                    " AND epoch IS NOT NULL AND epoch <= ? ORDER BY id", (e.device, UNKNOWN_DEVICE, e.epoch))
    for row in rows:
        held_id = _i(row[0])
        found = _verified(row, kid, key, e)
        if isinstance(found, tuple):
            reason, detail = found
            s.rehold(held_id, reason, detail)
            if reason == "bad-mac":
                bad_mac += 1
            else:
                still[reason] += 1
            continue
        problem = prompt_problem(s, found)
        if problem is not None:
            s.rehold(held_id, *problem)
            still[problem[0]] += 1
            continue
        outcome = s.insert_rating(found)
        if outcome is Outcome.CONFLICT:
            s.rehold(held_id, outcome.value, "the same (device, epoch, seq) is counted with other bytes")
            still[outcome.value] += 1
            continue
        rating_id = s.rating_id(found.device, found.epoch, found.seq)
        if outcome is Outcome.DUPLICATE:
            duplicates += 1
            decision = f"enrollment {e.id} approved; the same rating was counted already (rating {rating_id})"
        else:
            released += 1
            decision = f"enrollment {e.id} approved: MAC verified with the enrolled key, counted"
        s.mark_released(held_id, rating_id, actor, decision)
    if bad_mac or still:
        s.alarm("held-entries", e.hall, e.device,
                f"enrollment {e.id} approved: {released} held ratings counted; still held: bad-mac {bad_mac}"
                + "".join(f", {r} {n}" for r, n in sorted(still.items())))
    return released, duplicates, bad_mac, still


def _verified(row: tuple[object, ...] | list[object], kid: bytes, key: bytes, e: Enrollment
              ) -> RatingRow | tuple[str, str]:
    """The held row as a verified rating, or (reason, detail) for why it stays held."""
    cose_bytes = _b(row[20])
    try:
        v = cose.mac0_verify(cose_bytes, lambda k: key if k == kid else None, expected_kid=kid)
        msg = messages.decode_payload(v.payload, messages.DEVICE_UP)
    except ProtocolError as exc:
        return ("bad-mac" if exc.reason in ("bad-mac", "kid-mismatch", "unknown-device") else exc.reason,
                f"does not verify with the key of enrollment {e.id}: {exc}")
    if not isinstance(msg, messages.Rating | messages.NoRating):
        return "not-a-rating", f"{type(msg).__name__} is not a rating"
    if str(row[1]) != e.hall:
        return "wrong-hall", f"came in a batch of hall {row[1]}, the keypad is enrolled at hall {e.hall}"
    r = held_rating_row(row)
    if r is None or (r.epoch, r.seq) != (msg.epoch, msg.seq):
        return "bad-entry", "the held copy's fields do not match its verified payload"
    # The verified payload's own values, never the ones read before the MAC check.
    return RatingRow.of(msg, e.device, r.hall, r.ctx, r.received_ms, r.batch_hall, r.batch_id, cose_bytes)


def refuse(conn: Conn, enrollment_id: int, actor: str, reason: str, now_ms: int) -> Enrollment:
    """The device is not enrolled; its held ratings stay held (state 'held', reason 'unknown-device'),
    each with the decision, so anyone looking at them sees why they are not counted."""
    why = " ".join(reason.split())
    if not why:
        raise EnrollmentError("a refusal needs a reason (it is shown beside every held rating of the keypad)")
    if len(why) > MAX_REASON:
        raise EnrollmentError(f"the reason is at most {MAX_REASON} characters")
    e = _pending(conn, enrollment_id)
    conn.execute("UPDATE enrollments SET state = 'refused', decided_ms = ?, decided_by = ?, reason = ?"
                 " WHERE id = ?", (now_ms, actor, why, e.id))
    cur = conn.execute("UPDATE held SET decided_ms = ?, decided_by = ?, decision = ? WHERE device = ? AND"
                       " reason = ? AND state = 'held' AND (epoch IS NULL OR epoch <= ?)",
                       (now_ms, actor, f"enrollment {e.id} refused: {why}", e.device, UNKNOWN_DEVICE,
                        e.epoch))
    audit.record(conn, actor, "enrollment.refuse", f"enrollment:{e.id}",
                 {"device": e.device, "epoch": e.epoch, "hall": e.hall, "reason": why,
                  "held": max(cur.rowcount, 0)}, now_ms)
    return get(conn, e.id)


def _i(v: object) -> int:
    if not isinstance(v, int):
        raise TypeError(f"expected an integer column, got {type(v).__name__}")
    return v


def _oi(v: object) -> int | None:
    return None if v is None else _i(v)


def _b(v: object) -> bytes:
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v)
    raise TypeError(f"expected a byte string column, got {type(v).__name__}")
