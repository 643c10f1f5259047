"""The counter API holds up on a hostile hall LAN: every bad request gets a complete 4xx/5xx answer and
changes nothing, idle and half-open connections are closed on time, a flood of them neither shuts out
a real counter system nor leaves the gateway without file handles for its own broker connection.

Real gateway, real mosquitto, raw sockets over loopback (so a dropped connection cannot pass for an
answer); the flood runs against a `countersign gateway run` process limited to 512 file handles.
"""

from __future__ import annotations

import json
import logging
import os
import re
import resource
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import GATEWAY_PASSWORD, device_key, make_keystore
from gw_helpers import Device, client, rating, rows, start_gateway, token_of, write_config

from countersign.gateway.apiclient import CounterClient
from countersign.gateway.gateway import Gateway
from countersign.protocol.keystore import Keystore
from countersign.sim.broker import Mosquitto, free_port

A = "hf01-w01"
KA = device_key(1)


def read_all(s: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes; a reset instead of a close fails the test."""
    s.settimeout(timeout)
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def answer(raw: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.1 (\d{3}) ", head)
    assert m, raw[:200]
    assert b"application/json" in head.lower(), raw[:300]
    return int(m.group(1)), json.loads(body)


def request(port: int, method: str, path: str, body: bytes, token: str, extra: str = "") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        length = "" if "chunked" in extra else f"Content-Length: {len(body)}\r\n"
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n"
                  f"Content-Type: application/json\r\n{extra}{length}"
                  f"Connection: close\r\n\r\n".encode() + body)
        return read_all(s)


@pytest.fixture
def env(tmp_path: Path, hall_broker: Callable[[Keystore], Mosquitto]) -> Iterator[tuple[Gateway, Device]]:
    ks = make_keystore(devices=1)
    broker = hall_broker(ks)
    gw = start_gateway(write_config(tmp_path, ks, broker.port, http_max_connections=4,
                                    http_header_timeout_s=2.0))
    a = Device(broker.port, A, KA).start()
    yield gw, a
    a.stop()
    gw.stop()


def snapshot(gw: Gateway) -> tuple[object, ...]:
    return (rows(gw, "SELECT * FROM sessions"), rows(gw, "SELECT * FROM prompts"))


def chunked(data: bytes, size: int = 1000) -> bytes:
    parts = [data[i:i + size] for i in range(0, len(data), size)]
    return b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts) + b"0\r\n\r\n"


def test_every_bad_body_is_answered_and_changes_nothing(env: tuple[Gateway, Device]) -> None:
    gw, _a = env
    token, port = token_of(gw.cfg), gw.http_port
    signin = "/v1/windows/1/signin"
    client(gw).sign_in("1", "10023", "张三")
    before = snapshot(gw)
    cases: list[tuple[str, bytes, str, int]] = [
        (signin, b"[" * 2000 + b"]" * 2000, "", 400),                          # json.loads would overflow
        (signin, b'{"clerk": {"a": ' * 20 + b"1" + b"}" * 21, "", 400),
        (signin, b'{"clerk": "\\ud800"}', "", 400),                             # lone surrogate, escaped
        (signin, b'{"clerk": "1", "name": "\\udfff\\u5f20"}', "", 400),
        (signin, b'{"clerk": "' + "\ud800".encode("utf-8", "surrogatepass") + b'"}', "", 400),   # raw
        (signin, b'{"clerk": "' + b"1" * 5000 + b'"}', "", 413),
        (signin, chunked(b'{"clerk": "' + b"1" * 5000 + b'"}'), "Transfer-Encoding: chunked\r\n", 413),
        (signin, bytes(range(256)), "", 400),                                   # garbage
        (signin, b"\x00\x00\x00\x00", "", 400),
        (signin, b"[1, 2]", "", 400),                                           # not an object
        (signin, b'"10023"', "", 400),
        (signin, b'{"clerk": NaN}', "", 400),
        ("/v1/windows/%0A/signin", b'{"clerk": "1"}', "", 400),                 # newline in the window
        ("/v1/prompts/%ED%A0%80", b"", "", 400),
    ]
    for path, body, extra, want in cases:
        status, out = answer(request(port, "POST" if "windows" in path else "GET", path, body, token, extra))
        assert status == want, (body[:40], out)
        assert out["error"]
        # ... and the server answers the next call at once
        assert client(gw).status()["hall"] == "hf01"
    assert snapshot(gw) == before


def test_a_bug_is_a_500_and_the_server_keeps_serving(env: tuple[Gateway, Device],
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    gw, _a = env

    def broken() -> dict[str, Any]:
        raise RuntimeError("injected bug")

    monkeypatch.setattr(gw, "status", broken)
    status, out = answer(request(gw.http_port, "GET", "/v1/status", b"", token_of(gw.cfg)))
    assert status == 500 and "internal error" in out["error"]
    assert any(r.exc_info and "injected bug" in str(r.exc_info[1]) for r in caplog.records)
    assert client(gw).sign_in("1", "10023")["clerk"] == "10023"


def busy_connection(port: int, token: str) -> socket.socket:
    """A connection with a request under way: head sent, body still owed (the server said 100 Continue)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"POST /v1/windows/1/signin HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n"
              "Content-Length: 100\r\nExpect: 100-continue\r\n\r\n".encode())
    assert s.recv(100).startswith(b"HTTP/1.1 100 Continue")
    return s


def test_over_max_connections_a_complete_503_then_slow_requests_time_out(env: tuple[Gateway, Device]) -> None:
    gw, _a = env
    token, port = token_of(gw.cfg), gw.http_port
    busy = [busy_connection(port, token) for _ in range(gw.cfg.http_max_connections)]
    t0 = time.monotonic()
    status, out = answer(request(port, "GET", "/v1/status", b"", token))     # read to a clean close
    assert status == 503 and "too many connections" in out["error"]
    for s in busy:     # the slow requests: a complete 408, in header_timeout_s, not held forever
        raw = read_all(s, timeout=gw.cfg.http_header_timeout_s + 5)
        assert b"HTTP/1.1 408 Request Timeout" in raw
        s.close()
    assert time.monotonic() - t0 < gw.cfg.http_header_timeout_s + 3
    assert client(gw).sign_in("1", "10023")["clerk"] == "10023"
    assert rows(gw, "SELECT clerk FROM sessions") == [("10023",)]


# --- the flood, against a gateway process with 512 file handles ---------------------------------------------

GW_NOFILE = 512
FLOOD = 1000
HEADER_TIMEOUT_S = 2.0


class GatewayRun:
    def __init__(self, tmp_path: Path, ks: Keystore, broker_port: int) -> None:
        self.cfg = write_config(tmp_path, ks, broker_port)
        self.port = free_port()
        conf = tmp_path / "gateway.toml"
        conf.write_text("\n".join([
            'hall = "hf01"', f'db = "{self.cfg.db_path}"', f'keystore = "{self.cfg.keystore_path}"', "",
            "[broker]", 'host = "127.0.0.1"', f"port = {broker_port}", f'password = "{GATEWAY_PASSWORD}"', "",
            "[http]", 'bind = "127.0.0.1"', f"port = {self.port}", f'tokens = "{self.cfg.tokens_path}"',
            "max_connections = 64", f"header_timeout_s = {HEADER_TIMEOUT_S}", "keep_alive_s = 2", "",
            "[roster]", f'file = "{self.cfg.roster_path}"', ""]))
        self.log = tmp_path / "gateway.log"
        self.ready = threading.Event()

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (GW_NOFILE, GW_NOFILE))

        self.proc = subprocess.Popen([sys.executable, "-m", "countersign.cli", "gateway", "run", "--config",
                                      str(conf)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     text=True, preexec_fn=limit)
        threading.Thread(target=self._pump, daemon=True).start()
        if not self.ready.wait(30) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError(f"gateway did not start: {self.log.read_text()[-2000:]}")
        self.client = CounterClient(f"http://127.0.0.1:{self.port}", token_of(self.cfg))

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        with open(self.log, "a", encoding="utf-8") as f:
            for line in self.proc.stderr:
                f.write(line)
                f.flush()
                if " ready http=" in line:
                    self.ready.set()
        self.ready.set()

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def flood(port: int, n: int) -> list[socket.socket]:
    """``n`` connections that never finish a request: half send nothing, half a slow partial head."""
    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if i % 2:
            s.sendall(b"GET /v1/status HTTP/1.1\r\nHost: g")
        socks.append(s)
    return socks


_FLOODER = """
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(n)]
print("flooding", flush=True)
sys.stdin.read()
"""


class Flooder:
    """A flood held open by another process (paho's select() in this one cannot use descriptors past
    1,024, so a device client here must not share the process with a thousand sockets)."""

    def __init__(self, port: int, n: int) -> None:
        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (n + 100, n + 100))

        self.proc = subprocess.Popen([sys.executable, "-c", _FLOODER, str(port), str(n)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     preexec_fn=limit)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "flooding":
            raise RuntimeError("the flooder did not open its connections")

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(20)


def closed_by_server(s: socket.socket, deadline: float) -> bool:
    try:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        while s.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True       # closed: the server had unread bytes of the partial head
    except TimeoutError:
        return False


@pytest.fixture
def raised_nofile() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * FLOOD + 200
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.fail(f"this test needs {want} file handles for its own sockets (hard limit {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_half_open_flood_then_broker_restart(tmp_path: Path, hall_broker: Callable[[Keystore], Mosquitto],
                                             raised_nofile: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    ks = make_keystore(devices=1)
    broker = hall_broker(ks)
    gw = GatewayRun(tmp_path, ks, broker.port)
    attack: list[socket.socket] = []
    try:
        attack = flood(gw.port, FLOOD)
        t0 = time.monotonic()
        assert gw.client.sign_in("1", "10023")["clerk"] == "10023"       # a real counter PC gets in
        assert time.monotonic() - t0 < 3
        assert gw.open_fds() < GW_NOFILE // 2

        deadline = time.monotonic() + HEADER_TIMEOUT_S + 3
        still_open = [s for s in attack if not closed_by_server(s, deadline)]
        assert still_open == [], f"{len(still_open)} idle connections kept past header_timeout_s"
        for s in attack:
            s.close()

        # A second flood held open while the hall broker restarts: the gateway must still find file
        # handles to reconnect, and a keypad's rating is stored.
        attack = []
        flooder = Flooder(gw.port, FLOOD)
        try:
            broker.stop()
            broker.start()
            dev = Device(broker.port, A, KA).start()
            try:
                dev.publish(rating(KA, A, 1, score=4))
                assert dev.wait_acked({1}, timeout=30), gw.log.read_text()[-2000:]
            finally:
                dev.stop()
            assert gw.client.status()["counts"]["stored"] >= 1     # and the API answers mid-flood
        finally:
            flooder.stop()
        with sqlite3.connect(gw.cfg.db_path) as db:
            assert db.execute("SELECT device, seq, score FROM ratings").fetchall() == [(A, 1, 4)]
        assert gw.proc.poll() is None
        assert "Too many open files" not in gw.log.read_text()
    finally:
        for s in attack:
            s.close()
        gw.stop()
