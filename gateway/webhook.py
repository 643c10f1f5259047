"""Delivers "prompt-ended" events to the counter systems' webhooks, retried until a 2xx.

Deliveries are rows in the store (readback.py enqueues them in the outcome's own transaction), so an
outage of the receiver or a restart of the gateway delays them and loses none. One thread sends them,
oldest due first, and waits on a condition between attempts: woken by a new outcome, a new webhook or
stop, or by the time the next retry or prompt expiry falls due.

Each POST carries ``X-Countersign-Signature: sha256=<hex>``, the HMAC-SHA256 of the exact body under the
webhook's secret, and ``X-Countersign-Delivery: <id>``: a receiver whose 2xx got lost sees that id again
and can drop the repeat.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from . import readback
from .store import Store

log = logging.getLogger("countersign.gateway.webhook")

PART = "webhook-sender"
SIGNATURE_HEADER = "X-Countersign-Signature"
DELIVERY_HEADER = "X-Countersign-Delivery"
POST_TIMEOUT_S = 10.0
IDLE_WAIT_S = 60.0         # re-check at least this often (a wall clock that jumped, a missed wake)


@dataclass(frozen=True)
class Backoff:
    first_s: float = 1.0
    max_s: float = 300.0

    def after(self, attempts: int) -> float:
        return float(min(self.max_s, self.first_s * 2 ** min(attempts - 1, 30)))


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def event_body(hall: str, delivery: int, result_json: str) -> bytes:
    # The hall is in the body, not only a header: the signature covers the body alone.
    event = {"event": "prompt-ended", "hall": hall, "delivery": delivery, **json.loads(result_json)}
    return json.dumps(event, ensure_ascii=False, sort_keys=True).encode("utf-8")


class WebhookSender:
    def __init__(self, store: Store, now_ms: Callable[[], int], grace_s: float, backoff: Backoff,
                 hall: str, credential_valid: Callable[[str], bool]) -> None:
        """``credential_valid(name)``: whether the credential that registered a webhook still may use it."""
        self.store, self.now_ms, self.hall = store, now_ms, hall
        self.credential_valid = credential_valid
        self.grace_ms = int(grace_s * 1000)
        self.backoff = backoff
        self._cond = threading.Condition()
        self._stop = False
        self._kicked = False
        self.thread: threading.Thread | None = None

    def wake(self) -> None:
        with self._cond:
            self._kicked = True
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self.thread is not None:
            self.thread.join(POST_TIMEOUT_S + 5)

    def run(self) -> None:
        """The sender's loop (started with Watch.spawn: returning while the gateway runs is fatal)."""
        while True:
            with self._cond:
                if self._stop:
                    return
                self._kicked = False
            wait_s = self.step()
            with self._cond:
                if self._stop:
                    return
                if not self._kicked and wait_s > 0:
                    self._cond.wait(min(wait_s, IDLE_WAIT_S))

    def step(self) -> float:
        """Expire overdue prompts, send one due delivery; -> seconds until there is more to do."""
        now = self.now_ms()
        # Woken after every ingest commit: look first, and take the write lock only with work to do.
        with self.store.read() as c:
            expiring = c.execute("SELECT 1 FROM prompt_due WHERE due_ms <= ? LIMIT 1",
                                 (now - self.grace_ms,)).fetchone()
        if expiring is not None:
            with self.store.transaction() as c:
                readback.expire_due(c, now, self.grace_ms)
        with self.store.read() as c:
            due = c.execute(
                "SELECT d.id, d.caller, d.result, d.attempts, w.url, w.secret FROM webhook_deliveries d"
                " JOIN webhooks w ON w.caller = d.caller WHERE d.delivered_ms IS NULL AND d.next_ms <= ?"
                " ORDER BY d.next_ms, d.id LIMIT 1", (now,)).fetchone()
        if due is not None:
            self._deliver(*due)
            return 0.0
        with self.store.read() as c:
            row = c.execute("SELECT min(d.next_ms) FROM webhook_deliveries d JOIN webhooks w"
                            " ON w.caller = d.caller WHERE d.delivered_ms IS NULL").fetchone()
            expiry = readback.next_due_ms(c)
        times = [t for t in (row[0], None if expiry is None else expiry + self.grace_ms) if t is not None]
        if not times:
            return IDLE_WAIT_S
        return max(0.0, (min(times) - self.now_ms()) / 1000.0) or 0.001

    def _deliver(self, did: int, caller: str, result_json: str, attempts: int, url: str, secret: str) -> None:
        body = event_body(self.hall, did, result_json)
        if not self.credential_valid(caller):
            # A revoked counter PC learns no more ratings; its deliveries wait (a credential issued again
            # under a new name registers its own webhook).
            error: str | None = "credential revoked or unknown: not sent"
        else:
            error = post(url, body, {SIGNATURE_HEADER: sign(secret, body), DELIVERY_HEADER: str(did),
                                     "X-Countersign-Hall": self.hall})
        now = self.now_ms()
        with self.store.transaction() as c:
            if error is None:
                c.execute("UPDATE webhook_deliveries SET delivered_ms=?, attempts=attempts+1, last_error=NULL"
                          " WHERE id=?", (now, did))
            else:
                delay = self.backoff.after(attempts + 1)
                c.execute("UPDATE webhook_deliveries SET attempts=attempts+1, last_error=?, next_ms=?"
                          " WHERE id=?", (error, now + int(delay * 1000), did))
        if error is None:
            log.info("webhook delivery %d to %s (%s) done", did, caller, url)
        else:
            log.warning("webhook delivery %d to %s (%s) failed (%s); attempt %d, retrying in %.1f s",
                        did, caller, url, error, attempts + 1, self.backoff.after(attempts + 1))


def post(url: str, body: bytes, headers: dict[str, str]) -> str | None:
    """POST ``body`` as JSON; None on a 2xx, else why not. Redirects are not followed: a 3xx is a failure."""
    u = urlsplit(url)
    host = u.hostname or ""
    conn: http.client.HTTPConnection
    if u.scheme == "https":
        conn = http.client.HTTPSConnection(host, u.port, timeout=POST_TIMEOUT_S,
                                           context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(host, u.port, timeout=POST_TIMEOUT_S)
    path = u.path or "/"
    if u.query:
        path += "?" + u.query
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json", **headers})
        resp = conn.getresponse()
        resp.read(64 * 1024)
        if 200 <= resp.status < 300:
            return None
        return f"HTTP {resp.status}"
    except (OSError, http.client.HTTPException) as exc:
        return f"{type(exc).__name__}: {exc}"[:200]
    finally:
        conn.close()


__all__ = ["DELIVERY_HEADER", "PART", "SIGNATURE_HEADER", "Backoff", "WebhookSender", "event_body", "post",
           "sign"]
