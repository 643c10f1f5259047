"""Builders for gateway tests: signed device messages, a device-side MQTT client, an embedded gateway."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from conftest import GATEWAY_PASSWORD

from countersign.common.mqtt import Handlers, Options, make_client
from countersign.gateway import tokens
from countersign.gateway.apiclient import CounterClient
from countersign.gateway.config import GatewayConfig
from countersign.gateway.gateway import Gateway
from countersign.gateway.roster import write_roster
from countersign.protocol import cose, messages, topics
from countersign.protocol.keystore import Keystore, mqtt_password


def rating(key: bytes, device: str, seq: int, *, score: int = 4, scale: int = 4, prompt: int = 0,
           epoch: int = 1, time_s: int | None = 1_700_000_000, kid: str | None = None) -> bytes:
    payload = messages.Rating(epoch=epoch, seq=seq, score=score, scale=scale, prompt=prompt, time=time_s,
                              mono=1000 + seq, delay=1500, boot=1).encode()
    return cose.mac0_encode(key, (kid or device).encode(), payload)


def no_rating(key: bytes, device: str, seq: int, *, prompt: int, epoch: int = 1) -> bytes:
    payload = messages.NoRating(epoch=epoch, seq=seq, prompt=prompt, time=None, mono=5, delay=20_000,
                                boot=1).encode()
    return cose.mac0_encode(key, device.encode(), payload)


def hello(key: bytes, device: str, nonce: int, *, outbox: int = 0, stuck: int = 0) -> bytes:
    payload = messages.Hello(epoch=1, boot=1, nonce=nonce, fw="1.0.0", reset=1, heap=40000, outbox=outbox,
                             outbox_free=100, uptime=5, rssi=-50, ignored=0, stuck=stuck, time=None).encode()
    return cose.mac0_encode(key, device.encode(), payload)


def wait_for(cond: threading.Condition, predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    with cond:
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            cond.wait(left)
        return True


@dataclass(frozen=True)
class ConnectResult:
    """What the broker answered to a device's CONNECT."""

    is_failure: bool
    reason: str

    def __str__(self) -> str:
        return self.reason


class Device:
    """A device's MQTT side: its own credentials, publishes QoS1, collects (and MAC-checks) downlink."""

    def __init__(self, port: int, device: str, key: bytes, *, password: str | None = None,
                 username: str | None = None, client_id: str | None = None, anonymous: bool = False) -> None:
        self.device, self.key = device, key
        self.cond = threading.Condition()
        self.down: list[messages.Message] = []
        self.acked: set[tuple[int, int]] = set()      # (epoch, seq) acked at least once
        self.bad_down = 0
        self.connect_rc: ConnectResult | None = None
        user = None if anonymous else username or device
        secret = password if password is not None else mqtt_password(key)
        self.client = make_client(
            Options(client_id=client_id or device, username=user, password=None if user is None else secret,
                    reconnect_min_s=1, reconnect_max_s=120, jitter=False, max_inflight=100),
            Handlers(connected=lambda _present: self._on_connect(ConnectResult(False, "Success")),
                     refused=lambda reason: self._on_connect(ConnectResult(True, reason)),
                     disconnected=self._on_disconnect, message=self._on_message))
        self.connected = False
        self.disconnects = 0
        self.port = port

    def start(self, timeout: float = 10.0, expect_ok: bool = True) -> Device:
        self.client.connect_async("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        ok = wait_for(self.cond, lambda: self.connect_rc is not None, timeout)
        if expect_ok and not (ok and self.connected):
            raise RuntimeError(f"device {self.device} could not connect: {self.connect_rc}")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, rc: ConnectResult) -> None:
        if not rc.is_failure:
            self.client.subscribe(topics.device_down(self.device), qos=1)
        else:
            self.client.disconnect()   # a refused device must not keep retrying in the background
        with self.cond:
            self.connected = not rc.is_failure
            self.connect_rc = rc
            self.cond.notify_all()

    def _on_disconnect(self, _reason: str | None) -> None:
        with self.cond:
            self.connected = False
            self.disconnects += 1
            self.cond.notify_all()

    def _on_message(self, msg: mqtt.MQTTMessage) -> None:
        try:
            v = cose.mac0_verify(msg.payload, lambda kid: self.key if kid == self.device.encode() else None,
                                 expected_kid=self.device.encode())
            m = messages.decode_payload(v.payload, messages.DEVICE_DOWN)
        except ValueError:
            with self.cond:
                self.bad_down += 1
                self.cond.notify_all()
            return
        with self.cond:
            self.down.append(m)
            if isinstance(m, messages.Ack):
                self.acked.update((m.epoch, s) for s in m.seqs)
            self.cond.notify_all()

    def publish(self, data: bytes, topic: str | None = None) -> None:
        info = self.client.publish(topic or topics.device_up(self.device), data, qos=1)
        info.wait_for_publish(10)

    def acked_seqs(self, epoch: int = 1) -> list[int]:
        with self.cond:
            return [s for m in self.down if isinstance(m, messages.Ack) and m.epoch == epoch for s in m.seqs]

    def of_type(self, cls: type[messages.Message]) -> list[Any]:
        with self.cond:
            return [m for m in self.down if type(m) is cls]

    def wait(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        return wait_for(self.cond, predicate, timeout)

    def wait_acked(self, seqs: set[int], timeout: float = 10.0, epoch: int = 1) -> bool:
        return self.wait(lambda: seqs <= set(self.acked_seqs(epoch)), timeout)


# The clerks the tests sign in, each allowed at every window (a test of the roster writes its own).
TEST_CLERKS = (("1", "测试"), ("10001", "张伟"), ("10002", "王芳"), ("10005", "李娜"), ("10006", "赵敏"),
               ("10023", "张三"), ("20001", "李四"))


def write_config(tmp_path: Path, keystore: Keystore, broker_port: int, name: str = "gw",
                 **extra: Any) -> GatewayConfig:
    """A gateway's config, with a credentials file holding one every-window credential (``token_of``)
    and a clerk roster of TEST_CLERKS."""
    ks_path = tmp_path / f"{name}-keystore.json"
    keystore.save(ks_path)
    extra.setdefault("tokens_path", tmp_path / f"{name}-tokens.json")
    if not extra["tokens_path"].exists():
        _token_file(extra["tokens_path"]).write_text(tokens.issue(extra["tokens_path"], "test-counter", None))
    extra.setdefault("roster_path", tmp_path / f"{name}-roster.csv")
    if extra["roster_path"] is not None and not extra["roster_path"].exists():
        write_roster(extra["roster_path"], [(c, n, None) for c, n in TEST_CLERKS])
    return GatewayConfig(hall=keystore.hall, db_path=tmp_path / f"{name}.db", keystore_path=ks_path,
                         broker_host="127.0.0.1", broker_port=broker_port, gateway_password=GATEWAY_PASSWORD,
                         http_port=0, **extra)


def _token_file(tokens_path: Path) -> Path:
    return tokens_path.with_name(tokens_path.name + ".token")


def token_of(cfg: GatewayConfig) -> str:
    """The token of the every-window credential ``write_config`` issued."""
    if cfg.tokens_path is None:
        raise ValueError("this config has no credentials file")
    return _token_file(cfg.tokens_path).read_text()


def client(gw: Gateway, token: str | None = None) -> CounterClient:
    return CounterClient(f"http://127.0.0.1:{gw.http_port}", token or token_of(gw.cfg))


def start_gateway(cfg: GatewayConfig) -> Gateway:
    gw = Gateway(cfg)
    gw.start()
    if not gw.ingest.ready.is_set():
        gw.stop()
        raise RuntimeError("gateway did not subscribe")
    return gw


def http(target: Gateway | int, method: str, path: str, body: Any = None, *,
         token: str | None = None) -> tuple[int, Any]:
    """One raw call; a Gateway target brings its ``write_config`` credential unless ``token`` is given,
    a bare port sends ``token`` only (none: unauthenticated)."""
    if isinstance(target, Gateway):
        port, token = target.http_port, token if token is not None else token_of(target.cfg)
    else:
        port = target
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
            status = r.status
            ctype = r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        raw, status, ctype = e.read(), e.code, e.headers.get("Content-Type", "")
    return status, json.loads(raw) if ctype.startswith("application/json") else raw.decode()


def rows(gw: Gateway, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with gw.store.read() as c:
        return list(c.execute(sql, args).fetchall())


class GatewayRun:
    """`countersign gateway run` as a process of its own, its stderr lines collected as they come."""

    def __init__(self, config: Path, env: dict[str, str], *extra: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "countersign.cli", "gateway", "run", "--config",
                                      str(config), *extra], stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.lines.append("<exit>")
            self.cond.notify_all()

    def wait_line(self, needle: str, timeout: float = 20.0) -> str:
        """The first stderr line containing ``needle``; fails at once if the gateway exits first."""
        def found() -> bool:
            return any(needle in ln or ln == "<exit>" for ln in self.lines)
        assert wait_for(self.cond, found, timeout), f"no {needle!r} in {self.lines}"
        line = next(ln for ln in self.lines if needle in ln or ln == "<exit>")
        assert line != "<exit>", f"gateway exited: {self.lines}"
        return line
