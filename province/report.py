"""Analyst reports from the province's store: per hall, clerk (hall + 工号), service item and device.

For each group: counts per score (named with SCORE_NAMES_ZH, per scale: 4 and 5 keys), ratings,
no-ratings (未评价), prompts, dissatisfied count, satisfaction rate (满意率 = satisfied / ratings, where
satisfied is 基本满意 and better, ``messages.is_satisfied``) and participation rate (参评率 = ratings /
prompts). A rate whose denominator is 0 is None ("-" in the table), never 0 or 100 %.

Date range: a rating counts on its press time; a rating made while the device clock was unknown (press
time NULL) counts on the time the gateway received it. Prompts count on their opening time. The range
is [start, end) in unix milliseconds.

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
from typing import Any

from countersign.protocol.messages import SCORE_NAMES_ZH, SERVICE_NAMES_ZH, Service, is_satisfied

GROUPINGS = ("hall", "clerk", "service", "device")
# Columns of each grouping, in the ratings table and in the prompts table (same names in both).
_GROUP_COLS: dict[str, tuple[str, ...]] = {
    "total": (), "hall": ("hall",), "clerk": ("hall", "clerk"), "service": ("service",),
    "device": ("hall", "device"),
}
SCORE_ORDER = ("非常满意", "满意", "基本满意", "不满意", "非常不满意")


class ReportError(ValueError):
    pass


@dataclass(frozen=True)
class Range:
    start_ms: int | None = None
    end_ms: int | None = None

    def as_json(self) -> dict[str, int | None]:
        return {"from_ms": self.start_ms, "to_ms": self.end_ms}


def service_name(service: int) -> str:
    try:
        return str(SERVICE_NAMES_ZH[Service(service)])
    except ValueError:
        return f"#{service}"


def _where(expr: str, rng: Range) -> tuple[str, list[int]]:
    conds, args = [], []
    if rng.start_ms is not None:
        conds.append(f"{expr} >= ?")
        args.append(rng.start_ms)
    if rng.end_ms is not None:
        conds.append(f"{expr} < ?")
        args.append(rng.end_ms)
    return (" WHERE " + " AND ".join(conds)) if conds else "", args


def _empty_group(key: dict[str, Any]) -> dict[str, Any]:
    return {**key, "ratings": 0, "no_ratings": 0, "prompts": 0, "satisfied": 0, "dissatisfied": 0,
            "scores": {}}


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


def group_report(conn: sqlite3.Connection, grouping: str, rng: Range = Range()) -> list[dict[str, Any]]:
    if grouping not in _GROUP_COLS:
        raise ReportError(f"unknown grouping {grouping!r}; one of {', '.join(GROUPINGS)}")
    cols = _GROUP_COLS[grouping]
    sel = "".join(f"{c}, " for c in cols)
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}

    def group(key: tuple[Any, ...]) -> dict[str, Any]:
        if key not in groups:
            g = _empty_group(dict(zip(cols, key, strict=True)))
            if grouping == "service":
                g["service_name"] = service_name(key[0])
            groups[key] = g
        return groups[key]

    where, args = _where("COALESCE(press_s * 1000, received_ms)", rng)
    sql = (f"SELECT {sel}kind, scale, score, COUNT(*) FROM ratings{where}"
           f" GROUP BY {sel}kind, scale, score")
    for row in conn.execute(sql, args):
        key, (kind, scale, score, n) = tuple(row[:len(cols)]), row[len(cols):]
        g = group(key)
        if kind == "no-rating":
            g["no_ratings"] += n
            continue
        g["ratings"] += n
        names = g["scores"].setdefault(str(scale), dict.fromkeys(SCORE_NAMES_ZH[scale].values(), 0))
        names[SCORE_NAMES_ZH[scale][score]] += n
        if is_satisfied(score, scale):
            g["satisfied"] += n
        else:
            g["dissatisfied"] += n
    where, args = _where("opened_ms", rng)
    group_by = f" GROUP BY {', '.join(cols)}" if cols else ""
    for row in conn.execute(f"SELECT {sel}COUNT(*) FROM prompts{where}{group_by}", args):
        if row[-1]:
            group(tuple(row[:len(cols)]))["prompts"] += row[-1]
    out = []
    for key in sorted(groups, key=lambda k: tuple((v is None, v) for v in k)):
        g = groups[key]
        g["satisfaction_rate"] = g["satisfied"] / g["ratings"] if g["ratings"] else None
        g["participation_rate"] = g["ratings"] / g["prompts"] if g["prompts"] else None
        g["label"] = _label(grouping, g)
        out.append(g)
    return out


def _gaps(conn: sqlite3.Connection) -> dict[tuple[str, int], list[list[int]]]:
    gaps: dict[tuple[str, int], list[list[int]]] = {}
    sql = ("SELECT device, epoch, seq, nxt FROM (SELECT device, epoch, seq, LEAD(seq) OVER"
           " (PARTITION BY device, epoch ORDER BY seq) AS nxt FROM ratings) WHERE nxt > seq + 1"
           " ORDER BY device, epoch, seq")
    for device, epoch, seq, nxt in conn.execute(sql):
        gaps.setdefault((device, epoch), []).append([seq + 1, nxt - 1])
    return gaps


def reconciliation(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    gaps = _gaps(conn)
    out = []
    sql = ("SELECT device, MIN(hall), epoch, COUNT(*), MIN(seq), MAX(seq) FROM ratings"
           " GROUP BY device, epoch ORDER BY device, epoch")
    for device, hall, epoch, count, lo, hi in conn.execute(sql):
        g = gaps.get((device, epoch), [])
        out.append({"device": device, "hall": hall, "epoch": epoch, "count": count, "min_seq": lo,
                    "max_seq": hi, "gaps": g, "missing": sum(b - a + 1 for a, b in g),
                    "before_first": lo - 1})
    return out


def build_report(conn: sqlite3.Connection, groupings: Sequence[str] = GROUPINGS,
                 rng: Range = Range()) -> dict[str, Any]:
    """The whole report as a JSON-ready dict."""
    [total] = group_report(conn, "total", rng) or [{**_empty_group({}), "satisfaction_rate": None,
                                                     "participation_rate": None, "label": "合计"}]
    return {"range": rng.as_json(), "total": total,
            "groups": {g: group_report(conn, g, rng) for g in groupings},
            "reconciliation": reconciliation(conn)}


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
