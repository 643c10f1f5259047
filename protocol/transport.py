"""MQTT transport settings shared by every CPython client (gateway, province, reference keypad)."""

from __future__ import annotations

import socket
from typing import Any


def tcp_no_delay(client: Any, userdata: object, sock: Any) -> None:
    """paho ``on_socket_open`` callback: send each small packet at once.

    With Nagle on, a rating or an ack waits for the previous packet's TCP ack (up to Linux's 40 ms
    delayed-ack timer): measured press-to-"stored" p99 96 ms with it, 4 ms without; the target is 50 ms.
    """
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
