"""Many MQTT publishers at once, for the burst test, the benchmark and the province simulation.

Each publisher is a paho client on its own network thread that publishes a prepared list of payloads at
QoS1 as fast as the broker takes them. Completion is signalled by events, never by sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode


@dataclass
class Publisher:
    """One client publishing ``payloads`` to ``topic``; optionally subscribed to ``reply_topic``."""

    host: str
    port: int
    username: str
    password: str
    topic: str
    payloads: Sequence[bytes]
    reply_topic: str | None = None
    on_reply: Callable[[bytes], None] | None = None
    inflight: int = 100
    connected: threading.Event = field(default_factory=threading.Event)
    puback_done: threading.Event = field(default_factory=threading.Event)
    _client: mqtt.Client | None = None
    _pubacked: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def connect(self, timeout: float = 10.0) -> None:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.username, clean_session=True)
        c.username_pw_set(self.username, self.password)
        c.max_inflight_messages_set(self.inflight)
        c.max_queued_messages_set(0)
        c.on_connect = self._on_connect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        self._client = c
        c.connect(self.host, self.port, keepalive=60)
        c.loop_start()
        if not self.connected.wait(timeout):
            raise TimeoutError(f"{self.username} did not connect to {self.host}:{self.port}")

    def _on_connect(self, c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        if rc.is_failure:
            return
        if self.reply_topic:
            c.subscribe(self.reply_topic, qos=1)
        self.connected.set()

    def _on_publish(self, _c: mqtt.Client, _u: object, _mid: int, _rc: object, _p: object) -> None:
        with self._lock:
            self._pubacked += 1
            if self._pubacked >= len(self.payloads):
                self.puback_done.set()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if self.on_reply is not None:
            self.on_reply(bytes(msg.payload))

    def publish_all(self) -> None:
        assert self._client is not None, "connect() first"
        if not self.payloads:
            self.puback_done.set()
        for p in self.payloads:
            self._client.publish(self.topic, p, qos=1)

    def close(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None


def run_publishers(pubs: Sequence[Publisher]) -> float:
    """Connect all, then publish from all at once; returns the start time (perf_counter)."""
    for p in pubs:
        p.connect()
    start = time.perf_counter()
    threads = [threading.Thread(target=p.publish_all, daemon=True) for p in pubs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return start


class Counter:
    """A thread-safe count with a wait-until-at-least."""

    def __init__(self) -> None:
        self._n = 0
        self._cv = threading.Condition()

    def add(self, k: int = 1) -> None:
        with self._cv:
            self._n += k
            self._cv.notify_all()

    @property
    def value(self) -> int:
        with self._cv:
            return self._n

    def wait_for(self, target: int, timeout: float) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: self._n >= target, timeout)
