"""``/fleet``: every keypad in the user's scope with its last status as its hall gateway forwarded it
(seen, online, firmware, reset cause, free heap, outbox depth, RSSI, stuck keys), offline and stale ones
first, registered keypads that never reported, and the halls whose gateway holds a backlog (with how
long its oldest rating has waited). Both tables export (?format=csv|xlsx, &table=backlogs).

?hall=ID  &format=csv|xlsx  &table=keypads|backlogs
"""

from __future__ import annotations

from datetime import datetime

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .fleet import STALE_MS, backlog_row, fleet, fleet_tables, keypad_row
from .webctx import NotFound, Web
from .webperiod import BadRequest

__all__ = ["routes"]


def routes(web: Web) -> list[BaseRoute]:
    def fmt(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, web.tz).strftime("%Y-%m-%d %H:%M:%S")

    def page(request: Request) -> Response:
        user = web.user(request)
        q = request.query_params
        hall = (q.get("hall") or "").strip()
        which = q.get("table") or "keypads"
        if len(hall) > 64:
            raise BadRequest("hall is at most 64 characters")
        if which not in ("keypads", "backlogs"):
            raise BadRequest("table must be keypads or backlogs")
        now = web.now_ms()
        where, args = user.scope.sql("hall")
        with web.db.connect() as conn:
            if hall and not user.scope.allows_hall(conn, hall):
                raise NotFound(hall)
            f = fleet(conn, user.scope, now, hall or None)
            halls = conn.all(f"SELECT hall, name FROM halls WHERE 1 = 1{where} ORDER BY hall", args)
        meta = {"范围 Scope": user.role + (f" {user.scope_value}" if user.scope_value else "")}
        if hall:
            meta["营业厅 Hall"] = hall
        keypads, backlogs = fleet_tables(f, fmt, meta)
        got = web.export(request, keypads if which == "keypads" else backlogs)
        if got is not None:
            return got
        return web.render(request, "fleet.html", keypads=[(k, keypad_row(k, fmt)) for k in f.keypads],
                          backlogs=[backlog_row(b, fmt) for b in f.backlogs], offline=len(f.offline),
                          never=len(f.never_reported), total=len(f.keypads), hall=hall, halls=halls,
                          stale_min=STALE_MS // 60000)

    return [Route("/fleet", page, methods=["GET"])]
