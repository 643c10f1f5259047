"""``/appeals`` (申诉) and ``/flags`` (疑点) of the platform.

/appeals lists the appeals in the user's scope (pending first), each with its rating, reason, evidence
and decision, and the period's dissatisfied ratings not under appeal, each a link to appeal it.
/appeals/rating/{id} is one rating's appeals: a hall manager (or a city or province user in scope) files
one there; a province user upholds or rejects a pending one. /appeals/report puts each hall's figures as
stored and for assessment (without the ratings of upheld appeals) side by side, exportable.

/flags lists the integrity flags (flags.py) in scope, open first by default, each saying why and linking
to its ratings; /flags/{id} shows them all and lets a city or province user dismiss or confirm it. A hall
manager sees their own hall's flags, and reviews none.

Every query is scoped (appeals.py and flags.py take the user's scope): another hall's rating, appeal or
flag is "not found" whatever the URL says. Each change is audited in its transaction.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from . import appeals, export, flags
from .appeals import AppealConflict, AppealError, AppealForbidden, AppealNotFound
from .db import Conn
from .figures import Figures
from .flags import FlagError, FlagForbidden, FlagNotFound
from .ratings_list import dissatisfied_sql, rating_rows
from .scope import User
from .webctx import Forbidden, NotFound, Web
from .webperiod import BadRequest

__all__ = ["routes"]

MAX_LIST = 500
MAX_CANDIDATES = 100
DONE = {"filed": "申诉已提交，待省公司复核 The appeal was filed; the province decides",
        "upheld": "申诉成立：该评价不计入考核，仍保存并可查验 Upheld: the rating is left out of assessment"
                  " figures, and stays stored and verifiable",
        "rejected": "申诉已驳回：该评价照常计入 Rejected: the rating counts as before",
        "dismissed": "疑点已排除 The flag was dismissed", "confirmed": "疑点已确认 The flag was confirmed"}

APPEAL_COLUMNS = (
    export.Column("id", "申诉编号 Appeal", "int"), export.Column("rating", "评价编号 Rating", "int"),
    export.Column("time", "评价时间 Time"), export.Column("hall", "营业厅 Hall"),
    export.Column("window", "窗口 Window"), export.Column("clerk", "工号 Clerk"),
    export.Column("score_name", "评价 Rating"), export.Column("reason", "申诉理由 Reason"),
    export.Column("evidence", "申诉依据 Evidence"), export.Column("filed", "提交 Filed"),
    export.Column("state", "状态 State"), export.Column("decision", "复核意见 Decision"),
    export.Column("decided", "复核 Decided"),
)
REPORT_COLUMNS = (
    export.Column("hall", "营业厅 Hall"), export.Column("name", "名称 Name"),
    export.Column("city", "市 City"), export.Column("ratings", "评价数 Ratings", "int"),
    export.Column("satisfaction", "满意率 Satisfaction", "rate"),
    export.Column("participation", "参评率 Participation", "rate"),
    export.Column("dissatisfied", "不满意 Dissatisfied", "int"),
    export.Column("excluded", "申诉成立剔除 Excluded by upheld appeals", "int"),
    export.Column("a_ratings", "考核评价数 Ratings for assessment", "int"),
    export.Column("a_satisfaction", "考核满意率 Satisfaction for assessment", "rate"),
    export.Column("a_participation", "考核参评率 Participation for assessment", "rate"),
    export.Column("a_dissatisfied", "考核不满意 Dissatisfied for assessment", "int"),
)


def _ratings_by_id(conn: Conn, user: User, ids: list[int], web: Web) -> dict[int, dict[str, Any]]:
    if not ids:
        return {}
    where, args = user.scope.sql("hall")
    where += f" AND id IN ({','.join('?' for _ in ids)})"
    return {r["id"]: r for r in rating_rows(conn, where, [*args, *ids], web.tz, limit=len(ids))}


def _state(request: Request, allowed: dict[str, str], default: str | None) -> str | None:
    raw = request.query_params.get("state", default or "all")
    if raw == "all":
        return None
    if raw not in allowed:
        raise BadRequest(f"state must be all or one of {', '.join(allowed)}")
    return raw


def routes(web: Web) -> list[BaseRoute]:
    def fmt(ms: int | None) -> str:
        return "" if ms is None else datetime.fromtimestamp(ms / 1000, web.tz).strftime("%Y-%m-%d %H:%M:%S")

    def listing(request: Request) -> Response:
        user = web.user(request)
        period = web.period(request)
        state = _state(request, appeals.STATES, None)
        with web.db.connect() as conn:
            items = appeals.listing(conn, user.scope, state, limit=MAX_LIST)
            rows = _ratings_by_id(conn, user, [a.rating for a in items], web)
            where, args = user.scope.sql("hall")
            extra, extra_args = dissatisfied_sql()
            candidates = rating_rows(
                conn, f"{where}{extra} AND day >= ? AND day <= ? AND id NOT IN"
                      " (SELECT rating FROM appeals WHERE state <> 'rejected')",
                [*args, *extra_args, period.day_from, period.day_to], web.tz, limit=MAX_CANDIDATES)
        ctx = {a.id: rows.get(a.rating, {}) for a in items}
        table = export.Table("appeals", "申诉 Appeals", APPEAL_COLUMNS, [
            {"id": a.id, "rating": a.rating, "time": ctx[a.id].get("time", ""), "hall": a.hall,
             "window": ctx[a.id].get("window", ""), "clerk": ctx[a.id].get("clerk", ""),
             "score_name": ctx[a.id].get("score_name", ""), "reason": a.reason_name,
             "evidence": a.evidence, "filed": f"{a.filed_by} {fmt(a.filed_ms)}", "state": a.state_name,
             "decision": a.decision or "", "decided": f"{a.decided_by or ''} {fmt(a.decided_ms)}".strip()}
            for a in items], {"状态 State": appeals.STATES.get(state or "", "全部 All")})
        got = web.export(request, table)
        if got is not None:
            return got
        return web.render(request, "appeals.html", items=items, rows=rows, candidates=candidates,
                          state=state or "all", states=appeals.STATES, period=period,
                          done=DONE.get(request.query_params.get("ok", "")))

    def rating_page(request: Request, user: User, rid: int, *, error: str | None = None,
                    status: int = 200, form: dict[str, str] | None = None) -> Response:
        with web.db.connect() as conn:
            rows = _ratings_by_id(conn, user, [rid], web)
            if rid not in rows:
                raise NotFound(f"no rating #{rid}")
            past = appeals.history(conn, rid)
        standing = next((a for a in past if a.state != "rejected"), None)
        r = rows[rid]
        may_file = standing is None and r["score"] is not None and not r["satisfied"]
        return web.render(request, "appeal_rating.html", status, r=r, past=past, standing=standing,
                          may_file=may_file, reasons=appeals.REASONS, error=error, form=form or {},
                          max_text=appeals.MAX_TEXT, done=DONE.get(request.query_params.get("ok", "")))

    def rating_get(request: Request) -> Response:
        return rating_page(request, web.user(request), int(request.path_params["rating_id"]))

    async def file(request: Request) -> Response:
        user = web.user(request)
        form = await web.form(request)
        rid = int(request.path_params["rating_id"])
        try:
            with web.db.connect() as conn, conn.transaction():
                appeals.file(conn, user, rid, form.get("reason", ""), form.get("evidence", ""), web.now_ms())
        except AppealNotFound as exc:
            raise NotFound(str(exc)) from exc
        except AppealError as exc:
            return rating_page(request, user, rid, error=str(exc),
                               status=409 if isinstance(exc, AppealConflict) else 400, form=form)
        return RedirectResponse(f"/appeals/rating/{rid}?ok=filed", status_code=303)

    async def decide(request: Request) -> Response:
        user = web.require_admin(request)
        form = await web.form(request)
        aid = int(request.path_params["appeal_id"])
        outcome = form.get("outcome", "")
        try:
            with web.db.connect() as conn, conn.transaction():
                a = appeals.decide(conn, user, aid, outcome, form.get("decision", ""), web.now_ms())
        except AppealNotFound as exc:
            raise NotFound(str(exc)) from exc
        except AppealForbidden as exc:
            raise Forbidden(str(exc)) from exc
        except AppealError as exc:
            with web.db.connect() as conn:
                found = appeals.get(conn, user.scope, aid)
            return rating_page(request, user, found.rating, error=str(exc),
                               status=409 if isinstance(exc, AppealConflict) else 400, form=form)
        return RedirectResponse(f"/appeals/rating/{a.rating}?ok={a.state}", status_code=303)

    def report(request: Request) -> Response:
        user = web.user(request)
        period = web.period(request)
        with web.db.connect() as conn:
            halls = appeals.compare(conn, user.scope, period.day_from, period.day_to)
        total = appeals.Compared("total", "合计 Total", "", Figures(), Figures(), 0)
        for c in halls:
            total.stored.add(c.stored)
            total.assessed.add(c.assessed)
        total = dataclasses.replace(total, excluded=sum(c.excluded for c in halls))
        table = export.Table("appeals-report", "申诉剔除前后对比 Figures with and without excluded ratings",
                             REPORT_COLUMNS, [
            {"hall": c.hall, "name": c.name, "city": c.city, "ratings": c.stored.ratings,
             "satisfaction": c.stored.satisfaction_rate, "participation": c.stored.participation_rate,
             "dissatisfied": c.stored.dissatisfied, "excluded": c.excluded, "a_ratings": c.assessed.ratings,
             "a_satisfaction": c.assessed.satisfaction_rate, "a_participation": c.assessed.participation_rate,
             "a_dissatisfied": c.assessed.dissatisfied} for c in [*halls, total]],
                             {"期间 Period": period.label})
        got = web.export(request, table)
        if got is not None:
            return got
        return web.render(request, "appeal_report.html", halls=halls, total=total, period=period)

    def flag_list(request: Request) -> Response:
        user = web.user(request)
        state = _state(request, flags.STATES, "open")
        with web.db.connect() as conn:
            items = flags.listing(conn, user.scope, state, limit=MAX_LIST)
        return web.render(request, "flags.html", items=items, state=state or "all", states=flags.STATES,
                          kinds=flags.KINDS, done=DONE.get(request.query_params.get("ok", "")))

    def flag_page(request: Request, user: User, fid: int, *, error: str | None = None,
                  status: int = 200) -> Response:
        with web.db.connect() as conn:
            try:
                f = flags.get(conn, user.scope, fid)
            except FlagNotFound as exc:
                raise NotFound(str(exc)) from exc
            by_id = _ratings_by_id(conn, user, f.ratings, web)
        items = [by_id[i] for i in f.ratings if i in by_id]
        return web.render(request, "flag.html", status, f=f, items=items, error=error,
                          may_review=user.role != "hall" and f.state == "open", max_note=flags.MAX_NOTE,
                          done=DONE.get(request.query_params.get("ok", "")))

    def flag_get(request: Request) -> Response:
        return flag_page(request, web.user(request), int(request.path_params["flag_id"]))

    async def flag_review(request: Request) -> Response:
        user = web.user(request)
        form = await web.form(request)
        fid = int(request.path_params["flag_id"])
        try:
            with web.db.connect() as conn, conn.transaction():
                f = flags.review(conn, user, fid, form.get("outcome", ""), form.get("note", ""), web.now_ms())
        except FlagNotFound as exc:
            raise NotFound(str(exc)) from exc
        except FlagForbidden as exc:
            raise Forbidden(str(exc)) from exc
        except FlagError as exc:
            return flag_page(request, user, fid, error=str(exc), status=400)
        return RedirectResponse(f"/flags/{fid}?ok={f.state}", status_code=303)

    return [
        Route("/appeals", listing, methods=["GET"]),
        Route("/appeals/report", report, methods=["GET"]),
        Route("/appeals/rating/{rating_id:int}", rating_get, methods=["GET"]),
        Route("/appeals/rating/{rating_id:int}", file, methods=["POST"]),
        Route("/appeals/{appeal_id:int}/decide", decide, methods=["POST"]),
        Route("/flags", flag_list, methods=["GET"]),
        Route("/flags/{flag_id:int}", flag_get, methods=["GET"]),
        Route("/flags/{flag_id:int}/review", flag_review, methods=["POST"]),
    ]
