"""Trends: the platform's figures per day, per week (Monday to Sunday) and per month over a period.

Every day of the period is a bucket, a day without a rating too: it shows as 0 ratings and a rate of
None (a gap in the line, "-" in the table), not as a missing day that a chart would silently bridge. A
week or month cut by the period's edge counts only the period's days (its bucket says which days), so
the buckets always add up to the period's total.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

from .db import Conn
from .errors import ProvinceError
from .export import Column, Table
from .figures import Figures, Filter, figures_by

__all__ = ["GRAINS", "MAX_DAYS", "Bucket", "TrendError", "trend", "trend_table"]

Grain = Literal["day", "week", "month"]
GRAINS: tuple[Grain, ...] = ("day", "week", "month")
GRAIN_NAMES = {"day": "按日 By day", "week": "按周 By week", "month": "按月 By month"}
# About three years by day, ten by week or month: longer is a mistyped date, not a chart anyone reads.
MAX_DAYS = 1200
MAX_DAYS_COARSE = 3660


class TrendError(ProvinceError, ValueError):
    """A trend asked for with a period or grain it cannot take (the page answers 400)."""


@dataclass(frozen=True)
class Bucket:
    key: str            # day: 2026-12-02; week: 2026-W49; month: 2026-12
    day_from: str       # the first and last day of the period this bucket counts
    day_to: str
    figures: Figures

    @property
    def label(self) -> str:
        return self.key if self.day_from == self.day_to else f"{self.key} ({self.day_from} ~ {self.day_to})"


def _parse(day: str | None, what: str) -> date:
    if day is None:
        raise TrendError(f"a trend needs its period's {what} day")
    try:
        if len(day) != 10:
            raise ValueError(day)
        return date.fromisoformat(day)
    except ValueError:
        raise TrendError(f"bad {what} day {day!r}: YYYY-MM-DD") from None


def _bucket_of(d: date, grain: Grain) -> str:
    if grain == "day":
        return d.isoformat()
    if grain == "week":
        y, w, _ = d.isocalendar()          # ISO weeks start on Monday
        return f"{y}-W{w:02d}"
    return f"{d.year}-{d.month:02d}"


def trend(conn: Conn, flt: Filter, grain: str) -> list[Bucket]:
    """Buckets in time order over ``flt``'s day range (both ends needed), empty ones included."""
    if grain not in GRAINS:
        raise TrendError(f"grain must be day, week or month, not {grain!r}")
    g: Grain = "day" if grain == "day" else "week" if grain == "week" else "month"
    start, end = _parse(flt.day_from, "first"), _parse(flt.day_to, "last")
    if end < start:
        raise TrendError(f"the period ends ({end}) before it starts ({start})")
    most = MAX_DAYS if g == "day" else MAX_DAYS_COARSE
    if (end - start).days + 1 > most:
        raise TrendError(f"a trend {GRAIN_NAMES[g]} covers at most {most} days")
    per_day = {str(k[0]): f for k, f in figures_by(conn, ("day",), flt).items()}
    buckets: dict[str, tuple[str, str, Figures]] = {}
    d = start
    while d <= end:
        key, day = _bucket_of(d, g), d.isoformat()
        first, _, figs = buckets.get(key, (day, day, Figures()))
        if day in per_day:
            figs.add(per_day[day])
        buckets[key] = (first, day, figs)
        d += timedelta(days=1)
    return [Bucket(k, a, b, f) for k, (a, b, f) in buckets.items()]


COLUMNS = [
    Column("bucket", "期间 Period"),
    Column("day_from", "起 From"),
    Column("day_to", "止 To"),
    Column("ratings", "评价数 Ratings", "int"),
    Column("satisfaction", "满意率 Satisfaction", "rate"),
    Column("participation", "参评率 Participation", "rate"),
    Column("dissatisfied", "不满意 Dissatisfied", "int"),
    Column("prompts", "邀评数 Prompts", "int"),
    Column("no_ratings", "未评价 No rating", "int"),
]


def bucket_row(b: Bucket) -> dict[str, object]:
    f = b.figures
    return {"bucket": b.key, "day_from": b.day_from, "day_to": b.day_to, "ratings": f.ratings,
            "satisfaction": f.satisfaction_rate, "participation": f.participation_rate,
            "dissatisfied": f.dissatisfied, "prompts": f.prompts, "no_ratings": f.no_ratings}


def trend_table(buckets: list[Bucket], flt: Filter, grain: str, subject: str) -> Table:
    meta = flt.describe()
    meta["粒度 Grain"] = GRAIN_NAMES.get(grain, grain)
    meta["对象 Subject"] = subject
    return Table(name=f"trend-{grain}", title="趋势 Trend", columns=COLUMNS,
                 rows=[bucket_row(b) for b in buckets], meta=meta)
