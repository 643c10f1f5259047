"""The audit log: every change made through the platform or its command line, who made it and when.

One row per change, written in the same transaction as the change itself, so the log never claims a
change that was rolled back nor misses one that was committed. Rows are only ever inserted.
"""

from __future__ import annotations

import json
from typing import Any

from .db import Conn

__all__ = ["record"]


def record(conn: Conn, actor: str, action: str, target: str | None, detail: dict[str, Any],
           now_ms: int) -> None:
    """``actor``: a platform user name, or "cli:<unix user>" for the command line."""
    conn.execute("INSERT INTO audit_log (ms, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
                 (now_ms, actor, action, target, json.dumps(detail, ensure_ascii=False, sort_keys=True)))
