"""The firmware MQTT client (firmware/cs/mqtt) on the real MicroPython unix port.

- packet encoders and the bounded parser against hand-computed MQTT 3.1.1 bytes (tests/fw/mp_mqtt_pkt.py);
- the client against a scripted broker that plays the protocol byte by byte: withheld PUBACK -> DUP
  resend, dropped connection -> reconnect with a backoff that grows until a link lasts, resend of the
  in-flight publish,
  refused CONNACK, missing PINGRESP, refused SUBACK, malformed and oversize packets, clean stop;
- the client against a real mosquitto: 100 QoS 1 messages, a broker restart on the same port, the will.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from conftest import GATEWAY_PASSWORD, device_key, make_keystore
from mpy import FIRMWARE, FW_TESTS, VECTORS, assert_mpy_ok, micropython

from countersign.common.mqtt import Handlers, Options, make_client
from countersign.protocol import topics
from countersign.protocol.keystore import Keystore, mqtt_password
from countersign.sim.broker import Mosquitto, free_port

DEV = "hf01-w01"
UP, DOWN, WILL = topics.device_up(DEV), topics.device_down(DEV), topics.device_will(DEV)


def test_packets_byte_exact_and_parser_bounds() -> None:
    out = assert_mpy_ok("mp_mqtt_pkt.py", heap="64K")
    assert "ok CONNECT with will, user, password, keepalive, clean 0" in out
    assert "ok 5-byte remaining length rejected" in out
    assert "ok pid wraps 65535 -> 1" in out


class Firmware:
    """tests/fw/mp_mqtt_live.py as a process; its stdout markers are read line by line."""

    def __init__(self, port: int, *opts: str) -> None:
        env = dict(os.environ, CS_FIRMWARE=str(FIRMWARE), CS_VECTORS=str(VECTORS), CS_FW_TESTS=str(FW_TESTS))
        self.proc = subprocess.Popen(
            # The client is compiled from source here, which takes more than the keypad's heap; on a
            # keypad it runs as .mpy (test_67 holds the whole app to its heap budget).
            [micropython(), "-X", "heapsize=128K", str(FW_TESTS / "mp_mqtt_live.py"), "127.0.0.1",
             str(port), *opts], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, prefix: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no {prefix!r} from the firmware in {timeout}s; output so far:\n"
                            + "\n".join(self.seen))
            self.seen.append(line)
            if line.startswith(prefix):
                return line

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


@pytest.fixture
def firmware() -> Iterator[Callable[..., Firmware]]:
    started: list[Firmware] = []

    def start(port: int, *opts: str) -> Firmware:
        f = Firmware(port, *opts)
        started.append(f)
        return f

    yield start
    for f in started:
        f.close()


# ---- (a) a scripted broker ------------------------------------------------------------------------

def _rlen(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _s(b: bytes) -> bytes:
    return len(b).to_bytes(2, "big") + b


def publish_pkt(topic: str, payload: bytes, pid: int = 0) -> bytes:
    body = _s(topic.encode()) + (pid.to_bytes(2, "big") if pid else b"") + payload
    return bytes([0x32 if pid else 0x30]) + _rlen(len(body)) + body


class Peer:
    """One accepted connection, read packet by packet; PINGREQ is answered unless told otherwise."""

    def __init__(self, server: socket.socket) -> None:
        self.sock, _ = server.accept()
        self.accepted = time.monotonic()
        self.sock.settimeout(10)
        self.answer_pings = True

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def packet(self, timeout: float = 10.0) -> tuple[int, bytes]:
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:   # only PINGREQs for `timeout` seconds
                pytest.fail(f"no packet but PINGREQ from the device in {timeout}s")
            first = self._read(1)[0]
            n, shift = 0, 0
            while True:
                b = self._read(1)[0]
                n |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            body = self._read(n)
            if first == 0xC0 and self.answer_pings:
                self.send(b"\xd0\x00")
                continue
            return first, body

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def eof(self) -> float:
        """Wait for the device to drop this connection; return when it did."""
        try:
            while True:
                first, body = self.packet()
                pytest.fail(f"expected the device to drop the link, got {first:#x} {body!r}")
        except (EOFError, ConnectionResetError):
            return time.monotonic()

    def close(self) -> float:
        self.sock.close()
        return time.monotonic()

    def session(self, present: int = 0, suback: int = 1) -> None:
        """CONNECT in (checked byte by byte), CONNACK out, SUBSCRIBE in, SUBACK out."""
        first, body = self.packet()
        assert first == 0x10
        assert body == CONNECT_BODY, f"CONNECT body {body!r}"
        self.send(bytes([0x20, 2, present, 0]))
        first, body = self.packet()
        assert first == 0x82 and body[2:] == _s(DOWN.encode()) + b"\x01", (first, body)
        self.send(b"\x90\x03" + body[:2] + bytes([suback]))


PASSWORD = "p4ss"
KEEPALIVE = 2
RETRY = 0.6   # seconds without PUBACK before a resend
# flags 0xCC: user, password, will QoS 1, will; clean session 0. The will payload is empty (PROTOCOL.md).
CONNECT_BODY = (_s(b"MQTT") + b"\x04\xcc" + KEEPALIVE.to_bytes(2, "big") + _s(DEV.encode())
                + _s(WILL.encode()) + _s(b"") + _s(DEV.encode()) + _s(PASSWORD.encode()))


def test_client_against_a_scripted_broker(firmware: Callable[..., Firmware]) -> None:
    server = socket.create_server(("127.0.0.1", free_port()))
    server.settimeout(10)
    port = server.getsockname()[1]
    fw = firmware(port, f"password={PASSWORD}", f"keepalive={KEEPALIVE}", f"retry={int(RETRY * 1000)}",
                  "bmin=200", "bmax=5000")
    with server:
        # Session 1: connect, subscribe, a command in at QoS 1, its PUBLISH out, DUP resend, PUBACK.
        p = Peer(server)
        p.session()
        fw.expect("LINK up")
        p.send(publish_pkt(DOWN, b"pub one", pid=7))
        first, body = p.packet()
        # The device's own publish comes first: PUBACK is only sent once on_msg has returned.
        assert first == 0x32 and body[:2 + len(UP)] == _s(UP.encode()) and body.endswith(b"one"), body
        pid = int.from_bytes(body[2 + len(UP):4 + len(UP)], "big")
        assert pid != 0
        assert p.packet() == (0x40, b"\x00\x07")
        assert fw.expect("MSG") == f"MSG {DOWN} pub one"
        assert fw.expect("PUB ") == f"PUB {pid} one"
        t_first = time.monotonic()
        first, again = p.packet()           # PUBACK withheld: the same packet, DUP set, after retry_ms
        assert first == 0x3A and again == body
        assert time.monotonic() - t_first >= RETRY - 0.05
        p.send(b"\x40\x02" + pid.to_bytes(2, "big"))
        assert fw.expect("PUBACK") == f"PUBACK {pid}"

        # A QoS 0 command (no PUBACK), then its publish is left unacked and the link dropped.
        p.send(publish_pkt(DOWN, b"pub two"))
        first, body2 = p.packet()
        t_two = time.monotonic()
        assert first == 0x32 and body2.endswith(b"two")
        pid2 = int.from_bytes(body2[2 + len(UP):4 + len(UP)], "big")
        assert pid2 == pid + 1
        closed = p.close()
        assert fw.expect("LINK down").startswith("LINK down")
        assert fw.expect("DOWNPUB") == "DOWNPUB None"     # publish() while down: None at once

        # Session 2 (session present), after a first backoff in [bmin/2, bmin]: resubscribe, then the
        # unacked publish again at once (well before retry_ms), same pid, DUP set.
        p = Peer(server)
        assert 0.1 - 0.02 <= p.accepted - closed <= 0.2 + 0.3
        p.session(present=1)
        fw.expect("LINK up")
        first, again = p.packet()
        assert first == 0x3A and again == body2
        assert time.monotonic() - t_two < RETRY - 0.1, "resent on reconnect, not by the retry timer"
        p.send(b"\x40\x02" + pid2.to_bytes(2, "big"))
        assert fw.expect("PUBACK") == f"PUBACK {pid2}"

        # Keepalive: PINGREQ after keepalive/2 idle; no PINGRESP -> the device drops the link.
        p.answer_pings = False
        t0 = time.monotonic()
        assert p.packet() == (0xC0, b"")
        t_ping = time.monotonic()
        assert 0.6 <= t_ping - t0 <= 1.6
        t_drop = p.eof()
        assert 0.8 <= t_drop - t_ping <= 1.6
        assert fw.expect("LINK down") == "LINK down no-pingresp"

        # Reconnects fail (no CONNACK, then a refused CONNACK): the backoff grows, with jitter in [d/2, d].
        closed = t_drop
        gaps = []
        for k in range(3):
            p = Peer(server)
            gaps.append(p.accepted - closed)
            if k == 2:
                assert p.packet()[0] == 0x10
                p.send(b"\x20\x02\x00\x05")      # refused: not authorised
                closed = p.eof()
            else:
                closed = p.close()
        # Session 2 lasted less than bmax, so its drop counts as a failure too: no link has stayed up
        # long enough to start the backoff afresh (a CONNACK alone does not).
        for gap, d in zip(gaps, (0.4, 0.8, 1.6), strict=True):
            assert d / 2 - 0.02 <= gap <= d + 0.3, gaps

        # SUBACK refused (0x80): dropped. Then a 5-byte remaining length, then an oversize SUBACK (an
        # oversize PUBLISH is acked and discarded instead: test_63_fw_mqtt_edges).
        bad_inputs = ((None, "mqtt-suback"), (b"\x30\xff\xff\xff\xff\x01", "mqtt-rlen"),
                      (b"\x90\x81\x08", "mqtt-too-big"))
        for i, (bad, reason) in enumerate(bad_inputs):
            p = Peer(server)
            if i == 0:   # 5th failure in a row: d = 3.2 s, so at least 1.6 s
                assert p.accepted - closed >= 1.6 - 0.02
            p.session(suback=0x80 if bad is None else 1)
            fw.expect("LINK up")
            if bad is not None:
                p.send(bad)
            p.eof()
            assert fw.expect("LINK down") == f"LINK down {reason}"

        # A clean stop: DISCONNECT, and the process ends by itself.
        p = Peer(server)
        p.session(present=1)
        fw.expect("LINK up")
        p.send(publish_pkt(DOWN, b"stop", pid=65535))
        assert p.packet() == (0xE0, b"")
        fw.expect("STOPPED")
        assert fw.proc.wait(5) == 0


# ---- (b) a real mosquitto ------------------------------------------------------------------------

class Gateway:
    """An MQTT client as the gateway user: collects uplink and will messages, sends downlink commands."""

    def __init__(self, port: int) -> None:
        self.msgs: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.subscribed = threading.Event()
        self.c = make_client(
            Options(client_id="_gateway", username=topics.GATEWAY_USER, password=GATEWAY_PASSWORD,
                    reconnect_min_s=1, reconnect_max_s=120, jitter=False),     # paho's own backoff
            Handlers(connected=self._on_connect, subscribed=lambda _ok, _rcs: self.subscribed.set(),
                     message=lambda m: self.msgs.put((m.topic, m.payload))))
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.subscribed.wait(10), "gateway client did not subscribe"

    def _on_connect(self, _session_present: bool) -> None:
        self.c.subscribe([(topics.DEVICE_UP_FILTER, 1), (topics.DEVICE_WILL_FILTER, 1)])

    def send(self, text: str) -> None:
        self.c.publish(DOWN, text.encode(), qos=1).wait_for_publish(10)

    def take(self, timeout: float = 10.0) -> tuple[str, bytes]:
        try:
            return self.msgs.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"nothing reached the gateway subscriber in {timeout}s")

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def test_client_against_mosquitto(hall_broker: Callable[[Keystore], Mosquitto],
                                  firmware: Callable[..., Firmware]) -> None:
    ks = make_keystore()
    broker = hall_broker(ks)
    gw = Gateway(broker.port)
    try:
        fw = firmware(broker.port, f"password={mqtt_password(device_key(1))}", "keepalive=10",
                      "bmin=200", "bmax=1000")
        fw.expect("LINK up")

        # 100 QoS 1 publishes through a 4-slot window: every one reaches the subscriber.
        gw.send("burst 100")
        done = fw.expect("BURST done 100", timeout=30)
        assert int(done.split()[-1]) < 512, f"heap grew over the burst: {done}"   # no per-message leak
        got = set()
        while len(got) < 100:
            topic, payload = gw.take()
            assert topic == UP
            got.add(payload)
        assert got == {b"m%d" % i for i in range(100)}

        # The broker goes away and comes back on the same port; the client reconnects by itself.
        broker.stop()
        assert fw.expect("LINK down").startswith("LINK down")
        assert fw.expect("DOWNPUB") == "DOWNPUB None"
        gw.close()
        broker.start()
        fw.expect("LINK up", timeout=15)
        gw = Gateway(broker.port)
        gw.send("pub after-restart")
        fw.expect("PUB ")
        assert gw.take() == (UP, b"after-restart")

        # Killed without DISCONNECT: the broker delivers the last will (empty payload, PROTOCOL.md).
        fw.proc.send_signal(signal.SIGKILL)
        fw.proc.wait(5)
        assert gw.take() == (WILL, b"")
    finally:
        gw.close()
