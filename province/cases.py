"""Cases (整改工单): 通报 -> 整改 -> 复核 -> 关闭, one per dissatisfied rating and by hand for anything else.

The supervision pass opens a case for every dissatisfied rating (``on_ratings``), once: ``cases.rating``
is UNIQUE and the insert does nothing on a conflict, so a retried pass never opens a second one. The
deadline is the 15th working day (chinese-calendar with 调休 make-up days, and the platform's
calendar_days) after the local day the case was opened.

States: ``notified`` (opened) -> ``rectifying`` (the hall's first action) -> ``review`` (submitted with
a call-back 回访, a cause and measures) -> ``closed`` (accepted by the city or province), or back to
``rectifying`` when the reviewer returns it with a note. Every action checks the user's role and scope
(another hall's case is "not found", as if it did not exist) and the state, and writes its case_events
row and its audit row in the caller's transaction. ``on_tick`` marks a case overdue once, when its
local day passes the deadline without it closing. Cases and their history are never deleted (triggers
of schema step 4 refuse it on both databases).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from countersign.protocol.messages import SCORE_NAMES_ZH

from . import audit
from .db import Conn
from .errors import ProvinceError
from .period import day_of
from .rated import Rated
from .ratings_list import service_name
from .scope import Scope, User
from .workdays import Calendar

if TYPE_CHECKING:
    from .supervision import Pass

__all__ = [
    "DEADLINE_WORKDAYS",
    "STATES",
    "Case",
    "CaseConflict",
    "CaseError",
    "CaseEvent",
    "CaseForbidden",
    "CaseNotFound",
    "accept",
    "case_of_rating",
    "counts",
    "events",
    "get",
    "listing",
    "on_ratings",
    "on_tick",
    "open_manual",
    "record_analysis",
    "record_callback",
    "return_case",
    "submit",
]

DEADLINE_WORKDAYS = 15
ACTOR = "supervisor"
STATES = {"notified": "已通报 Notified", "rectifying": "整改中 Rectifying", "review": "待复核 In review",
          "closed": "已关闭 Closed"}
ACTIONS = {"opened": "通报 Opened", "callback": "回访 Call-back", "analysis": "原因与整改措施 Analysis",
           "submitted": "提交复核 Submitted", "accepted": "复核通过，关闭 Accepted and closed",
           "returned": "退回整改 Returned", "overdue": "逾期 Overdue (escalated)"}
MIN_TEXT = 2              # "已访" is a call-back note in Chinese; one character is not
MAX_TEXT = 2000
MAX_TITLE = 200


class CaseError(ProvinceError, ValueError):
    """A case action that cannot be done as asked (missing text, bad time): nothing changed."""


class CaseConflict(CaseError):
    """The action does not fit the case's state (already submitted, already closed, ...)."""


class CaseForbidden(CaseError):
    """The user's role may not do this (a hall manager reviewing, a hall manager opening by hand)."""


class CaseNotFound(CaseError):
    """No such case, or none the user's scope may know exists."""


@dataclass(frozen=True)
class Case:
    id: int
    hall: str
    rating: int | None
    source: str
    title: str
    state: str
    opened_ms: int
    opened_by: str
    deadline: str
    callback_ms: int | None
    callback_by: str | None
    callback_outcome: str | None
    cause: str | None
    measures: str | None
    submitted_ms: int | None
    submitted_by: str | None
    reviewed_ms: int | None
    reviewed_by: str | None
    review_note: str | None
    closed_ms: int | None
    on_time: bool | None
    overdue_ms: int | None

    @property
    def state_name(self) -> str:
        return STATES.get(self.state, self.state)

    @property
    def open(self) -> bool:
        return self.state != "closed"

    def overdue_on(self, today: str) -> bool:
        """Past its deadline and not closed, on the local day ``today`` (even before a tick noticed)."""
        return self.open and today > self.deadline


@dataclass(frozen=True)
class CaseEvent:
    id: int
    case_id: int
    ms: int
    actor: str
    action: str
    detail: str

    @property
    def action_name(self) -> str:
        return ACTIONS.get(self.action, self.action)


_COLS = ("id, hall, rating, source, title, state, opened_ms, opened_by, deadline, callback_ms, callback_by,"
         " callback_outcome, cause, measures, submitted_ms, submitted_by, reviewed_ms, reviewed_by,"
         " review_note, closed_ms, on_time, overdue_ms")


def _oi(v: Any) -> int | None:
    return None if v is None else int(v)


def _case(r: Sequence[Any]) -> Case:
    return Case(int(r[0]), str(r[1]), _oi(r[2]), str(r[3]), str(r[4]), str(r[5]), int(r[6]), str(r[7]),
                str(r[8]), _oi(r[9]), r[10], r[11], r[12], r[13], _oi(r[14]), r[15], _oi(r[16]), r[17],
                r[18], _oi(r[19]), None if r[20] is None else bool(r[20]), _oi(r[21]))


def deadline_of(opened_ms: int, tz: ZoneInfo, cal: Calendar) -> str:
    return cal.add_workdays(dt.date.fromisoformat(day_of(opened_ms, tz)), DEADLINE_WORKDAYS).isoformat()


def _event(conn: Conn, case_id: int, ms: int, actor: str, action: str, detail: str) -> None:
    conn.execute("INSERT INTO case_events (case_id, ms, actor, action, detail) VALUES (?, ?, ?, ?, ?)",
                 (case_id, ms, actor, action, detail))


def _title(r: Rated) -> str:
    score = SCORE_NAMES_ZH.get(r.scale or 0, {}).get(r.score or 0, str(r.score))
    clerk = f"工号 {r.clerk}" if r.clerk else "工号未知 clerk unknown"
    return f"{score}: 窗口 {r.window} · {clerk} · {service_name(r.service)}"


# --- the supervision step --------------------------------------------------------------------------------

def on_ratings(conn: Conn, ratings: Sequence[Rated], p: Pass) -> None:
    """Each dissatisfied rating opens its case (once: the UNIQUE rating column, the insert does nothing on
    a conflict), assigned to the rating's hall, due 15 working days after the day it is opened."""
    deadline = deadline_of(p.now_ms, p.tz, p.cal)
    for r in ratings:
        if not r.dissatisfied:
            continue
        title = _title(r)
        row = conn.one("INSERT INTO cases (hall, rating, source, title, opened_ms, opened_by, deadline)"
                       " VALUES (?, ?, 'rating', ?, ?, ?, ?) ON CONFLICT (rating) DO NOTHING RETURNING id",
                       (r.hall, r.id, title, p.now_ms, ACTOR, deadline))
        if row is None:
            continue
        cid = int(row[0])
        _event(conn, cid, p.now_ms, ACTOR, "opened", f"评价 rating #{r.id}: {title}")
        audit.record(conn, ACTOR, "case.open", str(cid),
                     {"hall": r.hall, "rating": r.id, "source": "rating", "deadline": deadline}, p.now_ms)


def on_tick(conn: Conn, p: Pass) -> None:
    """A case not closed whose deadline has passed (its local day is later) is marked overdue once: the
    time, an 'overdue' event and an audit row; the lists show it to the city and province as escalated."""
    today = day_of(p.now_ms, p.tz)
    rows = conn.all("SELECT id, hall, deadline FROM cases WHERE state <> 'closed' AND overdue_ms IS NULL"
                    " AND deadline < ? ORDER BY id", (today,))
    for cid, hall, deadline in rows:
        conn.execute("UPDATE cases SET overdue_ms = ? WHERE id = ? AND overdue_ms IS NULL", (p.now_ms, cid))
        _event(conn, int(cid), p.now_ms, ACTOR, "overdue",
               f"截止 deadline {deadline} 已过 passed, 未关闭 not closed: 上报市县/省公司 escalated")
        audit.record(conn, ACTOR, "case.overdue", str(cid), {"hall": hall, "deadline": deadline}, p.now_ms)


# --- reading ----------------------------------------------------------------------------------------------

def get(conn: Conn, scope: Scope, case_id: int, *, lock: bool = False) -> Case:
    """The case, if the scope may see it (else CaseNotFound, as for a case that does not exist).
    ``lock``: for an action, the row locked until the transaction ends, so two people acting at once
    (two reviewers accepting) see each other's change and the second is refused by the state check; on
    SQLite the write transaction (BEGIN IMMEDIATE) already does this."""
    cond, args = scope.sql("hall")
    tail = " FOR UPDATE" if lock and conn.dialect == "postgres" else ""
    row = conn.one(f"SELECT {_COLS} FROM cases WHERE id = ?{cond}{tail}", [case_id, *args])
    if row is None:
        raise CaseNotFound(f"no case #{case_id}")
    return _case(row)


def case_of_rating(conn: Conn, rating_id: int) -> Case | None:
    """The case opened for a rating (its custody page links to it); the rating's page is already scoped."""
    row = conn.one(f"SELECT {_COLS} FROM cases WHERE rating = ?", (rating_id,))
    return None if row is None else _case(row)


def events(conn: Conn, case_id: int) -> list[CaseEvent]:
    return [CaseEvent(int(r[0]), int(r[1]), int(r[2]), str(r[3]), str(r[4]), str(r[5]))
            for r in conn.all("SELECT id, case_id, ms, actor, action, detail FROM case_events"
                              " WHERE case_id = ? ORDER BY id", (case_id,))]


@dataclass(frozen=True)
class Query:
    """The list's filters; ``overdue``: not closed and past the deadline on ``today``."""

    state: str | None = None
    overdue: bool = False
    hall: str | None = None
    city: str | None = None
    from_ms: int | None = None
    to_ms: int | None = None          # exclusive
    today: str = ""


def _where(scope: Scope, q: Query) -> tuple[str, list[Any]]:
    where, args = scope.sql("hall")
    params = list(args)
    if q.state:
        where += " AND state = ?"
        params.append(q.state)
    if q.overdue:
        where += " AND state <> 'closed' AND (overdue_ms IS NOT NULL OR deadline < ?)"
        params.append(q.today)
    if q.hall:
        where += " AND hall = ?"
        params.append(q.hall)
    if q.city:
        where += " AND hall IN (SELECT hall FROM halls WHERE city = ?)"
        params.append(q.city)
    if q.from_ms is not None:
        where += " AND opened_ms >= ?"
        params.append(q.from_ms)
    if q.to_ms is not None:
        where += " AND opened_ms < ?"
        params.append(q.to_ms)
    return where, params


def listing(conn: Conn, scope: Scope, q: Query, *, limit: int, offset: int = 0) -> tuple[int, list[Case]]:
    """The scope's cases matching ``q``, newest first, and how many match in all."""
    where, params = _where(scope, q)
    total = int(conn.scalar(f"SELECT COUNT(*) FROM cases WHERE 1 = 1{where}", params))
    rows = conn.all(f"SELECT {_COLS} FROM cases WHERE 1 = 1{where} ORDER BY opened_ms DESC, id DESC"
                    " LIMIT ? OFFSET ?", [*params, limit, offset])
    return total, [_case(r) for r in rows]


def counts(conn: Conn, scope: Scope, today: str) -> dict[str, int]:
    """The scope's cases per state, and how many are overdue now: the list's summary."""
    cond, args = scope.sql("hall")
    out = {k: 0 for k in STATES}
    for state, n in conn.all(f"SELECT state, COUNT(*) FROM cases WHERE 1 = 1{cond} GROUP BY state", args):
        out[str(state)] = int(n)
    out["overdue"] = int(conn.scalar(
        "SELECT COUNT(*) FROM cases WHERE state <> 'closed'"
        f" AND (overdue_ms IS NOT NULL OR deadline < ?){cond}", [today, *args]))
    return out


# --- actions ----------------------------------------------------------------------------------------------

def _text(value: str, what: str, most: int = MAX_TEXT) -> str:
    text = (value or "").strip()
    if len(text) < MIN_TEXT:
        raise CaseError(f"{what} is required (at least {MIN_TEXT} characters)")
    if len(text) > most:
        raise CaseError(f"{what} is at most {most} characters, not {len(text)}")
    return text


def _rectifiable(conn: Conn, user: User, case_id: int) -> Case:
    c = get(conn, user.scope, case_id, lock=True)
    if c.state not in ("notified", "rectifying"):
        raise CaseConflict(f"case #{case_id} is {c.state_name}: the hall cannot change it now")
    return c


def _start(conn: Conn, c: Case) -> None:
    # The hall's first action is the 整改 starting: notified -> rectifying.
    if c.state == "notified":
        conn.execute("UPDATE cases SET state = 'rectifying' WHERE id = ? AND state = 'notified'", (c.id,))


def open_manual(conn: Conn, user: User, hall: str, title: str, detail: str, now_ms: int, tz: ZoneInfo,
                cal: Calendar) -> Case:
    """A case opened by hand (a complaint, an observation) by a province or city user, for a hall in
    their scope."""
    if user.role == "hall":
        raise CaseForbidden("only a city or province user opens a case by hand")
    hall = (hall or "").strip()
    if not hall or conn.scalar("SELECT 1 FROM halls WHERE hall = ?", (hall,)) is None \
            or not user.scope.allows_hall(conn, hall):
        raise CaseError(f"{hall[:40]!r} is not a hall in your scope")
    title = _text(title, "the title", MAX_TITLE)
    detail = _text(detail, "the description")
    deadline = deadline_of(now_ms, tz, cal)
    cid = int(conn.scalar("INSERT INTO cases (hall, rating, source, title, opened_ms, opened_by, deadline)"
                          " VALUES (?, NULL, 'manual', ?, ?, ?, ?) RETURNING id",
                          (hall, title, now_ms, user.username, deadline)))
    _event(conn, cid, now_ms, user.username, "opened", detail)
    audit.record(conn, user.username, "case.open", str(cid),
                 {"hall": hall, "source": "manual", "title": title, "deadline": deadline}, now_ms)
    return get(conn, user.scope, cid)


def record_callback(conn: Conn, user: User, case_id: int, at_ms: int, outcome: str, now_ms: int,
                    tz: ZoneInfo) -> Case:
    """The 回访: when the customer was called back (not in the future, not before the day the case was
    opened), by the user, and what came of it."""
    c = _rectifiable(conn, user, case_id)
    outcome = _text(outcome, "the call-back outcome")
    opened_day = day_of(c.opened_ms, tz)
    if at_ms > now_ms + 60_000:
        raise CaseError("the call-back time is in the future")
    if day_of(at_ms, tz) < opened_day:
        raise CaseError(f"the call-back time is before the case was opened ({opened_day})")
    _start(conn, c)
    conn.execute("UPDATE cases SET callback_ms = ?, callback_by = ?, callback_outcome = ? WHERE id = ?",
                 (at_ms, user.username, outcome, case_id))
    when = dt.datetime.fromtimestamp(at_ms / 1000, tz).strftime("%Y-%m-%d %H:%M")
    _event(conn, case_id, now_ms, user.username, "callback", f"{when}: {outcome}")
    audit.record(conn, user.username, "case.callback", str(case_id),
                 {"at_ms": at_ms, "outcome": outcome}, now_ms)
    return get(conn, user.scope, case_id)


def record_analysis(conn: Conn, user: User, case_id: int, cause: str, measures: str, now_ms: int) -> Case:
    """The cause analysis (原因分析) and the rectification measures (整改措施)."""
    c = _rectifiable(conn, user, case_id)
    cause = _text(cause, "the cause analysis")
    measures = _text(measures, "the rectification measures")
    _start(conn, c)
    conn.execute("UPDATE cases SET cause = ?, measures = ? WHERE id = ?", (cause, measures, case_id))
    _event(conn, case_id, now_ms, user.username, "analysis",
           f"原因 Cause: {cause}\n措施 Measures: {measures}")
    audit.record(conn, user.username, "case.analysis", str(case_id),
                 {"cause": cause, "measures": measures}, now_ms)
    return get(conn, user.scope, case_id)


def submit(conn: Conn, user: User, case_id: int, now_ms: int) -> Case:
    """To review: only with the call-back, the cause and the measures recorded."""
    c = _rectifiable(conn, user, case_id)
    missing = [name for name, v in (("回访 call-back", c.callback_ms), ("原因分析 cause", c.cause),
                                    ("整改措施 measures", c.measures)) if v is None]
    if missing:
        raise CaseError(f"record the {', '.join(missing)} before submitting for review")
    conn.execute("UPDATE cases SET state = 'review', submitted_ms = ?, submitted_by = ? WHERE id = ?",
                 (now_ms, user.username, case_id))
    _event(conn, case_id, now_ms, user.username, "submitted", "提交复核 submitted for review")
    audit.record(conn, user.username, "case.submit", str(case_id), {}, now_ms)
    return get(conn, user.scope, case_id)


def _reviewable(conn: Conn, user: User, case_id: int) -> Case:
    c = get(conn, user.scope, case_id, lock=True)
    if user.role == "hall":
        raise CaseForbidden("a hall manager does not review cases: the city or province does")
    if c.state != "review":
        raise CaseConflict(f"case #{case_id} is {c.state_name}, not in review")
    return c


def accept(conn: Conn, user: User, case_id: int, note: str, now_ms: int, tz: ZoneInfo) -> Case:
    """复核通过: closed, on time when the local day of closing is not after the deadline."""
    c = _reviewable(conn, user, case_id)
    note = (note or "").strip()
    if len(note) > MAX_TEXT:
        raise CaseError(f"the review note is at most {MAX_TEXT} characters")
    on_time = day_of(now_ms, tz) <= c.deadline
    conn.execute("UPDATE cases SET state = 'closed', reviewed_ms = ?, reviewed_by = ?, review_note = ?,"
                 " closed_ms = ?, on_time = ? WHERE id = ?",
                 (now_ms, user.username, note or None, now_ms, int(on_time), case_id))
    _event(conn, case_id, now_ms, user.username, "accepted",
           ("按期 on time" if on_time else "逾期 late") + (f": {note}" if note else ""))
    audit.record(conn, user.username, "case.accept", str(case_id), {"on_time": on_time, "note": note}, now_ms)
    return get(conn, user.scope, case_id)


def return_case(conn: Conn, user: User, case_id: int, note: str, now_ms: int) -> Case:
    """退回整改: back to the hall with the reviewer's note (required: the hall needs to know why)."""
    _reviewable(conn, user, case_id)
    note = _text(note, "the review note (why it is returned)")
    conn.execute("UPDATE cases SET state = 'rectifying', reviewed_ms = ?, reviewed_by = ?, review_note = ?"
                 " WHERE id = ?", (now_ms, user.username, note, case_id))
    _event(conn, case_id, now_ms, user.username, "returned", note)
    audit.record(conn, user.username, "case.return", str(case_id), {"note": note}, now_ms)
    return get(conn, user.scope, case_id)
