"""Days in the province's time zone: every "per day" figure of the platform counts on one.

A rating counts on its press time, or, when the keypad's clock was unknown, on the time the gateway
received it (report.py says the same); a prompt on the time it was opened. The day is stored beside the
row ('YYYY-MM-DD', store.py), so grouping by day is one column in SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

__all__ = ["DEFAULT_TZ", "day_of", "day_start_ms", "rating_day"]

# The business halls of one province share one zone; China has one, without summer time.
DEFAULT_TZ = "Asia/Shanghai"


def day_of(ms: int, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone(tz).date().isoformat()


def rating_day(press_s: int | None, received_ms: int, tz: ZoneInfo) -> str:
    return day_of(press_s * 1000 if press_s is not None else received_ms, tz)


def day_start_ms(d: date, tz: ZoneInfo) -> int:
    """Unix ms of local midnight starting ``d``."""
    return int(datetime(d.year, d.month, d.day, tzinfo=tz).timestamp() * 1000)


def day_end_ms(d: date, tz: ZoneInfo) -> int:
    return day_start_ms(d + timedelta(days=1), tz)
