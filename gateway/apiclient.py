"""A small typed client of the counter API, for counter systems, the simulators and the tests.

Every call carries the credential (``Authorization: Bearer``); every refusal raises ``ApiCallError``
with the gateway's status and message, so a caller never mistakes a 4xx for success.
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from .errors import ApiError


class ApiCallError(ApiError):
    """The gateway refused a call (``status`` is its HTTP status) or did not answer (``status`` 0)."""


def read_token(path: Path) -> str:
    """A token file as ``countersign gateway token issue --out`` writes it."""
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise ApiCallError(f"token file {path} is empty", 0)
    return token


class CounterClient:
    def __init__(self, base_url: str, token: str, *, ca_file: Path | None = None,
                 timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = timeout
        ctx = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
        # Direct, never through an HTTP proxy from the environment: the gateway is on the hall LAN, and a
        # proxy would see the token.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                                   urllib.request.HTTPSHandler(context=ctx))

    def __repr__(self) -> str:
        return f"CounterClient({self.base_url!r})"     # never the token

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One call; the parsed JSON answer (or text, for /metrics) on 2xx."""
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self._token}", "Content-Type": "application/json"})
        try:
            with self._opener.open(req, timeout=self.timeout) as r:
                raw, ctype = r.read(), r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                message = str(json.loads(raw)["error"])
            except (ValueError, KeyError, TypeError):
                message = raw.decode("utf-8", "replace")[:200] or e.reason
            raise ApiCallError(message, e.code) from e
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            raise ApiCallError(f"no answer from {self.base_url}: {e}", 0) from e
        return json.loads(raw) if ctype.startswith("application/json") else raw.decode("utf-8")

    @staticmethod
    def _w(window: str) -> str:
        return urllib.parse.quote(window, safe="")

    def sign_in(self, window: str, clerk: str, name: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"clerk": clerk}
        if name is not None:
            body["name"] = name
        out: dict[str, Any] = self.call("POST", f"/v1/windows/{self._w(window)}/signin", body)
        return out

    def sign_out(self, window: str) -> dict[str, Any]:
        out: dict[str, Any] = self.call("POST", f"/v1/windows/{self._w(window)}/signout", {})
        return out

    def open_prompt(self, window: str, txn: str, service: int, timeout: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"txn": txn, "service": service}
        if timeout is not None:
            body["timeout"] = timeout
        out: dict[str, Any] = self.call("POST", f"/v1/windows/{self._w(window)}/prompt", body)
        return out

    def prompt_result(self, prompt_id: int) -> dict[str, Any]:
        out: dict[str, Any] = self.call("GET", f"/v1/prompts/{int(prompt_id)}")
        return out

    def set_webhook(self, url: str, **extra: Any) -> dict[str, Any]:
        out: dict[str, Any] = self.call("PUT", "/v1/webhook", {"url": url, **extra})
        return out

    def delete_webhook(self) -> dict[str, Any]:
        out: dict[str, Any] = self.call("DELETE", "/v1/webhook")
        return out

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = self.call("GET", "/v1/status")
        return out

    def metrics(self) -> str:
        return str(self.call("GET", "/metrics"))
