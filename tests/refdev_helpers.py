"""A scripted gateway peer for reference-device tests: verifies what devices send, acks, time-syncs.

It plays the hall gateway's part of the protocol with a plain MQTT client (user ``_gateway``), so the
device tests do not depend on the real gateway being finished. Its view of what was stored is the
"exactly once" check: it dedups on (device, epoch, seq) and flags one key seen with two payloads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from countersign.common.mqtt import Handlers, Options, make_client
from countersign.common.mqtt import Message as MqttMessage
from countersign.protocol import cose, messages, topics
from countersign.protocol.errors import ProtocolError
from countersign.protocol.keystore import Keystore
from countersign.protocol.messages import Hello, Message, NoRating, Prompt, Rating, Session, TimeSync
from countersign.sim.refdevice import DeviceConfig

GATEWAY_PASSWORD = "test-gateway-password"   # the same as conftest.GATEWAY_PASSWORD


@dataclass
class Peer:
    """The scripted gateway. ``auto_ack`` / ``auto_time`` switch its answers on and off."""

    keystore: Keystore
    port: int
    auto_ack: bool = True
    auto_time: bool = True
    now_ms: Callable[[], int] = lambda: 1_700_000_000_000
    cond: threading.Condition = field(default_factory=threading.Condition)
    stored: dict[tuple[str, int, int], bytes] = field(default_factory=dict)
    order: list[tuple[str, int, int]] = field(default_factory=list)   # first arrival order
    received: list[tuple[str, Message]] = field(default_factory=list)
    conflicts: list[tuple[str, int, int]] = field(default_factory=list)
    bad: int = 0
    dup: int = 0
    connected: bool = False

    def __post_init__(self) -> None:
        self.client = make_client(
            Options(client_id=topics.GATEWAY_USER, username=topics.GATEWAY_USER, password=GATEWAY_PASSWORD,
                    clean_session=False, reconnect_min_s=1, reconnect_max_s=2, jitter=False),
            Handlers(connected=self._on_connect, disconnected=self._on_disconnect, message=self._on_message))

    def start(self) -> Peer:
        self.client.connect_async("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        if not self.wait(lambda: self.connected, 10):
            raise TimeoutError("peer did not connect")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def wait(self, pred: Callable[[], bool], timeout: float = 10.0) -> bool:
        with self.cond:
            return self.cond.wait_for(pred, timeout)

    # -- what tests look at ----------------------------------------------------------------------------

    def of(self, device: str, cls: type[Message]) -> list[Any]:
        with self.cond:
            return [m for d, m in self.received if d == device and isinstance(m, cls)]

    def stored_seqs(self, device: str) -> list[int]:
        with self.cond:
            return [s for d, _e, s in self.order if d == device]

    # -- downlink --------------------------------------------------------------------------------------

    def send(self, device: str, msg: Message, key: bytes | None = None) -> None:
        k = self.keystore.devices[device].key if key is None else key
        self.send_raw(device, cose.mac0_encode(k, device.encode(), msg.encode()))

    def send_raw(self, device: str, data: bytes) -> None:
        self.client.publish(topics.device_down(device), data, qos=1).wait_for_publish(5)

    def prompt(self, device: str, prompt_id: int, timeout: int = 20, clerk: str = "1001",
               time: int | None = None) -> None:
        self.send(device, Prompt(prompt=prompt_id, clerk=clerk, service=int(messages.Service.ENQUIRY),
                                 txn=f"t{prompt_id}", timeout=timeout, time=time))

    def session(self, device: str, clerk: str | None, name: str | None = None) -> None:
        self.send(device, Session(clerk=clerk, clerk_name=name))

    def ack(self, device: str, epoch: int, seqs: list[int], key: bytes | None = None) -> None:
        self.send(device, messages.Ack(epoch=epoch, seqs=tuple(seqs)), key)

    # -- plumbing --------------------------------------------------------------------------------------

    def _on_connect(self, _session_present: bool) -> None:
        self.client.subscribe(topics.DEVICE_UP_FILTER, qos=1)
        with self.cond:
            self.connected = True
            self.cond.notify_all()

    def _on_disconnect(self, _reason: str | None) -> None:
        with self.cond:
            self.connected = False
            self.cond.notify_all()

    def _on_message(self, m: MqttMessage) -> None:
        try:
            _, device, _ = topics.parse(m.topic)
            v = cose.mac0_verify(m.payload, self.keystore.key_for, expected_kid=device.encode())
            msg = messages.decode_payload(v.payload, messages.DEVICE_UP)
        except (ProtocolError, ValueError):
            with self.cond:
                self.bad += 1
                self.cond.notify_all()
            return
        reply: Message | None = None
        with self.cond:
            self.received.append((device, msg))
            if isinstance(msg, Rating | NoRating):
                key = (device, msg.epoch, msg.seq)
                old = self.stored.get(key)
                if old is None:
                    self.stored[key] = bytes(m.payload)
                    self.order.append(key)
                elif old != bytes(m.payload):
                    self.conflicts.append(key)
                else:
                    self.dup += 1
                if self.auto_ack:
                    reply = messages.Ack(epoch=msg.epoch, seqs=(msg.seq,))
            elif isinstance(msg, Hello) and self.auto_time:   # Heartbeat is a Hello subclass
                reply = TimeSync(now_ms=self.now_ms(), nonce=msg.nonce)
            self.cond.notify_all()
        if reply is not None:
            # Sent from the network thread: publish only queues, it does not wait.
            k = self.keystore.devices[device].key
            self.client.publish(topics.device_down(device),
                                cose.mac0_encode(k, device.encode(), reply.encode()), qos=1)


def device_config(keystore: Keystore, device: str, port: int, state_dir: Path, **kw: Any) -> DeviceConfig:
    dk = keystore.devices[device]
    return DeviceConfig(device_id=device, key=dk.key, epoch=dk.epoch, host="127.0.0.1", port=port,
                        state_dir=state_dir, **kw)
