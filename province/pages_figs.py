"""Figures per unit (city, hall, window, clerk) for the overview and the drill-down, all through
figures.py (one definition of every rate) and every query filtered by the user's scope."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from . import export
from .db import Conn
from .figures import Figures, Filter, figures_by
from .scope import Scope
from .webctx import Period

__all__ = [
    "FIG_COLUMNS",
    "HallInfo",
    "Unit",
    "cities",
    "hall_units",
    "halls",
    "keypads_by",
    "table",
    "total_unit",
    "url_part",
]

NO_CITY = "(未登记 unregistered)"
NO_CLERK = "-"           # in a URL: ratings without a clerk signed in


@dataclass(frozen=True)
class HallInfo:
    hall: str
    name: str
    city: str
    county: str | None


@dataclass
class Unit:
    """One row of a figures table: a city, a hall, a window or a clerk."""

    key: str
    label: str
    href: str | None = None
    fig: Figures = field(default_factory=Figures)
    keypads_online: int = 0
    keypads: int = 0
    halls: int = 0
    halls_no_data: int = 0
    no_data_names: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        f = self.fig
        return {"key": self.key, "label": self.label, "ratings": f.ratings, "prompts": f.prompts,
                "no_ratings": f.no_ratings, "satisfaction": f.satisfaction_rate,
                "participation": f.participation_rate, "dissatisfied": f.dissatisfied,
                "keypads": f"{self.keypads_online}/{self.keypads}", "halls_no_data": self.halls_no_data}


FIG_COLUMNS = [
    export.Column("label", "名称 Name"), export.Column("ratings", "评价数 Ratings", "int"),
    export.Column("prompts", "邀评数 Prompts", "int"), export.Column("no_ratings", "未评价 No rating", "int"),
    export.Column("satisfaction", "满意率 Satisfaction", "rate"),
    export.Column("participation", "参评率 Participation", "rate"),
    export.Column("dissatisfied", "不满意 Dissatisfied", "int"),
    export.Column("keypads", "在线评价器 Keypads online"),
    export.Column("halls_no_data", "无数据营业厅 Halls without data", "int"),
]


def url_part(value: str | None) -> str:
    return quote(NO_CLERK if value is None else value, safe="")


def halls(conn: Conn, scope: Scope) -> dict[str, HallInfo]:
    where, args = scope.sql("hall")
    return {r[0]: HallInfo(r[0], r[1], r[2], r[3]) for r in conn.all(
        f"SELECT hall, name, city, county FROM halls WHERE 1 = 1{where} ORDER BY city, hall", args)}


def keypads_by(conn: Conn, scope: Scope, group: str, hall: str | None = None) -> dict[str, tuple[int, int]]:
    """(online, known) keypads per hall or per window (``group``: "hall" | "window"), now: a keypad is
    known by the registry (devices, not revoked) or by its last heartbeat report (keypad_status)."""
    where, args = scope.sql("d.hall")
    if hall is not None:
        where += " AND d.hall = ?"
        args.append(hall)
    col = "d.hall" if group == "hall" else 'd."window"'
    rows = conn.all(
        f"SELECT {col}, SUM(CASE WHEN k.online = 1 THEN 1 ELSE 0 END), COUNT(*) FROM ("
        ' SELECT device, hall, "window" FROM devices WHERE revoked = 0'
        " UNION SELECT k2.device, k2.hall, '-' FROM keypad_status k2"
        "  LEFT JOIN devices d2 ON d2.device = k2.device WHERE d2.device IS NULL"
        f") d LEFT JOIN keypad_status k ON k.device = d.device WHERE 1 = 1{where} GROUP BY {col}", args)
    return {str(r[0]): (int(r[1] or 0), int(r[2])) for r in rows}


def hall_units(conn: Conn, scope: Scope, period: Period, known: dict[str, HallInfo]) -> dict[str, Unit]:
    """A Unit per hall in scope: the halls table's halls (with or without data) and any hall with data."""
    figs = figures_by(conn, ("hall",), Filter(scope, period.day_from, period.day_to))
    pads = keypads_by(conn, scope, "hall")
    out: dict[str, Unit] = {}
    for hall in sorted(set(known) | {k[0] for k in figs} | set(pads)):
        info = known.get(hall)
        u = Unit(hall, f"{info.name} ({hall})" if info else hall, f"/drill/hall/{url_part(hall)}",
                 figs.get((hall,), Figures()), *pads.get(hall, (0, 0)), halls=1)
        if u.fig.ratings == 0:
            u.halls_no_data, u.no_data_names = 1, [u.label]
        out[hall] = u
    return out


def _merge(into: Unit, u: Unit) -> None:
    into.fig.add(u.fig)
    into.keypads_online += u.keypads_online
    into.keypads += u.keypads
    into.halls += u.halls
    into.halls_no_data += u.halls_no_data
    into.no_data_names.extend(u.no_data_names)


def cities(hall_units_: dict[str, Unit], known: dict[str, HallInfo]) -> list[Unit]:
    out: dict[str, Unit] = {}
    for hall, u in hall_units_.items():
        city = known[hall].city if hall in known else NO_CITY
        href = None if city == NO_CITY else f"/drill/city/{url_part(city)}"
        c = out.setdefault(city, Unit(city, city, href))
        _merge(c, u)
    return [out[k] for k in sorted(out)]


def total_unit(label: str, units: list[Unit]) -> Unit:
    t = Unit("total", label)
    for u in units:
        _merge(t, u)
    return t


def table(name: str, title: str, units: list[Unit], period: Period, filters: dict[str, str],
          columns: list[export.Column] | None = None) -> export.Table:
    return export.Table(name, title, columns or FIG_COLUMNS, [u.row() for u in units],
                        {"期间 Period": period.label, **filters})
