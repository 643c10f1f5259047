"""The provincial platform's web application: log-in, sessions, CSRF, audit, periods, exports, and
every page module mounted behind them (``countersign province web``).

Server-rendered Jinja2 (autoescaped) with htmx vendored in static/ (no CDN, no inline script, so the
CSP needs no 'unsafe-inline'). Sessions are Starlette's signed cookie (HttpOnly, SameSite=Strict) holding
the account id, its ``session_gen``, the log-in time and the last request's time; every request re-reads
the account (users.session_user), so a removed or disabled account or a new password ends the session
at once, and a session ends ``session_hours`` after the log-in or ``idle_minutes`` after the person's
last request (htmx's periodic refreshes, marked X-Countersign-Poll, do not count as the person's).

Every page module exposes ``routes(web) -> list[BaseRoute]`` (webctx.py); PAGE_MODULES lists them: a
module of the platform is a required part, imported like any other, never looked for at run time.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import uvicorn
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from countersign.common.clock import wall_ms

from . import (
    alerts,
    api,
    audit,
    export,
    migrations,
    pages_alerts,
    pages_appeals,
    pages_assessment,
    pages_cases,
    pages_dissatisfied,
    pages_drill,
    pages_enroll,
    pages_fleet,
    pages_overview,
    pages_rankings,
    pages_reconcile,
    pages_trends,
    pages_users,
    users,
)
from .db import Conn, Database
from .errors import ProvinceError
from .scope import ROLE_NAMES, User
from .web_config import WebConfig, session_secret
from .webctx import Forbidden, NotFound, NotLoggedIn, Period
from .webperiod import BadRequest, named_period, period_of

log = logging.getLogger("countersign.province.web")

__all__ = ["PAGE_MODULES", "BadRequest", "Platform", "PlatformServer", "create_app", "serve"]

HERE = Path(__file__).parent
COOKIE = "cs_platform"
POLL_HEADER = "x-countersign-poll"
MAX_FORM_FIELD = 4096

# The platform's page modules, each ``routes(web)``. A module another part of issue 12 adds is listed
# here when it lands (never found by looking for it at run time).
PAGE_MODULES: tuple[ModuleType, ...] = (pages_overview, pages_drill, pages_rankings, pages_trends,
                                        pages_dissatisfied, pages_alerts, pages_cases, pages_appeals,
                                        pages_assessment, pages_fleet, pages_reconcile, pages_enroll,
                                        pages_users)
API_PREFIX = "/api/v1"

# The navigation bar: (path, label, admin only), shown for the modules mounted.
NAV: dict[str, list[tuple[str, str, bool]]] = {
    "pages_overview": [("/", "总览 Overview", False)],
    "pages_drill": [("/drill", "逐级查看 Drill-down", False)],
    "pages_rankings": [("/rankings", "排名 Rankings", False)],
    "pages_trends": [("/trends", "趋势 Trends", False)],
    "pages_dissatisfied": [("/dissatisfied", "不满意评价 Dissatisfied", False)],
    "pages_alerts": [("/alerts", "告警 Alerts", False)],
    "pages_cases": [("/cases", "整改工单 Cases", False)],
    "pages_appeals": [("/appeals", "申诉 Appeals", False), ("/flags", "疑点 Flags", False)],
    "pages_assessment": [("/assessment", "考核 Assessment", False)],
    "pages_fleet": [("/fleet", "评价器 Keypads", False)],
    "pages_reconcile": [("/reconcile", "对账 Reconciliation", False)],
    "pages_enroll": [("/enrollments", "设备登记 Enrollments", True), ("/held", "暂存评价 Held", False)],
    "pages_users": [("/users", "账户 Accounts", True)],
}
AUDIT_NAV = ("/audit", "审计日志 Audit log", True)

HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    # htmx (and any chart library) is served from here; no inline script or style.
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self';"
                               " base-uri 'none'; object-src 'none'",
}


def pct(x: float | None) -> str:
    return "—" if x is None else f"{x * 100:.1f}%"


@dataclass(frozen=True)
class _Session:
    uid: int
    gen: int
    login_ms: int
    seen_ms: int


class Platform:
    """The ``Web`` of webctx.py: what every page module gets."""

    def __init__(self, cfg: WebConfig, now_ms: Callable[[], int] = wall_ms) -> None:
        self.cfg = cfg
        self.db: Database = cfg.database
        self.tz: ZoneInfo = cfg.tz
        self._now = now_ms
        self.limiter = users.LoginLimiter()
        self.templates = Environment(loader=FileSystemLoader(HERE / "templates"),
                                     autoescape=select_autoescape(default=True, default_for_string=True),
                                     trim_blocks=True, lstrip_blocks=True)
        self.templates.filters["pct"] = pct
        self.templates.filters["time"] = self.fmt_ms
        self.templates.filters["press"] = self.fmt_press
        self.templates.globals["url_with"] = url_with
        self.nav: list[tuple[str, str, bool]] = [e for m in PAGE_MODULES
                                                 for e in NAV.get(m.__name__.rsplit(".", 1)[-1], [])]
        self.nav.append(AUDIT_NAV)

    def now_ms(self) -> int:
        return self._now()

    # --- formatting ---------------------------------------------------------------------------------------

    def fmt_ms(self, ms: int | None) -> str:
        if ms is None:
            return "—"
        return datetime.fromtimestamp(ms / 1000, self.tz).strftime("%Y-%m-%d %H:%M:%S")

    def fmt_press(self, press_s: int | None) -> str:
        return "时间未知 time unknown" if press_s is None else self.fmt_ms(press_s * 1000)

    # --- sessions -----------------------------------------------------------------------------------------

    def _session(self, request: Request) -> _Session | None:
        s = request.session
        try:
            got = _Session(int(s["uid"]), int(s["gen"]), int(s["login_ms"]), int(s["seen_ms"]))
        except (KeyError, TypeError, ValueError):
            return None
        now = self.now_ms()
        if (now - got.login_ms > self.cfg.session_hours * 3_600_000
                or now - got.seen_ms > self.cfg.idle_minutes * 60_000 or got.seen_ms > now + 60_000):
            request.session.clear()
            return None
        return got

    def user(self, request: Request) -> User:
        cached = request.scope.get("countersign.user")
        if isinstance(cached, User):
            return cached
        sess = self._session(request)
        if sess is None:
            raise NotLoggedIn("no session")
        with self.db.connect() as conn:
            user = users.session_user(conn, sess.uid, sess.gen)
        if user is None:
            request.session.clear()
            raise NotLoggedIn("the account was removed, disabled or its password changed")
        if request.headers.get(POLL_HEADER) != "1":
            request.session["seen_ms"] = self.now_ms()
        request.scope["countersign.user"] = user
        return user

    def require_admin(self, request: Request) -> User:
        user = self.user(request)
        if not user.is_admin:
            raise Forbidden("a province user's page")
        return user

    def csrf_token(self, request: Request) -> str:
        token = request.session.get("csrf")
        if not isinstance(token, str):
            token = secrets.token_urlsafe(32)
            request.session["csrf"] = token
        return token

    def check_csrf(self, request: Request, field: object) -> None:
        """Raises Forbidden unless ``field`` (or the X-CSRF-Token header) is the session's token."""
        expected = request.session.get("csrf")
        given = field if isinstance(field, str) and field else request.headers.get("x-csrf-token", "")
        if not (isinstance(expected, str) and given
                and hmac.compare_digest(expected.encode(), given.encode())):
            raise Forbidden("CSRF token missing or wrong")

    async def form(self, request: Request) -> dict[str, str]:
        try:
            raw = await request.form(max_files=0, max_fields=100)
        except (ValueError, KeyError) as exc:
            raise BadRequest(f"unreadable form: {exc}") from exc
        self.check_csrf(request, raw.get("csrf"))
        out: dict[str, str] = {}
        for k, v in raw.items():
            if not isinstance(v, str) or len(v) > MAX_FORM_FIELD:
                raise BadRequest(f"form field {k!r} is not short text")
            out[k] = v
        return out

    # --- periods ------------------------------------------------------------------------------------------

    def named_period(self, key: str) -> Period:
        return named_period(key, self.now_ms(), self.tz)

    def period(self, request: Request) -> Period:
        return period_of(request.query_params, self.now_ms(), self.tz)

    # --- responses ----------------------------------------------------------------------------------------

    def render(self, request: Request, template: str, status: int = 200, **context: Any) -> Response:
        user = request.scope.get("countersign.user")
        ctx: dict[str, Any] = {
            "request": request, "user": user, "csrf_token": self.csrf_token(request),
            "nav": [(p, label) for p, label, admin in self.nav
                    if user is not None and (user.is_admin or not admin)],
            "path": request.url.path, "role_names": ROLE_NAMES, "now_ms": self.now_ms(),
        }
        if user is not None:
            # The unacknowledged alerts of the user's scope, on every page: the inbox is the channel that
            # is always on, so its count is always in sight.
            with self.db.connect() as conn:
                ctx["unacked_alerts"] = alerts.unacked(conn, user.scope)
        if "period" not in context:
            try:
                ctx["period"] = self.period(request)
            except BadRequest:
                ctx["period"] = self.named_period("month")
        ctx.update(context)
        return HTMLResponse(self.templates.get_template(template).render(ctx), status)

    def export(self, request: Request, table: export.Table) -> Response | None:
        fmt = request.query_params.get("format")
        if fmt is None:
            return None
        user = self.user(request)
        table.meta = {"报表 Table": table.title, **table.meta,
                      "生成时间 Made at": self.fmt_ms(self.now_ms()) + f" ({self.tz.key})",
                      "生成人 Made by": f"{user.username} ({user.name})"}
        stamp = datetime.fromtimestamp(self.now_ms() / 1000, self.tz).strftime("%Y%m%d-%H%M")
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", table.name)[:60] or "table"
        if fmt == "csv":
            body, mime = export.to_csv(table), "text/csv; charset=utf-8"
        elif fmt == "xlsx":
            body = export.to_xlsx(table)
            mime = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
        else:
            raise BadRequest(f"format must be csv or xlsx, got {fmt[:20]!r}")
        return Response(body, 200, media_type=mime, headers={
            "Content-Disposition": f'attachment; filename="{stem}-{stamp}.{fmt}"'})

    def audit(self, conn: Conn, user: User, action: str, target: str | None, detail: dict[str, Any]) -> None:
        audit.record(conn, user.username, action, target, detail, self.now_ms())

    # --- log-in, log-out, the audit log -------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        return self.render(request, "login.html")

    async def login(self, request: Request) -> Response:
        form = await self.form(request)
        name, password = form.get("name", "").strip(), form.get("password", "")
        if not name or not password or len(password) > users.MAX_PASSWORD:
            return self.render(request, "login.html", 400, error="请输入用户名和密码 (name and password)")
        wait = self.limiter.wait_s(name)
        if wait > 0:
            log.warning("platform: log-in for %r refused after %d failures: wait %.0f s", name[:32],
                        self.limiter.free, wait)
            resp = self.render(request, "login.html", 429, name=name, error=(
                f"尝试次数过多，请 {wait:.0f} 秒后再试 (too many failed log-ins: try again in {wait:.0f} s)"))
            resp.headers["Retry-After"] = str(int(wait) + 1)
            return resp
        got = await run_in_threadpool(self._check_login, name, password)
        if got is None:
            self.limiter.failed(name)
            log.warning("platform: failed log-in for %r from %s", name[:32], _peer(request))
            return self.render(request, "login.html", 401, name=name,
                               error="用户名或密码错误 (wrong name or password)")
        user, gen = got
        self.limiter.succeeded(name)
        now = self.now_ms()
        request.session.clear()             # a new session for the new identity (no fixation)
        request.session.update({"uid": user.id, "gen": gen, "login_ms": now, "seen_ms": now,
                                "csrf": secrets.token_urlsafe(32)})
        log.info("platform: %s logged in from %s", user.username, _peer(request))
        return RedirectResponse("/", 303)

    def _check_login(self, name: str, password: str) -> tuple[User, int] | None:
        with self.db.connect() as conn, conn.transaction():
            got = users.check_login(conn, name, password)
            if got is not None:
                audit.record(conn, got[0].username, "login", got[0].username, {}, self.now_ms())
            return got

    async def logout(self, request: Request) -> Response:
        await self.form(request)
        request.session.clear()
        return RedirectResponse("/login", 303)

    def audit_page(self, request: Request) -> Response:
        self.require_admin(request)
        page = page_number(request)
        q = request.query_params
        where, args = "", []
        if q.get("actor"):
            where += " AND actor = ?"
            args.append(q["actor"])
        if q.get("action"):
            where += " AND action = ?"
            args.append(q["action"])
        with self.db.connect() as conn:
            total = int(conn.scalar(f"SELECT COUNT(*) FROM audit_log WHERE 1 = 1{where}", args))
            limit = 100_000 if q.get("format") else PAGE_SIZE
            rows = conn.all(f"SELECT id, ms, actor, action, target, detail FROM audit_log WHERE 1 = 1{where}"
                            " ORDER BY id DESC LIMIT ? OFFSET ?",
                            [*args, limit, 0 if q.get("format") else (page - 1) * PAGE_SIZE])
        items = [{"id": r[0], "ms": r[1], "time": self.fmt_ms(r[1]), "actor": r[2], "action": r[3],
                  "target": r[4], "detail": r[5]} for r in rows]
        table = export.Table("audit-log", "审计日志 Audit log", [
            export.Column("time", "时间 Time"), export.Column("actor", "操作人 Actor"),
            export.Column("action", "操作 Action"), export.Column("target", "对象 Target"),
            export.Column("detail", "详情 Detail")], items,
            {"筛选 Filters": ", ".join(f"{k}={q[k]}" for k in ("actor", "action") if q.get(k)) or "—"})
        return self.export(request, table) or self.render(
            request, "audit.html", items=items, page=page, pages=max(1, -(-total // PAGE_SIZE)), total=total,
            actor=q.get("actor", ""), action=q.get("action", ""))

    # --- errors -------------------------------------------------------------------------------------------

    def on_not_logged_in(self, request: Request, exc: Exception) -> Response:
        if request.headers.get("hx-request") == "true" or request.method != "GET":
            # htmx follows HX-Redirect: an ended session on an open page goes back to the log-in form.
            return HTMLResponse("<p>请先登录 (log in first)</p>", 401, headers={"HX-Redirect": "/login"})
        return RedirectResponse("/login", 303)

    def on_forbidden(self, request: Request, exc: Exception) -> Response:
        return self._error(request, 403, "无权访问 Forbidden", str(exc))

    def on_not_found(self, request: Request, exc: Exception) -> Response:
        # The same answer for "no such hall" and "not your hall": a URL tells nobody what exists.
        return self._error(request, 404, "未找到 Not found",
                           "没有此页面或无权查看 (no such page, or not yours)")

    def on_bad_request(self, request: Request, exc: Exception) -> Response:
        return self._error(request, 400, "请求无效 Bad request", str(exc))

    def on_http_404(self, request: Request, exc: Exception) -> Response:
        if request.url.path.startswith(API_PREFIX + "/") or request.url.path == API_PREFIX:
            return JSONResponse({"error": "not-found", "detail": f"no endpoint {request.url.path}"}, 404)
        return self.on_not_found(request, exc)

    def _error(self, request: Request, status: int, title: str, detail: str) -> Response:
        return self.render(request, "error.html", status, title=title, detail=detail)


PAGE_SIZE = 50


def url_with(request: Request, **changes: str | int | None) -> str:
    """This page's URL with some query parameters changed (None: removed); for links in templates."""
    params = [(k, v) for k, v in request.query_params.multi_items() if k not in changes]
    params += [(k, str(v)) for k, v in changes.items() if v is not None]
    return request.url.path + ("?" + urlencode(params) if params else "")


def page_number(request: Request) -> int:
    raw = request.query_params.get("page", "1")
    if not raw.isdigit() or not 1 <= int(raw) <= 1_000_000:
        raise BadRequest("page must be a positive number")
    return int(raw)


class SecurityHeaders:
    """The same security headers on every response, pages, fragments, files and errors alike."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for k, v in HEADERS.items():
                    if k not in headers:
                        headers[k] = v
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(cfg: WebConfig, *, now_ms: Callable[[], int] = wall_ms, upgrade: bool = True) -> Starlette:
    """The platform as an ASGI app (``app.state.web`` is its Platform). ``now_ms``: the clock sessions,
    periods and audit rows use (a test's own). ``upgrade``: bring the schema up to date first."""
    if upgrade:
        migrations.upgrade(cfg.database, cfg.tz)
    web = Platform(cfg, now_ms)
    secret = session_secret(cfg.secret_file)
    routes: list[BaseRoute] = [
        Route("/login", web.login_form, methods=["GET"]),
        Route("/login", web.login, methods=["POST"]),
        Route("/logout", web.logout, methods=["POST"]),
        Route("/audit", web.audit_page, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
    for module in PAGE_MODULES:
        routes.extend(module.routes(web))
    # The read API authenticates its clients by token (apiclients.py), not by a person's session.
    routes.append(Mount(API_PREFIX, routes=api.api_routes(web.db, web.tz, web.now_ms)))
    handlers: dict[Any, Callable[[Request, Exception], Response]] = {
        NotLoggedIn: web.on_not_logged_in, Forbidden: web.on_forbidden, NotFound: web.on_not_found,
        BadRequest: web.on_bad_request, 404: web.on_http_404}
    app = Starlette(routes=routes, exception_handlers=handlers, middleware=[
        Middleware(SecurityHeaders),
        Middleware(SessionMiddleware, secret_key=secret.hex(), session_cookie=COOKIE,
                   max_age=int(cfg.session_hours * 3600), same_site="strict", https_only=cfg.https_only)])
    app.state.web = web
    return app


class PlatformServer:
    """The platform served by uvicorn in a thread of this process (``countersign province web`` runs
    it in the foreground; the simulator and tests beside other work)."""

    def __init__(self, app: Starlette, bind: str, port: int) -> None:
        self.app = app
        self._sock = socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((bind, port))
        # Listening from here on: a connection made before uvicorn runs waits in the backlog, not refused.
        self._sock.listen(128)
        self.bind, self.port = bind, int(self._sock.getsockname()[1])
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                                     lifespan="off", server_header=False))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> PlatformServer:
        self._thread = threading.Thread(target=self._run, name="platform-web", daemon=True)
        self._thread.start()
        deadline = threading.Event()
        for _ in range(int(timeout / 0.05)):
            if self._server.started or not self._thread.is_alive():
                break
            deadline.wait(0.05)
        if not self._server.started:
            raise ProvinceError(f"the platform's web server did not start on {self.url}")
        return self

    def _run(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._sock]))

    def run_foreground(self) -> None:
        self._run()

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self._sock.close()


def serve(cfg: WebConfig, *, bind: str | None = None, port: int | None = None,
          now_ms: Callable[[], int] = wall_ms) -> PlatformServer:
    """The platform started in a background thread; ``.url``, ``.stop()``."""
    return PlatformServer(create_app(cfg, now_ms=now_ms), bind or cfg.bind,
                          cfg.port if port is None else port).start()


def _peer(request: Request) -> str:
    return request.client.host if request.client else "?"

