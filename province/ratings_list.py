"""Ratings as rows of a list (the drill-down's last level, the dissatisfied list): their context, in the
columns a person reads and an export carries. "Dissatisfied" is ``messages.is_satisfied``'s complement,
turned into SQL here from that one definition, never written a second time."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from countersign.protocol.messages import SCALES, SCORE_NAMES_ZH, SERVICE_NAMES_ZH, Service, is_satisfied

from . import export
from .db import Conn

__all__ = ["RATING_COLUMNS", "dissatisfied_sql", "rating_rows", "service_name"]

RATING_COLUMNS = [
    export.Column("id", "编号 ID", "int"), export.Column("time", "评价时间 Time"),
    export.Column("hall", "营业厅 Hall"), export.Column("window", "窗口 Window"),
    export.Column("clerk", "工号 Clerk"), export.Column("service_name", "服务项目 Service"),
    export.Column("txn", "业务流水 Transaction"), export.Column("score_name", "评价 Rating"),
    export.Column("prompt", "邀评 Prompt"),
]


def dissatisfied_pairs() -> list[tuple[int, int]]:
    """(scale, score) of every score that is not satisfied."""
    return [(scale, score) for scale in SCALES for score in SCORE_NAMES_ZH[scale]
            if not is_satisfied(score, scale)]


def dissatisfied_sql(pairs: list[tuple[int, int]] | None = None) -> tuple[str, list[Any]]:
    """``" AND (...)"`` keeping ratings (not no-ratings) whose (scale, score) is in ``pairs``."""
    pairs = dissatisfied_pairs() if pairs is None else pairs
    if not pairs:
        return " AND 1 = 0", []
    cond = " OR ".join("(scale = ? AND score = ?)" for _ in pairs)
    return f" AND kind = 'rating' AND ({cond})", [v for p in pairs for v in p]


def service_name(service: int) -> str:
    try:
        return f"{SERVICE_NAMES_ZH[Service(service)]} ({service})"
    except ValueError:
        return f"({service})"


def _time(press_s: int | None, received_ms: int, tz: ZoneInfo) -> str:
    if press_s is None:
        at = datetime.fromtimestamp(received_ms / 1000, tz).strftime("%Y-%m-%d %H:%M:%S")
        return f"时间未知 time unknown (网关收到 received {at})"
    return datetime.fromtimestamp(press_s, tz).strftime("%Y-%m-%d %H:%M:%S")


def rating_rows(conn: Conn, where: str, args: list[Any], tz: ZoneInfo, *, limit: int,
                offset: int = 0) -> list[dict[str, Any]]:
    """Ratings matching ``where`` (a condition on ratings' columns, from a Filter or a scope), newest
    first: by press time, or the gateway's receipt time when the keypad's clock was unknown."""
    rows = conn.all(
        'SELECT id, kind, score, scale, prompt, press_s, hall, "window", clerk, service, txn, received_ms'
        f" FROM ratings WHERE 1 = 1{where}"
        " ORDER BY COALESCE(press_s * 1000, received_ms) DESC, id DESC LIMIT ? OFFSET ?",
        [*args, limit, offset])
    out = []
    for r in rows:
        rid, kind, score, scale, prompt, press_s, hall, win, clerk, service, txn, received_ms = r
        score_name = (SCORE_NAMES_ZH[scale][score] if kind == "rating" and scale in SCORE_NAMES_ZH
                      else "未评价 no rating")
        out.append({"id": int(rid), "time": _time(press_s, received_ms, tz), "hall": hall, "window": win,
                    "clerk": clerk or "", "service_name": service_name(service), "txn": txn or "",
                    "score_name": score_name, "score": score, "scale": scale,
                    "satisfied": kind == "rating" and is_satisfied(score, scale),
                    "prompt": "邀评键 invite key" if prompt == 0 else str(prompt),
                    "href": f"/ratings/{int(rid)}"})
    return out
