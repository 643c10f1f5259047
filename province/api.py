"""The platform's open read API (JSON over HTTP) for the utility's other systems, mounted at /api/v1.

- A bearer token per client (apiclients.py): missing, unknown or revoked -> 401 ``{error, detail}``.
- Lists are paginated by id: ``limit`` (1..1000, default 100) and ``after`` (the last id seen); each page
  says ``next``, the URL of the following page, or null on the last one. Walking ``next`` from the first
  page returns every row once, also while new ratings arrive (they have higher ids: they come at the end).
- Every parameter is checked: an unknown one, a bad day or number -> 400 ``{error, detail}``. A typo in a
  filter name must not silently return everything.
- A rating carries its keypad's COSE_Mac0 bytes (base64), unchanged, so another system can verify it
  with the keypad's key without trusting this platform.
- /openapi.json describes exactly these endpoints and parameters; it is built from the same parameter
  table the handlers check against, so the two cannot drift apart.

The API sees the whole province (its clients are the utility's systems, not hall staff).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from countersign.protocol.messages import SCORE_NAMES_ZH, is_satisfied

from .apiclients import authenticate
from .db import Conn, Database, DatabaseError
from .errors import ProvinceError
from .figures import Figures, Filter, figures_by
from .report import service_name

__all__ = ["ENDPOINTS", "MAX_LIMIT", "api_routes", "openapi"]

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
VERSION = "1.0.0"

Kind = Literal["day", "text", "int", "enum"]


class ApiError(ProvinceError, ValueError):
    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


@dataclass(frozen=True)
class Param:
    name: str
    kind: Kind
    description: str
    values: tuple[str, ...] = ()
    required: bool = False


FROM = Param("from", "day", "First day (YYYY-MM-DD, the province's zone), inclusive")
TO = Param("to", "day", "Last day (YYYY-MM-DD), inclusive")
HALL = Param("hall", "text", "Hall id")
CLERK = Param("clerk", "text", "Clerk id (工号)")
SERVICE = Param("service", "int", "Service item number (服务项目)")
DEVICE = Param("device", "text", "Keypad id")
LIMIT = Param("limit", "int", f"Rows per page, 1..{MAX_LIMIT} (default {DEFAULT_LIMIT})")
AFTER = Param("after", "int", "Cursor: return rows with an id greater than this (the last id of the"
              " previous page); follow `next` instead of building it")
AFTER_DEVICE = Param("after", "text", "Cursor: keypads whose id sorts after this one")
KIND = Param("kind", "enum", "Only ratings or only no-ratings (未评价)", ("rating", "no-rating"))
BY = Param("by", "enum", "Grouping", ("hall", "clerk", "service", "day"), required=True)


@dataclass(frozen=True)
class Endpoint:
    path: str
    summary: str
    params: tuple[Param, ...]
    item: str                     # the component schema of one row
    paginated: bool = True


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("/ratings", "Ratings and no-ratings, each with its keypad's COSE_Mac0 (base64), by id",
             (FROM, TO, HALL, CLERK, SERVICE, DEVICE, KIND, LIMIT, AFTER), "Rating"),
    Endpoint("/prompts", "Rating prompts opened by the counter system, by id",
             (FROM, TO, HALL, CLERK, SERVICE, DEVICE, LIMIT, AFTER), "Prompt"),
    Endpoint("/aggregates", "Ratings, satisfaction, participation and the 95% Wilson interval per group"
             " over a period (one page: every group)", (BY, FROM, TO, HALL, CLERK, SERVICE), "Aggregate",
             paginated=False),
    Endpoint("/keypads", "Every keypad: its registration and its last status forwarded by the gateway,"
             " by keypad id", (HALL, LIMIT, AFTER_DEVICE), "Keypad"),
)


def _check(request: Request, ep: Endpoint) -> dict[str, Any]:
    """The query parameters, checked and converted; ApiError(400) on anything unknown or malformed."""
    known = {p.name: p for p in ep.params}
    out: dict[str, Any] = {}
    for name in request.query_params:
        if name not in known:
            raise ApiError(400, "unknown-parameter",
                           f"{ep.path} takes {', '.join(known)}; not {name!r}")
        if len(request.query_params.getlist(name)) > 1:
            raise ApiError(400, "bad-parameter", f"{name!r} given more than once")
    for p in ep.params:
        raw = request.query_params.get(p.name)
        if raw is None:
            if p.required:
                raise ApiError(400, "missing-parameter", f"{ep.path} needs {p.name!r}")
            continue
        out[p.name] = _convert(p, raw)
    if "from" in out and "to" in out and out["to"] < out["from"]:
        raise ApiError(400, "bad-parameter", f"'to' ({out['to']}) is before 'from' ({out['from']})")
    return out


def _convert(p: Param, raw: str) -> Any:
    if p.kind == "day":
        try:
            if len(raw) != 10:
                raise ValueError(raw)
            return date.fromisoformat(raw).isoformat()
        except ValueError:
            raise ApiError(400, "bad-parameter", f"{p.name} must be a day YYYY-MM-DD, not {raw!r}") from None
    if p.kind == "int":
        if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
            raise ApiError(400, "bad-parameter", f"{p.name} must be a whole number >= 0, not {raw!r}")
        n = int(raw)
        if p.name == "limit" and not 1 <= n <= MAX_LIMIT:
            raise ApiError(400, "bad-parameter", f"limit must be 1..{MAX_LIMIT}, not {n}")
        return n
    if p.kind == "enum" and raw not in p.values:
        raise ApiError(400, "bad-parameter", f"{p.name} must be one of {', '.join(p.values)}, not {raw!r}")
    if not raw or len(raw) > 200:
        raise ApiError(400, "bad-parameter", f"{p.name} must be 1..200 characters")
    return raw


def _filter(q: dict[str, Any]) -> Filter:
    equals = tuple((c, q[c]) for c in ("hall", "clerk", "service", "device") if c in q)
    return Filter(day_from=q.get("from"), day_to=q.get("to"), equals=equals)


def _iso(ms: int | None, tz: ZoneInfo) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).astimezone(tz).isoformat()


RATING_COLS = ('id, device, epoch, seq, kind, score, scale, prompt, press_s, delay_ms, boot, hall, "window",'
               " clerk, service, txn, prompt_ms, received_ms, stored_ms, day, batch_hall, batch_id, cose,"
               " digest")
PROMPT_COLS = 'id, hall, prompt, device, "window", clerk, service, txn, opened_ms, timeout, day, batch_id'


class _Api:
    def __init__(self, db: Database, tz: ZoneInfo, now_ms: Callable[[], int]) -> None:
        self.db, self.tz, self.now_ms = db, tz, now_ms

    def _run(self, request: Request, ep: Endpoint,
             body: Callable[[Conn, dict[str, Any]], dict[str, Any]]) -> Response:
        try:
            with self.db.connect() as conn:
                self._auth(request, conn)
                q = _check(request, ep)
                return JSONResponse(body(conn, q), headers={"Cache-Control": "no-store"})
        except ApiError as exc:
            headers = {"WWW-Authenticate": 'Bearer realm="countersign"'} if exc.status == 401 else None
            return JSONResponse({"error": exc.error, "detail": exc.detail}, exc.status, headers=headers)
        except DatabaseError:
            return JSONResponse({"error": "unavailable", "detail": "the database cannot be read now; retry"},
                                503, headers={"Retry-After": "5"})

    def _auth(self, request: Request, conn: Conn) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "unauthorized", "send Authorization: Bearer <token>")
        if authenticate(conn, token.strip()) is None:
            raise ApiError(401, "unauthorized", "unknown or revoked token")

    def _page(self, request: Request, rows: list[dict[str, Any]], limit: int, cursor: str) -> dict[str, Any]:
        more = len(rows) > limit
        rows = rows[:limit]
        nxt = str(request.url.include_query_params(after=rows[-1][cursor])) if more else None
        return {"data": rows, "next": nxt}

    def ratings(self, request: Request) -> Response:
        def body(conn: Conn, q: dict[str, Any]) -> dict[str, Any]:
            where, args = _filter(q).sql()
            if "kind" in q:
                where += " AND kind = ?"
                args.append(q["kind"])
            limit = q.get("limit", DEFAULT_LIMIT)
            rows = conn.all(f"SELECT {RATING_COLS} FROM ratings WHERE id > ?{where} ORDER BY id LIMIT ?",
                            [q.get("after", 0), *args, limit + 1])
            return self._page(request, [self._rating(r) for r in rows], limit, "id")
        return self._run(request, ENDPOINTS[0], body)

    def _rating(self, r: Any) -> dict[str, Any]:
        (i, device, epoch, seq, kind, score, scale, prompt, press_s, delay_ms, boot, hall, window, clerk,
         service, txn, prompt_ms, received_ms, stored_ms, day, batch_hall, batch_id, cose, digest) = r
        rated = kind == "rating" and score is not None and scale is not None
        return {"id": i, "device": device, "epoch": epoch, "seq": seq, "kind": kind, "score": score,
                "scale": scale, "score_name": SCORE_NAMES_ZH[scale][score] if rated else None,
                "satisfied": is_satisfied(score, scale) if rated else None,
                "prompt": prompt, "invite_key": prompt == 0,
                "press_time": _iso(None if press_s is None else press_s * 1000, self.tz), "press_s": press_s,
                "delay_ms": delay_ms, "boot": boot, "hall": hall, "window": window, "clerk": clerk,
                "service": service, "service_name": service_name(service), "txn": txn,
                "prompt_ms": prompt_ms, "received_ms": received_ms, "stored_ms": stored_ms, "day": day,
                "batch_hall": batch_hall, "batch_id": batch_id,
                "cose": base64.b64encode(bytes(cose)).decode("ascii"), "digest": bytes(digest).hex()}

    def prompts(self, request: Request) -> Response:
        def body(conn: Conn, q: dict[str, Any]) -> dict[str, Any]:
            where, args = _filter(q).sql()
            limit = q.get("limit", DEFAULT_LIMIT)
            rows = conn.all(f"SELECT {PROMPT_COLS} FROM prompts WHERE id > ?{where} ORDER BY id LIMIT ?",
                            [q.get("after", 0), *args, limit + 1])
            out = [{"id": i, "hall": h, "prompt": p, "device": d, "window": w, "clerk": c, "service": s,
                    "service_name": service_name(s), "txn": t, "opened_ms": o, "opened": _iso(o, self.tz),
                    "timeout": to, "day": day, "batch_id": b}
                   for i, h, p, d, w, c, s, t, o, to, day, b in rows]
            return self._page(request, out, limit, "id")
        return self._run(request, ENDPOINTS[1], body)

    def aggregates(self, request: Request) -> Response:
        def body(conn: Conn, q: dict[str, Any]) -> dict[str, Any]:
            by = q["by"]
            cols = ("hall", "clerk") if by == "clerk" else (by,)
            flt = _filter(q)
            groups = figures_by(conn, cols, flt)
            data = []
            total = Figures()
            for key in sorted(groups, key=lambda k: tuple("" if v is None else str(v) for v in k)):
                figs = groups[key]
                total.add(figs)
                row: dict[str, Any] = dict(zip(cols, key, strict=True))
                if by == "service":
                    row["service_name"] = service_name(int(key[0]))
                row.update(figs.as_json())
                data.append(row)
            return {"by": by, "from": q.get("from"), "to": q.get("to"), "as_of": _iso(self.now_ms(), self.tz),
                    "data": data, "total": total.as_json()}
        return self._run(request, ENDPOINTS[2], body)

    def keypads(self, request: Request) -> Response:
        def body(conn: Conn, q: dict[str, Any]) -> dict[str, Any]:
            limit = q.get("limit", DEFAULT_LIMIT)
            args: list[Any] = [q.get("after", "")]
            where = ""
            if "hall" in q:
                where = " AND COALESCE(d.hall, s.hall) = ?"
                args.append(q["hall"])
            # Every keypad either registry or gateway knows: a UNION of ids, then both sides joined.
            rows = conn.all(
                'SELECT k.device, d.hall, d."window", d.epoch, d.scale, d.revoked, d.source,'
                " s.hall, s.seen_ms, s.online, s.fw, s.reset_cause, s.free_heap, s.outbox, s.rssi,"
                " s.stuck_keys, s.reported_ms"
                " FROM (SELECT device FROM devices UNION SELECT device FROM keypad_status) k"
                " LEFT JOIN devices d ON d.device = k.device LEFT JOIN keypad_status s ON s.device = k.device"
                f" WHERE k.device > ?{where} ORDER BY k.device LIMIT ?", [*args, limit + 1])
            out = []
            for (dev, dhall, win, epoch, scale, revoked, source, shall, seen, online, fw, rc, heap, ob, rssi,
                 stuck, rep) in rows:
                status = None if seen is None else {
                    "seen_ms": seen, "seen": _iso(seen, self.tz), "online": bool(online), "fw": fw,
                    "reset_cause": rc, "free_heap": heap, "outbox": ob, "rssi": rssi, "stuck_keys": stuck,
                    "reported_ms": rep}
                out.append({"device": dev, "hall": dhall if dhall is not None else shall,
                            "registered": dhall is not None, "window": win, "epoch": epoch, "scale": scale,
                            "revoked": None if revoked is None else bool(revoked), "source": source,
                            "status": status})
            return self._page(request, out, limit, "device")
        return self._run(request, ENDPOINTS[3], body)

    def openapi(self, request: Request) -> Response:
        root = request.scope.get("root_path", "") or "/"
        return JSONResponse(openapi(root))


def api_routes(db: Database, tz: ZoneInfo, now_ms: Callable[[], int]) -> list[BaseRoute]:
    """The API's routes, relative to where they are mounted (/api/v1)."""
    api = _Api(db, tz, now_ms)
    handlers = {"/ratings": api.ratings, "/prompts": api.prompts, "/aggregates": api.aggregates,
                "/keypads": api.keypads}
    routes: list[BaseRoute] = [Route(ep.path, handlers[ep.path], methods=["GET"]) for ep in ENDPOINTS]
    routes.append(Route("/openapi.json", api.openapi, methods=["GET"]))
    return routes


# ---- the OpenAPI 3.1 description -------------------------------------------------------------------

_NULL_INT = {"type": ["integer", "null"]}
_NULL_STR = {"type": ["string", "null"]}
_NULL_NUM = {"type": ["number", "null"]}


def _obj(props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props)}


_FIGURES = {"ratings": {"type": "integer"}, "no_ratings": {"type": "integer"}, "prompts": {"type": "integer"},
            "satisfied": {"type": "integer"}, "dissatisfied": {"type": "integer"},
            "satisfaction_rate": _NULL_NUM, "participation_rate": _NULL_NUM,
            "wilson_low": _NULL_NUM, "wilson_high": _NULL_NUM,
            "scores": {"type": "object", "description": "scale -> score name -> count",
                       "additionalProperties": {"type": "object",
                                                "additionalProperties": {"type": "integer"}}}}

SCHEMAS: dict[str, Any] = {
    "Error": _obj({"error": {"type": "string"}, "detail": {"type": "string"}}),
    "Rating": _obj({
        "id": {"type": "integer"}, "device": {"type": "string"}, "epoch": {"type": "integer"},
        "seq": {"type": "integer"}, "kind": {"enum": ["rating", "no-rating"]}, "score": _NULL_INT,
        "scale": _NULL_INT, "score_name": _NULL_STR, "satisfied": {"type": ["boolean", "null"]},
        "prompt": {"type": "integer"}, "invite_key": {"type": "boolean"},
        "press_time": {**_NULL_STR, "description": "ISO 8601; null: the keypad's clock was unknown"},
        "press_s": _NULL_INT, "delay_ms": _NULL_INT, "boot": _NULL_INT, "hall": {"type": "string"},
        "window": {"type": "string"}, "clerk": _NULL_STR, "service": {"type": "integer"},
        "service_name": {"type": "string"}, "txn": _NULL_STR, "prompt_ms": _NULL_INT,
        "received_ms": {"type": "integer"}, "stored_ms": {"type": "integer"}, "day": {"type": "string"},
        "batch_hall": {"type": "string"}, "batch_id": {"type": "integer"},
        "cose": {"type": "string", "contentEncoding": "base64",
                 "description": "the keypad's COSE_Mac0 (HMAC 256/256), unchanged"},
        "digest": {"type": "string", "description": "SHA-256 of cose, hex"}}),
    "Prompt": _obj({
        "id": {"type": "integer"}, "hall": {"type": "string"}, "prompt": {"type": "integer"},
        "device": {"type": "string"}, "window": {"type": "string"}, "clerk": _NULL_STR,
        "service": {"type": "integer"}, "service_name": {"type": "string"}, "txn": _NULL_STR,
        "opened_ms": {"type": "integer"}, "opened": {"type": "string"}, "timeout": {"type": "integer"},
        "day": _NULL_STR, "batch_id": {"type": "integer"}}),
    "Aggregate": {"type": "object", "description": "the group's columns (hall; hall and clerk; service and"
                  " service_name; day), then its figures",
                  "properties": {"hall": {"type": "string"}, "clerk": _NULL_STR,
                                 "service": {"type": "integer"}, "service_name": {"type": "string"},
                                 "day": {"type": "string"}, **_FIGURES},
                  "required": list(_FIGURES)},
    "Figures": _obj(_FIGURES),
    "KeypadStatus": _obj({
        "seen_ms": {"type": "integer"}, "seen": {"type": "string"}, "online": {"type": "boolean"},
        "fw": _NULL_STR, "reset_cause": _NULL_STR, "free_heap": _NULL_INT, "outbox": _NULL_INT,
        "rssi": _NULL_INT, "stuck_keys": _NULL_STR, "reported_ms": {"type": "integer"}}),
    "Keypad": _obj({
        "device": {"type": "string"}, "hall": {"type": "string"}, "registered": {"type": "boolean"},
        "window": _NULL_STR, "epoch": _NULL_INT, "scale": _NULL_INT, "revoked": {"type": ["boolean", "null"]},
        "source": _NULL_STR,
        "status": {"oneOf": [{"$ref": "#/components/schemas/KeypadStatus"}, {"type": "null"}]}}),
}


def _param_schema(p: Param) -> dict[str, Any]:
    if p.kind == "day":
        return {"type": "string", "format": "date"}
    if p.kind == "int":
        s: dict[str, Any] = {"type": "integer", "minimum": 0}
        if p.name == "limit":
            s.update(minimum=1, maximum=MAX_LIMIT, default=DEFAULT_LIMIT)
        return s
    if p.kind == "enum":
        return {"type": "string", "enum": list(p.values)}
    return {"type": "string", "minLength": 1, "maxLength": 200}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _operation(ep: Endpoint) -> dict[str, Any]:
    item = {"$ref": f"#/components/schemas/{ep.item}"}
    if ep.paginated:
        body = _obj({"data": {"type": "array", "items": item},
                     "next": {**_NULL_STR, "description": "URL of the next page; null on the last"}})
    else:
        body = _obj({"by": {"type": "string"}, "from": _NULL_STR, "to": _NULL_STR,
                     "as_of": {"type": "string", "description": "when these figures were computed"},
                     "data": {"type": "array", "items": item},
                     "total": {"$ref": "#/components/schemas/Figures"}})
    return {"get": {
        "summary": ep.summary, "operationId": ep.path.strip("/"),
        "parameters": [{"name": p.name, "in": "query", "required": p.required, "description": p.description,
                        "schema": _param_schema(p)} for p in ep.params],
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": body}}},
                      "400": _error("a parameter unknown, missing or malformed"),
                      "401": _error("no token, an unknown one or a revoked one"),
                      "503": _error("the database cannot be read now")}}}


def openapi(server: str = "/api/v1") -> dict[str, Any]:
    paths: dict[str, Any] = {ep.path: _operation(ep) for ep in ENDPOINTS}
    paths["/openapi.json"] = {"get": {"summary": "This description", "operationId": "openapi", "security": [],
                                      "responses": {"200": {"description": "OpenAPI 3.1 document",
                                                            "content": {"application/json": {}}}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Countersign provincial platform read API 省级满意度评价平台开放接口",
                 "version": VERSION,
                 "description": "Read-only JSON for the utility's other systems. A bearer token per client"
                 " (`countersign province api-client add NAME`). Lists are paginated by id: follow `next`."},
        "servers": [{"url": server}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
