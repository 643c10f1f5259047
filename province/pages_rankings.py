"""``/rankings``: halls or clerks ranked by the lower bound of their 95 % Wilson interval, with a minimum
sample (``min``, 30 ratings by default) below which a group is listed apart as 样本不足 too few ratings;
any column sortable (``sort``, ``dir``), any period, the user's scope in the query (rankings.py), and an
export of the ranked and the listed-apart rows with the rule in the file.

?level=hall|clerk  &period=today|week|month or &from=&to=  &min=N  &sort=COLUMN  &dir=asc|desc
&hall=ID (clerks of one hall)  &format=csv|xlsx
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .figures import Filter
from .rankings import DEFAULT_MIN, MAX_MIN, RankingError, ranking, ranking_table, sort_columns
from .webctx import NotFound, Web
from .webperiod import BadRequest

__all__ = ["routes"]


def _int(raw: str | None, name: str, default: int, hi: int) -> int:
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw[:9]) <= hi:
        raise BadRequest(f"{name} must be a number 1..{hi}")
    return int(raw)


def routes(web: Web) -> list[BaseRoute]:
    def page(request: Request) -> Response:
        user = web.user(request)
        period = web.period(request)
        q = request.query_params
        level = q.get("level") or "hall"
        min_ratings = _int(q.get("min"), "min", DEFAULT_MIN, MAX_MIN)
        sort = q.get("sort") or "rank"
        direction = q.get("dir") or ""
        if direction not in ("", "asc", "desc"):
            raise BadRequest("dir must be asc or desc")
        hall = (q.get("hall") or "").strip()
        if len(hall) > 64:
            raise BadRequest("hall is at most 64 characters")
        equals = (("hall", hall),) if hall else ()
        flt = Filter(user.scope, period.day_from, period.day_to, equals)
        with web.db.connect() as conn:
            if hall and not user.scope.allows_hall(conn, hall):
                raise NotFound(hall)
            try:
                r = ranking(conn, level, flt, min_ratings, sort,
                            None if direction == "" else direction == "desc")
            except RankingError as exc:
                raise BadRequest(str(exc)) from exc
            where, args = user.scope.sql("hall")
            names = dict(conn.all(f"SELECT hall, name FROM halls WHERE 1 = 1{where}", args))
        t = ranking_table(r, flt)
        t.meta = {"期间 Period": period.label, **t.meta}
        got = web.export(request, t)
        if got is not None:
            return got
        return web.render(request, "rankings.html", ranking=r, columns=sort_columns(r.level), period=period,
                          level=r.level, min_ratings=min_ratings, sort=r.sort, desc=r.desc, hall=hall,
                          halls=sorted(names.items()))

    return [Route("/rankings", page, methods=["GET"])]
