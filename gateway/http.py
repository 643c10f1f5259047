"""The gateway's HTTP server: uvicorn on its own thread and event loop, guarded against a hostile LAN.

uvicorn alone does not hold up on a hall LAN where anyone can open sockets: its keep-alive timer starts
only after a response, so a connection that never completes a request (half-open, slowloris) is kept
forever, and ``limit_concurrency`` answers 503 only once a request has arrived, so idle connections
still pin file handles until the process has none left (and then cannot reconnect to its own broker).
``_GuardedH11`` closes what uvicorn keeps:

* a request (head and body) must be complete within ``header_timeout_s`` of the connection opening or
  of its first byte after a response; otherwise the connection gets a 408 and is closed;
* at most ``max_connections`` are open. A new connection beyond it first evicts the oldest one that has
  no request in progress (a flood of idle sockets cannot keep a real counter PC out); if every open
  connection is busy it is answered a complete 503 at once and closed.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import socket
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import GatewayError

log = logging.getLogger("countersign.gateway.http")

# After a 503 the socket lingers this long, reading and dropping what the client still sends, so that
# closing with unread data does not turn into a TCP reset that destroys the answer before it is read.
_LINGER_S = 2.0


class HttpError(GatewayError, OSError):
    """The HTTP server could not be started."""


@dataclass(frozen=True)
class HttpLimits:
    max_connections: int = 64
    header_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    max_header_bytes: int = 8192
    backlog: int = 128

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.header_timeout_s <= 0 or self.keep_alive_s <= 0:
            raise GatewayError("http limits must be positive")


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path


def _raw_response(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode() + body


class _GuardedH11(H11Protocol):
    """H11Protocol with a per-request deadline and a connection cap (see the module docstring)."""

    limits: ClassVar[HttpLimits]
    registry: ClassVar[OrderedDict[int, _GuardedH11]]     # open connections, oldest first (one loop)

    _deadline: asyncio.TimerHandle | None = None
    _rejected = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not isinstance(transport, asyncio.Transport):
            raise TypeError("a stream server gives a Transport")
        if len(self.registry) >= self.limits.max_connections and not self._evict_idle():
            self._reject(transport)
            return
        super().connection_made(transport)
        self.registry[id(self)] = self
        self._arm()

    def _evict_idle(self) -> bool:
        for conn in self.registry.values():
            if not conn._busy():
                log.debug("http: %d connections open, closing the oldest idle one", len(self.registry))
                conn._close(408, "Request Timeout", "connection closed: too many connections")
                return True
        return False

    def _reject(self, transport: asyncio.Transport) -> None:
        self._rejected = True
        self.transport = transport
        log.debug("http: %d busy connections, answering 503", len(self.registry))
        transport.write(_raw_response(503, "Service Unavailable", "too many connections; retry shortly"))
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(_LINGER_S, transport.close)

    def _busy(self) -> bool:
        """A request head has arrived and its response is not complete."""
        return self.cycle is not None and not self.cycle.response_complete

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.limits.header_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self._busy() and not self.cycle.more_body:
            return      # the request is complete and the app is answering it
        self._close(408, "Request Timeout", "request not complete in time")

    def _close(self, status: int, reason: str, message: str) -> None:
        self._disarm()
        self.registry.pop(id(self), None)
        if self.transport.is_closing():
            return
        # Only when no response has begun: otherwise the client would see two.
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(_raw_response(status, reason, message))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes that are not HTTP, in the API's JSON like every other refusal."""
        self._disarm()
        self.registry.pop(id(self), None)
        self.transport.write(_raw_response(400, "Bad Request", msg))
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return
        super().data_received(data)
        if self._busy() and not self.cycle.more_body:
            self._disarm()
        elif not self.transport.is_closing():
            self._arm()

    def eof_received(self) -> None:
        if self._rejected:
            self.transport.close()      # the client has read our 503 and hung up
            return
        super().eof_received()

    def on_response_complete(self) -> None:
        self._disarm()      # from here uvicorn's keep-alive timer runs until the next byte arrives
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.registry.pop(id(self), None)
        if self._rejected:
            return
        super().connection_lost(exc)


def _protocol_for(limits: HttpLimits) -> type[_GuardedH11]:
    class Guarded(_GuardedH11):
        pass

    Guarded.limits = limits
    Guarded.registry = OrderedDict()
    return Guarded


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, listening: threading.Event, handshake_s: float) -> None:
        super().__init__(config)
        self._listening = listening
        self._handshake_s = handshake_s

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if self.config.ssl is not None:
            # A TLS connection reaches _GuardedH11 only after its handshake, so one that never shakes
            # hands is bounded by asyncio's handshake timeout alone (60 s unless given): give it ours.
            # uvicorn has no option for it; this loop is this server's own, so the wrapper stays here.
            loop = asyncio.get_running_loop()
            setattr(loop, "create_server",  # noqa: B010 - mypy refuses assigning to a method
                    functools.partial(loop.create_server, ssl_handshake_timeout=self._handshake_s))
        await super().startup(sockets)
        self._listening.set()


def _listen_socket(bind: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bind, port))
    except OSError as exc:
        sock.close()
        raise HttpError(f"cannot listen on {bind}:{port}: {exc}") from exc
    sock.set_inheritable(False)
    return sock


class HttpServer:
    """One ASGI app served on ``bind:port`` (0 = a free port) from a thread of its own."""

    def __init__(self, app: ASGIApp, bind: str, port: int, limits: HttpLimits,
                 tls: TlsFiles | None = None) -> None:
        self._sock = _listen_socket(bind, port)
        self.tls = tls
        tls_kw: dict[str, Any] = {}
        if tls is not None:
            tls_kw = {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key)}
        self._config = uvicorn.Config(
            app, http=_protocol_for(limits), ws="none", lifespan="off", interface="asgi3",
            log_config=None, access_log=False,       # api.py logs every call with its credential
            server_header=False, proxy_headers=False,
            timeout_keep_alive=max(1, round(limits.keep_alive_s)),
            h11_max_incomplete_event_size=limits.max_header_bytes,
            backlog=limits.backlog, timeout_graceful_shutdown=2, **tls_kw)
        try:
            # Here, not in the server thread: a bad certificate or key fails the gateway's start.
            self._config.load()
        except (OSError, ValueError) as exc:
            self._sock.close()
            raise HttpError(f"cannot load the HTTP server's TLS files: {exc}") from exc
        self._listening = threading.Event()
        self._server = _Server(self._config, self._listening, limits.header_timeout_s)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="gateway-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    @property
    def scheme(self) -> str:
        return "http" if self.tls is None else "https"

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            self._listening.set()

    def start(self, timeout: float = 10.0) -> None:
        """Return once the socket accepts connections (raise if the server thread failed instead)."""
        self._thread.start()
        if not self._listening.wait(timeout):
            raise HttpError(f"HTTP server did not start within {timeout} s")
        if self._error is not None or not self._server.started:
            raise HttpError(f"HTTP server failed to start: {self._error!r}")

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(10)
        self._sock.close()
