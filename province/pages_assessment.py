"""``/assessment``: 考核 monthly scores per hall or clerk (assessment.py) with every figure a score came
from, exported as CSV/Excel; ``/assessment/weights``: the weights' versions, a new one made by a province
user (validated, audited); ``/assessment/bulletin.pdf`` and ``.xlsx``: the monthly 通报 of a city or of the
province (bulletin.py).

?month=YYYY-MM (default this month)  &level=hall|clerk  &version=N (default the newest)  &city=NAME
&format=csv|xlsx

Scope: every figure is the user's scope's (scope.py). A city may be chosen within it; another city is
404, as a hall that is not the user's is everywhere. The bulletin is a city's or the province's: a hall
manager sees their own hall's scores on /assessment, but gets no bulletin (403).
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from . import assessment, bulletin
from .assessment import PART_NAMES, PARTS, AssessmentError, Month, Weights
from .db import Conn
from .period import day_of
from .scope import Scope, User
from .webctx import Forbidden, NotFound, Web
from .webperiod import BadRequest

__all__ = ["routes"]


def routes(web: Web) -> list[BaseRoute]:
    def month_of(request: Request) -> Month:
        raw = request.query_params.get("month") or day_of(web.now_ms(), web.tz)[:7]
        try:
            return assessment.parse_month(raw, web.tz)
        except AssessmentError as exc:
            raise BadRequest(str(exc)) from exc

    def weights_of(conn: Conn, request: Request) -> Weights:
        raw = request.query_params.get("version") or ""
        if raw and (not raw.isascii() or not raw.isdigit() or len(raw) > 9):
            raise BadRequest("version must be a weights version's number")
        try:
            return assessment.version(conn, int(raw) if raw else None)
        except AssessmentError as exc:
            raise BadRequest(str(exc)) from exc

    def scope_of(conn: Conn, user: User, city: str) -> tuple[Scope, str]:
        """The user's scope, or one city of it; a city not theirs (or not existing) is 404."""
        if len(city) > 64:
            raise BadRequest("city is at most 64 characters")
        if not city:
            if user.role == "province":
                return user.scope, "全省 Province"
            if user.role == "city":
                return user.scope, f"{user.scope_value} 市 City"
            name = conn.scalar("SELECT name FROM halls WHERE hall = ?", (user.scope_value,))
            return user.scope, f"{name or user.scope_value} ({user.scope_value})"
        if (user.role == "hall" or not user.scope.allows_city(city)
                or conn.scalar("SELECT 1 FROM halls WHERE city = ?", (city,)) is None):
            raise NotFound(city)
        return Scope("city", city), f"{city} 市 City"

    def page(request: Request) -> Response:
        user = web.user(request)
        q = request.query_params
        month = month_of(request)
        level = q.get("level") or "hall"
        if level not in ("hall", "clerk"):
            raise BadRequest("level must be hall or clerk")
        city = (q.get("city") or "").strip()
        with web.db.connect() as conn:
            scope, label = scope_of(conn, user, city)
            w = weights_of(conn, request)
            a = assessment.assess(conn, month, scope, level, w)
            all_versions = assessment.versions(conn)
            where, args = user.scope.sql("hall")
            cities = [str(r[0]) for r in conn.all(
                f"SELECT DISTINCT city FROM halls WHERE 1 = 1{where} ORDER BY city", args)]
        t = assessment.score_table(a)
        t.meta = {"范围 Scope": label, **t.meta}
        got = web.export(request, t)
        if got is not None:
            return got
        return web.render(request, "assessment.html", a=a, month=month, level=level, weights=w,
                          versions=all_versions, columns=assessment.columns(level), city=city,
                          cities=cities, scope_label=label, part_names=PART_NAMES, parts=PARTS)

    def render_weights(request: Request, status: int = 200, error: str | None = None,
                       form: dict[str, str] | None = None) -> Response:
        with web.db.connect() as conn:
            vs = assessment.versions(conn)
        return web.render(request, "assessment_weights.html", status, versions=vs, current=vs[0],
                          parts=PARTS, part_names=PART_NAMES, error=error, form=form or {})

    def weights_page(request: Request) -> Response:
        web.user(request)            # any user may read the rules they are assessed by
        return render_weights(request)

    async def add_weights(request: Request) -> Response:
        admin = web.require_admin(request)
        form = await web.form(request)

        def do() -> None:
            with web.db.connect() as conn:
                assessment.add_version(conn, {p: form.get(f"w_{p}", "") for p in PARTS},
                                       form.get("min_sample", ""), form.get("note", ""),
                                       actor=admin.username, now_ms=web.now_ms())

        try:
            await run_in_threadpool(do)
        except AssessmentError as exc:
            return await run_in_threadpool(render_weights, request, 400, str(exc), form)
        return RedirectResponse("/assessment/weights", 303)

    def bulletin_of(request: Request) -> tuple[bulletin.Bulletin, str]:
        user = web.user(request)
        if user.role == "hall":
            raise Forbidden("the monthly bulletin is a city's or the province's")
        month = month_of(request)
        city = (request.query_params.get("city") or "").strip()
        with web.db.connect() as conn:
            scope, label = scope_of(conn, user, city)
            w = weights_of(conn, request)
            b = bulletin.build(conn, month, scope, label, tz=web.tz, made_ms=web.now_ms(),
                               made_by=f"{user.username} ({user.name})", weights=w)
        stem = f"bulletin-{month.key}-" + ("province" if scope.role == "province" else "city")
        return b, stem

    def bulletin_pdf(request: Request) -> Response:
        b, stem = bulletin_of(request)
        return Response(bulletin.to_pdf(b), 200, media_type="application/pdf",
                        headers={"Content-Disposition": f'inline; filename="{stem}.pdf"'})

    def bulletin_xlsx(request: Request) -> Response:
        b, stem = bulletin_of(request)
        return Response(bulletin.to_xlsx(b), 200,
                        media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                        headers={"Content-Disposition": f'attachment; filename="{stem}.xlsx"'})

    return [Route("/assessment", page, methods=["GET"]),
            Route("/assessment/weights", weights_page, methods=["GET"]),
            Route("/assessment/weights", add_weights, methods=["POST"]),
            Route("/assessment/bulletin.pdf", bulletin_pdf, methods=["GET"]),
            Route("/assessment/bulletin.xlsx", bulletin_xlsx, methods=["GET"])]
