"""Each hall's business hours (统一营业时间) on the platform: the ``hall_hours`` row, or the default
(Monday to Saturday 08:30-17:30). The working-day calendar is applied on top: a public holiday closes
the hall whatever its weekdays, a 调休 make-up day opens it.

Alerts that mean "nobody is rating" or "a keypad is down" only count while the hall is open.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from countersign.common.hours import parse_days

from . import audit
from .db import Conn
from .workdays import Calendar

__all__ = ["DEFAULT", "Hours", "for_hall", "local", "set_hours"]


@dataclass(frozen=True)
class Hours:
    days: frozenset[int]
    open: dt.time
    close: dt.time
    spec: str

    @classmethod
    def parse(cls, days: str, open_: str, close: str) -> Hours:
        """ValueError with a reason a person can act on if any part is wrong."""
        try:
            o, c = dt.time.fromisoformat(open_), dt.time.fromisoformat(close)
        except ValueError:
            raise ValueError(f"opening and closing times look like 08:30, not {open_!r}/{close!r}") from None
        if not o < c:
            raise ValueError("the hall must open before it closes")
        return cls(parse_days(days), o, c, days)

    def is_open(self, local: dt.datetime, cal: Calendar) -> bool:
        """Open at ``local`` (the province's zone): within the hours, on an opening weekday that is a
        working day, or on a 调休 make-up day (a Saturday or Sunday the calendar makes a working day)."""
        if not self.open <= local.time() < self.close:
            return False
        day = local.date()
        workday = cal.is_workday(day)
        if day.weekday() < 5:
            return workday and day.weekday() in self.days
        # A weekend day: open if the hall opens on that weekday and it is not a holiday, or if it is a
        # make-up working day.
        return workday or (day.weekday() in self.days and not cal.is_holiday(day))


    def open_ms(self, start_ms: int, end_ms: int, tz: ZoneInfo, cal: Calendar) -> int:
        """How long the hall was open between two instants (ms): the clock an unacknowledged alert's
        escalation runs on, so an alert raised at 17:25 reaches the city at the next morning's opening
        plus the rest of its time, not at night. Looks at most a year back."""
        if end_ms <= start_ms:
            return 0
        first, last = local(start_ms, tz).date(), local(end_ms, tz).date()
        first = max(first, last - dt.timedelta(days=366))
        total, day = 0, first
        while day <= last:
            opens = dt.datetime.combine(day, self.open, tz)
            if self.is_open(opens, cal):
                o = int(opens.timestamp() * 1000)
                c = int(dt.datetime.combine(day, self.close, tz).timestamp() * 1000)
                total += max(0, min(c, end_ms) - max(o, start_ms))
            day += dt.timedelta(days=1)
        return total


DEFAULT = Hours.parse("mon-sat", "08:30", "17:30")


def for_hall(conn: Conn, hall: str) -> Hours:
    row = conn.one("SELECT days, open, close FROM hall_hours WHERE hall = ?", (hall,))
    return DEFAULT if row is None else Hours.parse(str(row[0]), str(row[1]), str(row[2]))


def set_hours(conn: Conn, hall: str, hours: Hours, actor: str, now_ms: int) -> None:
    o, c = hours.open.isoformat("minutes"), hours.close.isoformat("minutes")
    conn.execute("INSERT INTO hall_hours (hall, days, open, close, changed_ms, changed_by)"
                 " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (hall) DO UPDATE SET days = excluded.days,"
                 " open = excluded.open, close = excluded.close, changed_ms = excluded.changed_ms,"
                 " changed_by = excluded.changed_by", (hall, hours.spec, o, c, now_ms, actor))
    audit.record(conn, actor, "hall.hours", hall, {"days": hours.spec, "open": o, "close": c}, now_ms)


def local(ms: int, tz: ZoneInfo) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz)
