"""The platform's figures, defined once: what a rating, a prompt, a satisfied customer and a rate are.

- 评价数 ratings: outcomes with a score; 未评价 no-ratings: prompts that expired without one.
- 邀评数 opened prompts: every prompt opened, whoever opened it: the counter's prompt records, plus one
  for every outcome of a prompt opened by the keypad's invite key (prompt 0), which has no record of its
  own. Counting only the records gave more ratings than prompts (a province run: 108 %).
- 满意率 satisfaction = satisfied / ratings (基本满意 and better, ``messages.is_satisfied``).
- 参评率 participation = ratings / opened prompts, at most 100 % as long as a prompt has one outcome
  (the receiver holds a second one, receiver.py).
- A rate with a zero denominator is None ("-"), never 0 or 100 %.

Held ratings (unknown keypad, prompt mismatch) are in another table and count nowhere.
Rankings use the Wilson score interval, so 3 of 3 satisfied (interval 44-100 %) does not outrank 95 of
100 (89-98 %): ordered by the interval's lower bound, and a group below the minimum sample is listed
apart, not ranked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from countersign.protocol.messages import SCORE_NAMES_ZH, is_satisfied

from . import exclusions
from .db import Conn
from .scope import Scope

__all__ = ["Figures", "Filter", "figures_by", "wilson"]

PROVINCE = Scope("province")

# Columns both ratings and prompts have, by which figures can be grouped or filtered.
GROUP_COLUMNS = frozenset({"hall", "window", "clerk", "service", "device", "day"})


def _col(name: str) -> str:
    if name not in GROUP_COLUMNS:
        raise ValueError(f"cannot group or filter figures by {name!r}")
    return '"window"' if name == "window" else name


@dataclass
class Figures:
    ratings: int = 0
    no_ratings: int = 0
    prompts: int = 0                 # opened prompts: counter records + invite-key outcomes
    satisfied: int = 0
    dissatisfied: int = 0
    scores: dict[str, dict[str, int]] = field(default_factory=dict)   # scale -> name -> count

    @property
    def satisfaction_rate(self) -> float | None:
        return self.satisfied / self.ratings if self.ratings else None

    @property
    def participation_rate(self) -> float | None:
        return self.ratings / self.prompts if self.prompts else None

    def interval(self, z: float = 1.96) -> tuple[float, float] | None:
        return wilson(self.satisfied, self.ratings, z) if self.ratings else None

    def add(self, other: Figures) -> None:
        self.ratings += other.ratings
        self.no_ratings += other.no_ratings
        self.prompts += other.prompts
        self.satisfied += other.satisfied
        self.dissatisfied += other.dissatisfied
        for scale, names in other.scores.items():
            mine = self.scores.setdefault(scale, dict.fromkeys(names, 0))
            for name, n in names.items():
                mine[name] = mine.get(name, 0) + n

    def as_json(self) -> dict[str, Any]:
        lo_hi = self.interval()
        return {"ratings": self.ratings, "no_ratings": self.no_ratings, "prompts": self.prompts,
                "satisfied": self.satisfied, "dissatisfied": self.dissatisfied,
                "satisfaction_rate": self.satisfaction_rate, "participation_rate": self.participation_rate,
                "wilson_low": lo_hi[0] if lo_hi else None, "wilson_high": lo_hi[1] if lo_hi else None,
                "scores": self.scores}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of k successes in n trials (95 % for z = 1.96)."""
    if n <= 0:
        raise ValueError("the Wilson interval needs at least one trial")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Filter:
    """Which rows count: a scope, an inclusive day range, and equality on grouping columns.

    ``assessment=True`` gives the figures for assessment (考核): a rating an upheld appeal excludes
    (exclusions.py) counts nowhere, and neither does the prompt record it answered, so an upheld appeal
    takes the rating out of the satisfaction rate without lowering the participation rate. Every other
    figure (the default) counts every stored rating, excluded or not."""

    scope: Scope = PROVINCE
    day_from: str | None = None      # 'YYYY-MM-DD', inclusive
    day_to: str | None = None        # inclusive
    equals: tuple[tuple[str, Any], ...] = ()
    assessment: bool = False

    def sql(self, table: str = "ratings") -> tuple[str, list[Any]]:
        """The condition on ``table`` ("ratings" or "prompts": the assessment's exclusion differs)."""
        if table not in ("ratings", "prompts"):
            raise ValueError(f"figures count ratings or prompts, not {table!r}")
        where, args = self.scope.sql("hall")
        if self.day_from is not None:
            where += " AND day >= ?"
            args.append(self.day_from)
        if self.day_to is not None:
            where += " AND day <= ?"
            args.append(self.day_to)
        for name, value in self.equals:
            if value is None:
                where += f" AND {_col(name)} IS NULL"
            else:
                where += f" AND {_col(name)} = ?"
                args.append(value)
        if self.assessment:
            if table == "ratings":
                where += exclusions.included_sql("id")
            else:
                where += (" AND NOT EXISTS (SELECT 1 FROM ratings x WHERE x.hall = prompts.hall AND"
                          f" x.prompt = prompts.prompt AND x.prompt <> 0{exclusions.excluded_sql('x.id')})")
        return where, args

    def describe(self) -> dict[str, str]:
        """The filter as a person reads it (written into every export)."""
        d = {"范围 Scope": self.scope.role + (f" {self.scope.value}" if self.scope.value else "")}
        if self.day_from or self.day_to:
            d["期间 Period"] = f"{self.day_from or '…'} ~ {self.day_to or '…'}"
        for name, value in self.equals:
            d[name] = "(空)" if value is None else str(value)
        if self.assessment:
            d["口径 Basis"] = "考核口径：不含申诉成立的评价 For assessment: without ratings of upheld appeals"
        return d


def figures_by(conn: Conn, group: Sequence[str], flt: Filter) -> dict[tuple[Any, ...], Figures]:
    """Figures per group (a tuple of the group columns' values; () for the total)."""
    cols = [_col(c) for c in group]
    sel = "".join(f"{c}, " for c in cols)
    where, args = flt.sql()
    out: dict[tuple[Any, ...], Figures] = {}
    rows = conn.all(f"SELECT {sel}kind, scale, score, CASE WHEN prompt = 0 THEN 1 ELSE 0 END, COUNT(*)"
                    f" FROM ratings WHERE 1 = 1{where} GROUP BY {sel}kind, scale, score,"
                    " CASE WHEN prompt = 0 THEN 1 ELSE 0 END", args)
    for row in rows:
        key = tuple(row[:len(cols)])
        kind, scale, score, invite, n = row[len(cols):]
        f = out.setdefault(key, Figures())
        if invite:
            f.prompts += n
        if kind == "no-rating":
            f.no_ratings += n
            continue
        f.ratings += n
        names = f.scores.setdefault(str(scale), dict.fromkeys(SCORE_NAMES_ZH[scale].values(), 0))
        names[SCORE_NAMES_ZH[scale][score]] += n
        if is_satisfied(score, scale):
            f.satisfied += n
        else:
            f.dissatisfied += n
    group_by = f" GROUP BY {', '.join(cols)}" if cols else ""
    where, args = flt.sql("prompts")
    for row in conn.all(f"SELECT {sel}COUNT(*) FROM prompts WHERE 1 = 1{where}{group_by}", args):
        if row[-1]:
            out.setdefault(tuple(row[:len(cols)]), Figures()).prompts += row[-1]
    return out


def total(conn: Conn, flt: Filter) -> Figures:
    return figures_by(conn, (), flt).get((), Figures())
