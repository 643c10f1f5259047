"""``/cases`` (整改工单): the list of the user's scope, each case's page with its rating, history and the
forms the user's role may use now, and ``/cases/new`` (opened by hand, city or province).

The list filters by state, overdue (not closed, past the deadline: ``?overdue=1``, the escalation list of
a city or the province), city, hall and the period the case was opened in (only when a period is asked
for: an old case still open must not fall out of a hall manager's default list); newest first,
paginated, exportable. Every query goes through cases.py with the user's scope: another hall's case is
404 whatever the URL says, a hall manager's review is 403. Each change is cases.py's, audited in its
transaction; a refused one answers 400 (409 for the wrong state) with the reason on the case's page.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from . import cases, export, workdays
from .cases import Case, CaseConflict, CaseError, CaseForbidden, CaseNotFound
from .pages_figs import halls
from .period import day_of
from .ratings_list import rating_rows
from .scope import User
from .webctx import Forbidden, NotFound, Web
from .webperiod import BadRequest

__all__ = ["CASE_COLUMNS", "routes"]

PAGE_SIZE = 50
MAX_EXPORT = 100_000
DONE = {"opened": "工单已开立 The case was opened", "callback": "回访已记录 The call-back was recorded",
        "analysis": "原因分析与整改措施已保存 The cause and measures were saved",
        "submitted": "已提交复核 Submitted for review",
        "accepted": "复核通过，工单已关闭 Accepted: the case is closed",
        "returned": "已退回整改 Returned to the hall"}

CASE_COLUMNS = (
    export.Column("id", "工单编号 Case", "int"), export.Column("opened", "开立时间 Opened"),
    export.Column("hall", "营业厅 Hall"), export.Column("title", "事由 Title"),
    export.Column("source", "来源 Source"), export.Column("rating", "评价编号 Rating", "int"),
    export.Column("state", "状态 State"), export.Column("deadline", "整改期限 Deadline"),
    export.Column("overdue", "逾期 Overdue"), export.Column("callback", "回访 Call-back"),
    export.Column("cause", "原因分析 Cause"), export.Column("measures", "整改措施 Measures"),
    export.Column("closed", "关闭时间 Closed"), export.Column("on_time", "按期 On time"),
)
SOURCES = {"rating": "不满意评价 Rating", "manual": "人工 Manual"}


def _case_id(request: Request) -> int:
    raw = str(request.path_params.get("case_id", ""))
    if not raw.isdigit() or len(raw) > 12:
        raise NotFound("no such case")
    return int(raw)


def routes(web: Web) -> list[BaseRoute]:
    def fmt(ms: int | None) -> str:
        return "" if ms is None else datetime.fromtimestamp(ms / 1000, web.tz).strftime("%Y-%m-%d %H:%M")

    def today() -> str:
        return day_of(web.now_ms(), web.tz)

    def day_ms(day: date) -> int:
        return int(datetime(day.year, day.month, day.day, tzinfo=web.tz).timestamp() * 1000)

    def row(c: Case, now_day: str) -> dict[str, Any]:
        overdue = c.overdue_ms is not None or c.overdue_on(now_day)
        return {"id": c.id, "opened": fmt(c.opened_ms), "hall": c.hall, "title": c.title,
                "source": SOURCES.get(c.source, c.source), "rating": c.rating, "state": c.state_name,
                "state_key": c.state, "deadline": c.deadline,
                "overdue": ("逾期 Overdue" if overdue and c.open else
                            "逾期关闭 Closed late" if c.on_time is False else ""),
                "callback": "" if c.callback_ms is None else f"{fmt(c.callback_ms)} {c.callback_by}: "
                                                             f"{c.callback_outcome}",
                "cause": c.cause or "", "measures": c.measures or "", "closed": fmt(c.closed_ms),
                "on_time": "" if c.on_time is None else ("是 Yes" if c.on_time else "否 No"),
                "href": f"/cases/{c.id}"}

    def listing(request: Request) -> Response:
        user = web.user(request)
        q = request.query_params
        raw_page = q.get("page", "1")
        if not raw_page.isdigit() or not 1 <= int(raw_page) <= 1_000_000:
            raise BadRequest("page must be a positive number")
        page_no = int(raw_page)
        chosen = {k: q.get(k, "").strip() for k in ("state", "city", "hall", "overdue")}
        if any(len(v) > 64 for v in chosen.values()):
            raise BadRequest("a filter value is at most 64 characters")
        if chosen["state"] and chosen["state"] not in cases.STATES:
            raise BadRequest(f"state must be one of {', '.join(cases.STATES)}")
        if chosen["overdue"] not in ("", "0", "1"):
            raise BadRequest("overdue must be 1 or 0")
        period = web.period(request)
        # The period applies only when asked for: a case still open from last month stays in the list.
        by_period = any(k in q for k in ("period", "from", "to"))
        now_day = today()
        query = cases.Query(
            state=chosen["state"] or None, overdue=chosen["overdue"] == "1", hall=chosen["hall"] or None,
            city=chosen["city"] or None,
            from_ms=day_ms(date.fromisoformat(period.day_from)) if by_period else None,
            to_ms=day_ms(date.fromisoformat(period.day_to) + timedelta(days=1)) if by_period else None,
            today=now_day)
        every = bool(q.get("format"))
        with web.db.connect() as conn:
            total, found = cases.listing(conn, user.scope, query, limit=MAX_EXPORT if every else PAGE_SIZE,
                                         offset=0 if every else (page_no - 1) * PAGE_SIZE)
            known = halls(conn, user.scope)
            summary = cases.counts(conn, user.scope, now_day)
        items = [row(c, now_day) for c in found]
        described = {"期间 Period": period.label if by_period else "全部 All",
                     **{f"筛选 {k}": v for k, v in chosen.items() if v}}
        if user.scope.value is not None:
            described["范围 Scope"] = user.scope.value
        t = export.Table("cases", "整改工单 Cases", CASE_COLUMNS, items, described)
        got = web.export(request, t)
        if got is not None:
            return got
        return web.render(request, "cases.html", items=items, total=total, page=page_no,
                          pages=max(1, -(-total // PAGE_SIZE)), chosen=chosen, period=period,
                          by_period=by_period, states=cases.STATES, summary=summary,
                          cities=sorted({h.city for h in known.values()}),
                          halls=sorted(known.values(), key=lambda h: (h.city, h.hall)),
                          done=DONE.get(q.get("ok", "")))

    def case_page(request: Request, user: User, cid: int, *, error: str | None = None, status: int = 200,
                  form: dict[str, str] | None = None) -> Response:
        with web.db.connect() as conn:
            try:
                c = cases.get(conn, user.scope, cid)
            except CaseNotFound as exc:
                raise NotFound(str(exc)) from exc
            history = cases.events(conn, cid)
            rating = None
            if c.rating is not None:
                where, args = user.scope.sql("hall")
                got = rating_rows(conn, f"{where} AND id = ?", [*args, c.rating], web.tz, limit=1)
                rating = got[0] if got else None
            hall = halls(conn, user.scope).get(c.hall)
        now_day = today()
        hall_may = c.state in ("notified", "rectifying")
        return web.render(
            request, "case.html", status, c=c, rating=rating, history=history, hall=hall, error=error,
            form=form or {}, may_rectify=hall_may, may_submit=hall_may,
            may_review=user.role != "hall" and c.state == "review",
            overdue=c.overdue_ms is not None or c.overdue_on(now_day), max_text=cases.MAX_TEXT,
            now_local=datetime.fromtimestamp(web.now_ms() / 1000, web.tz).strftime("%Y-%m-%dT%H:%M"),
            done=DONE.get(request.query_params.get("ok", "")))

    def case_get(request: Request) -> Response:
        return case_page(request, web.user(request), _case_id(request))

    async def act(request: Request, action: str) -> Response:
        user = web.user(request)
        form = await web.form(request)
        cid = _case_id(request)
        now = web.now_ms()
        try:
            with web.db.connect() as conn, conn.transaction():
                if action == "callback":
                    raw = form.get("callback_at", "").strip()
                    try:
                        at = datetime.fromisoformat(raw)
                    except ValueError as exc:
                        raise CaseError("the call-back time must be a date and time (YYYY-MM-DDTHH:MM)") \
                            from exc
                    if at.tzinfo is None:
                        at = at.replace(tzinfo=web.tz)
                    cases.record_callback(conn, user, cid, int(at.timestamp() * 1000),
                                          form.get("outcome", ""), now, web.tz)
                elif action == "analysis":
                    cases.record_analysis(conn, user, cid, form.get("cause", ""), form.get("measures", ""),
                                          now)
                elif action == "submitted":
                    cases.submit(conn, user, cid, now)
                else:
                    outcome = form.get("outcome", "")
                    if outcome == "accept":
                        action = "accepted"
                        cases.accept(conn, user, cid, form.get("note", ""), now, web.tz)
                    elif outcome == "return":
                        action = "returned"
                        cases.return_case(conn, user, cid, form.get("note", ""), now)
                    else:
                        raise CaseError("outcome must be accept or return")
        except CaseNotFound as exc:
            raise NotFound(str(exc)) from exc
        except CaseForbidden as exc:
            raise Forbidden(str(exc)) from exc
        except CaseError as exc:
            return case_page(request, user, cid, error=str(exc),
                             status=409 if isinstance(exc, CaseConflict) else 400, form=form)
        return RedirectResponse(f"/cases/{cid}?ok={action}", status_code=303)

    async def callback(request: Request) -> Response:
        return await act(request, "callback")

    async def analysis(request: Request) -> Response:
        return await act(request, "analysis")

    async def submit(request: Request) -> Response:
        return await act(request, "submitted")

    async def review(request: Request) -> Response:
        return await act(request, "review")

    def new_page(request: Request, user: User, *, error: str | None = None, status: int = 200,
                 form: dict[str, str] | None = None) -> Response:
        if user.role == "hall":
            raise Forbidden("only a city or province user opens a case by hand")
        with web.db.connect() as conn:
            known = halls(conn, user.scope)
        return web.render(request, "case_new.html", status, halls=sorted(known.values(),
                                                                          key=lambda h: (h.city, h.hall)),
                          error=error, form=form or {}, max_text=cases.MAX_TEXT, max_title=cases.MAX_TITLE)

    def new_get(request: Request) -> Response:
        return new_page(request, web.user(request))

    async def new_post(request: Request) -> Response:
        user = web.user(request)
        form = await web.form(request)
        if user.role == "hall":
            raise Forbidden("only a city or province user opens a case by hand")
        try:
            with web.db.connect() as conn, conn.transaction():
                c = cases.open_manual(conn, user, form.get("hall", ""), form.get("title", ""),
                                      form.get("detail", ""), web.now_ms(), web.tz, workdays.load(conn))
        except CaseForbidden as exc:
            raise Forbidden(str(exc)) from exc
        except CaseError as exc:
            return new_page(request, user, error=str(exc), status=400, form=form)
        return RedirectResponse(f"/cases/{c.id}?ok=opened", status_code=303)

    return [
        Route("/cases", listing, methods=["GET"]),
        Route("/cases/new", new_get, methods=["GET"]),
        Route("/cases/new", new_post, methods=["POST"]),
        Route("/cases/{case_id:int}", case_get, methods=["GET"]),
        Route("/cases/{case_id:int}/callback", callback, methods=["POST"]),
        Route("/cases/{case_id:int}/analysis", analysis, methods=["POST"]),
        Route("/cases/{case_id:int}/submit", submit, methods=["POST"]),
        Route("/cases/{case_id:int}/review", review, methods=["POST"]),
    ]
