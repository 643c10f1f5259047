"""Appeals (申诉复核): a hall contests one dissatisfied rating (misoperation 误操作, a malicious rating
恶意差评, someone who was not the hall's customer 非本厅客户) with its evidence; the province decides.

An upheld appeal takes the rating out of the figures for assessment (exclusions.py, figures.Filter's
``assessment``) and nothing else: the rating stays stored with its COSE bytes, verifiable, in every list
and on its custody page, with the decision shown next to it (``appeal_of``). A rejected appeal changes
nothing; the hall may appeal again with new evidence (the database allows one appeal not rejected per
rating). Appeals are never deleted (a trigger of migration step 4 refuses it). Every step is audited in
the transaction of the change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from countersign.protocol.messages import is_satisfied

from . import audit, exclusions
from .db import Conn, IntegrityError
from .errors import ProvinceError
from .figures import Figures, Filter, figures_by
from .scope import Scope, User

__all__ = ["REASONS", "STATES", "Appeal", "AppealConflict", "AppealError", "AppealForbidden",
           "AppealNotFound", "Compared", "appeal_of", "appeals_of", "compare", "decide", "file", "get",
           "history", "listing"]

REASONS = {"misoperation": "误操作 Misoperation", "malicious": "恶意差评 Malicious rating",
           "not-our-customer": "非本厅客户 Not our customer"}
STATES = {"pending": "待复核 Pending", "upheld": "申诉成立 Upheld (excluded from assessment)",
          "rejected": "已驳回 Rejected"}
OUTCOMES = ("upheld", "rejected")
MAX_TEXT = 2000          # evidence and decision: a paragraph, not a file
MIN_TEXT = 4             # "ok" is not evidence


class AppealError(ProvinceError, ValueError):
    """The appeal or decision cannot be made as asked (bad reason, no evidence, ...): nothing changed."""


class AppealConflict(AppealError):
    """The rating already has an appeal pending or upheld, or the appeal was already decided."""


class AppealNotFound(ProvinceError, LookupError):
    """No such rating or appeal, or none the user may know exists."""


class AppealForbidden(ProvinceError, PermissionError):
    """Only the province decides an appeal."""


@dataclass(frozen=True)
class Appeal:
    id: int
    rating: int
    hall: str
    reason: str
    evidence: str
    filed_ms: int
    filed_by: str
    state: str
    decided_ms: int | None
    decided_by: str | None
    decision: str | None

    @property
    def reason_name(self) -> str:
        return REASONS.get(self.reason, self.reason)

    @property
    def state_name(self) -> str:
        return STATES.get(self.state, self.state)

    @property
    def excluded(self) -> bool:
        return self.state == "upheld"

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "rating": self.rating, "hall": self.hall, "reason": self.reason,
                "evidence": self.evidence, "filed_ms": self.filed_ms, "filed_by": self.filed_by,
                "state": self.state, "decided_ms": self.decided_ms, "decided_by": self.decided_by,
                "decision": self.decision}


_COLS = "id, rating, hall, reason, evidence, filed_ms, filed_by, state, decided_ms, decided_by, decision"


def _appeal(r: Sequence[Any]) -> Appeal:
    return Appeal(int(r[0]), int(r[1]), str(r[2]), str(r[3]), str(r[4]), int(r[5]), str(r[6]), str(r[7]),
                  None if r[8] is None else int(r[8]), r[9], r[10])


def _text(value: str, what: str) -> str:
    text = value.strip()
    if len(text) < MIN_TEXT:
        raise AppealError(f"{what} is required (at least {MIN_TEXT} characters)")
    if len(text) > MAX_TEXT:
        raise AppealError(f"{what} is at most {MAX_TEXT} characters, not {len(text)}")
    return text


def appeals_of(conn: Conn, rating_ids: Sequence[int]) -> dict[int, Appeal]:
    """Per rating, the appeal that stands: the pending or upheld one, else the latest rejected one."""
    if not rating_ids:
        return {}
    out: dict[int, Appeal] = {}
    marks = ",".join("?" for _ in rating_ids)
    for r in conn.all(f"SELECT {_COLS} FROM appeals WHERE rating IN ({marks}) ORDER BY id", list(rating_ids)):
        a = _appeal(r)
        have = out.get(a.rating)
        if have is None or have.state == "rejected":
            out[a.rating] = a
    return out


def appeal_of(conn: Conn, rating_id: int) -> Appeal | None:
    """The appeal that stands for one rating (see ``appeals_of``), or None: for custody pages and lists,
    which show a rating's decision next to it."""
    return appeals_of(conn, [rating_id]).get(rating_id)


def history(conn: Conn, rating_id: int) -> list[Appeal]:
    """Every appeal on one rating, oldest first."""
    return [_appeal(r) for r in conn.all(f"SELECT {_COLS} FROM appeals WHERE rating = ? ORDER BY id",
                                         (rating_id,))]


def get(conn: Conn, scope: Scope, appeal_id: int) -> Appeal:
    where, args = scope.sql("hall")
    r = conn.one(f"SELECT {_COLS} FROM appeals WHERE id = ?{where}", [appeal_id, *args])
    if r is None:
        raise AppealNotFound(f"no appeal #{appeal_id}")
    return _appeal(r)


def listing(conn: Conn, scope: Scope, state: str | None = None, *, day_from: str | None = None,
            day_to: str | None = None, limit: int = 500) -> list[Appeal]:
    """Appeals in ``scope`` (on the appeal's hall, the rating's), pending first then newest; the period
    is the rating's day."""
    where, args = scope.sql("hall")
    if state is not None:
        if state not in STATES:
            raise AppealError(f"state must be one of {', '.join(STATES)}")
        where += " AND state = ?"
        args.append(state)
    if day_from is not None:
        where += " AND rating IN (SELECT id FROM ratings WHERE day >= ?)"
        args.append(day_from)
    if day_to is not None:
        where += " AND rating IN (SELECT id FROM ratings WHERE day <= ?)"
        args.append(day_to)
    rows = conn.all(f"SELECT {_COLS} FROM appeals WHERE 1 = 1{where}"
                    " ORDER BY CASE WHEN state = 'pending' THEN 0 ELSE 1 END, id DESC LIMIT ?",
                    [*args, limit])
    return [_appeal(r) for r in rows]


def file(conn: Conn, user: User, rating_id: int, reason: str, evidence: str, now_ms: int) -> Appeal:
    """A hall manager (or a city or province user, in scope) appeals one dissatisfied rating; in the
    caller's transaction, with its audit row."""
    where, args = user.scope.sql("hall")
    r = conn.one(f"SELECT id, hall, kind, score, scale FROM ratings WHERE id = ?{where}", [rating_id, *args])
    if r is None:
        raise AppealNotFound(f"no rating #{rating_id}")
    _, hall, kind, score, scale = r
    if kind != "rating" or is_satisfied(int(score), int(scale)):
        raise AppealError("only a dissatisfied rating (不满意, 非常不满意) can be appealed")
    if reason not in REASONS:
        raise AppealError(f"reason must be one of {', '.join(REASONS)}")
    text = _text(evidence, "evidence (申诉依据)")
    standing = appeal_of(conn, rating_id)
    if standing is not None and standing.state != "rejected":
        raise AppealConflict(f"rating #{rating_id} already has appeal #{standing.id} ({standing.state_name})")
    conn.execute("SAVEPOINT appeal")
    try:
        aid = conn.scalar("INSERT INTO appeals (rating, hall, reason, evidence, filed_ms, filed_by)"
                          " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                          (rating_id, hall, reason, text, now_ms, user.username))
    except IntegrityError:
        # Two people filing at once: the unique index let one through.
        conn.execute("ROLLBACK TO SAVEPOINT appeal")
        raise AppealConflict(f"rating #{rating_id} already has an open appeal") from None
    conn.execute("RELEASE SAVEPOINT appeal")
    audit.record(conn, user.username, "appeal.file", f"appeal:{aid}",
                 {"rating": rating_id, "hall": hall, "reason": reason, "evidence": text}, now_ms)
    return get(conn, user.scope, int(aid))


def decide(conn: Conn, user: User, appeal_id: int, outcome: str, decision: str, now_ms: int) -> Appeal:
    """The province upholds or rejects a pending appeal, with the decision's text; audited."""
    if not user.is_admin:
        raise AppealForbidden("only the province decides an appeal")
    if outcome not in OUTCOMES:
        raise AppealError(f"the decision is one of {', '.join(OUTCOMES)}")
    text = _text(decision, "the decision's reasons (复核意见)")
    a = get(conn, user.scope, appeal_id)
    if a.state != "pending":
        raise AppealConflict(f"appeal #{appeal_id} was already decided: {a.state_name}")
    cur = conn.execute("UPDATE appeals SET state = ?, decided_ms = ?, decided_by = ?, decision = ?"
                       " WHERE id = ? AND state = 'pending'",
                       (outcome, now_ms, user.username, text, appeal_id))
    if cur.rowcount != 1:
        raise AppealConflict(f"appeal #{appeal_id} was decided meanwhile")
    audit.record(conn, user.username, "appeal.decide", f"appeal:{appeal_id}",
                 {"rating": a.rating, "hall": a.hall, "outcome": outcome, "decision": text}, now_ms)
    return get(conn, user.scope, appeal_id)


@dataclass(frozen=True)
class Compared:
    """One hall's figures for a period as stored (every rating) and for assessment (without the ratings
    of upheld appeals), and how many ratings the upheld appeals took out."""

    hall: str
    name: str
    city: str
    stored: Figures
    assessed: Figures
    excluded: int


def compare(conn: Conn, scope: Scope, day_from: str | None, day_to: str | None) -> list[Compared]:
    """Per hall in scope that has ratings in the period, both figures side by side (the report page)."""
    plain = figures_by(conn, ("hall",), Filter(scope, day_from, day_to))
    assessed = figures_by(conn, ("hall",), Filter(scope, day_from, day_to, assessment=True))
    where, args = Filter(scope, day_from, day_to).sql()
    excluded = {str(h): int(n) for h, n in conn.all(
        f"SELECT hall, COUNT(*) FROM ratings WHERE 1 = 1{where}{exclusions.excluded_sql('id')}"
        " GROUP BY hall", args)}
    names = {str(h): (str(n), str(c)) for h, n, c in conn.all("SELECT hall, name, city FROM halls")}
    out = []
    for (hall,), fig in plain.items():
        name, city = names.get(str(hall), (str(hall), ""))
        out.append(Compared(str(hall), name, city, fig, assessed.get((hall,), Figures()),
                            excluded.get(str(hall), 0)))
    out.sort(key=lambda c: (c.city, c.hall))
    return out
