"""Daily reconciliation per hop: per keypad, key epoch and day, how many outcomes (ratings and no-ratings)
the keypad made, the hall gateway stored and the province received, and why they differ.

- made: by sequence numbers, last - first + 1 over what either hop saw that day (the gateway's day count
  and the province's rows); a keypad numbers every rating and no-rating, so a hole in the numbers is an
  outcome that reached neither hop (or a number skipped by a power cut: the keypad reserves them ahead);
- stored at the gateway: its day count (batch entry kind 5), sent once the day has ended;
- received at the province: ratings + no-ratings + held rows (held: received, not counted yet; a held
  row released into ``ratings`` is counted there only).

Days are the stored ``day`` columns (the province's zone, province/period.py rating_day, held rows
too). The gateway counts in its hall's zone, the same one in one province.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from countersign.common.clock import wall_ms

from .db import Conn
from .period import DEFAULT_TZ, day_of

__all__ = ["ReconRow", "reconcile"]


@dataclass(frozen=True)
class ReconRow:
    hall: str
    device: str
    epoch: int
    day: str
    made: int                        # by sequence numbers, over both hops
    first_seq: int
    last_seq: int
    gateway: int | None              # stored at the gateway; None: no day count from it (yet)
    province: int                    # ratings + no-ratings + held at the province
    held: int                        # of which held (not counted yet)
    flagged: bool
    reason: str                      # one line for a hall manager, Chinese first
    gateway_ratings: int | None = None
    gateway_no_ratings: int | None = None
    reasons: tuple[str, ...] = field(default=())


@dataclass
class _Acc:
    hall: str
    first: int | None = None
    last: int | None = None
    gateway: tuple[int, int] | None = None
    province: int = 0
    held: int = 0

    def seqs(self, lo: int | None, hi: int | None) -> None:
        if lo is not None and hi is not None:
            self.first = lo if self.first is None else min(self.first, lo)
            self.last = hi if self.last is None else max(self.last, hi)


def _filters(hall: str | None, city: str | None, scope: tuple[str, Sequence[Any]],
             col: str) -> tuple[str, list[Any]]:
    sql, params = "", []
    if hall is not None:
        sql += f" AND {col} = ?"
        params.append(hall)
    if city is not None:
        sql += f" AND {col} IN (SELECT hall FROM halls WHERE city = ?)"
        params.append(city)
    where, extra = scope
    return sql + where, [*params, *extra]


def reconcile(conn: Conn, day_from: str, day_to: str, *, hall: str | None = None, city: str | None = None,
              scope: tuple[str, Sequence[Any]] = ("", ()), tz: ZoneInfo | None = None,
              now_ms: int | None = None) -> list[ReconRow]:
    """Per keypad and day in [day_from, day_to] ('YYYY-MM-DD'), sorted by hall, device, epoch, day.

    ``hall`` / ``city`` (halls.city) narrow it; ``scope`` is a further condition on the hall column,
    as province/scope.py ``Scope.sql()`` gives it (" AND hall = ?", ["hf01"]): every table read here
    calls it ``hall``. ``now_ms`` decides which days have ended (default: now)."""
    tz = tz or ZoneInfo(DEFAULT_TZ)
    today = day_of(wall_ms() if now_ms is None else now_ms, tz)
    acc: dict[tuple[str, int, str], _Acc] = {}

    def at(device: str, epoch: int, day: str, hall_: str) -> _Acc:
        return acc.setdefault((device, int(epoch), day), _Acc(hall_))

    where, params = _filters(hall, city, scope, "hall")
    for h, device, epoch, day, ratings, no_ratings, first, last in conn.all(
            "SELECT hall, device, epoch, day, ratings, no_ratings, first_seq, last_seq FROM day_counts"
            " WHERE day >= ? AND day <= ?" + where, (day_from, day_to, *params)):
        a = at(device, epoch, day, h)
        a.gateway = (int(ratings), int(no_ratings))
        a.seqs(first, last)
    for h, device, epoch, day, n, lo, hi in conn.all(
            "SELECT hall, device, epoch, day, count(*), min(seq), max(seq) FROM ratings"
            " WHERE day >= ? AND day <= ?" + where + " GROUP BY hall, device, epoch, day",
            (day_from, day_to, *params)):
        a = at(device, epoch, day, h)
        a.province += int(n)
        a.seqs(lo, hi)
    # A held row released into ratings is counted there; one whose epoch or seq could not be read is
    # attributed to no keypad-day (it is listed with the held ratings).
    for h, device, epoch, day, n, lo, hi in conn.all(
            "SELECT hall, device, epoch, day, count(*), min(seq), max(seq) FROM held"
            " WHERE state <> 'released' AND epoch IS NOT NULL AND seq IS NOT NULL AND day >= ? AND day <= ?"
            + where + " GROUP BY hall, device, epoch, day", (day_from, day_to, *params)):
        a = at(device, epoch, day, h)
        a.province += int(n)
        a.held += int(n)
        a.seqs(lo, hi)
    backlog = {h: (int(b), o) for h, b, o in conn.all("SELECT hall, backlog, oldest_ms FROM gateway_status"
                                                     " WHERE 1 = 1" + where, params)}
    rows = [_row(key, a, today, backlog.get(a.hall)) for key, a in acc.items()]
    return sorted(rows, key=lambda r: (r.hall, r.device, r.epoch, r.day))


def _row(key: tuple[str, int, str], a: _Acc, today: str, backlog: tuple[int, Any] | None) -> ReconRow:
    device, epoch, day = key
    first, last = a.first or 0, a.last or 0
    made = last - first + 1 if a.first is not None else 0
    gw = None if a.gateway is None else sum(a.gateway)
    reasons: list[str] = []
    flagged = False
    if gw is None:
        if day >= today:
            reasons.append("当日未结束，网关次日上报 / day not over: the gateway reports it after midnight")
        else:
            flagged = True
            reasons.append("网关未上报当日计数 / no day count from the gateway")
        if a.province < made:
            reasons.append(f"省平台缺 {made - a.province} 个编号 / {made - a.province} sequence numbers"
                           " missing at the province")
    else:
        if made > gw:
            flagged = True
            reasons.append(f"评价器编号 {made} 条，网关只存 {gw} 条：{made - gw} 条未到网关（丢失或断电跳号）"
                           f" / {made - gw} numbered by the keypad never stored at the gateway"
                           " (lost, or a number skipped at a power cut)")
        if gw > a.province:
            flagged = True
            waiting = backlog is not None and backlog[0] > 0
            why = (f"仍在网关积压中（{backlog[0]} 条未确认）/ still in the gateway's backlog"
                   f" ({backlog[0]} unacked)") if waiting and backlog else \
                "网关无积压，请核查 / the gateway has no backlog: check the rejected entries"
            reasons.append(f"网关存 {gw} 条，省平台只收到 {a.province} 条：{why}"
                           f" / {gw - a.province} stored at the gateway not received by the province")
        elif a.province > gw:
            flagged = True
            reasons.append(f"省平台收到 {a.province} 条，多于网关计数 {gw} 条（计数早于迟到的评价）"
                           f" / {a.province - gw} more at the province than the gateway's count")
    if a.held:
        reasons.append(f"其中 {a.held} 条待核验（暂存）/ {a.held} of them held, not counted yet")
    if not reasons:
        reasons.append("三方一致 / keypad, gateway and province agree")
    return ReconRow(a.hall, device, epoch, day, made, first, last, gw, a.province, a.held, flagged,
                    "; ".join(reasons), None if a.gateway is None else a.gateway[0],
                    None if a.gateway is None else a.gateway[1], tuple(reasons))
