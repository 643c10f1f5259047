"""The gateway's local HTTP API for the counter system (stdlib ThreadingHTTPServer, JSON in and out).

  POST /v1/windows/<w>/signin   {"clerk": "10023", "name": "张三"}
  POST /v1/windows/<w>/signout
  POST /v1/windows/<w>/prompt   {"txn": "T-1", "service": 2, "timeout": 20}  -> {"prompt": <id>}
  GET  /v1/status               devices, counts, open alarms, forwarding backlog
  GET  /metrics                 Prometheus text format

Every handler validates fully before it changes anything, so a 4xx answer means nothing changed.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from .errors import ApiError, BadRequest, NotFound

log = logging.getLogger("countersign.gateway.api")

MAX_BODY = 4096
_WINDOW_PATH = re.compile(r"^/v1/windows/([^/]{1,32})/(signin|signout|prompt)$")


class Operations(Protocol):
    """What the API needs from the gateway (gateway.Gateway implements it)."""

    def sign_in(self, window: str, body: dict[str, Any]) -> dict[str, Any]: ...
    def sign_out(self, window: str, body: dict[str, Any]) -> dict[str, Any]: ...
    def open_prompt(self, window: str, body: dict[str, Any]) -> dict[str, Any]: ...
    def status(self) -> dict[str, Any]: ...
    def metrics(self) -> str: ...


class ApiServer:
    def __init__(self, ops: Operations, bind: str, port: int) -> None:
        handler = type("Handler", (_Handler,), {"ops": ops})
        self.httpd = ThreadingHTTPServer((bind, port), handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="gateway-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)


class _Handler(BaseHTTPRequestHandler):
    ops: Operations
    server_version = "countersign-gateway"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.client_address[0], *args)

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode(), "application/json; charset=utf-8")

    def _body(self) -> dict[str, Any]:
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError as exc:
            raise BadRequest("bad Content-Length") from exc
        if n > MAX_BODY or n < 0:
            raise BadRequest(f"request body over {MAX_BODY} bytes", 413)
        raw = self.rfile.read(n) if n else b""
        if not raw.strip():
            return {}
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadRequest(f"body is not JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise BadRequest("body must be a JSON object")
        return obj

    def do_GET(self) -> None:
        try:
            if self.path == "/v1/status":
                self._json(200, self.ops.status())
            elif self.path == "/metrics":
                self._send(200, self.ops.metrics().encode(), "text/plain; version=0.0.4; charset=utf-8")
            else:
                raise NotFound(f"no such resource {self.path}")
        except ApiError as exc:
            self._json(exc.status, {"error": str(exc)})

    def do_POST(self) -> None:
        try:
            m = _WINDOW_PATH.match(self.path)
            if not m:
                raise NotFound(f"no such resource {self.path}")
            body = self._body()
            window, action = m.group(1), m.group(2)
            if action == "signin":
                out = self.ops.sign_in(window, body)
            elif action == "signout":
                out = self.ops.sign_out(window, body)
            else:
                out = self.ops.open_prompt(window, body)
            self._json(200, out)
        except ApiError as exc:
            log.info("API %s %s -> %d %s", self.command, self.path, exc.status, exc)
            self._json(exc.status, {"error": str(exc)})
