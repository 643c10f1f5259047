"""Integrity flags (疑点): patterns in the stored ratings a person should look at, never a penalty.
The supervision loop's flags step (supervision.py); a province or city user reviews each flag (dismissed
or confirmed, with a note), audited.

The patterns, each flagged once (``flags.dedup`` is unique; while a flag is open, a pattern that goes on
adds its new ratings to the same flag instead of raising another):

- ``fast-press``: at one keypad, ``FAST_N`` or more ratings in a day whose key was pressed less than
  ``FAST_MS`` after the prompt was shown (the keypad's own timer, ``delay_ms``): faster than a person
  reads the prompt and reacts. One flag per keypad and day.
- ``invite-pattern``: outcomes of the clerk's own invite key (prompt 0) in patterns: ``STREAK_N`` or more
  top scores in a row at one keypad (one flag per run, keyed by its first rating), or pressed while the
  hall is closed (``hours.for_hall`` with the working-day calendar; one flag per hall and day; a rating
  whose keypad clock was unknown has no press time and is not judged).
- ``txn-reused``: one transaction id on ratings (with a score) of different prompts in one hall within
  ``TXN_DAYS`` days: one transaction rated twice. One flag per hall and transaction.
- ``one-key``: a keypad whose last ``ONE_KEY_N`` or more ratings are all the same key. One flag per run.

"In a row" is the keypad's own order (epoch, seq). Every query is bounded (``LOOKBACK`` rows, one day,
``TXN_DAYS``) and runs on an index of the ratings table (device-epoch-seq, day-hall), so a pass over a
batch costs a few indexed reads per keypad, however many ratings the province holds.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from countersign.protocol.messages import SCORE_NAMES_ZH

from . import audit, hours, rated
from .db import Conn
from .errors import ProvinceError
from .rated import Rated
from .scope import Scope, User

if TYPE_CHECKING:
    from .supervision import Pass

__all__ = ["KINDS", "STATES", "Flag", "FlagError", "FlagForbidden", "FlagNotFound", "get", "listing",
           "on_ratings", "on_tick", "review"]

FAST_MS = 300            # below a person's reaction time to a prompt they have to read
FAST_N = 3
STREAK_N = 5
ONE_KEY_N = 20
TXN_DAYS = 7             # a transaction id is looked for on ratings this many days either side
LOOKBACK = 500           # ratings looked at per keypad for a run; a flag lists at most this many
ACTOR = "supervisor"
MAX_NOTE = 2000

KINDS = {"fast-press": "按键过快 Presses faster than a person reacts",
         "invite-pattern": "邀评键异常 Clerk's invite key in a pattern",
         "txn-reused": "业务流水重复 Transaction rated twice",
         "one-key": "评价单一 All one key"}
STATES = {"open": "待复核 Open", "dismissed": "已排除 Dismissed", "confirmed": "已确认 Confirmed"}
OUTCOMES = ("dismissed", "confirmed")


class FlagError(ProvinceError, ValueError):
    """A review that cannot be made as asked: nothing changed."""


class FlagNotFound(ProvinceError, LookupError):
    """No such flag, or none the user may know exists."""


class FlagForbidden(ProvinceError, PermissionError):
    """A hall manager does not review the flags of their own hall."""


@dataclass(frozen=True)
class Flag:
    id: int
    kind: str
    hall: str
    device: str | None
    clerk: str | None
    why: str
    ratings: list[int]
    raised_ms: int
    state: str
    reviewed_ms: int | None
    reviewed_by: str | None
    note: str | None

    @property
    def kind_name(self) -> str:
        return KINDS.get(self.kind, self.kind)

    @property
    def state_name(self) -> str:
        return STATES.get(self.state, self.state)


_COLS = "id, kind, hall, device, clerk, why, ratings, raised_ms, state, reviewed_ms, reviewed_by, note"


def _flag(r: Sequence[Any]) -> Flag:
    return Flag(int(r[0]), str(r[1]), str(r[2]), r[3], r[4], str(r[5]), [int(i) for i in json.loads(r[6])],
                int(r[7]), str(r[8]), None if r[9] is None else int(r[9]), r[10], r[11])


# --- the step -------------------------------------------------------------------------------------------


def on_ratings(conn: Conn, ratings: Sequence[Rated], p: Pass) -> None:
    """Each newly stored rating, once, in the pass's transaction: the patterns it may complete."""
    devices = sorted({r.device for r in ratings if r.kind == "rating"})
    for device in devices:
        mine = [r for r in ratings if r.device == device]
        for hall, day in sorted({(r.hall, r.day) for r in mine if _fast(r)}):
            _fast_press(conn, hall, device, day, p)
        if any(_invite_top(r) for r in mine):
            _streak(conn, device, p)
        _one_key(conn, device, p)
    known: dict[str, hours.Hours] = {}
    closed = {(r.hall, r.day) for r in ratings
              if r.prompt == 0 and r.press_s is not None and not _open(conn, r, p, known)}
    for hall, day in sorted(closed):
        _after_hours(conn, hall, day, p, known)
    for hall, txn, day in sorted({(r.hall, r.txn, r.day) for r in ratings if r.kind == "rating" and r.txn}):
        _txn_reused(conn, hall, txn, day, p)


def on_tick(conn: Conn, p: Pass) -> None:
    """Nothing: every pattern is completed by a rating, none by time passing."""


def _fast(r: Rated) -> bool:
    return r.kind == "rating" and r.delay_ms is not None and r.delay_ms < FAST_MS


def _invite_top(r: Rated) -> bool:
    return r.kind == "rating" and r.prompt == 0 and r.score is not None and r.score == r.scale


def _open(conn: Conn, r: Rated, p: Pass, known: dict[str, hours.Hours]) -> bool:
    if r.hall not in known:
        known[r.hall] = hours.for_hall(conn, r.hall)
    return known[r.hall].is_open(hours.local(r.at_ms, p.tz), p.cal)


def _score(r: Rated) -> str:
    if r.score is None or r.scale not in SCORE_NAMES_ZH:
        return "未评价 no rating"
    return SCORE_NAMES_ZH[r.scale][r.score]


def _clerk(rs: Sequence[Rated]) -> str | None:
    clerks = {r.clerk for r in rs}
    return clerks.pop() if len(clerks) == 1 else None


def _raise(conn: Conn, kind: str, dedup: str, rs: Sequence[Rated], why: str, p: Pass, *,
           device: str | None) -> None:
    """The flag of ``dedup``, once: a new one, or (still open) the same one listing the pattern's
    ratings so far. A flag already reviewed stays as reviewed: the same pattern is not flagged again."""
    ids = json.dumps([r.id for r in rs])
    have = conn.one("SELECT id, state, ratings FROM flags WHERE dedup = ?", (dedup,))
    if have is None:
        fid = conn.scalar("INSERT INTO flags (kind, hall, device, clerk, dedup, why, ratings, raised_ms)"
                          " VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                          (kind, rs[0].hall, device, _clerk(rs), dedup, why, ids, p.now_ms))
        audit.record(conn, ACTOR, "flag.raise", f"flag:{fid}", {"kind": kind, "hall": rs[0].hall,
                                                                "why": why, "ratings": len(rs)}, p.now_ms)
    elif have[1] == "open" and have[2] != ids:
        conn.execute("UPDATE flags SET why = ?, ratings = ?, clerk = ? WHERE id = ?",
                     (why, ids, _clerk(rs), have[0]))


def _fast_press(conn: Conn, hall: str, device: str, day: str, p: Pass) -> None:
    rs = rated.where(conn, "day = ? AND hall = ? AND device = ? AND kind = 'rating' AND delay_ms < ?",
                     (day, hall, device, FAST_MS), LOOKBACK)
    if len(rs) < FAST_N:
        return
    quickest = min(r.delay_ms or 0 for r in rs)
    why = (f"评价器 {device} 在 {day} 有 {len(rs)} 次评价在邀评显示后不到 {FAST_MS} 毫秒内按键"
           f"（最快 {quickest} 毫秒），快于人的反应。 Keypad {device} on {day}: {len(rs)} ratings pressed"
           f" less than {FAST_MS} ms after the prompt was shown (fastest {quickest} ms), faster than a person"
           " reacts.")
    _raise(conn, "fast-press", f"fast-press:{device}:{day}", rs, why, p, device=device)


def _run(conn: Conn, device: str, member: Callable[[Sequence[Any]], bool], breaks: str,
         args: Sequence[object], need: int, *,
         skip_no_ratings: bool = False) -> tuple[int, list[Rated]] | None:
    """The run going on at a keypad: its newest outcomes (in the keypad's own order, epoch and seq, read
    backwards on the table's unique index) while ``member`` holds for (id, kind, score, scale, prompt),
    if at least ``need`` long; with the id of the outcome that broke it before, the run's name, the same
    however long it grows. Only a run longer than ``LOOKBACK`` looks for that break with ``breaks`` (SQL,
    a scan of the keypad's rows), once it is flagged anyway."""
    rows = conn.all("SELECT id, kind, score, scale, prompt FROM ratings WHERE device = ?"
                    " ORDER BY epoch DESC, seq DESC LIMIT ?", (device, LOOKBACK))
    run: list[int] = []
    start: int | None = None
    for r in rows:
        if skip_no_ratings and r[1] != "rating":
            continue
        if not member(r):
            start = int(r[0])
            break
        run.append(int(r[0]))
    if len(run) < need:
        return None
    if start is None:
        found = (conn.scalar(f"SELECT MAX(id) FROM ratings WHERE device = ? AND ({breaks})", [device, *args])
                 if len(rows) == LOOKBACK else None)
        start = 0 if found is None else int(found)
    return start, rated.load(conn, run)


def _streak(conn: Conn, device: str, p: Pass) -> None:
    got = _run(conn, device, lambda r: r[1] == "rating" and r[4] == 0 and r[2] == r[3],
               "kind <> 'rating' OR prompt <> 0 OR score <> scale", (), STREAK_N)
    if got is None:
        return
    start, rs = got
    r0 = rs[0]
    why = (f"窗口 {r0.window}（评价器 {device}）连续 {len(rs)} 次由工作人员邀评键开启且均为最高分"
           f"“{_score(r0)}”。 Window {r0.window} (keypad {device}): {len(rs)} ratings in a row opened by the"
           " clerk's own invite key, every one the top score.")
    _raise(conn, "invite-pattern", f"invite-streak:{device}:{start}", rs, why, p, device=device)


def _after_hours(conn: Conn, hall: str, day: str, p: Pass, known: dict[str, hours.Hours]) -> None:
    candidates = rated.where(conn, "hall = ? AND day = ? AND prompt = 0 AND press_s IS NOT NULL",
                             (hall, day), LOOKBACK)
    rs = [r for r in candidates if not _open(conn, r, p, known)]
    if not rs:
        return
    h = known[hall]
    times = ", ".join(hours.local(r.at_ms, p.tz).strftime("%H:%M") for r in rs[:10])
    more = " …" if len(rs) > 10 else ""
    span = f"{h.spec} {h.open.isoformat('minutes')}-{h.close.isoformat('minutes')}"
    why = (f"营业厅 {hall} 在 {day} 有 {len(rs)} 次由工作人员邀评键开启的评价发生在非营业时间"
           f"（{times}{more}；营业时间 {span}）。 Hall {hall} on {day}: {len(rs)} outcomes of the clerk's"
           f" invite key while the hall was closed ({times}{more}; hours {span}).")
    _raise(conn, "invite-pattern", f"invite-after-hours:{hall}:{day}", rs, why, p,
           device=rs[0].device if len({r.device for r in rs}) == 1 else None)


def _txn_reused(conn: Conn, hall: str, txn: str, day: str, p: Pass) -> None:
    d = dt.date.fromisoformat(day)
    span = ((d - dt.timedelta(days=TXN_DAYS)).isoformat(), (d + dt.timedelta(days=TXN_DAYS)).isoformat())
    rs = rated.where(conn, "day >= ? AND day <= ? AND hall = ? AND txn = ? AND kind = 'rating'",
                     (*span, hall, txn), LOOKBACK)
    prompts = {r.prompt for r in rs}
    if len(prompts) < 2:
        return
    why = (f"营业厅 {hall} 的业务流水 {txn} 出现在 {len(prompts)} 次不同邀评的 {len(rs)} 条评价上："
           f"同一笔业务被评价多次。 Hall {hall}: transaction {txn} is on {len(rs)} ratings of {len(prompts)}"
           " different prompts: one transaction rated more than once.")
    _raise(conn, "txn-reused", f"txn-reused:{hall}:{txn}", rs, why, p,
           device=rs[0].device if len({r.device for r in rs}) == 1 else None)


def _one_key(conn: Conn, device: str, p: Pass) -> None:
    newest = conn.one("SELECT score, scale FROM ratings WHERE device = ? AND kind = 'rating'"
                      " ORDER BY epoch DESC, seq DESC LIMIT 1", (device,))
    if newest is None:
        return
    key = (int(newest[0]), int(newest[1]))
    # No-ratings are not a key pressed: they neither extend nor break the run.
    got = _run(conn, device, lambda r: (r[2], r[3]) == key, "kind = 'rating' AND (score <> ? OR scale <> ?)",
               key, ONE_KEY_N, skip_no_ratings=True)
    if got is None:
        return
    start, rs = got
    why = (f"评价器 {device} 最近 {len(rs)} 次评价全部为同一键“{_score(rs[-1])}”。 Keypad {device}: its last"
           f" {len(rs)} ratings are all the same key ({key[0]} of {key[1]}).")
    _raise(conn, "one-key", f"one-key:{device}:{start}", rs, why, p, device=device)


# --- the platform's side --------------------------------------------------------------------------------


def listing(conn: Conn, scope: Scope, state: str | None = "open", limit: int = 500) -> list[Flag]:
    """Flags in ``scope``, newest first; ``state`` None: every state."""
    where, args = scope.sql("hall")
    if state is not None:
        if state not in STATES:
            raise FlagError(f"state must be one of {', '.join(STATES)}")
        where += " AND state = ?"
        args.append(state)
    rows = conn.all(f"SELECT {_COLS} FROM flags WHERE 1 = 1{where} ORDER BY id DESC LIMIT ?", [*args, limit])
    return [_flag(r) for r in rows]


def get(conn: Conn, scope: Scope, flag_id: int) -> Flag:
    where, args = scope.sql("hall")
    r = conn.one(f"SELECT {_COLS} FROM flags WHERE id = ?{where}", [flag_id, *args])
    if r is None:
        raise FlagNotFound(f"no flag #{flag_id}")
    return _flag(r)


def review(conn: Conn, user: User, flag_id: int, outcome: str, note: str, now_ms: int) -> Flag:
    """A province or city user (in scope) dismisses or confirms an open flag, with a note; audited. A
    hall manager does not review the flags of their own hall."""
    if user.role == "hall":
        raise FlagForbidden("a flag is reviewed by the city or the province")
    if outcome not in OUTCOMES:
        raise FlagError(f"the review is one of {', '.join(OUTCOMES)}")
    text = note.strip()
    if not text:
        raise FlagError("a note is required: why the flag is dismissed or confirmed")
    if len(text) > MAX_NOTE:
        raise FlagError(f"the note is at most {MAX_NOTE} characters")
    f = get(conn, user.scope, flag_id)
    if f.state != "open":
        raise FlagError(f"flag #{flag_id} was already reviewed: {f.state_name}")
    cur = conn.execute("UPDATE flags SET state = ?, reviewed_ms = ?, reviewed_by = ?, note = ?"
                       " WHERE id = ? AND state = 'open'", (outcome, now_ms, user.username, text, flag_id))
    if cur.rowcount != 1:
        raise FlagError(f"flag #{flag_id} was reviewed meanwhile")
    audit.record(conn, user.username, "flag.review", f"flag:{flag_id}",
                 {"kind": f.kind, "hall": f.hall, "outcome": outcome, "note": text}, now_ms)
    return get(conn, user.scope, flag_id)
