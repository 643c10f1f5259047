"""``/enrollments`` (administrators) and ``/held`` (every role, in its scope).

/enrollments lists every enrollment, pending first: the hall gateway's notice and the technician's record
side by side (who, when, the key check value of each and whether they match), and how many ratings of
the keypad are held or were released. An administrator uploads a technician's record (a multipart form:
``web.form`` reads no files, so the upload reads the form itself and checks its CSRF token by the same
rule), approves or refuses. Each change is enroll.py's, in one transaction with its audit row.

/held lists the ratings the province keeps without counting them (unknown device, prompt mismatch,
bad MAC, ...), with their reason, context and state, filterable and exportable, for every role within
its scope (a hall manager sees their own hall's only, whatever the URL says).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from countersign.protocol.enrollment import MAX_RECORD
from countersign.protocol.messages import SCORE_NAMES_ZH, SERVICE_NAMES_ZH, Service

from . import enroll, export
from .enroll import EnrollmentError, EnrollmentNotFound
from .scope import User
from .webctx import Forbidden, NotFound, Web
from .webperiod import BadRequest

__all__ = ["HELD_COLUMNS", "routes"]

PAGE_SIZE = 50
MAX_EXPORT = 100_000
STATES = ("pending", "approved", "refused")
HELD_STATES = ("held", "released", "refused")
# What a successful change says on the page it redirects to (never text from the request).
DONE = {"imported": "技术员登记记录已导入 The technician's record was imported",
        "approved": "已批准 Approved: its key is registered and its held ratings that verify are counted",
        "refused": "已拒绝 Refused: its ratings stay held with the reason"}

HELD_COLUMNS = (
    export.Column("received", "网关接收时间 Received at gateway"),
    export.Column("hall", "营业厅 Hall"), export.Column("device", "评价器 Keypad"),
    export.Column("window", "窗口 Window"), export.Column("clerk", "工号 Clerk"),
    export.Column("prompt", "邀评 Prompt", "int"), export.Column("service", "服务项目 Service"),
    export.Column("score", "评价 Score"), export.Column("reason", "暂存原因 Reason"),
    export.Column("detail", "说明 Detail"), export.Column("state", "状态 State"),
    export.Column("decision", "处理 Decision"), export.Column("rating_id", "计入评价 Counted as", "int"),
)
REASON_NAMES = {"unknown-device": "未登记设备 Unknown keypad", "bad-mac": "校验失败 MAC fails",
                "prompt-mismatch": "与邀评不符 Prompt mismatch", "prompt-reused": "邀评重复 Prompt reused",
                "no-prompt-record": "等待邀评记录 Waiting for prompt record",
                "wrong-hall": "不属本厅 Wrong hall", "conflict": "内容冲突 Conflicting copy"}
STATE_NAMES = {"held": "暂存 Held", "released": "已计入 Counted", "refused": "已拒绝 Refused",
               "pending": "待审批 Pending", "approved": "已批准 Approved"}


def _csrf(web: Web, request: Request, token: object) -> None:
    # webctx.Web promises check_csrf in its text but not (yet) in its Protocol; web.py's Platform has it.
    check: Callable[[Request, object], None] | None = getattr(web, "check_csrf", None)
    if check is None:
        raise Forbidden("this platform cannot check the form's CSRF token")
    check(request, token)


def _id(request: Request) -> int:
    raw = str(request.path_params.get("id", ""))
    if not raw.isdigit() or len(raw) > 12:
        raise NotFound("no such enrollment")
    return int(raw)


def routes(web: Web) -> list[BaseRoute]:
    def listing(request: Request, user: User, *, error: str | None = None, status: int = 200) -> Response:
        state = request.query_params.get("state", "")
        if state and state not in STATES:
            raise BadRequest(f"state must be one of {', '.join(STATES)}")
        done = DONE.get(request.query_params.get("ok", ""))
        with web.db.connect() as conn:
            items = enroll.list_enrollments(conn, state or None)
            held = {e.device: enroll.held_counts(conn, e.device) for e in items}
        items.sort(key=lambda e: (e.state != "pending", -e.id))
        return web.render(request, "enrollments.html", status, items=items, held=held, state=state,
                          states=STATES, state_names=STATE_NAMES, error=error, done=done,
                          done_id=request.query_params.get("id", ""))

    def page(request: Request) -> Response:
        return listing(request, web.require_admin(request))

    def after(action: str, enrollment_id: int) -> Response:
        return RedirectResponse(f"/enrollments?ok={action}&id={enrollment_id}", status_code=303)

    async def upload(request: Request) -> Response:
        user = web.require_admin(request)
        try:
            form = await request.form(max_files=1, max_fields=5, max_part_size=MAX_RECORD + 1)
        except (ValueError, KeyError) as exc:
            raise BadRequest(f"unreadable upload: {exc}") from exc
        try:
            _csrf(web, request, form.get("csrf"))
            upload = form.get("record")
            if not isinstance(upload, UploadFile):
                return listing(request, user, error="请选择文件 Choose the technician's record file",
                               status=400)
            data = await upload.read(MAX_RECORD + 1)
            name = (upload.filename or "")[:100]
        finally:
            await form.close()
        try:
            with web.db.connect() as conn, conn.transaction():
                e = enroll.import_record(conn, data, user.username, web.now_ms())
        except EnrollmentError as exc:
            return listing(request, user, error=f"{name}: {exc}", status=400)
        return after("imported", e.id)

    async def approve(request: Request) -> Response:
        user = web.require_admin(request)
        await web.form(request)
        eid = _id(request)
        try:
            with web.db.connect() as conn, conn.transaction():
                enroll.approve(conn, eid, user.username, web.now_ms(), web.tz)
        except EnrollmentNotFound as exc:
            raise NotFound(str(exc)) from exc
        except EnrollmentError as exc:
            return listing(request, user, error=str(exc), status=409)
        return after("approved", eid)

    async def refuse(request: Request) -> Response:
        user = web.require_admin(request)
        form = await web.form(request)
        eid = _id(request)
        try:
            with web.db.connect() as conn, conn.transaction():
                enroll.refuse(conn, eid, user.username, form.get("reason", ""), web.now_ms())
        except EnrollmentNotFound as exc:
            raise NotFound(str(exc)) from exc
        except EnrollmentError as exc:
            return listing(request, user, error=str(exc), status=409)
        return after("refused", eid)

    def held(request: Request) -> Response:
        user = web.user(request)
        q = request.query_params
        raw_page = q.get("page", "1")
        if not raw_page.isdigit() or not 1 <= int(raw_page) <= 1_000_000:
            raise BadRequest("page must be a positive number")
        page_no = int(raw_page)
        state = q.get("state", "held")
        if state not in (*HELD_STATES, "all"):
            raise BadRequest(f"state must be one of {', '.join(HELD_STATES)} or all")
        chosen = {k: q.get(k, "").strip() for k in ("device", "reason", "hall")}
        if any(len(v) > 64 for v in chosen.values()):
            raise BadRequest("a filter value is at most 64 characters")
        cond, args = user.scope.sql("hall")
        where, params = "WHERE 1 = 1" + cond, list(args)
        if state != "all":
            where += " AND state = ?"
            params.append(state)
        for col in ("device", "reason", "hall"):
            if chosen[col]:
                where += f" AND {col} = ?"
                params.append(chosen[col])
        every = bool(q.get("format"))
        with web.db.connect() as conn:
            total = int(conn.scalar(f"SELECT COUNT(*) FROM held {where}", params))
            rows = conn.all(
                'SELECT id, received_ms, hall, device, "window", clerk, prompt, service, kind, score, scale,'
                " reason, detail, state, decision, rating_id, epoch, seq FROM held "
                f"{where} ORDER BY id DESC LIMIT ? OFFSET ?",
                [*params, MAX_EXPORT if every else PAGE_SIZE, 0 if every else (page_no - 1) * PAGE_SIZE])
            reasons = [str(r[0]) for r in conn.all(f"SELECT DISTINCT reason FROM held WHERE 1 = 1{cond}"
                                                   " ORDER BY reason", list(args))]
        items = [_held_item(r, web.tz) for r in rows]
        described = {"状态 State": STATE_NAMES.get(state, "全部 All"),
                     **{f"筛选 {k}": v for k, v in chosen.items() if v}}
        if user.scope.value is not None:
            described["范围 Scope"] = user.scope.value
        table = export.Table("held", "暂存评价 Held ratings", HELD_COLUMNS, items, described)
        got = web.export(request, table)
        if got is not None:
            return got
        return web.render(request, "held.html", items=items, total=total, page=page_no,
                          pages=max(1, -(-total // PAGE_SIZE)), state=state, states=HELD_STATES,
                          state_names=STATE_NAMES, chosen=chosen, reasons=reasons, reason_names=REASON_NAMES)

    return [
        Route("/enrollments", page, methods=["GET"]),
        Route("/enrollments/upload", upload, methods=["POST"]),
        Route("/enrollments/{id}/approve", approve, methods=["POST"]),
        Route("/enrollments/{id}/refuse", refuse, methods=["POST"]),
        Route("/held", held, methods=["GET"]),
    ]


def _service_name(v: object) -> str:
    if isinstance(v, int) and v in Service._value2member_map_:
        return SERVICE_NAMES_ZH[Service(v)]
    return str(v)


def _held_item(r: tuple[Any, ...] | list[Any], tz: ZoneInfo) -> dict[str, Any]:
    (id_, received, hall, device, window, clerk, prompt, service, kind, score, scale, reason, detail, state,
     decision, rating_id, epoch, seq) = r
    if kind == "no-rating":
        shown = "未评价 No rating"
    elif score is not None and scale in SCORE_NAMES_ZH and score in SCORE_NAMES_ZH[scale]:
        shown = SCORE_NAMES_ZH[scale][score]
    else:
        shown = "—"
    when = datetime.fromtimestamp(received / 1000, tz).strftime("%Y-%m-%d %H:%M:%S")
    return {"id": id_, "received": when, "received_ms": received, "hall": hall, "device": device,
            "window": window, "clerk": clerk, "prompt": prompt, "service": _service_name(service),
            "score": shown, "reason": reason, "detail": detail, "state": state, "decision": decision,
            "rating_id": rating_id, "epoch": epoch, "seq": seq}
