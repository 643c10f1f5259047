"""``/users``: the platform's accounts, for province users (who administer them): list, add, disable or
enable, remove. Each change is one form POST with the session's CSRF token, written with its audit row in
one transaction (users.py); a disable or a removal ends that account's sessions at once. An administrator
cannot disable or remove their own account here (the command line can), so the last one is not locked
out by a slip of the mouse."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from . import users
from .scope import ROLE_NAMES, ROLES
from .webctx import NotFound, Web

__all__ = ["routes"]

ACTIONS = ("disable", "enable", "remove")


def routes(web: Web) -> list[BaseRoute]:
    def render(request: Request, status: int = 200, error: str | None = None,
               form: dict[str, str] | None = None) -> Response:
        with web.db.connect() as conn:
            accounts = users.list_accounts(conn)
            cities = [r[0] for r in conn.all("SELECT DISTINCT city FROM halls ORDER BY city")]
            halls = conn.all("SELECT hall, name FROM halls ORDER BY hall")
        return web.render(request, "users.html", status, accounts=accounts, roles=ROLES,
                          role_names=ROLE_NAMES, cities=cities, halls=halls, error=error, form=form or {})

    def page(request: Request) -> Response:
        web.require_admin(request)
        return render(request)

    async def add(request: Request) -> Response:
        admin = web.require_admin(request)
        form = await web.form(request)
        role = form.get("role", "")
        scope = (form.get("city") if role == "city" else form.get("hall") if role == "hall" else None) or None

        def do() -> None:
            with web.db.connect() as conn:
                users.add(conn, form.get("username", "").strip(), form.get("name", ""),
                          form.get("password", ""), role, scope, actor=admin.username, now_ms=web.now_ms())

        try:
            await run_in_threadpool(do)
        except users.UsersError as exc:
            return await run_in_threadpool(render, request, 400, str(exc),
                                           {k: v for k, v in form.items() if k != "password"})
        return RedirectResponse("/users", 303)

    async def change(request: Request) -> Response:
        admin = web.require_admin(request)
        username, action = request.path_params["username"], request.path_params["action"]
        if action not in ACTIONS:
            raise NotFound(action)
        await web.form(request)                    # the CSRF check, before anything changes
        if username == admin.username:
            return await run_in_threadpool(render, request, 400, "不能在此停用或删除自己的账户"
                                           " (not your own account here: use the command line)")

        def do() -> None:
            with web.db.connect() as conn:
                if action == "remove":
                    users.remove(conn, username, actor=admin.username, now_ms=web.now_ms())
                else:
                    users.disable(conn, username, action == "disable", actor=admin.username,
                                  now_ms=web.now_ms())

        try:
            await run_in_threadpool(do)
        except users.UsersError as exc:
            return await run_in_threadpool(render, request, 404, str(exc))
        return RedirectResponse("/users", 303)

    return [Route("/users", page, methods=["GET"]), Route("/users", add, methods=["POST"]),
            Route("/users/{username}/{action}", change, methods=["POST"])]
