"""What a page module of the platform gets from the web application (province/web.py builds it).

Each page module exposes ``routes(web: Web) -> list[BaseRoute]``; the application mounts them behind
its log-in, CSRF and audit machinery. A page never reads the session itself: it asks ``web.user`` (a
logged-in user, or NotLoggedIn, which the app turns into a redirect to the log-in page), filters every
query with ``user.scope`` (scope.py), checks ``web.check_csrf`` before any change, and writes each change
with ``web.audit`` in the same transaction as the change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from jinja2 import Environment
from starlette.requests import Request
from starlette.responses import Response

from .db import Conn, Database
from .errors import ProvinceError
from .export import Table
from .scope import User

__all__ = ["Forbidden", "NotFound", "NotLoggedIn", "Period", "Web"]


class NotLoggedIn(ProvinceError, PermissionError):
    """No valid session: the app answers with a redirect to /login (a fragment: 401)."""


class Forbidden(ProvinceError, PermissionError):
    """Logged in, but not allowed (another hall's page, an admin page, a missing CSRF token): 403."""


class NotFound(ProvinceError, LookupError):
    """No such hall, rating, ... (or not one the user may know exists): 404."""


@dataclass(frozen=True)
class Period:
    """An inclusive range of days in the province's zone, as chosen on a page (?period=today|week|month
    or ?from=YYYY-MM-DD&to=YYYY-MM-DD)."""

    key: str            # today | week | month | custom
    day_from: str
    day_to: str
    label: str          # "今日 Today", "本周 This week (2026-11-30 ~ 2026-12-06)", ...


class Web(Protocol):
    db: Database
    tz: ZoneInfo
    templates: Environment          # loader over province/templates; base.html has blocks title, content

    def now_ms(self) -> int: ...

    def user(self, request: Request) -> User:
        """The logged-in user; raises NotLoggedIn."""
        ...

    def require_admin(self, request: Request) -> User:
        """A province user; raises NotLoggedIn or Forbidden."""
        ...

    async def form(self, request: Request) -> dict[str, str]:
        """The POSTed form, its CSRF token checked (raises Forbidden): call before any change."""
        ...

    def period(self, request: Request) -> Period:
        """The period the page asks for (query parameters), default this month; bad dates: 400."""
        ...

    def render(self, request: Request, template: str, status: int = 200, **context: Any) -> Response:
        """A page (or fragment) from templates/, with user, csrf_token, period and nav in its context."""
        ...

    def export(self, request: Request, table: Table) -> Response | None:
        """With ?format=csv or ?format=xlsx, the table as that file (meta gains who and when); else None."""
        ...

    def audit(self, conn: Conn, user: User, action: str, target: str | None, detail: dict[str, Any]) -> None:
        """One audit_log row, in the caller's open transaction."""
        ...
