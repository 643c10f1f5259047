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

from countersign.common.mqtt import Handlers, Message, Options, make_client


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
        # paho's own reconnect backoff (1 s to 120 s): a load run is one connection per publisher.
        c = make_client(Options(client_id=self.username, username=self.username, password=self.password,
                                max_inflight=self.inflight, reconnect_min_s=1, reconnect_max_s=120,
                                jitter=False),
                        Handlers(connected=self._on_connect, published=self._on_publish,
                                 message=self._on_message))
        c.max_queued_messages_set(0)
        self._client = c
        c.connect(self.host, self.port, keepalive=60)
        c.loop_start()
        if not self.connected.wait(timeout):
            raise TimeoutError(f"{self.username} did not connect to {self.host}:{self.port}")

    def _on_connect(self, _session_present: bool) -> None:
        if self.reply_topic and self._client is not None:
            self._client.subscribe(self.reply_topic, qos=1)
        self.connected.set()

    def _on_publish(self, _mid: int) -> None:
        with self._lock:
            self._pubacked += 1
            if self._pubacked >= len(self.payloads):
                self.puback_done.set()

    def _on_message(self, msg: Message) -> None:
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
