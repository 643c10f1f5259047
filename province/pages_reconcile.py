"""``/reconcile``: per keypad and day, what the keypad made (by its sequence numbers), what the hall
gateway stored and what the province received, with the flag and its reason (province/reconcile.py);
flagged rows first, then by hall, keypad and day. Exportable.

?period=... or &from=&to=  &hall=ID  &flagged=1 (only flagged rows)  &format=csv|xlsx
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .export import Column, Table
from .reconcile import ReconRow, reconcile
from .webctx import NotFound, Web
from .webperiod import BadRequest

__all__ = ["COLUMNS", "routes"]

COLUMNS = [
    Column("flag", "标记 Flag"),
    Column("hall", "营业厅 Hall"),
    Column("device", "评价器 Keypad"),
    Column("epoch", "密钥代次 Key epoch", "int"),
    Column("day", "日期 Day"),
    Column("made", "评价器产生 Made (by seq)", "int"),
    Column("seqs", "编号 Seq range"),
    Column("gateway", "网关存储 Stored at gateway", "int"),
    Column("province", "省平台收到 Received at province", "int"),
    Column("held", "其中暂存 Of which held", "int"),
    Column("reason", "说明 Reason"),
]


def recon_row(r: ReconRow) -> dict[str, Any]:
    return {"flag": "⚠ 差异 mismatch" if r.flagged else "✓ 一致 ok", "flagged": r.flagged, "hall": r.hall,
            "device": r.device, "epoch": r.epoch, "day": r.day, "made": r.made,
            "seqs": f"{r.first_seq}-{r.last_seq}" if r.made else "", "gateway": r.gateway,
            "province": r.province, "held": r.held, "reason": r.reason}


def routes(web: Web) -> list[BaseRoute]:
    def page(request: Request) -> Response:
        user = web.user(request)
        period = web.period(request)
        q = request.query_params
        hall = (q.get("hall") or "").strip()
        only_flagged = q.get("flagged") == "1"
        if len(hall) > 64:
            raise BadRequest("hall is at most 64 characters")
        if q.get("flagged") not in (None, "", "0", "1"):
            raise BadRequest("flagged must be 1 or 0")
        where, args = user.scope.sql("hall")
        with web.db.connect() as conn:
            if hall and not user.scope.allows_hall(conn, hall):
                raise NotFound(hall)
            rows = reconcile(conn, period.day_from, period.day_to, hall=hall or None, scope=(where, args),
                             tz=web.tz, now_ms=web.now_ms())
            halls = conn.all(f"SELECT hall, name FROM halls WHERE 1 = 1{where} ORDER BY hall", args)
        flagged = sum(1 for r in rows if r.flagged)
        if only_flagged:
            rows = [r for r in rows if r.flagged]
        # reconcile() sorts by hall, keypad, epoch, day; a stable sort puts the flagged ones on top.
        rows.sort(key=lambda r: not r.flagged)
        items = [recon_row(r) for r in rows]
        meta = {"期间 Period": period.label,
                "范围 Scope": user.role + (f" {user.scope_value}" if user.scope_value else "")}
        if hall:
            meta["营业厅 Hall"] = hall
        if only_flagged:
            meta["筛选 Filter"] = "仅差异 flagged only"
        t = Table("reconciliation", "逐日对账 Daily reconciliation", COLUMNS, items, meta)
        got = web.export(request, t)
        if got is not None:
            return got
        return web.render(request, "reconcile.html", items=items, flagged=flagged, total=len(rows),
                          hall=hall, halls=halls, only_flagged=only_flagged, period=period)

    return [Route("/reconcile", page, methods=["GET"])]
