"""考核 Assessment: monthly scores per hall and per clerk (工号) from versioned weights.

A score is points out of 100 an analyst can recompute in Excel from the figures beside it:

    score = max(0, Σ weight_part × rate_part − penalty × dissatisfied)

over the rate parts satisfaction (满意率), participation (参评率), cases rectified on time (按期整改率: the
month's closed cases with ``on_time = 1`` over the month's closed cases plus the cases found overdue in
the month and not closed by its end: a case left open past its deadline counts against the hall, not
for it) and appeals upheld (申诉采信率:
upheld over decided in the month), whose weights sum to 100, and a penalty per dissatisfied rating. A
rate with no denominator (no case closed, no appeal decided) scores its full weight: a hall with nothing
to rectify has not rectified late. Ratings an upheld appeal excludes (exclusions.py) count nowhere here,
neither as a rating nor as the prompt it answered (figures.py's ``Filter(assessment=True)``, the one
definition). They stay stored and signed, and the excluded count is shown beside each row.

The minimum-sample rule is the rankings' (rankings.py): fewer ratings than ``min_sample`` and a hall or
clerk is listed apart as 样本不足 insufficient sample, not ranked. Weights are versions in
``assessment_weights``; a new one never changes an old one, so a month computed with version 3 is
recomputed with version 3 to the same scores. With no version stored yet the built-in default (version 0)
is used.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any, Literal
from zoneinfo import ZoneInfo

from . import audit, exclusions, rankings
from .db import Conn
from .errors import ProvinceError
from .export import Column, Table
from .figures import Figures, Filter, figures_by
from .period import day_start_ms
from .scope import Scope

__all__ = ["DEFAULT", "PARTS", "RATE_PARTS", "Assessment", "AssessmentError", "Month", "ScoreRow", "Weights",
           "add_version", "assess", "parse_month", "score_table", "version", "versions"]

Level = Literal["hall", "clerk"]

# The rate parts (each a share 0..1 times its weight) and the one penalty part.
RATE_PARTS: tuple[str, ...] = ("satisfaction", "participation", "cases_on_time", "appeals_upheld")
PENALTY = "dissatisfied"
PARTS: tuple[str, ...] = (*RATE_PARTS, PENALTY)
PART_NAMES = {"satisfaction": "满意率 Satisfaction", "participation": "参评率 Participation",
              "cases_on_time": "按期整改率 Cases on time", "appeals_upheld": "申诉采信率 Appeals upheld",
              "dissatisfied": "不满意扣分 Per dissatisfied rating"}
TOTAL = 100.0
MAX_PENALTY = 100.0
MAX_NOTE = 500
_MONTH = re.compile(r"(\d{4})-(\d{2})")


class AssessmentError(ProvinceError, ValueError):
    """Weights or a month that cannot be used (the page answers 400 with the reason)."""


@dataclass(frozen=True)
class Weights:
    version: int                      # 0: the built-in default (nothing stored yet)
    parts: dict[str, float]           # every name of PARTS
    min_sample: int
    created_ms: int
    created_by: str
    note: str

    def label(self) -> str:
        return f"v{self.version}" + (" (内置默认 built-in default)" if self.version == 0 else "")


DEFAULT = Weights(0, {"satisfaction": 60.0, "participation": 20.0, "cases_on_time": 20.0,
                      "appeals_upheld": 0.0, "dissatisfied": 1.0}, rankings.DEFAULT_MIN, 0, "built-in",
                  "内置默认 built-in default")


def _number(raw: Any, name: str, hi: float) -> float:
    if isinstance(raw, bool):
        raise AssessmentError(f"{name} must be a number")
    if isinstance(raw, str):
        raw = raw.strip()
        if not raw:
            raise AssessmentError(f"{name} is required")
        try:
            raw = float(raw)
        except ValueError:
            raise AssessmentError(f"{name} must be a number, not {raw[:20]!r}") from None
    if not isinstance(raw, int | float) or not math.isfinite(raw):
        raise AssessmentError(f"{name} must be a number")
    if not 0 <= raw <= hi:
        raise AssessmentError(f"{name} must be 0..{hi:g}, not {raw:g}")
    return float(raw)


def validate(parts: Mapping[str, Any], min_sample: Any, note: str) -> tuple[dict[str, float], int, str]:
    """The weights as stored, or AssessmentError saying what is wrong."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise AssessmentError(f"unknown part(s): {', '.join(sorted(unknown))[:80]}")
    got = {p: _number(parts.get(p, ""), PART_NAMES[p], MAX_PENALTY if p == PENALTY else TOTAL) for p in PARTS}
    total = sum(got[p] for p in RATE_PARTS)
    if abs(total - TOTAL) > 1e-6:
        raise AssessmentError(f"the weights of {', '.join(RATE_PARTS)} must sum to {TOTAL:g}, not {total:g}")
    raw_min = str(min_sample).strip()
    if not raw_min.isascii() or not raw_min.isdigit() or not 1 <= int(raw_min[:9]) <= rankings.MAX_MIN:
        raise AssessmentError(f"min_sample must be a whole number 1..{rankings.MAX_MIN}")
    note = note.strip()
    if not note:
        raise AssessmentError("a note saying why the weights change is required")
    if len(note) > MAX_NOTE:
        raise AssessmentError(f"the note is at most {MAX_NOTE} characters")
    return got, int(raw_min), note


def add_version(conn: Conn, parts: Mapping[str, Any], min_sample: Any, note: str, *, actor: str,
                now_ms: int) -> Weights:
    """A new version (validated), with its audit row, in one transaction; older versions stay."""
    got, mins, text = validate(parts, min_sample, note)
    with conn.transaction():
        v = int(conn.scalar("INSERT INTO assessment_weights (weights, min_sample, created_ms, created_by,"
                            " note) VALUES (?, ?, ?, ?, ?) RETURNING version",
                            (json.dumps(got, sort_keys=True), mins, now_ms, actor, text)))
        audit.record(conn, actor, "assessment-weights", f"v{v}",
                     {"weights": got, "min_sample": mins, "note": text}, now_ms)
    return Weights(v, got, mins, now_ms, actor, text)


def _weights(row: Any) -> Weights:
    parts = {p: float(x) for p, x in json.loads(row[1]).items()}
    return Weights(int(row[0]), {p: parts.get(p, 0.0) for p in PARTS}, int(row[2]), int(row[3]),
                   str(row[4]), str(row[5]))


_SELECT = "SELECT version, weights, min_sample, created_ms, created_by, note FROM assessment_weights"


def versions(conn: Conn) -> list[Weights]:
    """Every stored version, newest first (the built-in default when none is)."""
    got = [_weights(r) for r in conn.all(f"{_SELECT} ORDER BY version DESC")]
    return got or [DEFAULT]


def version(conn: Conn, v: int | None = None) -> Weights:
    """Version ``v``, or the newest; AssessmentError for one that does not exist."""
    if v is None:
        return versions(conn)[0]
    if v == 0 and conn.scalar("SELECT COUNT(*) FROM assessment_weights") == 0:
        return DEFAULT
    row = conn.one(f"{_SELECT} WHERE version = ?", (v,))
    if row is None:
        raise AssessmentError(f"no weights version {v}")
    return _weights(row)


@dataclass(frozen=True)
class Month:
    key: str                 # YYYY-MM
    day_from: str            # first day, inclusive
    day_to: str              # last day, inclusive
    start_ms: int            # local midnight of the first day
    end_ms: int              # local midnight after the last day

    @property
    def label(self) -> str:
        return f"{self.key[:4]}年{int(self.key[5:])}月"


def parse_month(raw: str, tz: ZoneInfo) -> Month:
    m = _MONTH.fullmatch(raw.strip())
    if not m or not 1 <= int(m.group(2)) <= 12 or not 2000 <= int(m.group(1)) <= 2999:
        raise AssessmentError(f"month must be YYYY-MM, not {raw[:20]!r}")
    first = date(int(m.group(1)), int(m.group(2)), 1)
    nxt = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    last = date.fromordinal(nxt.toordinal() - 1)
    return Month(m.group(0), first.isoformat(), last.isoformat(), day_start_ms(first, tz),
                 day_start_ms(nxt, tz))


def assessed_figures(conn: Conn, group: tuple[str, ...], flt: Filter) -> tuple[
        dict[tuple[Any, ...], Figures], dict[tuple[Any, ...], int]]:
    """figures.py's figures for assessment (``Filter(assessment=True)``: without the ratings an upheld
    appeal excludes, nor the prompts they answered) per group, and how many were excluded per group."""
    return figures_by(conn, group, replace(flt, assessment=True)), excluded_by(conn, group, flt)


def excluded_by(conn: Conn, group: tuple[str, ...], flt: Filter) -> dict[tuple[Any, ...], int]:
    """Ratings under ``flt`` an upheld appeal excludes, per group."""
    cols = ['"window"' if c == "window" else c for c in group]
    sel = "".join(f"{c}, " for c in cols)
    where, args = replace(flt, assessment=False).sql()
    group_by = f" GROUP BY {', '.join(cols)}" if cols else ""
    return {tuple(row[:len(cols)]): int(row[-1]) for row in conn.all(
        f"SELECT {sel}COUNT(*) FROM ratings WHERE 1 = 1{where}{exclusions.excluded_sql()}{group_by}", args)
        if row[-1]}


def _key(hall: str, clerk: str | None, lvl: Level) -> tuple[Any, ...]:
    return (hall,) if lvl == "hall" else (hall, clerk)


@dataclass
class Counts:
    """The month's cases and appeals of one hall or clerk."""

    cases_opened: int = 0
    cases_closed: int = 0
    cases_on_time: int = 0
    cases_overdue: int = 0            # found overdue (and escalated) in the month
    cases_overdue_open: int = 0       # ... and still not closed at the month's end
    appeals_decided: int = 0
    appeals_upheld: int = 0


def _counts(conn: Conn, lvl: Level, scope: Scope, month: Month) -> dict[tuple[Any, ...], Counts]:
    """Cases and appeals per hall (or hall + clerk, through the rating they are about)."""
    out: dict[tuple[Any, ...], Counts] = {}
    a, b = month.start_ms, month.end_ms
    where, args = scope.sql("c.hall")
    if lvl == "hall":
        sel, join, grp = "c.hall", "", "c.hall"
    else:
        sel, join, grp = "c.hall, r.clerk", " JOIN ratings r ON r.id = c.rating", "c.hall, r.clerk"
    for row in conn.all(
            f"SELECT {sel},"
            " SUM(CASE WHEN c.opened_ms >= ? AND c.opened_ms < ? THEN 1 ELSE 0 END),"
            " SUM(CASE WHEN c.closed_ms >= ? AND c.closed_ms < ? THEN 1 ELSE 0 END),"
            " SUM(CASE WHEN c.closed_ms >= ? AND c.closed_ms < ? AND c.on_time = 1 THEN 1 ELSE 0 END),"
            " SUM(CASE WHEN c.overdue_ms >= ? AND c.overdue_ms < ? THEN 1 ELSE 0 END),"
            " SUM(CASE WHEN c.overdue_ms >= ? AND c.overdue_ms < ?"
            " AND (c.closed_ms IS NULL OR c.closed_ms >= ?) THEN 1 ELSE 0 END)"
            f" FROM cases c{join} WHERE 1 = 1{where} GROUP BY {grp}",
            [a, b, a, b, a, b, a, b, a, b, b, *args]):
        n = len(row) - 5
        c = out.setdefault(tuple(row[:n]), Counts())
        (c.cases_opened, c.cases_closed, c.cases_on_time, c.cases_overdue,
         c.cases_overdue_open) = (int(x or 0) for x in row[n:])
    where, args = scope.sql("p.hall")
    sel = "p.hall" if lvl == "hall" else "p.hall, r.clerk"
    for row in conn.all(
            f"SELECT {sel}, COUNT(*), SUM(CASE WHEN p.state = 'upheld' THEN 1 ELSE 0 END)"
            " FROM appeals p JOIN ratings r ON r.id = p.rating"
            f" WHERE p.state <> 'pending' AND p.decided_ms >= ? AND p.decided_ms < ?{where}"
            f" GROUP BY {sel}", [a, b, *args]):
        n = len(row) - 2
        c = out.setdefault(tuple(row[:n]), Counts())
        c.appeals_decided, c.appeals_upheld = int(row[n] or 0), int(row[n + 1] or 0)
    return out


def _share(k: int, n: int) -> float | None:
    return k / n if n else None


@dataclass
class ScoreRow:
    hall: str
    hall_name: str
    city: str
    clerk: str | None
    figures: Figures
    excluded: int
    counts: Counts
    points: dict[str, float] = field(default_factory=dict)   # part -> points (the penalty negative)
    score: float | None = None        # None: insufficient sample
    rank: int | None = None

    def rates(self) -> dict[str, float | None]:
        c = self.counts
        return {"satisfaction": self.figures.satisfaction_rate,
                "participation": self.figures.participation_rate,
                "cases_on_time": _share(c.cases_on_time, c.cases_closed + c.cases_overdue_open),
                "appeals_upheld": _share(c.appeals_upheld, c.appeals_decided)}

    def as_dict(self) -> dict[str, Any]:
        f, c, r = self.figures, self.counts, self.rates()
        d: dict[str, Any] = {
            "rank": self.rank, "hall": self.hall, "hall_name": self.hall_name, "city": self.city,
            "clerk": self.clerk, "score": None if self.score is None else round(self.score, 2),
            "ratings": f.ratings, "satisfied": f.satisfied, "dissatisfied": f.dissatisfied,
            "prompts": f.prompts, "excluded": self.excluded, "satisfaction": r["satisfaction"],
            "participation": r["participation"], "cases_opened": c.cases_opened,
            "cases_closed": c.cases_closed, "cases_on_time": c.cases_on_time,
            "cases_overdue": c.cases_overdue, "cases_rate": r["cases_on_time"],
            "appeals_decided": c.appeals_decided, "appeals_upheld": c.appeals_upheld,
            "appeals_rate": r["appeals_upheld"],
            "status": "排名 ranked" if self.rank is not None else "样本不足 insufficient sample"}
        for p in PARTS:
            d[f"pts_{p}"] = None if p not in self.points else round(self.points[p], 2)
        return d


@dataclass(frozen=True)
class Assessment:
    month: Month
    level: Level
    weights: Weights
    scope: Scope
    ranked: list[ScoreRow]
    too_few: list[ScoreRow]

    @property
    def rows(self) -> list[ScoreRow]:
        return self.ranked + self.too_few


def score(row: ScoreRow, w: Weights) -> None:
    """The row's points and score under ``w`` (a rate without a denominator scores full marks)."""
    rates = row.rates()
    row.points = {p: w.parts[p] * (1.0 if rates[p] is None else rates[p] or 0.0) for p in RATE_PARTS}
    row.points[PENALTY] = -w.parts[PENALTY] * row.figures.dissatisfied
    row.score = max(0.0, sum(row.points.values()))


def assess(conn: Conn, month: Month, scope: Scope, level: str = "hall",
           w: Weights | None = None) -> Assessment:
    """Every hall (or clerk) of ``scope`` with a rating, a prompt, a case or an appeal in the month."""
    if level not in rankings.LEVELS:
        raise AssessmentError(f"level must be hall or clerk, not {level!r}")
    lvl: Level = "hall" if level == "hall" else "clerk"
    w = w or version(conn)
    group = ("hall",) if lvl == "hall" else ("hall", "clerk")
    flt = Filter(scope, month.day_from, month.day_to)
    # The rankings' minimum-sample rule, applied by rankings.ranking itself over the assessment's
    # figures: a group it does not rank is listed apart here too.
    split = rankings.ranking(conn, lvl, replace(flt, assessment=True), w.min_sample)
    figs = {_key(x.hall, x.clerk, lvl): x.figures for x in split.ranked + split.too_few}
    sampled = {_key(x.hall, x.clerk, lvl) for x in split.ranked}
    excluded = excluded_by(conn, group, flt)
    counts = _counts(conn, lvl, scope, month)
    where, args = scope.sql("hall")
    halls = {str(h): (str(n), str(c)) for h, n, c in conn.all(
        f"SELECT hall, name, city FROM halls WHERE 1 = 1{where}", args)}
    ranked: list[ScoreRow] = []
    too_few: list[ScoreRow] = []
    keys = set(figs) | set(excluded) | set(counts)
    for key in sorted(keys, key=lambda k: tuple("" if x is None else str(x) for x in k)):
        if lvl == "clerk" and key[1] is None:
            continue     # served with no clerk signed in: nobody to assess (the hall's score counts them)
        hall = str(key[0])
        name, city = halls.get(hall, (hall, ""))
        r = ScoreRow(hall, name, city, None if lvl == "hall" else str(key[1]), figs.get(key, Figures()),
                     excluded.get(key, 0), counts.get(key, Counts()))
        if key in sampled:
            score(r, w)
            ranked.append(r)
        else:
            too_few.append(r)
    ranked.sort(key=lambda r: (-(r.score or 0.0), -r.figures.ratings, r.hall, r.clerk or ""))
    for i, r in enumerate(ranked, start=1):
        r.rank = i
    return Assessment(month, lvl, w, scope, ranked, too_few)


COLUMNS: tuple[Column, ...] = (
    Column("rank", "名次 Rank", "int"), Column("hall", "营业厅 Hall"), Column("hall_name", "名称 Name"),
    Column("city", "地市 City"), Column("clerk", "工号 Clerk"), Column("score", "得分 Score"),
    Column("ratings", "评价数 Ratings", "int"), Column("satisfied", "满意数 Satisfied", "int"),
    Column("satisfaction", "满意率 Satisfaction", "rate"), Column("prompts", "邀评数 Prompts", "int"),
    Column("participation", "参评率 Participation", "rate"),
    Column("dissatisfied", "不满意 Dissatisfied", "int"), Column("excluded", "申诉剔除 Excluded", "int"),
    Column("cases_opened", "本月新开工单 Cases opened", "int"),
    Column("cases_closed", "本月关闭工单 Cases closed", "int"),
    Column("cases_on_time", "按期整改 On time", "int"),
    Column("cases_rate", "按期整改率 On-time rate", "rate"),
    Column("cases_overdue", "本月逾期 Found overdue", "int"),
    Column("appeals_decided", "已决申诉 Appeals decided", "int"),
    Column("appeals_upheld", "采信申诉 Upheld", "int"),
    Column("appeals_rate", "申诉采信率 Upheld rate", "rate"),
    *(Column(f"pts_{p}", f"{PART_NAMES[p].split()[0]}得分 pts", "text") for p in PARTS),
    Column("status", "状态 Status"),
)


def columns(level: str) -> list[Column]:
    return [c for c in COLUMNS if level == "clerk" or c.key != "clerk"]


def weights_meta(w: Weights) -> dict[str, str]:
    return {"权重版本 Weights version": w.label(),
            "权重 Weights": ", ".join(f"{PART_NAMES[p]} {w.parts[p]:g}" for p in PARTS),
            "最少评价数 Minimum sample": str(w.min_sample),
            "公式 Formula": "max(0, Σ 权重×比率 weight×rate - 扣分×不满意数 penalty×dissatisfied);"
                            " 无分母的比率按满分 a rate without a denominator scores full marks",
            "剔除 Excluded": "申诉采信的评价不计入 ratings of upheld appeals are left out"}


def score_table(a: Assessment) -> Table:
    title = "营业厅考核 Hall assessment" if a.level == "hall" else "工号考核 Clerk assessment"
    scope = a.scope.role + (f" {a.scope.value}" if a.scope.value else "")
    meta = {"月份 Month": a.month.key, "范围 Scope": scope, **weights_meta(a.weights)}
    return Table(name=f"assessment-{a.level}s-{a.month.key}", title=title, columns=columns(a.level),
                 rows=[r.as_dict() for r in a.rows], meta=meta)
