"""The supervision loop's alerts step: the rules an administrator edits, the alerts they raise, clear,
and escalate, and the ``alert_events`` each change writes (the durable queue notify.py delivers).

Rules (``alert_rules``; a kind without a row has its default, so a fresh platform alerts at once):

- ``dissatisfied``: every 不满意/非常不满意 rating, one alert per rating, naming the case the cases step
  opened for it in the same pass (cases run first).
- ``negative-share``: the share of dissatisfied ratings over a sliding window, with a minimum count, at
  one window and at the whole hall, looked at from each arriving rating's own time (a gateway's backlog
  arriving late is judged at the time it happened); cleared on a tick once the share over the window
  ending now is below the threshold.
- ``offline``, ``silent``, ``stuck-key``, ``outbox-full`` (per keypad), ``backlog``, ``gateway-silent``
  (per hall): on a tick, only while the hall is open (统一营业时间 and the working-day calendar: a keypad
  switched off on a Sunday is nobody's emergency). Raised once, cleared when the condition ends. Outside
  the hours a raised alert is left as it is (the keypad is still offline), except ``silent``: a closed
  hall is meant to be silent, so its silence alerts clear.

An alert is one row per dedup key not cleared (a unique index); a second occurrence while it is open
counts ``repeats`` instead of a second alert. Not acknowledged within the rule's ``escalate_s``, it is
escalated a level (0 hall -> 1 city -> 2 province), each time an ``escalated`` event; the time counts
while the hall is open (its business hours and the working-day calendar), so a hall that closed at 17:30
has its alerts escalated the next working morning, not at night.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from countersign.protocol.messages import SCORE_NAMES_ZH

from . import audit, hours
from .db import Conn
from .errors import ProvinceError
from .period import day_of
from .rated import Rated
from .ratings_list import dissatisfied_pairs
from .scope import Scope

if TYPE_CHECKING:
    from .supervision import Pass

log = logging.getLogger("countersign.province.alerts")

__all__ = [
    "DEFAULTS",
    "KINDS",
    "KIND_ZH",
    "LEVEL_ZH",
    "Alert",
    "AlertError",
    "Rule",
    "ack",
    "alert_by_id",
    "inbox",
    "on_ratings",
    "on_tick",
    "remove_calendar_day",
    "rules",
    "set_calendar_day",
    "set_rule",
    "unacked",
]

ACTOR = "supervisor"
MAX_LEVEL = 2
LEVEL_ZH = {0: "营业厅 hall", 1: "市公司 city", 2: "省公司 province"}

KIND_ZH = {
    "dissatisfied": "不满意评价 Dissatisfied rating",
    "negative-share": "差评集中 Negative share",
    "offline": "评价器离线 Keypad offline",
    "silent": "营业时间无评价 Keypad silent",
    "stuck-key": "卡键 Stuck key",
    "outbox-full": "评价器待发送将满 Keypad outbox nearly full",
    "backlog": "网关上传积压 Gateway backlog",
    "gateway-silent": "网关无上报 Gateway silent",
    "case-overdue": "整改逾期 Case overdue",
}
KINDS = tuple(KIND_ZH)


class AlertError(ProvinceError, ValueError):
    """A rule, calendar entry or acknowledgement refused, with a reason a person can act on."""

    reason = "bad-alert"


@dataclass(frozen=True)
class Param:
    label: str
    lo: float
    hi: float
    integer: bool = True


# What each kind's parameters mean and the values allowed: the rules page shows them, set_rule checks.
PARAMS: dict[str, dict[str, Param]] = {
    "dissatisfied": {},
    "negative-share": {"share": Param("差评占比 share (0-1)", 0.01, 1.0, integer=False),
                       "min_count": Param("最少评价数 minimum ratings", 1, 10_000),
                       "window_s": Param("时间窗 window (s)", 60, 86_400)},
    "offline": {"after_s": Param("未上报超过 not seen for (s)", 30, 86_400)},
    "silent": {"minutes": Param("无评价分钟 minutes", 5, 1440),
               "min_prompts": Param("期间至少邀评 prompts opened at least", 1, 1000)},
    "stuck-key": {},
    "outbox-full": {"outbox": Param("待发送条数 ratings waiting >=", 1, 1_000_000)},
    "backlog": {"backlog": Param("积压条数 backlog >=", 1, 10_000_000)},
    "gateway-silent": {"minutes": Param("无上报分钟 minutes", 1, 1440)},
    "case-overdue": {},
}


@dataclass(frozen=True)
class Rule:
    kind: str
    enabled: bool
    params: dict[str, float]
    escalate_s: int                 # 0: never escalated
    changed_ms: int | None = None
    changed_by: str | None = None

    def num(self, name: str) -> float:
        return float(self.params[name])

    def whole(self, name: str) -> int:
        return int(self.params[name])


HOUR = 3600
DEFAULTS: dict[str, Rule] = {r.kind: r for r in (
    Rule("dissatisfied", True, {}, 2 * HOUR),
    Rule("negative-share", True, {"share": 0.5, "min_count": 4, "window_s": 900}, HOUR),
    Rule("offline", True, {"after_s": 600}, 2 * HOUR),
    Rule("silent", True, {"minutes": 60, "min_prompts": 3}, 2 * HOUR),
    Rule("stuck-key", True, {}, 2 * HOUR),
    Rule("outbox-full", True, {"outbox": 8000}, HOUR),          # of the keypad's 9000 (common/outbox.py)
    Rule("backlog", True, {"backlog": 5000}, HOUR),
    Rule("gateway-silent", True, {"minutes": 15}, HOUR),
    Rule("case-overdue", True, {}, 24 * HOUR),       # raised at the city's level: the hall missed it
)}


def rules(conn: Conn) -> dict[str, Rule]:
    """Every kind's rule: the stored row, or the default (a stored row missing a parameter a newer
    version added gets the default's)."""
    got = dict(DEFAULTS)
    for kind, enabled, params, escalate_s, changed_ms, changed_by in conn.all(
            "SELECT kind, enabled, params, escalate_s, changed_ms, changed_by FROM alert_rules"):
        if kind not in DEFAULTS:
            continue
        try:
            stored = json.loads(str(params))
            merged = {k: float(stored.get(k, v)) for k, v in DEFAULTS[kind].params.items()}
        except (ValueError, TypeError, AttributeError):
            # A row not written by set_rule (edited by hand): the default, loudly, rather than no alerts
            # at all (an exception here would stop the supervisor's pass).
            log.error("alert rule %s: stored parameters %r unreadable; using the defaults", kind, params)
            merged = dict(DEFAULTS[kind].params)
        got[kind] = Rule(kind, bool(enabled), merged, int(escalate_s), int(changed_ms), str(changed_by))
    return got


def check_rule(kind: str, enabled: bool, params: dict[str, str], escalate_s: str) -> Rule:
    """A rule from a form's text, or AlertError saying which value is wrong."""
    if kind not in PARAMS:
        raise AlertError(f"no alert rule {kind[:40]!r}")
    values: dict[str, float] = {}
    for name, spec in PARAMS[kind].items():
        text = params.get(name, "").strip()
        try:
            v = float(text)
        except ValueError:
            raise AlertError(f"{name} ({spec.label}) must be a number, not {text[:20]!r}") from None
        if not math.isfinite(v) or not spec.lo <= v <= spec.hi:
            raise AlertError(f"{name} ({spec.label}) must be between {spec.lo:g} and {spec.hi:g},"
                             f" not {text[:20]}")
        if spec.integer and v != int(v):
            raise AlertError(f"{name} ({spec.label}) must be a whole number, not {text[:20]}")
        values[name] = int(v) if spec.integer else v
    unknown = set(params) - set(PARAMS[kind])
    if unknown:
        raise AlertError(f"rule {kind} has no parameter {sorted(unknown)[0][:40]!r}")
    try:
        esc = int(escalate_s.strip())
    except ValueError:
        raise AlertError(f"escalate_s must be whole seconds, not {escalate_s[:20]!r}") from None
    if esc != 0 and not 60 <= esc <= 30 * 86_400:
        raise AlertError("escalate_s must be 0 (never escalate) or 60 .. 2592000 seconds (30 days)")
    return Rule(kind, enabled, values, esc)


def set_rule(conn: Conn, rule: Rule, actor: str, now_ms: int) -> None:
    """Store a checked rule (check_rule) with its audit row, in the caller's transaction."""
    params = json.dumps(rule.params, sort_keys=True)
    conn.execute("INSERT INTO alert_rules (kind, enabled, params, escalate_s, changed_ms, changed_by)"
                 " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (kind) DO UPDATE SET enabled = excluded.enabled,"
                 " params = excluded.params, escalate_s = excluded.escalate_s,"
                 " changed_ms = excluded.changed_ms, changed_by = excluded.changed_by",
                 (rule.kind, int(rule.enabled), params, rule.escalate_s, now_ms, actor))
    audit.record(conn, actor, "alert.rule", rule.kind,
                 {"enabled": rule.enabled, "params": rule.params, "escalate_s": rule.escalate_s}, now_ms)


# --- the working-day calendar's corrections (calendar_days) --------------------------------------------

def set_calendar_day(conn: Conn, day: str, workday: bool, name: str, actor: str, now_ms: int) -> None:
    try:
        d = dt.date.fromisoformat(day.strip())
    except ValueError:
        raise AlertError(f"the day looks like 2027-02-06, not {day[:20]!r}") from None
    name = name.strip()
    if not name or len(name) > 60:
        raise AlertError("give the day a name of 1 to 60 characters (e.g. 春节调休)")
    conn.execute("INSERT INTO calendar_days (day, workday, name, changed_ms, changed_by)"
                 " VALUES (?, ?, ?, ?, ?)"
                 " ON CONFLICT (day) DO UPDATE SET workday = excluded.workday, name = excluded.name,"
                 " changed_ms = excluded.changed_ms, changed_by = excluded.changed_by",
                 (d.isoformat(), int(workday), name, now_ms, actor))
    audit.record(conn, actor, "calendar.set", d.isoformat(), {"workday": workday, "name": name}, now_ms)


def remove_calendar_day(conn: Conn, day: str, actor: str, now_ms: int) -> None:
    if conn.execute("DELETE FROM calendar_days WHERE day = ?", (day,)).rowcount != 1:
        raise AlertError(f"no calendar entry for {day[:20]!r}")
    audit.record(conn, actor, "calendar.remove", day, {}, now_ms)


# --- raising, clearing, escalating ---------------------------------------------------------------------

def _event(conn: Conn, alert: int, event: str, level: int, ms: int) -> None:
    conn.execute("INSERT INTO alert_events (alert, event, level, ms) VALUES (?, ?, ?, ?)",
                 (alert, event, level, ms))


def raise_alert(conn: Conn, kind: str, hall: str, dedup: str, detail: str, now_ms: int, *,
                device: str | None = None, window: str | None = None, rating: int | None = None,
                level: int = 0) -> bool:
    """The alert of ``dedup`` raised (at ``level``: 1 goes to the city at once), or, when one is open (or
    acknowledged), counted again; True if new."""
    row = conn.one("SELECT id FROM alerts WHERE dedup = ? AND state <> 'cleared'", (dedup,))
    if row is not None:
        conn.execute("UPDATE alerts SET last_ms = ?, repeats = repeats + 1, detail = ? WHERE id = ?",
                     (now_ms, detail, row[0]))
        return False
    aid = conn.scalar('INSERT INTO alerts (kind, hall, device, "window", rating, dedup, detail, raised_ms,'
                      " last_ms, level) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                      (kind, hall, device, window, rating, dedup, detail, now_ms, now_ms, level))
    _event(conn, int(aid), "raised", level, now_ms)
    return True


def clear_alert(conn: Conn, dedup: str, now_ms: int, why: str) -> bool:
    row = conn.one("SELECT id, level, detail FROM alerts WHERE dedup = ? AND state <> 'cleared'", (dedup,))
    if row is None:
        return False
    conn.execute("UPDATE alerts SET state = 'cleared', cleared_ms = ?, detail = ? WHERE id = ?",
                 (now_ms, f"{row[2]} — 已恢复 cleared: {why}"[:1000], row[0]))
    _event(conn, int(row[0]), "cleared", int(row[1]), now_ms)
    return True


def _open_dedups(conn: Conn, kind: str) -> dict[str, str]:
    """dedup -> hall of the kind's alerts not cleared."""
    return {str(d): str(h) for d, h in conn.all(
        "SELECT dedup, hall FROM alerts WHERE kind = ? AND state <> 'cleared'", (kind,))}


def _escalate(conn: Conn, p: Pass, rs: dict[str, Rule]) -> None:
    hall_hours: dict[str, hours.Hours] = {}
    for aid, kind, hall, level, raised_ms, escalated_ms in conn.all(
            "SELECT id, kind, hall, level, raised_ms, escalated_ms FROM alerts WHERE state = 'open'"
            " AND level < ?", (MAX_LEVEL,)):
        rule = rs.get(str(kind))
        if rule is None or rule.escalate_s <= 0:
            continue
        since = int(escalated_ms if escalated_ms is not None else raised_ms)
        # Business time, not the wall clock: nobody is expected to acknowledge while the hall is closed.
        if str(hall) not in hall_hours:
            hall_hours[str(hall)] = _hours(conn, str(hall))
        if hall_hours[str(hall)].open_ms(since, p.now_ms, p.tz, p.cal) >= rule.escalate_s * 1000:
            conn.execute("UPDATE alerts SET level = level + 1, escalated_ms = ? WHERE id = ?",
                         (p.now_ms, aid))
            _event(conn, int(aid), "escalated", int(level) + 1, p.now_ms)


# --- the step: ratings -----------------------------------------------------------------------------------

_AT = "COALESCE(press_s * 1000, received_ms)"
# Dissatisfied, from ratings_list's one translation of messages.is_satisfied into (scale, score) pairs.
_BAD_PAIRS = dissatisfied_pairs()
_BAD = "(" + " OR ".join("(scale = ? AND score = ?)" for _ in _BAD_PAIRS) + ")"
_BAD_ARGS = [v for pair in _BAD_PAIRS for v in pair]


def on_ratings(conn: Conn, ratings: Sequence[Rated], p: Pass) -> None:
    """Each newly stored rating, once, in the pass's transaction."""
    rs = rules(conn)
    if rs["dissatisfied"].enabled:
        for r in ratings:
            if r.dissatisfied:
                _dissatisfied(conn, r, p)
    share = rs["negative-share"]
    if share.enabled:
        for r in ratings:
            if r.kind == "rating":
                _negative_share(conn, r, share, p)


def _dissatisfied(conn: Conn, r: Rated, p: Pass) -> None:
    if r.score is None or r.scale is None:     # Rated.dissatisfied implies both; this tells mypy
        return
    name = SCORE_NAMES_ZH.get(r.scale, {}).get(r.score, f"{r.score}/{r.scale}")
    when = hours.local(r.at_ms, p.tz).strftime("%Y-%m-%d %H:%M")
    case = conn.scalar("SELECT id FROM cases WHERE rating = ?", (r.id,))
    detail = (f"{name} ({r.score}/{r.scale}) {when} 窗口 window {r.window}"
              + (f" 柜员 clerk {r.clerk}" if r.clerk else " 邀评键 invite key" if r.prompt == 0 else "")
              + f" 评价 rating #{r.id}" + (f" 工单 case #{case}" if case is not None else ""))
    raise_alert(conn, "dissatisfied", r.hall, f"dissatisfied:{r.id}", detail, p.now_ms, device=r.device,
                window=r.window, rating=r.id)


def _share(conn: Conn, hall: str, window: str | None, start_ms: int, end_ms: int, p: Pass) -> tuple[int, int]:
    """(ratings, dissatisfied) of the hall (or one window) with their time in [start_ms, end_ms]. The
    window is at most a day: its days (a rating's day is the day of its time) keep the look-back on the
    (day, hall) index instead of every rating the hall ever had."""
    days = sorted({day_of(start_ms, p.tz), day_of(end_ms, p.tz)})
    cond = (f"day IN ({','.join('?' for _ in days)}) AND hall = ? AND kind = 'rating'"
            f" AND {_AT} BETWEEN ? AND ?")
    args: list[object] = [*days, hall, start_ms, end_ms]
    if window is not None:
        cond += ' AND "window" = ?'
        args.append(window)
    n, bad = conn.one(f"SELECT COUNT(*), COALESCE(SUM(CASE WHEN {_BAD} THEN 1 ELSE 0 END), 0) FROM ratings"
                      f" WHERE {cond}", [*_BAD_ARGS, *args])
    return int(n), int(bad)


def _share_dedup(hall: str, window: str | None) -> str:
    return f"negative-share:hall:{hall}" if window is None else f"negative-share:window:{hall}:{window}"


def _negative_share(conn: Conn, r: Rated, rule: Rule, p: Pass) -> None:
    span = rule.whole("window_s") * 1000
    for window in (r.window, None):
        n, bad = _share(conn, r.hall, window, r.at_ms - span, r.at_ms, p)
        if n >= rule.whole("min_count") and bad >= rule.num("share") * n:
            where = f"窗口 window {window}" if window is not None else "全厅 whole hall"
            detail = (f"{where}: {bad}/{n} 不满意 dissatisfied ({bad / n:.0%}) in {span // 60000} min"
                      f" up to {hours.local(r.at_ms, p.tz).strftime('%Y-%m-%d %H:%M')}")
            raise_alert(conn, "negative-share", r.hall, _share_dedup(r.hall, window), detail, p.now_ms,
                        window=window)


# --- the step: time --------------------------------------------------------------------------------------

def on_tick(conn: Conn, p: Pass) -> None:
    """The time: after each pass's ratings, and every interval."""
    rs = rules(conn)
    _clear_shares(conn, rs["negative-share"], p)
    _clear_closed_cases(conn, p)
    _overdue_cases(conn, rs["case-overdue"], p)
    opened: dict[str, bool] = {}

    def is_open(hall: str) -> bool:
        if hall not in opened:
            opened[hall] = _hours(conn, hall).is_open(hours.local(p.now_ms, p.tz), p.cal)
        return opened[hall]

    _keypads(conn, rs, p, is_open)
    _gateways(conn, rs, p, is_open)
    _escalate(conn, p, rs)


def _clear_shares(conn: Conn, rule: Rule, p: Pass) -> None:
    span = rule.whole("window_s") * 1000
    for dedup, hall in _open_dedups(conn, "negative-share").items():
        window = dedup.split(":", 3)[3] if dedup.startswith("negative-share:window:") else None
        n, bad = _share(conn, hall, window, p.now_ms - span, p.now_ms, p)
        if not rule.enabled or n == 0 or bad < rule.num("share") * n:
            clear_alert(conn, dedup, p.now_ms, f"{bad}/{n} in the last {span // 60000} min")


def _hours(conn: Conn, hall: str) -> hours.Hours:
    try:
        return hours.for_hall(conn, hall)
    except ValueError as exc:        # a hall_hours row not written by set_hours
        log.error("hall %s: business hours unreadable (%s); using the default hours", hall, exc)
        return hours.DEFAULT


def _overdue_cases(conn: Conn, rule: Rule, p: Pass) -> None:
    """A case past its 15 working days (cases.on_tick marks it, earlier in the same pass) is the city's
    business: its alert is raised at level 1, and cleared when the case closes (late)."""
    if rule.enabled:
        for cid, hall, deadline, rating in conn.all(
                "SELECT c.id, c.hall, c.deadline, c.rating FROM cases c WHERE c.overdue_ms IS NOT NULL"
                " AND c.state <> 'closed' AND NOT EXISTS (SELECT 1 FROM alerts a"
                " WHERE a.dedup = 'case-overdue:' || CAST(c.id AS TEXT))"):
            detail = f"工单 case #{cid}: 截止 deadline {deadline} 已过 passed, 未关闭 not closed"
            raise_alert(conn, "case-overdue", str(hall), f"case-overdue:{cid}", detail, p.now_ms,
                        rating=None if rating is None else int(rating), level=1)
    for (dedup,) in conn.all("SELECT a.dedup FROM alerts a JOIN cases c"
                             " ON a.dedup = 'case-overdue:' || CAST(c.id AS TEXT)"
                             " WHERE a.kind = 'case-overdue' AND a.state <> 'cleared'"
                             " AND c.state = 'closed'"):
        clear_alert(conn, str(dedup), p.now_ms, "case closed")


def _clear_closed_cases(conn: Conn, p: Pass) -> None:
    """A 不满意 alert ends when the case opened for its rating is closed (整改 done and reviewed): until
    then it stays in the inbox, acknowledged or not."""
    for (dedup,) in conn.all("SELECT a.dedup FROM alerts a JOIN cases c ON c.rating = a.rating"
                             " WHERE a.kind = 'dissatisfied' AND a.state <> 'cleared'"
                             " AND c.state = 'closed'"):
        clear_alert(conn, str(dedup), p.now_ms, "case closed")


def _settle(conn: Conn, kind: str, rule: Rule, found: dict[str, tuple[str, str | None, str]], p: Pass,
            is_open: Any, *, clear_closed: bool = False) -> None:
    """Raise ``found`` (dedup -> (hall, device, detail)) where the hall is open; clear the kind's alerts
    whose condition ended (or whose rule was switched off)."""
    for dedup, (hall, device, detail) in found.items():
        if rule.enabled and is_open(hall):
            raise_alert(conn, kind, hall, dedup, detail, p.now_ms, device=device)
    for dedup, hall in _open_dedups(conn, kind).items():
        if not rule.enabled:
            clear_alert(conn, dedup, p.now_ms, "rule switched off")
        elif dedup not in found:
            clear_alert(conn, dedup, p.now_ms, "condition ended")
        elif clear_closed and not is_open(hall):
            clear_alert(conn, dedup, p.now_ms, "hall closed")


def _keypads(conn: Conn, rs: dict[str, Rule], p: Pass, is_open: Any) -> None:
    offline: dict[str, tuple[str, str | None, str]] = {}
    stuck: dict[str, tuple[str, str | None, str]] = {}
    outbox: dict[str, tuple[str, str | None, str]] = {}
    after_ms = rs["offline"].whole("after_s") * 1000
    full = rs["outbox-full"].whole("outbox")
    # A revoked keypad is off the fleet: its last status is history, not an alert.
    rows = conn.all("SELECT device, hall, seen_ms, online, outbox, stuck_keys FROM keypad_status WHERE device"
                    " NOT IN (SELECT device FROM devices WHERE revoked <> 0)")
    down: set[str] = set()
    for device, hall, seen_ms, online, box, keys in rows:
        device, hall = str(device), str(hall)
        age_s = (p.now_ms - int(seen_ms)) // 1000
        if not online or p.now_ms - int(seen_ms) > after_ms:
            down.add(device)
            offline[f"offline:{device}"] = (hall, device, f"评价器 keypad {device} 离线 offline, last seen"
                                            f" {age_s // 60} min ago")
        if keys:
            stuck[f"stuck-key:{device}"] = (hall, device,
                                            f"评价器 keypad {device} 卡键 key(s) {keys} held down")
        if box is not None and int(box) >= full:
            outbox[f"outbox-full:{device}"] = (hall, device, f"评价器 keypad {device}: {int(box)} ratings"
                                               f" waiting in its outbox (>= {full})")
    _settle(conn, "offline", rs["offline"], offline, p, is_open)
    _settle(conn, "stuck-key", rs["stuck-key"], stuck, p, is_open)
    _settle(conn, "outbox-full", rs["outbox-full"], outbox, p, is_open)
    _settle(conn, "silent", rs["silent"], _silent(conn, rs["silent"], p, down), p, is_open, clear_closed=True)


def _silent(conn: Conn, rule: Rule, p: Pass, down: set[str]) -> dict[str, tuple[str, str | None, str]]:
    """Keypads whose hall has been open the last ``minutes`` and that, in that time, had prompts opened
    but no rating, or no prompt at all. An offline keypad is the offline alert's, not also silent."""
    minutes = rule.whole("minutes")
    since = p.now_ms - minutes * 60_000
    found: dict[str, tuple[str, str | None, str]] = {}
    keypads = conn.all("SELECT device, hall FROM devices WHERE revoked = 0 UNION SELECT device, hall"
                       " FROM keypad_status WHERE device NOT IN"
                       " (SELECT device FROM devices WHERE revoked <> 0)")
    # Silence is counted within today's hours only (_open_since), so today's rows are all it needs: two
    # queries on the day indexes per tick, not two per keypad.
    today = day_of(p.now_ms, p.tz)
    opened = {str(d): int(n) for d, n in conn.all(
        "SELECT device, COUNT(*) FROM prompts WHERE day = ? AND opened_ms >= ? GROUP BY device",
        (today, since))}
    rated_now = {str(d) for (d,) in conn.all(
        "SELECT DISTINCT device FROM ratings WHERE day = ? AND kind = 'rating' AND received_ms >= ?",
        (today, since))}
    open_since: dict[str, bool] = {}
    for device, hall in keypads:
        device, hall = str(device), str(hall)
        if hall not in open_since:
            open_since[hall] = _open_since(conn, hall, since, p)
        if device in down or not open_since[hall]:
            continue
        prompts = opened.get(device, 0)
        rated = device in rated_now
        if prompts == 0:
            found[f"silent:{device}"] = (hall, device, f"评价器 keypad {device}: 无邀评 no prompt at all"
                                         f" in {minutes} min of business hours")
        elif prompts >= rule.whole("min_prompts") and not rated:
            found[f"silent:{device}"] = (hall, device, f"评价器 keypad {device}: {prompts} prompts opened,"
                                         f" 无评价 no rating in {minutes} min")
    return found


def _open_since(conn: Conn, hall: str, since_ms: int, p: Pass) -> bool:
    """The hall was open at ``since_ms`` and is open now (the same day's hours: silence before opening
    is not silence)."""
    h = _hours(conn, hall)
    start, now = hours.local(since_ms, p.tz), hours.local(p.now_ms, p.tz)
    return start.date() == now.date() and h.is_open(start, p.cal) and h.is_open(now, p.cal)


def _gateways(conn: Conn, rs: dict[str, Rule], p: Pass, is_open: Any) -> None:
    backlog: dict[str, tuple[str, str | None, str]] = {}
    silent: dict[str, tuple[str, str | None, str]] = {}
    most = rs["backlog"].whole("backlog")
    quiet_ms = rs["gateway-silent"].whole("minutes") * 60_000
    reports = {str(h): (int(b), int(r)) for h, b, r in conn.all(
        "SELECT hall, backlog, reported_ms FROM gateway_status")}
    batches = {str(h): int(m) for h, m in conn.all(
        "SELECT hall, MAX(received_ms) FROM batches GROUP BY hall")}
    for hall, (n, _reported) in reports.items():
        if n >= most:
            backlog[f"backlog:{hall}"] = (hall, None, f"网关 gateway of {hall}: {n} ratings waiting to be"
                                          f" uploaded (>= {most})")
    for hall in set(reports) | set(batches):
        last = max(reports.get(hall, (0, 0))[1], batches.get(hall, 0))
        if p.now_ms - last > quiet_ms:
            silent[f"gateway-silent:{hall}"] = (
                hall, None, f"网关 gateway of {hall}: 无上报 nothing heard for"
                            f" {(p.now_ms - last) // 60000} min")
    _settle(conn, "backlog", rs["backlog"], backlog, p, is_open)
    _settle(conn, "gateway-silent", rs["gateway-silent"], silent, p, is_open)


# --- the inbox -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Alert:
    id: int
    kind: str
    hall: str
    hall_name: str
    device: str | None
    window: str | None
    rating: int | None
    case: int | None
    state: str
    detail: str
    raised_ms: int
    last_ms: int
    repeats: int
    acked_ms: int | None
    acked_by: str | None
    cleared_ms: int | None
    level: int
    pushed: int = 0             # deliveries made through apprise (notify.py), over its events and targets
    retrying: int = 0           # deliveries tried and not made yet

    @property
    def kind_zh(self) -> str:
        return KIND_ZH.get(self.kind, self.kind)

    @property
    def level_zh(self) -> str:
        return LEVEL_ZH.get(self.level, str(self.level))


_ALERT_COLS = ('a.id, a.kind, a.hall, COALESCE(h.name, a.hall), a.device, a."window", a.rating,'
               " (SELECT c.id FROM cases c WHERE c.rating = a.rating), a.state, a.detail, a.raised_ms,"
               " a.last_ms, a.repeats, a.acked_ms, a.acked_by, a.cleared_ms, a.level,"
               " (SELECT COUNT(*) FROM notify_deliveries d JOIN alert_events e ON e.id = d.event"
               "  WHERE e.alert = a.id AND d.sent_ms IS NOT NULL),"
               " (SELECT COUNT(*) FROM notify_deliveries d JOIN alert_events e ON e.id = d.event"
               "  WHERE e.alert = a.id AND d.sent_ms IS NULL AND d.tries > 0)")


def _alert(r: Sequence[Any]) -> Alert:
    def oi(v: Any) -> int | None:
        return None if v is None else int(v)

    return Alert(int(r[0]), str(r[1]), str(r[2]), str(r[3]), r[4], r[5], oi(r[6]), oi(r[7]), str(r[8]),
                 str(r[9]), int(r[10]), int(r[11]), int(r[12]), oi(r[13]), r[14], oi(r[15]), int(r[16]),
                 int(r[17]), int(r[18]))


def inbox(conn: Conn, scope: Scope, *, cleared: bool = False, hall: str | None = None,
          kind: str | None = None, limit: int = 200) -> list[Alert]:
    """The scope's alerts, newest first: open and acknowledged ones, or (``cleared``) the cleared ones;
    optionally of one hall (within the scope) and one kind."""
    where, args = scope.sql("a.hall")
    state = "a.state = 'cleared'" if cleared else "a.state <> 'cleared'"
    if hall is not None:
        where += " AND a.hall = ?"
        args.append(hall)
    if kind is not None:
        where += " AND a.kind = ?"
        args.append(kind)
    return [_alert(r) for r in conn.all(
        f"SELECT {_ALERT_COLS} FROM alerts a LEFT JOIN halls h ON h.hall = a.hall WHERE {state}{where}"
        " ORDER BY a.raised_ms DESC, a.id DESC LIMIT ?", [*args, limit])]


def unacked(conn: Conn, scope: Scope) -> int:
    where, args = scope.sql("hall")
    return int(conn.scalar(f"SELECT COUNT(*) FROM alerts WHERE state = 'open'{where}", args))


def alert_by_id(conn: Conn, scope: Scope, alert_id: int) -> Alert | None:
    """The alert, if the scope may see it (None for another hall's: the same answer as no such alert)."""
    where, args = scope.sql("a.hall")
    r = conn.one(f"SELECT {_ALERT_COLS} FROM alerts a LEFT JOIN halls h ON h.hall = a.hall"
                 f" WHERE a.id = ?{where}", [alert_id, *args])
    return None if r is None else _alert(r)


def ack(conn: Conn, scope: Scope, alert_id: int, actor: str, now_ms: int) -> Alert:
    """Acknowledge an open alert in the scope (audited); LookupError if it is not the scope's,
    AlertError if it is already acknowledged or cleared."""
    a = alert_by_id(conn, scope, alert_id)
    if a is None:
        raise LookupError(alert_id)
    if a.state != "open":
        done = "acknowledged" if a.state == "acked" else "cleared"
        raise AlertError(f"alert #{alert_id} is already {done}")
    conn.execute("UPDATE alerts SET state = 'acked', acked_ms = ?, acked_by = ? WHERE id = ?",
                 (now_ms, actor, alert_id))
    audit.record(conn, actor, "alert.ack", str(alert_id), {"kind": a.kind, "hall": a.hall, "level": a.level},
                 now_ms)
    return a
