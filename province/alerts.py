"""(being written) The supervision loop's alerts step: see supervision.py for the contract."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .db import Conn
from .rated import Rated

if TYPE_CHECKING:
    from .supervision import Pass


def on_ratings(conn: Conn, ratings: Sequence[Rated], p: Pass) -> None:
    """Each newly stored rating, once, in the pass's transaction."""


def on_tick(conn: Conn, p: Pass) -> None:
    """The time: after each pass's ratings, and every interval."""
