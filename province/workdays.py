"""Working days (工作日) in China: weekends, public holidays and the 调休 make-up days that turn a weekend
day into a working day, from the maintained ``chinese-calendar`` package, corrected by the platform's
``calendar_days`` table (an administrator's entry wins).

``chinese-calendar`` only knows the years the State Council has published; a day of another year is a
working day when it is Monday-Friday, unless ``calendar_days`` says otherwise, and is reported by
``unknown_years`` so the platform can ask an administrator to enter that year's holidays.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import chinese_calendar

from .db import Conn

__all__ = ["Calendar", "load"]


@dataclass(frozen=True)
class Calendar:
    """The calendar as the database says at the moment it was loaded (one load per request or pass)."""

    overrides: dict[dt.date, bool] = field(default_factory=dict)   # day -> working day?

    def is_workday(self, day: dt.date) -> bool:
        if day in self.overrides:
            return self.overrides[day]
        try:
            return bool(chinese_calendar.is_workday(day))
        except NotImplementedError:      # a year the package has no data for
            return day.weekday() < 5

    def known(self, day: dt.date) -> bool:
        """Whether the package (or an override) knows this day, rather than the weekday guess."""
        if day in self.overrides:
            return True
        try:
            chinese_calendar.is_workday(day)
        except NotImplementedError:
            return False
        return True

    def add_workdays(self, start: dt.date, n: int) -> dt.date:
        """The ``n``-th working day after ``start`` (``start`` itself not counted): a case opened on a
        Friday before the National Day week is due 15 working days later, the holiday not counted."""
        if n < 0:
            raise ValueError("n must not be negative")
        day = start
        while n:
            day += dt.timedelta(days=1)
            if self.is_workday(day):
                n -= 1
        return day

    def is_holiday(self, day: dt.date) -> bool:
        """A public holiday (the National Day week's Saturday), not an ordinary weekend: chinese-calendar
        names its holidays; an administrator's entry wins; a year without data has none."""
        if day in self.overrides:
            return not self.overrides[day]
        try:
            named = chinese_calendar.get_holiday_detail(day)[1]
            return bool(chinese_calendar.is_holiday(day)) and named is not None
        except NotImplementedError:
            return False

    def unknown_years(self, years: range) -> list[int]:
        return [y for y in years if not self.known(dt.date(y, 6, 1))
                and not any(d.year == y for d in self.overrides)]


def load(conn: Conn) -> Calendar:
    rows = conn.all("SELECT day, workday FROM calendar_days")
    return Calendar({dt.date.fromisoformat(str(d)): bool(w) for d, w in rows})
