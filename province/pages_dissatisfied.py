"""``/dissatisfied``: every rating that is not satisfied, with its context, filterable by period, city,
hall, clerk, service item and score, newest first, paginated, each linking to its chain of custody; the
list the next issue's cases are opened from. The user's scope is in every query: a hall user filtering
on another hall gets an empty list, never that hall's rows."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from countersign.protocol.messages import SCORE_NAMES_ZH, SERVICE_NAMES_ZH

from . import export
from .figures import Filter
from .pages_figs import halls
from .ratings_list import RATING_COLUMNS, dissatisfied_pairs, dissatisfied_sql, rating_rows
from .webctx import Web
from .webperiod import BadRequest

__all__ = ["routes"]

PAGE_SIZE = 50
MAX_EXPORT = 100_000


def _score_names() -> list[str]:
    return sorted({SCORE_NAMES_ZH[scale][score] for scale, score in dissatisfied_pairs()})


def routes(web: Web) -> list[BaseRoute]:
    def page(request: Request) -> Response:
        user = web.user(request)
        period = web.period(request)
        q = request.query_params
        raw_page = q.get("page", "1")
        if not raw_page.isdigit() or not 1 <= int(raw_page) <= 1_000_000:
            raise BadRequest("page must be a positive number")
        page_no = int(raw_page)
        chosen = {k: q.get(k, "").strip() for k in ("city", "hall", "clerk", "service", "score")}
        if any(len(v) > 64 for v in chosen.values()):
            raise BadRequest("a filter value is at most 64 characters")
        equals: list[tuple[str, Any]] = []
        if chosen["hall"]:
            equals.append(("hall", chosen["hall"]))
        if chosen["clerk"]:
            equals.append(("clerk", chosen["clerk"]))
        if chosen["service"]:
            if not chosen["service"].isdigit():
                raise BadRequest("service must be a service item's number")
            equals.append(("service", int(chosen["service"])))
        pairs = dissatisfied_pairs()
        if chosen["score"]:
            pairs = [(sc, s) for sc, s in pairs if SCORE_NAMES_ZH[sc][s] == chosen["score"]]
            if not pairs:
                raise BadRequest(f"{chosen['score'][:20]!r} is not a dissatisfied score")
        flt = Filter(user.scope, period.day_from, period.day_to, tuple(equals))
        where, args = flt.sql()
        extra, extra_args = dissatisfied_sql(pairs)
        where, args = where + extra, args + extra_args
        if chosen["city"]:
            where += " AND hall IN (SELECT hall FROM halls WHERE city = ?)"
            args.append(chosen["city"])
        every = bool(q.get("format"))
        with web.db.connect() as conn:
            total = int(conn.scalar(f"SELECT COUNT(*) FROM ratings WHERE 1 = 1{where}", args))
            items = rating_rows(conn, where, args, web.tz, limit=MAX_EXPORT if every else PAGE_SIZE,
                                offset=0 if every else (page_no - 1) * PAGE_SIZE)
            known = halls(conn, user.scope)
        described = {"期间 Period": period.label, **flt.describe(),
                     **{f"筛选 {k}": v for k, v in chosen.items() if v}}
        t = export.Table("dissatisfied", "不满意评价 Dissatisfied ratings", RATING_COLUMNS, items, described)
        got = web.export(request, t)
        if got is not None:
            return got
        return web.render(request, "dissatisfied.html", items=items, total=total, page=page_no,
                          pages=max(1, -(-total // PAGE_SIZE)), chosen=chosen, period=period,
                          cities=sorted({h.city for h in known.values()}),
                          halls=sorted(known.values(), key=lambda h: (h.city, h.hall)),
                          services=sorted((int(k), v) for k, v in SERVICE_NAMES_ZH.items()),
                          scores=_score_names())

    return [Route("/dissatisfied", page, methods=["GET"])]
