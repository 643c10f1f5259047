"""Analyst reports from the province's store: per hall, clerk (hall + 工号), service item and device.

For each group: counts per score (named with SCORE_NAMES_ZH, per scale: 4 and 5 keys), ratings,
no-ratings (未评价), opened prompts, dissatisfied count, satisfaction rate (满意率) and participation rate
(参评率), all by the platform's one definition (figures.py): the opened prompts include every outcome of
an invite-key prompt, so participation is never above 100 %; held ratings count nowhere. A rate whose
denominator is 0 is None ("-" in the table), never 0 or 100 %.

Date range: whole days in the province's zone, inclusive at both ends. A rating counts on its press
time's day; a rating made while the device clock was unknown on the day the gateway received it; a
prompt on the day it was opened (the ``day`` columns, period.py).

Reconciliation (per device and key epoch, over everything received, not date-filtered, since a gap is a
property of the whole sequence): count, min/max seq and the gaps in between. Ratings and no-ratings share
a device's sequence, so a gap is a rating or no-rating the device made that the province has not
received (yet: it may still be in a gateway's backlog). ``before_first`` is min seq - 1: seqs before the
first one received, which can be legitimate (a device's counter skips ahead after a reboot).
"""

from __future__ import annotations

import sqlite3
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from countersign.protocol.messages import SERVICE_NAMES_ZH, Service

from .db import Conn
from .errors import ProvinceError
from .figures import Figures, Filter, figures_by

GROUPINGS = ("hall", "clerk", "service", "device")
# Columns of each grouping (the same names in the ratings and the prompts table).
_GROUP_COLS: dict[str, tuple[str, ...]] = {
    "total": (), "hall": ("hall",), "clerk": ("hall", "clerk"), "service": ("service",),
    "device": ("hall", "device"),
}
SCORE_ORDER = ("非常满意", "满意", "基本满意", "不满意", "非常不满意")


class ReportError(ProvinceError, ValueError):
    reason = "bad-report"


@dataclass(frozen=True)
class Range:
    """Days 'YYYY-MM-DD' in the province's zone, both inclusive; None: open."""

    day_from: str | None = None
    day_to: str | None = None

    def __post_init__(self) -> None:
        for d in (self.day_from, self.day_to):
            if d is not None:
                try:
                    date.fromisoformat(d)
                except ValueError as exc:
                    raise ReportError(f"bad day {d!r}: YYYY-MM-DD") from exc
                if len(d) != 10:
                    raise ReportError(f"bad day {d!r}: YYYY-MM-DD")

    def as_json(self) -> dict[str, str | None]:
        return {"from": self.day_from, "to": self.day_to}


def service_name(service: int) -> str:
    try:
        return str(SERVICE_NAMES_ZH[Service(service)])
    except ValueError:
        return f"#{service}"


def _conn(conn: Conn | sqlite3.Connection) -> Conn:
    """A plain sqlite3 connection (the simulator's read-only one) is read through the same interface."""
    return conn if isinstance(conn, Conn) else Conn("sqlite", conn)


def _label(grouping: str, g: dict[str, Any]) -> str:
    if grouping == "hall":
        return str(g["hall"])
    if grouping == "clerk":
        return f"{g['hall']} {g['clerk'] if g['clerk'] is not None else '(无工号)'}"
    if grouping == "service":
        return f"{g['service']} {g['service_name']}"
    if grouping == "device":
        return str(g["device"])
    return "合计"


def _group(grouping: str, key: dict[str, Any], f: Figures) -> dict[str, Any]:
    g = {**key, "ratings": f.ratings, "no_ratings": f.no_ratings, "prompts": f.prompts,
         "satisfied": f.satisfied, "dissatisfied": f.dissatisfied, "scores": f.scores,
         "satisfaction_rate": f.satisfaction_rate, "participation_rate": f.participation_rate}
    if grouping == "service":
        g["service_name"] = service_name(int(key["service"]))
    g["label"] = _label(grouping, g)
    return g


def group_report(conn: Conn | sqlite3.Connection, grouping: str,
                 rng: Range = Range()) -> list[dict[str, Any]]:
    if grouping not in _GROUP_COLS:
        raise ReportError(f"unknown grouping {grouping!r}; one of {', '.join(GROUPINGS)}")
    cols = _GROUP_COLS[grouping]
    by = figures_by(_conn(conn), cols, Filter(day_from=rng.day_from, day_to=rng.day_to))
    return [_group(grouping, dict(zip(cols, key, strict=True)), by[key])
            for key in sorted(by, key=lambda k: tuple((v is None, v) for v in k))]


def _gaps(conn: Conn) -> dict[tuple[str, int], list[list[int]]]:
    gaps: dict[tuple[str, int], list[list[int]]] = {}
    sql = ("SELECT device, epoch, seq, nxt FROM (SELECT device, epoch, seq, LEAD(seq) OVER"
           " (PARTITION BY device, epoch ORDER BY seq) AS nxt FROM ratings) AS s WHERE nxt > seq + 1"
           " ORDER BY device, epoch, seq")
    for device, epoch, seq, nxt in conn.all(sql):
        gaps.setdefault((device, int(epoch)), []).append([int(seq) + 1, int(nxt) - 1])
    return gaps


def reconciliation(conn: Conn | sqlite3.Connection) -> list[dict[str, Any]]:
    c = _conn(conn)
    gaps = _gaps(c)
    out = []
    sql = ("SELECT device, MIN(hall), epoch, COUNT(*), MIN(seq), MAX(seq) FROM ratings"
           " GROUP BY device, epoch ORDER BY device, epoch")
    for device, hall, epoch, count, lo, hi in c.all(sql):
        g = gaps.get((device, int(epoch)), [])
        out.append({"device": device, "hall": hall, "epoch": int(epoch), "count": int(count),
                    "min_seq": int(lo), "max_seq": int(hi), "gaps": g,
                    "missing": sum(b - a + 1 for a, b in g), "before_first": int(lo) - 1})
    return out


def build_report(conn: Conn | sqlite3.Connection, groupings: Sequence[str] = GROUPINGS,
                 rng: Range = Range()) -> dict[str, Any]:
    """The whole report as a JSON-ready dict."""
    c = _conn(conn)
    [total] = group_report(c, "total", rng) or [_group("total", {}, Figures())]
    return {"range": rng.as_json(), "total": total,
            "groups": {g: group_report(c, g, rng) for g in groupings},
            "reconciliation": reconciliation(c)}


# text ---------------------------------------------------------------------------------------------------

def _width(s: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in s)


def _pad(s: str, w: int, right: bool) -> str:
    fill = " " * (w - _width(s))
    return fill + s if right else s + fill


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(_width(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(_pad(c, widths[i], i > 0) for i, c in enumerate(r)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _score_by_name(g: dict[str, Any]) -> dict[str, int]:
    merged = dict.fromkeys(SCORE_ORDER, 0)
    for names in g["scores"].values():
        for name, n in names.items():
            merged[name] += n
    return merged


_TITLES = {"hall": "营业厅 hall", "clerk": "营业人员 clerk", "service": "服务项目 service",
           "device": "评价器 device"}


def render_text(report: dict[str, Any]) -> str:
    header = ["", "评价", "未评价", "提示", *SCORE_ORDER, "满意率", "参评率", "不满意数"]
    parts = []
    for grouping, groups in report["groups"].items():
        rows = []
        for g in [*groups, report["total"]]:
            s = _score_by_name(g)
            rows.append([g["label"], str(g["ratings"]), str(g["no_ratings"]), str(g["prompts"]),
                         *(str(s[n]) for n in SCORE_ORDER), _pct(g["satisfaction_rate"]),
                         _pct(g["participation_rate"]), str(g["dissatisfied"])])
        parts.append(f"== {_TITLES.get(grouping, grouping)} ==\n" + _table([grouping, *header[1:]], rows))
    rec = [[r["device"], str(r["epoch"]), str(r["count"]), str(r["min_seq"]), str(r["max_seq"]),
            str(r["missing"]), " ".join(f"{a}-{b}" if a != b else str(a) for a, b in r["gaps"]) or "-"]
           for r in report["reconciliation"]]
    parts.append("== 对账 reconciliation ==\n" + _table(
        ["device", "epoch", "received", "min seq", "max seq", "missing", "gaps"], rec))
    return "\n\n".join(parts) + "\n"
