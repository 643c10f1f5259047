"""``/alerts``: the platform's own inbox of alerts, the always-on channel (whatever apprise delivers or
not): the open and acknowledged alerts of the user's scope, newest first, refreshed by htmx, the count
not yet acknowledged, and an acknowledge button (who and when, audited). ``?state=cleared`` lists the
cleared ones.

Administrators (province users) also edit the alert rules (``/alerts/rules``), each hall's business hours
and the working-day calendar's corrections (``/alerts/hours``). Every change is a form POST with the
session's CSRF token, checked (a bad value: 400 with the reason, nothing changed) and written with its
audit row in one transaction.
"""

from __future__ import annotations

import datetime as dt
import re
import urllib.parse
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from . import alerts, hours, workdays
from .export import Column, Table
from .scope import User
from .webctx import NotFound, Web
from .webperiod import BadRequest

__all__ = ["routes"]

REFRESH = "every 15s"
_BACK = re.compile(r"[A-Za-z0-9=&%_.-]{0,200}")
STATES = {"open": "未关闭 Open", "cleared": "已恢复 Cleared"}


def _table(items: list[alerts.Alert], web: Web, ctx: dict[str, Any]) -> Table:
    def fmt(ms: int | None) -> str | None:
        return None if ms is None else hours.local(ms, web.tz).strftime("%Y-%m-%d %H:%M:%S")

    cols = [Column("id", "编号 Alert"), Column("kind", "类型 Kind"), Column("hall", "营业厅 Hall"),
            Column("device", "评价器 Keypad"), Column("state", "状态 State"), Column("level", "级别 Level"),
            Column("raised", "产生 Raised"), Column("acked_by", "确认人 Acknowledged by"),
            Column("acked", "确认 Acknowledged"), Column("cleared", "恢复 Cleared"),
            Column("rating", "评价 Rating"), Column("case", "工单 Case"), Column("detail", "说明 Detail")]
    rows = [{"id": a.id, "kind": a.kind_zh, "hall": f"{a.hall_name} ({a.hall})", "device": a.device,
             "state": a.state, "level": a.level_zh, "raised": fmt(a.raised_ms), "acked_by": a.acked_by,
             "acked": fmt(a.acked_ms), "cleared": fmt(a.cleared_ms), "rating": a.rating, "case": a.case,
             "detail": a.detail} for a in items]
    meta = {"状态 State": STATES[ctx["state"]]}
    if ctx["hall"]:
        meta["营业厅 Hall"] = ctx["hall"]
    if ctx["kind"]:
        meta["类型 Kind"] = alerts.KIND_ZH[ctx["kind"]]
    return Table("alerts", "告警 Alerts", cols, rows, meta)


def routes(web: Web) -> list[BaseRoute]:
    def inbox_context(request: Request, user: User) -> dict[str, Any]:
        q = request.query_params
        state = q.get("state") or "open"
        hall = (q.get("hall") or "").strip() or None
        kind = q.get("kind") or None
        if state not in STATES:
            raise BadRequest("state must be open or cleared")
        if kind is not None and kind not in alerts.KIND_ZH:
            raise BadRequest(f"kind must be one of {', '.join(alerts.KINDS)}")
        if hall is not None and len(hall) > 64:
            raise BadRequest("hall is at most 64 characters")
        where, args = user.scope.sql("hall")
        with web.db.connect() as conn:
            if hall is not None and not user.scope.allows_hall(conn, hall):
                raise NotFound(hall)
            items = alerts.inbox(conn, user.scope, cleared=state == "cleared", hall=hall, kind=kind)
            unacked = alerts.unacked(conn, user.scope)
            halls = conn.all(f"SELECT hall, name FROM halls WHERE 1 = 1{where} ORDER BY hall", args)
        query = "&".join(f"{k}={v}" for k, v in (("state", state), ("hall", hall), ("kind", kind)) if v)
        return {"items": items, "unacked": unacked, "state": state, "states": STATES, "refresh": REFRESH,
                "hall": hall, "kind": kind, "halls": halls, "kinds": alerts.KIND_ZH,
                "query": urllib.parse.quote(query, safe="=&")}

    def page(request: Request, status: int = 200, error: str | None = None) -> Response:
        user = web.user(request)
        ctx = inbox_context(request, user)
        got = web.export(request, _table(ctx["items"], web, ctx))
        if got is not None:
            return got
        return web.render(request, "alerts.html", status, error=error, **ctx)

    def fragment(request: Request) -> Response:
        user = web.user(request)
        return web.render(request, "alerts_list.html", **inbox_context(request, user))

    async def ack(request: Request) -> Response:
        user = web.user(request)
        form = await web.form(request)             # the CSRF check, before anything changes
        alert_id = int(request.path_params["alert_id"])
        # Back to the list as it was filtered; only a query string of our own shape (never a URL elsewhere).
        back = form.get("back", "")
        to = "/alerts" + (f"?{back}" if _BACK.fullmatch(back) else "")

        def do() -> None:
            with web.db.connect() as conn, conn.transaction():
                alerts.ack(conn, user.scope, alert_id, user.username, web.now_ms())

        try:
            await run_in_threadpool(do)
        except LookupError:
            raise NotFound(str(alert_id)) from None
        except alerts.AlertError as exc:
            return await run_in_threadpool(page, request, 400, str(exc))
        return RedirectResponse(to, 303)

    # --- rules ----------------------------------------------------------------------------------------------

    def rules_page(request: Request, status: int = 200, error: str | None = None,
                   failed: str | None = None, form: dict[str, str] | None = None) -> Response:
        web.require_admin(request)
        with web.db.connect() as conn:
            rs = alerts.rules(conn)
        return web.render(request, "alerts_rules.html", status, rules=[rs[k] for k in alerts.KINDS],
                          params=alerts.PARAMS, kind_zh=alerts.KIND_ZH, error=error, failed=failed,
                          form=form or {})

    async def set_rule(request: Request) -> Response:
        admin = web.require_admin(request)
        form = await web.form(request)
        kind = request.path_params["kind"]
        if kind not in alerts.PARAMS:
            raise NotFound(kind)
        params = {k.removeprefix("p_"): v for k, v in form.items() if k.startswith("p_")}
        try:
            rule = alerts.check_rule(kind, form.get("enabled") == "1", params, form.get("escalate_s", ""))
        except alerts.AlertError as exc:
            return await run_in_threadpool(rules_page, request, 400, str(exc), kind, form)

        def do() -> None:
            with web.db.connect() as conn, conn.transaction():
                alerts.set_rule(conn, rule, admin.username, web.now_ms())

        await run_in_threadpool(do)
        return RedirectResponse("/alerts/rules", 303)

    # --- business hours and the calendar --------------------------------------------------------------------

    def hours_page(request: Request, status: int = 200, error: str | None = None) -> Response:
        web.require_admin(request)
        year = hours.local(web.now_ms(), web.tz).year
        with web.db.connect() as conn:
            halls = [(str(h), str(n), str(c), hours.for_hall(conn, str(h)),
                      conn.scalar("SELECT 1 FROM hall_hours WHERE hall = ?", (h,)) is not None)
                     for h, n, c in conn.all("SELECT hall, name, city FROM halls ORDER BY city, hall")]
            days = conn.all("SELECT day, workday, name, changed_ms, changed_by FROM calendar_days"
                            " ORDER BY day")
            unknown = workdays.load(conn).unknown_years(range(year, year + 2))
        return web.render(request, "alerts_hours.html", status, halls=halls, days=days, unknown=unknown,
                          default=hours.DEFAULT, error=error)

    async def set_hours(request: Request) -> Response:
        admin = web.require_admin(request)
        form = await web.form(request)
        hall = request.path_params["hall"]
        try:
            h = hours.Hours.parse(form.get("days", "").strip(), form.get("open", "").strip(),
                                  form.get("close", "").strip())
        except ValueError as exc:
            return await run_in_threadpool(hours_page, request, 400, f"{hall}: {exc}")

        def do() -> bool:
            with web.db.connect() as conn, conn.transaction():
                if conn.scalar("SELECT 1 FROM halls WHERE hall = ?", (hall,)) is None:
                    return False
                hours.set_hours(conn, hall, h, admin.username, web.now_ms())
                return True

        if not await run_in_threadpool(do):
            raise NotFound(hall)
        return RedirectResponse("/alerts/hours", 303)

    async def set_day(request: Request) -> Response:
        admin = web.require_admin(request)
        form = await web.form(request)
        workday = form.get("workday", "")
        if workday not in ("0", "1"):
            return await run_in_threadpool(hours_page, request, 400,
                                           "choose 工作日 (a working day) or 休息日 (a holiday)")

        def do() -> None:
            with web.db.connect() as conn, conn.transaction():
                alerts.set_calendar_day(conn, form.get("day", ""), workday == "1", form.get("name", ""),
                                        admin.username, web.now_ms())

        try:
            await run_in_threadpool(do)
        except alerts.AlertError as exc:
            return await run_in_threadpool(hours_page, request, 400, str(exc))
        return RedirectResponse("/alerts/hours", 303)

    async def remove_day(request: Request) -> Response:
        admin = web.require_admin(request)
        await web.form(request)
        day = request.path_params["day"]
        try:
            dt.date.fromisoformat(day)
        except ValueError:
            raise NotFound(day) from None

        def do() -> None:
            with web.db.connect() as conn, conn.transaction():
                alerts.remove_calendar_day(conn, day, admin.username, web.now_ms())

        try:
            await run_in_threadpool(do)
        except alerts.AlertError:
            raise NotFound(day) from None
        return RedirectResponse("/alerts/hours", 303)

    return [Route("/alerts", page, methods=["GET"]),
            Route("/alerts/list", fragment, methods=["GET"]),
            Route("/alerts/{alert_id:int}/ack", ack, methods=["POST"]),
            Route("/alerts/rules", rules_page, methods=["GET"]),
            Route("/alerts/rules/{kind}", set_rule, methods=["POST"]),
            Route("/alerts/hours", hours_page, methods=["GET"]),
            Route("/alerts/hours/{hall}", set_hours, methods=["POST"]),
            Route("/alerts/calendar", set_day, methods=["POST"]),
            Route("/alerts/calendar/{day}/remove", remove_day, methods=["POST"])]
