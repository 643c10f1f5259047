"""Helpers of the alert tests (test_4a_*): a gateway's reports written as the receiver stores them, the
alerts and events as a person (or the notifier) reads them, and REAL receivers started by the test: an
HTTP server that apprise's json:// posts to, and an SMTP server (aiosmtpd) that apprise's mailto:// sends
to. Each receiver can be switched "down" (HTTP 503 / SMTP 451) to prove the retries."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from countersign.province.db import Conn, Database


def keypad(conn: Conn, device: str, hall: str, seen_ms: int, *, online: bool = True, outbox: int | None = 0,
           stuck: str | None = "") -> None:
    """keypad_status as hallreports.store_keypad_status leaves it (the latest report)."""
    conn.execute("INSERT INTO keypad_status (device, hall, seen_ms, online, outbox, stuck_keys, reported_ms)"
                 " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device) DO UPDATE"
                 " SET seen_ms = excluded.seen_ms, online = excluded.online, outbox = excluded.outbox,"
                 " stuck_keys = excluded.stuck_keys,"
                 " reported_ms = excluded.reported_ms",
                 (device, hall, seen_ms, int(online), outbox, stuck, seen_ms))


def gateway(conn: Conn, hall: str, backlog: int, reported_ms: int) -> None:
    conn.execute("INSERT INTO gateway_status (hall, backlog, oldest_ms, reported_ms) VALUES (?, ?, NULL, ?)"
                 " ON CONFLICT (hall) DO UPDATE SET backlog = excluded.backlog,"
                 " reported_ms = excluded.reported_ms", (hall, backlog, reported_ms))


def alerts_of(db: Database, kind: str | None = None) -> list[dict[str, Any]]:
    """Every alert (optionally of one kind), oldest first, as dicts."""
    cols = ("id", "kind", "hall", "device", "window", "rating", "dedup", "state", "detail", "repeats",
            "level", "acked_by", "raised_ms", "cleared_ms")
    cond, args = ("WHERE kind = ?", (kind,)) if kind else ("", ())
    with db.connect() as conn:
        rows = conn.all('SELECT id, kind, hall, device, "window", rating, dedup, state, detail, repeats,'
                        f" level, acked_by, raised_ms, cleared_ms FROM alerts {cond} ORDER BY id", args)
    return [dict(zip(cols, r, strict=True)) for r in rows]


def open_kinds(db: Database) -> list[tuple[str, str]]:
    """(kind, dedup) of the alerts not cleared."""
    return sorted((a["kind"], a["dedup"]) for a in alerts_of(db) if a["state"] != "cleared")


def events_of(db: Database) -> list[tuple[int, str, int]]:
    """(alert, event, level) of every alert_events row, in order."""
    with db.connect() as conn:
        return [(int(a), str(e), int(lv)) for a, e, lv in
                conn.all("SELECT alert, event, level FROM alert_events ORDER BY id")]


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    """A condition wait on a Condition fed by the receivers (no sleep loop): see Received."""
    return RECEIVED.wait_for(cond, timeout)


class _Received:
    """One condition every test receiver notifies on, so a test waits for 'the message arrived'."""

    def __init__(self) -> None:
        self.cond = threading.Condition()

    def notify(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def wait_for(self, pred: Callable[[], bool], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(pred, timeout)


RECEIVED = _Received()


@dataclass
class HttpReceiver:
    """A real HTTP server on a free port recording apprise json:// posts; ``down`` answers 503."""

    posts: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    down: bool = False
    refused: int = 0

    def __post_init__(self) -> None:
        me = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if me.down:
                    me.refused += 1
                    self.send_response(503)
                    self.end_headers()
                    RECEIVED.notify()
                    return
                me.posts.append(json.loads(body))
                me.paths.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                RECEIVED.notify()

            def log_message(self, *_a: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/alerts") -> str:
        return f"json://127.0.0.1:{self.port}{path}"

    def titles(self) -> list[str]:
        return [str(p.get("title", "")) for p in self.posts]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Auth:
    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user.encode(), password.encode()

    def __call__(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                 auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            self.user, self.password)
        return AuthResult(success=ok, handled=False)


class SmtpReceiver:
    """A real SMTP server (aiosmtpd) on a free port, with log-in (plain text allowed: it is local), that
    keeps each message; ``down`` answers 451 (try again later) to every message."""

    USER, PASSWORD = "alerts", "s3cret-pass"

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.down = False
        self.refused = 0
        me = self

        class Handler:
            async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
                if me.down:
                    me.refused += 1
                    RECEIVED.notify()
                    return "451 try again later"
                content = envelope.content
                raw = content if isinstance(content, bytes) else str(content).encode()
                me.messages.append(message_from_bytes(raw, policy=policy.default))
                RECEIVED.notify()
                return "250 OK"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=free_port(),
                                     authenticator=_Auth(self.USER, self.PASSWORD), auth_require_tls=False)
        self.controller.start()
        self.port = int(self.controller.port)

    def url(self, to: str = "hall-manager@example.com") -> str:
        # mode=insecure: a plain local SMTP without TLS (apprise's default for mailto:// is STARTTLS).
        return (f"mailto://{self.USER}:{self.PASSWORD}@127.0.0.1:{self.port}"
                f"?mode=insecure&from=countersign@example.com&to={to}")

    def subjects(self) -> list[str]:
        return [str(m["subject"]) for m in self.messages]

    def stop(self) -> None:
        self.controller.stop()
