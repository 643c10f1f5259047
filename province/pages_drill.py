"""The drill-down: province -> city -> hall -> window -> clerk -> the ratings, with figures at each
level, and ``/ratings/{id}``: one rating's chain of custody.

Every level checks the user's scope before it reads anything and answers 404 for a unit that does not
exist and for one that is not the user's alike, so an edited URL learns nothing.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from . import appeals, cases, export
from .custody import custody
from .db import Conn
from .figures import Figures, Filter, figures_by
from .pages_figs import NO_CLERK, Unit, cities, hall_units, halls, keypads_by, table, total_unit, url_part
from .ratings_list import RATING_COLUMNS, rating_rows
from .scope import User
from .webctx import NotFound, Period, Web
from .webperiod import BadRequest

__all__ = ["routes"]

PAGE_SIZE = 50


def _hall_or_404(conn: Conn, user: User, hall: str) -> str:
    if not user.scope.allows_hall(conn, hall):
        raise NotFound(hall)
    if conn.scalar("SELECT 1 FROM halls WHERE hall = ?", (hall,)) is None and \
            conn.scalar("SELECT 1 FROM ratings WHERE hall = ? LIMIT 1", (hall,)) is None:
        raise NotFound(hall)
    name = conn.scalar("SELECT name FROM halls WHERE hall = ?", (hall,))
    return f"{name} ({hall})" if name else hall


def _crumbs(conn: Conn, user: User, hall: str | None = None, window: str | None = None,
            clerk: str | None = None, city: str | None = None) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    if user.role == "province":
        out.append(("全省 Province", "/drill"))
    if hall is not None and city is None:
        city = conn.scalar("SELECT city FROM halls WHERE hall = ?", (hall,))
    if city is not None and user.role in ("province", "city"):
        out.append((f"{city}", f"/drill/city/{url_part(city)}"))
    if hall is not None:
        out.append((f"营业厅 {hall}", f"/drill/hall/{url_part(hall)}"))
    if window is not None and hall is not None:
        out.append((f"窗口 {window}", f"/drill/hall/{url_part(hall)}/window/{url_part(window)}"))
    if clerk is not None:
        out.append((f"工号 {clerk}", None))
    return out


def _page(web: Web, request: Request, user: User, *, title: str, level: str, units: list[Unit],
          total: Unit, crumbs: list[tuple[str, str | None]], period: Period, child: str,
          filters: dict[str, str]) -> Response:
    t = table(f"drill-{level}", title, units, period, {"范围 Scope": user.role, **filters})
    got = web.export(request, t)
    if got is not None:
        return got
    return web.render(request, "drill_level.html", title=title, level=level, units=units, total=total,
                      crumbs=crumbs, child=child, period=period)


def routes(web: Web) -> list[BaseRoute]:
    def province(request: Request) -> Response:
        user = web.user(request)
        if user.role == "city":
            return RedirectResponse(f"/drill/city/{url_part(user.scope_value)}?{request.url.query}", 303)
        if user.role == "hall":
            return RedirectResponse(f"/drill/hall/{url_part(user.scope_value)}?{request.url.query}", 303)
        period = web.period(request)
        with web.db.connect() as conn:
            known = halls(conn, user.scope)
            units = cities(hall_units(conn, user.scope, period, known), known)
        return _page(web, request, user, title="全省各市 Province by city", level="province", units=units,
                     total=total_unit("全省 Province", units), crumbs=[("全省 Province", None)],
                     period=period, child="市 City", filters={})

    def city(request: Request) -> Response:
        user = web.user(request)
        name = unquote(request.path_params["city"])
        if not user.scope.allows_city(name):
            raise NotFound(name)
        period = web.period(request)
        with web.db.connect() as conn:
            known = {h: i for h, i in halls(conn, user.scope).items() if i.city == name}
            if not known:
                raise NotFound(name)
            units = [u for h, u in hall_units(conn, user.scope, period, known).items() if h in known]
            crumbs = _crumbs(conn, user, city=name)
        return _page(web, request, user, title=f"{name} 各营业厅 Halls", level="city", units=units,
                     total=total_unit(name, units), crumbs=crumbs, period=period, child="营业厅 Hall",
                     filters={"市 City": name})

    def hall(request: Request) -> Response:
        user = web.user(request)
        hall_id = unquote(request.path_params["hall"])
        period = web.period(request)
        with web.db.connect() as conn:
            label = _hall_or_404(conn, user, hall_id)
            figs = figures_by(conn, ("window",), Filter(user.scope, period.day_from, period.day_to,
                                                        (("hall", hall_id),)))
            pads = keypads_by(conn, user.scope, "window", hall_id)
            units = [Unit(str(w), f"窗口 {w}", f"/drill/hall/{url_part(hall_id)}/window/{url_part(str(w))}",
                          figs.get((w,), Figures()), *pads.get(str(w), (0, 0)))
                     for w in sorted({str(k[0]) for k in figs} | set(pads), key=lambda w: (len(w), w))]
            crumbs = _crumbs(conn, user, hall=hall_id)
        return _page(web, request, user, title=f"{label} 各窗口 Windows", level="hall", units=units,
                     total=total_unit(label, units), crumbs=crumbs, period=period, child="窗口 Window",
                     filters={"营业厅 Hall": hall_id})

    def window(request: Request) -> Response:
        user = web.user(request)
        hall_id, win = unquote(request.path_params["hall"]), unquote(request.path_params["window"])
        period = web.period(request)
        with web.db.connect() as conn:
            label = _hall_or_404(conn, user, hall_id)
            base = (("hall", hall_id), ("window", win))
            if conn.scalar('SELECT 1 FROM ratings WHERE hall = ? AND "window" = ? LIMIT 1', (hall_id, win)) \
                    is None and conn.scalar('SELECT 1 FROM devices WHERE hall = ? AND "window" = ?',
                                            (hall_id, win)) is None:
                raise NotFound(win)
            figs = figures_by(conn, ("clerk",), Filter(user.scope, period.day_from, period.day_to, base))
            units = [Unit(NO_CLERK if k[0] is None else str(k[0]),
                          "(无工号 no clerk)" if k[0] is None else f"工号 {k[0]}",
                          f"/drill/hall/{url_part(hall_id)}/window/{url_part(win)}/clerk/{url_part(k[0])}", f)
                     for k, f in sorted(figs.items(), key=lambda kv: str(kv[0][0]))]
            crumbs = _crumbs(conn, user, hall=hall_id, window=win)
        return _page(web, request, user, title=f"{label} 窗口 {win} 各工号 Clerks", level="window",
                     units=units, total=total_unit(f"窗口 {win}", units), crumbs=crumbs, period=period,
                     child="工号 Clerk", filters={"营业厅 Hall": hall_id, "窗口 Window": win})

    def clerk(request: Request) -> Response:
        user = web.user(request)
        hall_id, win = unquote(request.path_params["hall"]), unquote(request.path_params["window"])
        raw = unquote(request.path_params["clerk"])
        clerk_id = None if raw == NO_CLERK else raw
        period = web.period(request)
        page = _page_number(request)
        every = bool(request.query_params.get("format"))
        with web.db.connect() as conn:
            _hall_or_404(conn, user, hall_id)
            base = (("hall", hall_id), ("window", win), ("clerk", clerk_id))
            flt = Filter(user.scope, period.day_from, period.day_to, base)
            where, args = flt.sql()
            if conn.scalar(f"SELECT 1 FROM ratings WHERE 1 = 1{where} LIMIT 1", args) is None and \
                    conn.scalar('SELECT 1 FROM ratings WHERE hall = ? AND "window" = ? AND '
                                + ("clerk IS NULL" if clerk_id is None else "clerk = ?") + " LIMIT 1",
                                (hall_id, win) + (() if clerk_id is None else (clerk_id,))) is None:
                raise NotFound(raw)
            fig = figures_by(conn, (), flt).get((), Figures())
            total_n = int(conn.scalar(f"SELECT COUNT(*) FROM ratings WHERE 1 = 1{where}", args))
            items = rating_rows(conn, where, args, web.tz, limit=100_000 if every else PAGE_SIZE,
                                offset=0 if every else (page - 1) * PAGE_SIZE)
            crumbs = _crumbs(conn, user, hall=hall_id, window=win, clerk=raw)
        title = f"营业厅 {hall_id} 窗口 {win} 工号 {raw} 的评价 Ratings"
        t = export.Table("drill-ratings", title, RATING_COLUMNS, items,
                         {"期间 Period": period.label, **flt.describe()})
        got = web.export(request, t)
        if got is not None:
            return got
        return web.render(request, "drill_ratings.html", title=title, items=items, crumbs=crumbs,
                          total=Unit("total", title, None, fig), period=period, page=page,
                          pages=max(1, -(-total_n // PAGE_SIZE)), count=total_n)

    def rating(request: Request) -> Response:
        user = web.user(request)
        rid = request.path_params["rating_id"]
        with web.db.connect() as conn:
            where, args = user.scope.sql("hall")
            found = conn.scalar(f"SELECT id FROM ratings WHERE id = ?{where}", [rid, *args])
            if found is None:
                raise NotFound(str(rid))
            chain: dict[str, Any] = custody(conn, int(found), web.tz)
            crumbs = _crumbs(conn, user, hall=chain["hall"], window=chain["window"])
            appeal = appeals.appeal_of(conn, int(found))
            case = cases.case_of_rating(conn, int(found))
        return web.render(request, "rating.html", c=chain, crumbs=crumbs, appeal=appeal, case=case)

    return [
        Route("/drill", province, methods=["GET"]),
        Route("/drill/city/{city}", city, methods=["GET"]),
        Route("/drill/hall/{hall}", hall, methods=["GET"]),
        Route("/drill/hall/{hall}/window/{window}", window, methods=["GET"]),
        Route("/drill/hall/{hall}/window/{window}/clerk/{clerk}", clerk, methods=["GET"]),
        Route("/ratings/{rating_id:int}", rating, methods=["GET"]),
    ]


def _page_number(request: Request) -> int:
    raw = request.query_params.get("page", "1")
    if not raw.isdigit() or not 1 <= int(raw) <= 1_000_000:
        raise BadRequest("page must be a positive number")
    return int(raw)
