"""A hall's business hours (config ``[hours]``) in its local time zone (config ``timezone``).

Alarms that mean "nobody is rating" are only meaningful while the hall is open; the page's "today" is the
hall's local day. Both need the zone, so it lives here with the hours.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from countersign.common.hours import parse_days as common_parse_days

from .errors import ConfigError


@dataclass(frozen=True)
class BusinessHours:
    days: frozenset[int] = frozenset(range(6))          # weekday numbers, Monday 0 (default mon-sat)
    open: dt.time = dt.time(8, 30)
    close: dt.time = dt.time(17, 30)
    closed_dates: frozenset[dt.date] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not self.open < self.close:
            raise ConfigError("hours.open must be before hours.close")

    def is_open(self, local: dt.datetime) -> bool:
        return (local.weekday() in self.days and local.date() not in self.closed_dates
                and self.open <= local.time() < self.close)

    @classmethod
    def parse(cls, days: str, open_: str, close: str, closed_dates: list[str]) -> BusinessHours:
        return cls(parse_days(days), _time(open_, "hours.open"), _time(close, "hours.close"),
                   frozenset(_date(d) for d in closed_dates))


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"timezone {name!r} is not a known time zone (e.g. Asia/Shanghai)") from exc


def local_day_start_ms(now_ms: int, tz: ZoneInfo) -> int:
    """Unix ms of the local midnight that began the day ``now_ms`` falls in."""
    local = dt.datetime.fromtimestamp(now_ms / 1000, tz)
    midnight = dt.datetime.combine(local.date(), dt.time(0), tz)
    return int(midnight.timestamp() * 1000)


def parse_days(spec: str) -> frozenset[int]:
    try:
        return common_parse_days(spec)
    except ValueError as exc:
        raise ConfigError(f"hours.days: {exc}") from None


def _time(text: str, key: str) -> dt.time:
    try:
        return dt.time.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{key} must be a time like 08:30, not {text!r}") from None


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"hours.closed_dates: {text!r} is not a date like 2026-10-01") from None
