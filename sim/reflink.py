"""The reference keypad's MQTT link: one paho client through the project's factory, its will, its
subscription to the keypad's downlink, and a power cut that drops the TCP connection without a word."""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import threading
from collections.abc import Callable

from countersign.common.mqtt import Handlers, Message, Options, Will, make_client
from countersign.protocol import topics
from countersign.protocol.keystore import mqtt_password

log = logging.getLogger(__name__)


class Link:
    def __init__(self, device_id: str, key: bytes, *, reconnect_min_s: float, reconnect_max_s: float,
                 rng: random.Random, on_up: Callable[[], None], on_down: Callable[[], None],
                 on_message: Callable[[Message], None]) -> None:
        self.device_id = device_id
        self.up_topic = topics.device_up(device_id)
        self._down_topic = topics.device_down(device_id)
        self._on_up, self._on_down = on_up, on_down
        self._dead = False
        self._gone = threading.Event()
        # The will carries nothing: the broker sends it when the keypad vanishes, so it cannot be MACed
        # freshly; the topic alone tells the gateway "this keypad dropped off". The factory spreads each
        # keypad's reconnect floor (drawn from its rng), so hundreds do not come back in step.
        self.client = make_client(
            Options(client_id=device_id, username=device_id, password=mqtt_password(key), clean_session=False,
                    reconnect_min_s=reconnect_min_s, reconnect_max_s=reconnect_max_s, max_inflight=20,
                    will=Will(topics.device_will(device_id), b"", qos=1)),
            Handlers(connected=self._connected, refused=self._refused, disconnected=self._disconnected,
                     message=on_message),
            rng=rng)

    def open(self, host: str, port: int, keepalive: int) -> None:
        self.client.connect_async(host, port, keepalive=keepalive)
        self.client.loop_start()

    def publish(self, data: bytes) -> None:
        self.client.publish(self.up_topic, data, qos=1)

    def close(self) -> None:
        """A clean stop: DISCONNECT sent, so no last will."""
        self.client.disconnect()
        self.client.loop_stop()

    def cut(self) -> None:
        """The power goes: the socket is shut under paho, no DISCONNECT (the broker's will fires)."""
        self._dead = True           # every callback from here on only ends the network thread
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            # _disconnected (network thread) sees _dead and ends that thread without reconnecting.
            if not self._gone.wait(5.0):
                self.client.loop_stop()
        else:
            self.client.loop_stop()

    def _end_thread(self) -> None:
        self.client.loop_stop()     # called from the network thread: ends it without a join
        self._gone.set()

    def _connected(self, _session_present: bool) -> None:
        if self._dead:
            self._end_thread()
            return
        self.client.subscribe(self._down_topic, qos=1)
        self._on_up()

    def _refused(self, reason: str) -> None:
        if self._dead:
            self._end_thread()
            return
        log.info("%s: connect refused: %s", self.device_id, reason)

    def _disconnected(self, _reason: str | None) -> None:
        self._on_down()
        if self._dead:
            self._end_thread()

