"""Rankings of halls and of clerks (a clerk is hall + 工号) by satisfaction, fairly.

A raw rate ranks a clerk with 3 satisfied of 3 above one with 95 of 100; the Wilson interval of 3 of 3 is
44-100 % and of 95 of 100 89-98 %, so ranking by the interval's lower bound puts the one we are surer
of first. A group with fewer ratings than the minimum sample (30 by default) gets no rank at all: it is
listed apart as 样本不足 too few ratings, so nobody is named first or last on a handful of presses.

The rates and the interval are figures.py's; this module only groups, orders and numbers them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .db import Conn
from .errors import ProvinceError
from .export import Column, Table
from .figures import Figures, Filter, figures_by

__all__ = ["DEFAULT_MIN", "LEVELS", "SORTS", "RankRow", "Ranking", "RankingError", "columns", "ranking",
           "ranking_table", "sort_columns"]

Level = Literal["hall", "clerk"]
LEVELS: tuple[Level, ...] = ("hall", "clerk")
DEFAULT_MIN = 30
MAX_MIN = 1_000_000


class RankingError(ProvinceError, ValueError):
    """A ranking asked for with a parameter it cannot take (the page answers 400)."""


@dataclass(frozen=True)
class RankRow:
    hall: str
    hall_name: str
    clerk: str | None            # None at hall level
    figures: Figures
    rank: int | None             # by the Wilson lower bound; None when below the minimum sample

    @property
    def low(self) -> float | None:
        iv = self.figures.interval()
        return iv[0] if iv else None

    @property
    def high(self) -> float | None:
        iv = self.figures.interval()
        return iv[1] if iv else None

    def as_dict(self) -> dict[str, Any]:
        f = self.figures
        return {"rank": self.rank, "hall": self.hall, "hall_name": self.hall_name, "clerk": self.clerk,
                "ratings": f.ratings, "satisfied": f.satisfied, "dissatisfied": f.dissatisfied,
                "prompts": f.prompts, "satisfaction": f.satisfaction_rate, "low": self.low,
                "high": self.high, "participation": f.participation_rate,
                "status": "排名 ranked" if self.rank is not None else "样本不足 too few ratings"}


# Each sortable column and how to read it from a row. "rank" is the Wilson order itself.
SORTS: dict[str, Callable[[RankRow], Any]] = {
    "rank": lambda r: r.rank,
    "hall": lambda r: r.hall,
    "name": lambda r: r.hall_name,
    "clerk": lambda r: r.clerk,
    "ratings": lambda r: r.figures.ratings,
    "satisfied": lambda r: r.figures.satisfied,
    "dissatisfied": lambda r: r.figures.dissatisfied,
    "prompts": lambda r: r.figures.prompts,
    "satisfaction": lambda r: r.figures.satisfaction_rate,
    "low": lambda r: r.low,
    "high": lambda r: r.high,
    "participation": lambda r: r.figures.participation_rate,
}
# The way a person expects each column first: best and biggest at the top, names A to Z.
DEFAULT_DESC = {"rank": False, "hall": False, "name": False, "clerk": False}


@dataclass(frozen=True)
class Ranking:
    level: Level
    min_ratings: int
    sort: str
    desc: bool
    ranked: list[RankRow]
    too_few: list[RankRow]


def _wilson_order(r: RankRow) -> tuple[float, int, float, str, str]:
    # Lower bound first; then more ratings (the surer estimate), then the rate, then a stable name order.
    return (-(r.low or 0.0), -r.figures.ratings, -(r.figures.satisfaction_rate or 0.0), r.hall,
            r.clerk or "")


def _sorted(rows: list[RankRow], sort: str, desc: bool) -> list[RankRow]:
    key = SORTS[sort]
    present = [r for r in rows if key(r) is not None]
    missing = [r for r in rows if key(r) is None]
    # Ties keep the Wilson order (the input order): a stable sort on one key.
    present.sort(key=key, reverse=desc)
    return present + missing          # "-" values stay at the bottom whichever way a column is sorted


def ranking(conn: Conn, level: str, flt: Filter, min_ratings: int = DEFAULT_MIN, sort: str = "rank",
            desc: bool | None = None) -> Ranking:
    """Every hall (or clerk) with a rating or a prompt under ``flt``, ranked or listed apart."""
    if level not in LEVELS:
        raise RankingError(f"level must be hall or clerk, not {level!r}")
    if not 1 <= min_ratings <= MAX_MIN:
        raise RankingError(f"the minimum sample must be 1..{MAX_MIN}, not {min_ratings}")
    if sort not in SORTS:
        raise RankingError(f"cannot sort by {sort!r}; one of {', '.join(SORTS)}")
    lvl: Level = "hall" if level == "hall" else "clerk"
    names = dict(conn.all("SELECT hall, name FROM halls"))
    groups = figures_by(conn, ("hall",) if lvl == "hall" else ("hall", "clerk"), flt)
    rows: list[RankRow] = []
    for key, figs in groups.items():
        hall = str(key[0])
        clerk = None if lvl == "hall" else key[1]
        if lvl == "clerk" and clerk is None:
            continue     # served with no clerk signed in: nobody to rank (the hall ranking counts them)
        rows.append(RankRow(hall, str(names.get(hall, hall)), None if clerk is None else str(clerk), figs,
                            None))
    rows.sort(key=_wilson_order)
    ranked: list[RankRow] = []
    too_few: list[RankRow] = []
    for r in rows:
        if r.figures.ratings >= min_ratings:
            ranked.append(RankRow(r.hall, r.hall_name, r.clerk, r.figures, len(ranked) + 1))
        else:
            too_few.append(r)
    d = DEFAULT_DESC.get(sort, True) if desc is None else desc
    return Ranking(lvl, min_ratings, sort, d, _sorted(ranked, sort, d), _sorted(too_few, sort, d))


COLUMNS = {
    "rank": Column("rank", "名次 Rank", "int"),
    "hall": Column("hall", "营业厅 Hall"),
    "name": Column("hall_name", "名称 Name"),
    "clerk": Column("clerk", "工号 Clerk"),
    "ratings": Column("ratings", "评价数 Ratings", "int"),
    "satisfied": Column("satisfied", "满意数 Satisfied", "int"),
    "satisfaction": Column("satisfaction", "满意率 Satisfaction", "rate"),
    "low": Column("low", "区间下限 95% low", "rate"),
    "high": Column("high", "区间上限 95% high", "rate"),
    "participation": Column("participation", "参评率 Participation", "rate"),
    "dissatisfied": Column("dissatisfied", "不满意 Dissatisfied", "int"),
    "prompts": Column("prompts", "邀评数 Prompts", "int"),
}


def sort_columns(level: Level) -> list[tuple[str, Column]]:
    """(sort key, column) of a ranking's table, in display order."""
    keys = ["rank", "hall", "name"] + (["clerk"] if level == "clerk" else []) + [
        "ratings", "satisfied", "satisfaction", "low", "high", "participation", "dissatisfied", "prompts"]
    return [(k, COLUMNS[k]) for k in keys]


def columns(level: Level) -> list[Column]:
    return [c for _, c in sort_columns(level)]


def ranking_table(r: Ranking, flt: Filter) -> Table:
    """Ranked rows, then the ones with too few ratings (status column), with the rule in the meta."""
    title = "营业厅排名 Hall ranking" if r.level == "hall" else "工号排名 Clerk ranking"
    meta = flt.describe()
    meta["最少评价数 Minimum ratings"] = str(r.min_ratings)
    meta["排名规则 Rule"] = "95% Wilson 区间下限 lower bound of the 95% Wilson interval"
    return Table(name=f"ranking-{r.level}s", title=title,
                 columns=[*columns(r.level), Column("status", "状态 Status")],
                 rows=[row.as_dict() for row in r.ranked + r.too_few], meta=meta)
