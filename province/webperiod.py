"""The periods a page can ask for (?period=today|week|month, or ?from=&to=) and the web app's 400 error:
one module below web.py, so page modules and the app share them without importing each other."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, timedelta
from zoneinfo import ZoneInfo

from .errors import ProvinceError
from .period import day_of
from .webctx import Period

__all__ = ["BadRequest", "named_period", "period_of"]

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
MAX_DAYS = 3660          # ten years: a typo such as 0202-01-01 is an error, not a scan of everything


class BadRequest(ProvinceError, ValueError):
    """A query parameter or form field that cannot be used: 400 with the reason, nothing changed."""


def named_period(key: str, now_ms: int, tz: ZoneInfo) -> Period:
    t = date.fromisoformat(day_of(now_ms, tz))
    if key == "today":
        return Period("today", t.isoformat(), t.isoformat(), f"今日 Today ({t.isoformat()})")
    if key == "week":
        start = t - timedelta(days=t.weekday())         # weeks start on Monday
        end = start + timedelta(days=6)
        return Period("week", start.isoformat(), end.isoformat(), f"本周 This week ({start} ~ {end})")
    if key == "month":
        start = t.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1) - timedelta(days=1)
        return Period("month", start.isoformat(), end.isoformat(), f"本月 This month ({start} ~ {end})")
    raise BadRequest(f"period must be today, week or month, got {key[:20]!r}")


def period_of(query: Mapping[str, str], now_ms: int, tz: ZoneInfo, default: str = "month") -> Period:
    day_from, day_to = query.get("from"), query.get("to")
    if day_from or day_to:
        if not (day_from and day_to):
            raise BadRequest("a custom period needs both from and to (YYYY-MM-DD)")
        try:
            if not (_DAY.fullmatch(day_from) and _DAY.fullmatch(day_to)):
                raise ValueError("not YYYY-MM-DD")
            a, b = date.fromisoformat(day_from), date.fromisoformat(day_to)
        except ValueError as exc:
            raise BadRequest(f"bad date in the period ({exc}): use YYYY-MM-DD") from exc
        if a > b:
            raise BadRequest("the period's start is after its end")
        if (b - a).days > MAX_DAYS:
            raise BadRequest(f"a period is at most {MAX_DAYS} days")
        return Period("custom", a.isoformat(), b.isoformat(), f"自定义 Custom ({a} ~ {b})")
    return named_period(query.get("period") or default, now_ms, tz)
