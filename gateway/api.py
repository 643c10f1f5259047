"""The gateway's counter-system API: a Starlette app, JSON in and out, a bearer credential on every call.

  POST   /v1/windows/<w>/signin   {"clerk": "10023", "name": "张三"}
  POST   /v1/windows/<w>/signout
  POST   /v1/windows/<w>/prompt   {"txn": "T-1", "service": 2, "timeout": 20}  -> {"prompt": <id>, ...}
  GET    /v1/prompts/<id>         the prompt's result: rated (score), no rating, or still open
  PUT    /v1/webhook              {"url": "http://..."}: called when one of the caller's prompts ends
  DELETE /v1/webhook
  GET    /v1/status               devices, sessions (clerk ids), counts, alarms, backlog
  GET    /metrics                 Prometheus text format

``Authorization: Bearer <token>`` (tokens.py) names the caller; a window it may not drive is a 403
before any operation runs. ``/metrics`` alone needs no credential: it holds counts only (no clerk, no
window's session), and Prometheus scrapers on the hall LAN are not issued counter credentials.

Every failure is answered, never a dropped connection: 401/403/404/409/413/429 from the checks, 400 for
a body that is not a small, shallow JSON object of valid Unicode, 500 (with the traceback in the log)
for a bug. Operations validate fully before changing anything, so a 4xx means nothing changed. Every
call is logged once with the credential's name, method, path and status (never the token).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from .errors import ApiError, BadRequest, Forbidden, PayloadTooLarge, TooMany, Unauthorized
from .identity import Caller
from .tokens import Credentials

log = logging.getLogger("countersign.gateway.api")

MAX_BODY = 4096
MAX_DEPTH = 16
_DRAIN_MAX = 64 * 1024      # an oversized body is read this far so the 413 is not lost to a TCP reset
_WINDOW_MAX = 32


class Operations(Protocol):
    """What the API needs from the gateway (gateway.Gateway implements it, delegating to counter.py)."""

    def sign_in(self, caller: Caller, window: str, body: dict[str, Any]) -> dict[str, Any]: ...
    def sign_out(self, caller: Caller, window: str, body: dict[str, Any]) -> dict[str, Any]: ...
    def open_prompt(self, caller: Caller, window: str, body: dict[str, Any]) -> dict[str, Any]: ...
    def prompt_result(self, caller: Caller, prompt_id: int) -> dict[str, Any]: ...
    def set_webhook(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]: ...
    def delete_webhook(self, caller: Caller) -> dict[str, Any]: ...
    def status(self) -> dict[str, Any]: ...
    def metrics(self) -> str: ...


def create_app(ops: Operations, credentials: Credentials, mounts: Sequence[BaseRoute] = ()) -> Starlette:
    """The app: the API routes, then ``mounts`` (the hall page owns ``/``, ``/hall*``, ``/login``,
    ``/static``)."""
    api = _Api(ops, credentials)
    routes: list[BaseRoute] = [
        Route("/v1/windows/{window}/signin", api.sign_in, methods=["POST"]),
        Route("/v1/windows/{window}/signout", api.sign_out, methods=["POST"]),
        Route("/v1/windows/{window}/prompt", api.open_prompt, methods=["POST"]),
        Route("/v1/prompts/{prompt_id}", api.prompt_result, methods=["GET"]),
        Route("/v1/webhook", api.webhook, methods=["PUT", "DELETE"]),
        Route("/v1/status", api.status, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        *mounts,
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_exception})


async def _http_exception(request: Request, exc: Exception) -> Response:
    """The router's own 404/405: JSON for the API's paths, plain text for the page's."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    headers = getattr(exc, "headers", None)
    log.info("api - %s %s -> %d", request.method, _printable(request.url.path), status)
    if request.url.path.startswith(("/v1/", "/metrics")):
        return JSONResponse({"error": detail}, status, headers=headers)
    return PlainTextResponse(detail, status, headers=headers)


def _printable(text: str) -> str:
    """A request path fit for one log line: no newline or control character can forge another."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
                   for c in text[:200])


def _bearer(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _max_depth(raw: bytes) -> int:
    """Nesting depth of JSON text, counted before parsing (json.loads recurses: 2,000 deep overflows)."""
    depth = deepest = 0
    in_string = escaped = False
    for b in raw:
        if in_string:
            if escaped:
                escaped = False
            elif b == 0x5C:          # backslash
                escaped = True
            elif b == 0x22:          # quote
                in_string = False
        elif b == 0x22:
            in_string = True
        elif b in (0x5B, 0x7B):      # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif b in (0x5D, 0x7D):      # ] }
            depth -= 1
    return deepest


def _no_surrogates(obj: Any) -> None:
    """Every string, keys included, must be valid Unicode: a lone surrogate (\\ud800) cannot be stored,
    shown on a keypad or encoded into an answer."""
    if isinstance(obj, str):
        if any(0xD800 <= ord(c) <= 0xDFFF for c in obj):
            raise BadRequest("text must be valid Unicode (lone surrogate)")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _no_surrogates(k)
            _no_surrogates(v)
    elif isinstance(obj, list):
        for v in obj:
            _no_surrogates(v)


def _reject_constant(name: str) -> Any:
    raise BadRequest(f"{name} is not a JSON number")


def parse_body(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object; an empty body is ``{}``."""
    if not raw.strip():
        return {}
    if _max_depth(raw) > MAX_DEPTH:
        raise BadRequest(f"body is nested deeper than {MAX_DEPTH}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest("body is not UTF-8") from exc
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:      # JSONDecodeError, and int-digit limits, are ValueErrors
        if isinstance(exc, ApiError):
            raise
        raise BadRequest(f"body is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise BadRequest("body must be a JSON object")
    _no_surrogates(obj)
    return obj


def _check_window(caller: Caller, window: str) -> None:
    if not 1 <= len(window) <= _WINDOW_MAX or not window.isprintable() or " " in window:
        raise BadRequest(f"a window id is 1..{_WINDOW_MAX} printable characters without spaces")
    if not caller.may_drive(window):
        raise Forbidden(f"credential {caller.name!r} may not drive window {window}")


def _error_response(exc: ApiError) -> Response:
    headers: dict[str, str] = {}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="countersign"'
    if isinstance(exc, TooMany) and exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return JSONResponse({"error": str(exc)}, exc.status, headers=headers)


def _json(obj: Any, status: int = 200) -> Response:
    body = json.dumps(obj, ensure_ascii=False).encode("utf-8")
    return Response(body, status, media_type="application/json")


_Work = Callable[[Caller, dict[str, Any]], Any]


class _Api:
    def __init__(self, ops: Operations, credentials: Credentials) -> None:
        self.ops, self.credentials = ops, credentials

    async def _serve(self, request: Request, work: _Work, *, body: bool = False,
                     window: str | None = None) -> Response:
        """Authenticate, parse, check the window, run ``work`` off the event loop; log one line."""
        who = "-"
        try:
            caller = self._caller(request)
            who = caller.name
            data = await self._read_body(request) if body else {}
            if window is not None:
                _check_window(caller, window)
            out = await run_in_threadpool(work, caller, data)
            response = out if isinstance(out, Response) else _json(out)
        except ApiError as exc:
            response = _error_response(exc)
            detail = f" ({exc})"
        except ClientDisconnect:
            log.info("api %s %s %s -> client went away", who, request.method, _printable(request.url.path))
            return Response(status_code=400)       # nobody reads it: uvicorn drops it for a gone client
        except Exception:   # one request's bug must not take the API down; the log has the traceback
            log.exception("api %s %s %s -> 500", who, request.method, _printable(request.url.path))
            return JSONResponse({"error": "internal error (see the gateway log)"}, 500)
        else:
            detail = ""
        log.info("api %s %s %s -> %d%s", who, request.method, _printable(request.url.path),
                 response.status_code, _printable(detail))
        return response

    def _caller(self, request: Request) -> Caller:
        token = _bearer(request)
        if not token:
            raise Unauthorized("a credential is required (Authorization: Bearer <token>)")
        caller = self.credentials.lookup(token)
        if caller is None:
            raise Unauthorized("unknown or revoked credential")
        return caller

    async def _read_body(self, request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
            await self._drain(request)
            raise PayloadTooLarge(f"request body over {MAX_BODY} bytes")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY:
                await self._drain(request, len(raw))
                raise PayloadTooLarge(f"request body over {MAX_BODY} bytes")
        return parse_body(bytes(raw))

    @staticmethod
    async def _drain(request: Request, seen: int = 0) -> None:
        try:
            async for chunk in request.stream():
                seen += len(chunk)
                if seen > _DRAIN_MAX:
                    return
        except (ClientDisconnect, RuntimeError):
            return      # gone, or the stream was consumed already: nothing left to drain

    # --- routes -------------------------------------------------------------------------------------------

    async def sign_in(self, request: Request) -> Response:
        w = request.path_params["window"]
        return await self._serve(request, lambda c, b: self.ops.sign_in(c, w, b), body=True, window=w)

    async def sign_out(self, request: Request) -> Response:
        w = request.path_params["window"]
        return await self._serve(request, lambda c, b: self.ops.sign_out(c, w, b), body=True, window=w)

    async def open_prompt(self, request: Request) -> Response:
        w = request.path_params["window"]
        return await self._serve(request, lambda c, b: self.ops.open_prompt(c, w, b), body=True, window=w)

    async def prompt_result(self, request: Request) -> Response:
        raw = request.path_params["prompt_id"]

        def work(c: Caller, _b: dict[str, Any]) -> Any:
            if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
                raise BadRequest("a prompt id is a number")
            return self.ops.prompt_result(c, int(raw))

        return await self._serve(request, work)

    async def webhook(self, request: Request) -> Response:
        if request.method == "PUT":
            return await self._serve(request, self.ops.set_webhook, body=True)
        return await self._serve(request, lambda c, _b: self.ops.delete_webhook(c))

    async def status(self, request: Request) -> Response:
        return await self._serve(request, lambda _c, _b: self.ops.status())

    async def metrics(self, request: Request) -> Response:
        text = await run_in_threadpool(self.ops.metrics)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")


__all__ = ["MAX_BODY", "MAX_DEPTH", "Operations", "create_app", "parse_body"]
