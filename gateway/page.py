"""The hall manager's live page: windows, keypads, today's ratings, backlog and alarms, behind a log-in.

Served by the gateway's HTTP server beside the counter API (``create_app(..., mounts=page_routes(...))``).
Server-rendered Jinja2 (autoescaped) with htmx, vendored in static/ (no CDN: the hall may have no
internet), polling two fragments every few seconds; nothing here is cached in memory, every fragment is
read from the store (hallview.py).

Sessions are Starlette's signed cookie (SameSite=Strict, HttpOnly) keyed by a secret file beside the
database. Every POST carries the session's CSRF token (a form field, or the X-CSRF-Token header htmx
sends), checked before anything else; a POST without it is refused with 403 and changes nothing.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from countersign.common.webauth import LoginLimiter
from countersign.protocol.keystore import Keystore
from countersign.protocol.messages import SCORE_NAMES_ZH

from .config import GatewayConfig
from .hallview import HallView, Tally
from .hours import zone
from .store import Store
from .users import MAX_PASSWORD, Users, UsersError, session_secret

log = logging.getLogger("countersign.gateway.page")

HERE = Path(__file__).parent
COOKIE = "cs_hall"
SECRET_FILE = "hall-page.secret"        # beside the database: the session cookies' signing key
SESSION_MAX_AGE_S = 12 * 3600           # one working day; then log in again
REFRESH = "every 5s"
HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # htmx is served from here; no inline script, so no 'unsafe-inline'.
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
}


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x * 100:.1f}%"


class _Page:
    def __init__(self, view: HallView, users: Users | None, hall: str) -> None:
        self.view, self.users, self.hall = view, users, hall
        self.limiter = LoginLimiter()
        self.env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(),
                               trim_blocks=True, lstrip_blocks=True)
        self.env.filters["pct"] = _pct
        self.env.filters["hms"] = self._hms
        self.env.filters["ago"] = self._ago

    def _hms(self, ms: int | None) -> str:
        t = self.view.local(ms)
        if t is None:
            return "—"
        today = self.view.local(self.view.now_ms())
        return t.strftime("%H:%M:%S" if today is not None and t.date() == today.date() else "%m-%d %H:%M")

    def _ago(self, ms: int | None) -> str:
        if ms is None:
            return "从未"
        s = max(0, (self.view.now_ms() - ms) // 1000)
        return f"{s} 秒前" if s < 120 else f"{s // 60} 分钟前" if s < 7200 else f"{s // 3600} 小时前"

    def render(self, request: Request, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        html = self.env.get_template(template).render(hall=self.hall, user=request.session.get("user"),
                                                  csrf=_csrf(request), refresh=REFRESH, **ctx)
        return HTMLResponse(html, status, headers=HEADERS)

    # --- log-in ------------------------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        if self.users is None:
            return self.render(request, "login.html", 503, disabled=True, error=(
                "未配置管理员账户：no accounts are configured ([page] users in the gateway's config,"
                " then `countersign gateway user add`)."))
        return self.render(request, "login.html")

    async def login(self, request: Request) -> Response:
        form = await request.form()
        if not _csrf_ok(request, form.get("csrf")):
            return _forbidden()
        if self.users is None:
            return await self.login_form(request)
        name, password = form.get("name"), form.get("password")
        if not isinstance(name, str) or not isinstance(password, str) or not name \
                or len(password) > MAX_PASSWORD:
            return self.render(request, "login.html", 400, error="请输入用户名和密码 (name and password)")
        wait = self.limiter.wait_s(name)
        if wait > 0:
            log.warning("hall page: log-in for %r refused, %d failures: wait %.0f s", name[:32],
                        self.limiter.free, wait)
            resp = self.render(request, "login.html", 429, error=f"尝试次数过多，请 {wait:.0f} 秒后再试 "
                               "(too many failed log-ins)", name=name)
            resp.headers["Retry-After"] = str(int(wait) + 1)
            return resp
        try:
            ok = self.users.verify(name, password)
        except UsersError as exc:
            log.error("hall page: %s", exc)
            return self.render(request, "login.html", 503, error="账户文件不可读 (users file unreadable)")
        if not ok:
            self.limiter.failed(name)
            log.warning("hall page: failed log-in for %r from %s", name[:32], _peer(request))
            return self.render(request, "login.html", 401, error="用户名或密码错误 (wrong name or password)",
                               name=name)
        self.limiter.succeeded(name)
        request.session.clear()             # a new session for the new identity (no fixation)
        request.session["user"] = name
        request.session["csrf"] = secrets.token_urlsafe(32)
        log.info("hall page: %s logged in from %s", name, _peer(request))
        return RedirectResponse("/", 303, headers=HEADERS)

    async def logout(self, request: Request) -> Response:
        form = await request.form()
        if not _csrf_ok(request, form.get("csrf")):
            return _forbidden()
        request.session.clear()
        return RedirectResponse("/login", 303, headers=HEADERS)

    # --- the page and its fragments -------------------------------------------------------------------

    def _who(self, request: Request) -> str | None:
        user = request.session.get("user")
        if not isinstance(user, str) or self.users is None:
            return None
        try:
            known = user in self.users.names()
        except UsersError:
            return None
        return user if known else None        # a removed account's session ends at once

    async def hall_page(self, request: Request) -> Response:
        if self._who(request) is None:
            return RedirectResponse("/login", 303, headers=HEADERS)
        return self.render(request, "hall.html", **self._board(), alarms=self.view.alarms())

    async def board(self, request: Request) -> Response:
        if self._who(request) is None:
            return _unauthorized()
        return self.render(request, "_board.html", **self._board())

    async def alarms(self, request: Request) -> Response:
        if self._who(request) is None:
            return _unauthorized()
        return self.render(request, "_alarms.html", alarms=self.view.alarms())

    async def acknowledge(self, request: Request) -> Response:
        who = self._who(request)
        if who is None:
            return _unauthorized()
        form = await request.form()
        if not _csrf_ok(request, form.get("csrf")):
            return _forbidden()
        alarm_id = request.path_params["alarm_id"]
        if not self.view.acknowledge(alarm_id, who):
            return self.render(request, "_alarms.html", 409, alarms=self.view.alarms(),
                               error="该告警已确认或已恢复 (already acknowledged or cleared)")
        log.info("hall page: alarm %d acknowledged by %s", alarm_id, who)
        return self.render(request, "_alarms.html", alarms=self.view.alarms())

    def _board(self) -> dict[str, Any]:
        today = self.view.today()
        windows = self.view.windows()
        return {"windows": windows, "today": today, "backlog": self.view.backlog(), "empty": Tally(),
                "now": self.view.local(self.view.now_ms()) or dt.datetime.now(self.view.tz),
                "score_names": SCORE_NAMES_ZH}


def _csrf(request: Request) -> str:
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def _csrf_ok(request: Request, field: object) -> bool:
    expected = request.session.get("csrf")
    given = field if isinstance(field, str) else request.headers.get("x-csrf-token", "")
    return (isinstance(expected, str) and bool(given)
            and hmac.compare_digest(expected.encode(), given.encode()))


def _forbidden() -> Response:
    return HTMLResponse("<p>请求无效：缺少或错误的 CSRF 令牌 (CSRF token missing or wrong). 请刷新页面。</p>",
                        403, headers=HEADERS)


def _unauthorized() -> Response:
    # htmx follows HX-Redirect: an expired session on the big screen goes back to the log-in form.
    return HTMLResponse("<p>请先登录 (log in first)</p>", 401, headers={**HEADERS, "HX-Redirect": "/login"})


def _peer(request: Request) -> str:
    return request.client.host if request.client else "?"


def page_routes(view: HallView, users: Users | None, secret: bytes, hall: str, *,
                https_only: bool = False) -> list[BaseRoute]:
    """The page's routes, to put after the API's: ``/``, ``/login``, ``/logout``, ``/hall/...``,
    ``/static/...``. ``users`` None: the page says no accounts are configured and shows nothing."""
    p = _Page(view, users, hall)
    app = Starlette(
        routes=[
            Route("/", p.hall_page, methods=["GET"]),
            Route("/login", p.login_form, methods=["GET"]),
            Route("/login", p.login, methods=["POST"]),
            Route("/logout", p.logout, methods=["POST"]),
            Route("/hall/board", p.board, methods=["GET"]),
            Route("/hall/alarms", p.alarms, methods=["GET"]),
            Route("/hall/alarms/{alarm_id:int}/ack", p.acknowledge, methods=["POST"]),
            Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
        ],
        middleware=[Middleware(SessionMiddleware, secret_key=secret.hex(), session_cookie=COOKIE,
                               max_age=SESSION_MAX_AGE_S, same_site="strict", https_only=https_only)])
    # Each path handed to the page's own app whole (it routes on the full path), so the API's routes
    # keep their own 404/405 answers.
    return [Route("/", app, methods=["GET", "HEAD"]),
            Route("/login", app, methods=["GET", "HEAD", "POST"]),
            Route("/logout", app, methods=["POST"]),
            Route("/hall/{rest:path}", app, methods=["GET", "HEAD", "POST"]),
            Route("/static/{rest:path}", app, methods=["GET", "HEAD"])]


def hall_page_routes(cfg: GatewayConfig, store: Store, keystore: Callable[[], Keystore],
                     backlog: Callable[[], int]) -> list[BaseRoute]:
    """The page for a gateway: its store and keystore, ``[page] users``, the session secret beside the
    database (created 0600 on first start), HTTPS-only cookies when the API has a certificate."""
    view = HallView(store, keystore, backlog, cfg.now_ms, zone(cfg.timezone))
    users = Users(cfg.users_path) if cfg.users_path is not None else None
    secret = session_secret(cfg.db_path.parent / SECRET_FILE)
    return page_routes(view, users, secret, cfg.hall, https_only=cfg.http_cert is not None)
