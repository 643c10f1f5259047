"""The overview ``/``: today, this week and this month for the user's level, and the level below it for
the period chosen (province: cities and halls; city: its halls; hall: its windows). The figures are one
fragment (``/overview/figures``) htmx re-reads every 10 s, so a new rating shows without a reload."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .db import Conn
from .figures import Figures, Filter, figures_by
from .pages_figs import HallInfo, Unit, cities, hall_units, halls, keypads_by, table, total_unit, url_part
from .scope import User
from .webctx import Period, Web
from .webperiod import BadRequest, named_period

__all__ = ["routes"]

REFRESH = "every 10s"
TABLES = ("cities", "halls", "windows", "summary")


def _window_units(conn: Conn, user: User, period: Period) -> list[Unit]:
    hall = user.scope_value or ""
    figs = figures_by(conn, ("window",), Filter(user.scope, period.day_from, period.day_to,
                                                (("hall", hall),)))
    pads = keypads_by(conn, user.scope, "window", hall)
    out = []
    for w in sorted({k[0] for k in figs} | set(pads), key=lambda w: (len(str(w)), str(w))):
        out.append(Unit(str(w), f"窗口 {w}", f"/drill/hall/{url_part(hall)}/window/{url_part(str(w))}",
                        figs.get((w,), Figures()), *pads.get(str(w), (0, 0))))
    return out


def _level(conn: Conn, user: User, period: Period, known: dict[str, HallInfo]) -> dict[str, Any]:
    """The user's own level as one Unit, and the levels below it, for one period."""
    units = hall_units(conn, user.scope, period, known)
    own_label = {"province": "全省 Province", "city": f"{user.scope_value} 市 City",
                 "hall": known[user.scope_value].name if user.scope_value in known else str(user.scope_value)}
    total = total_unit(own_label[user.role], list(units.values()))
    out: dict[str, Any] = {"total": total}
    if user.role == "province":
        out["cities"] = cities(units, known)
    if user.role in ("province", "city"):
        out["halls"] = list(units.values())
    if user.role == "hall":
        out["windows"] = _window_units(conn, user, period)
    return out


def _context(web: Web, request: Request, user: User) -> dict[str, Any]:
    period = web.period(request)
    with web.db.connect() as conn:
        known = halls(conn, user.scope)
        summary = []
        for key in ("today", "week", "month"):
            p = named_period(key, web.now_ms(), web.tz)
            lv = _level(conn, user, p, known)
            unit: Unit = lv["total"]
            unit.label = p.label
            summary.append(unit)
        below = _level(conn, user, period, known)
    return {"summary": summary, "below": below, "period": period, "refresh": REFRESH}


def routes(web: Web) -> list[BaseRoute]:
    def page(request: Request) -> Response:
        user = web.user(request)
        ctx = _context(web, request, user)
        which = request.query_params.get("table", "summary")
        if request.query_params.get("format"):
            if which not in TABLES or (which != "summary" and which not in ctx["below"]):
                raise BadRequest(f"no table {which[:20]!r} on this page")
            units = ctx["summary"] if which == "summary" else ctx["below"][which]
            titles = {"summary": "总览 Overview", "cities": "各市 Cities", "halls": "各营业厅 Halls",
                      "windows": "各窗口 Windows"}
            t = table(f"overview-{which}", titles[which], units, ctx["period"], _filters(user))
            if which == "summary":
                t.meta["期间 Period"] = "今日 / 本周 / 本月 Today / week / month"
            got = web.export(request, t)
            if got is not None:
                return got
        return web.render(request, "overview.html", **ctx)

    def fragment(request: Request) -> Response:
        user = web.user(request)
        return web.render(request, "_overview_figures.html", **_context(web, request, user))

    return [Route("/", page, methods=["GET"]), Route("/overview/figures", fragment, methods=["GET"])]


def _filters(user: User) -> dict[str, str]:
    return {"范围 Scope": user.role + (f" {user.scope_value}" if user.scope_value else "")}
