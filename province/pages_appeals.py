"""(being written) The platform's appeals pages."""

from __future__ import annotations

from starlette.routing import BaseRoute

from .webctx import Web

__all__ = ["routes"]


def routes(web: Web) -> list[BaseRoute]:
    return []
