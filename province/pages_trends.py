"""``/trends``: ratings, satisfaction, participation and dissatisfied per day, week (Monday start) or
month, for the user's scope or one hall, one clerk (hall + 工号) or one service item; an ECharts chart
(bars: ratings and dissatisfied; lines: the two rates, with a gap on a day without ratings), the same
figures as a table, and an export.

The chart's data travels in a ``<script type="application/json">`` block that static/charts.js reads:
the CSP allows no inline script.

?grain=day|week|month  &period=... or &from=&to=  &hall=ID  &clerk=工号 (with hall)  &service=N
&format=csv|xlsx
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from countersign.protocol.messages import SERVICE_NAMES_ZH

from .figures import Filter
from .report import service_name
from .trends import GRAIN_NAMES, Bucket, TrendError, bucket_row, trend, trend_table
from .webctx import NotFound, Web
from .webperiod import BadRequest

__all__ = ["chart_data", "routes"]


def _pct(x: float | None) -> float | None:
    return None if x is None else round(x * 100, 1)


def chart_data(buckets: list[Bucket]) -> dict[str, Any]:
    """What charts.js draws: one value per bucket, None where a rate has no ratings (a gap)."""
    return {"labels": [b.key for b in buckets],
            "ratings": [b.figures.ratings for b in buckets],
            "dissatisfied": [b.figures.dissatisfied for b in buckets],
            "satisfaction": [_pct(b.figures.satisfaction_rate) for b in buckets],
            "participation": [_pct(b.figures.participation_rate) for b in buckets]}


def routes(web: Web) -> list[BaseRoute]:
    def page(request: Request) -> Response:
        user = web.user(request)
        period = web.period(request)
        q = request.query_params
        grain = q.get("grain") or "day"
        hall, clerk, service = ((q.get(k) or "").strip() for k in ("hall", "clerk", "service"))
        if any(len(v) > 64 for v in (hall, clerk, service)):
            raise BadRequest("a filter value is at most 64 characters")
        if clerk and not hall:
            raise BadRequest("a clerk is chosen within a hall: give hall= too")
        equals: list[tuple[str, Any]] = []
        subject = []
        if hall:
            equals.append(("hall", hall))
            subject.append(f"营业厅 {hall}")
        if clerk:
            equals.append(("clerk", clerk))
            subject.append(f"工号 {clerk}")
        if service:
            if not service.isascii() or not service.isdigit() or int(service) > 65535:
                raise BadRequest("service must be a service item's number")
            equals.append(("service", int(service)))
            subject.append(f"服务项目 {service_name(int(service))}")
        flt = Filter(user.scope, period.day_from, period.day_to, tuple(equals))
        where, args = user.scope.sql("hall")
        with web.db.connect() as conn:
            if hall and not user.scope.allows_hall(conn, hall):
                raise NotFound(hall)
            try:
                buckets = trend(conn, flt, grain)
            except TrendError as exc:
                raise BadRequest(str(exc)) from exc
            halls = conn.all(f"SELECT hall, name FROM halls WHERE 1 = 1{where} ORDER BY hall", args)
        what = " · ".join(subject) or "全部 Everything in scope"
        t = trend_table(buckets, flt, grain, what)
        t.meta = {"期间 Period": period.label, **t.meta}
        got = web.export(request, t)
        if got is not None:
            return got
        return web.render(request, "trends.html", buckets=buckets, rows=[bucket_row(b) for b in buckets],
                          chart=chart_data(buckets), grain=grain, grains=GRAIN_NAMES, hall=hall, clerk=clerk,
                          service=service, subject=what, halls=halls, period=period,
                          services=sorted((int(k), v) for k, v in SERVICE_NAMES_ZH.items()))

    return [Route("/trends", page, methods=["GET"])]
