"""The keypad's MQTT client at its edges (firmware/cs/mqtt), on the real MicroPython unix port.

- unit checks on a fake stream (tests/fw/mp_mqtt_edges.py): a write blocked on a broker that stopped
  reading ends the session within the keepalive; keepalive 0 sends no PINGREQ; a wildcard PUBLISH topic
  is refused; nothing is written after DISCONNECT; a downlink too large for the buffer, or on a topic
  with U+0000, non-ASCII or a wildcard, is PUBACKed and discarded (counted); only a link that lasted
  resets the backoff;
- a scripted broker: an oversize QoS 1 downlink is acknowledged, the link stays up and the next
  downlink arrives (before, it was never acked and the link dropped every ~150 ms for ever);
- a second broker implementation besides mosquitto (amqtt): the same client, QoS 1 both ways, an
  oversize downlink discarded and not redelivered, a clean stop.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import test_63_fw_mqtt as t63
from mpy import assert_mpy_ok
from test_63_fw_mqtt import DOWN, PASSWORD, UP, Firmware, Peer, publish_pkt

from countersign.common import mqtt
from countersign.sim.broker import free_port

firmware = t63.firmware     # the same fixture: the firmware's client as a process (mp_mqtt_live.py)


def test_client_edges_on_a_fake_stream() -> None:
    out = assert_mpy_ok("mp_mqtt_edges.py", heap="512K")
    assert "passed" in out


def test_oversize_downlink_is_acked_and_the_link_stays(firmware: Callable[..., Firmware]) -> None:
    server = socket.create_server(("127.0.0.1", free_port()))
    server.settimeout(10)
    fw = firmware(server.getsockname()[1], f"password={PASSWORD}", "keepalive=2", "bmin=200", "bmax=5000")
    with server:
        p = Peer(server)
        p.session()
        fw.expect("LINK up")
        p.send(publish_pkt(DOWN, b"x" * 400, pid=9))          # the client's limit is 300 bytes
        assert p.packet() == (0x40, b"\x00\x09"), "acknowledged, so the broker will not resend it"
        p.send(publish_pkt(DOWN, b"pub after", pid=10))
        first, body = p.packet()
        assert first == 0x32 and body.endswith(b"after"), body
        assert p.packet() == (0x40, b"\x00\x0a")
        assert fw.expect("MSG") == f"MSG {DOWN} pub after"
        assert not any(line.startswith("LINK down") for line in fw.seen), fw.seen
        p.send(publish_pkt(DOWN, b"dropped", pid=11))
        assert p.packet() == (0x40, b"\x00\x0b")
        assert fw.expect("DROPPED") == "DROPPED 1"


@pytest.fixture
def amqtt_broker(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    conf = tmp_path / "amqtt.yaml"
    conf.write_text(f"""---
listeners:
  default:
    type: tcp
    bind: 127.0.0.1:{port}
plugins:
  amqtt.plugins.authentication.AnonymousAuthPlugin:
    allow_anonymous: true
""")
    exe = Path(sys.executable).parent / "amqtt"
    proc = subprocess.Popen([str(exe), "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=(tmp_path / "amqtt.log").open("w"))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("amqtt did not start:\n" + (tmp_path / "amqtt.log").read_text()[-3000:])
                time.sleep(0.1)     # a process we do not control: nothing to wait on but its port
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_client_against_amqtt(amqtt_broker: int, firmware: Callable[..., Firmware]) -> None:
    got: list[bytes] = []
    cv = threading.Condition()
    ready = threading.Event()

    def on_message(msg: mqtt.Message) -> None:
        with cv:
            got.append(bytes(msg.payload))
            cv.notify_all()

    peer = mqtt.make_client(mqtt.Options(client_id="_gateway", jitter=False),
                            mqtt.Handlers(message=on_message, subscribed=lambda ok, _r: ok and ready.set()))
    peer.connect("127.0.0.1", amqtt_broker)
    peer.loop_start()
    try:
        peer.subscribe(UP, qos=1)
        assert ready.wait(10)
        fw = firmware(amqtt_broker, f"password={PASSWORD}", "keepalive=10")
        fw.expect("LINK up")
        for i in range(20):
            peer.publish(DOWN, f"pub m{i}".encode(), qos=1).wait_for_publish(10)
            # Each echo before the next: the script's "pub" offers its message once, and with amqtt's
            # slower PUBACKs a full uplink window refused it now and then (publish() None, not a loss).
            with cv:
                assert cv.wait_for(lambda: len(got) > i, 10), (i, got)   # noqa: B023 (i: this turn's)
        # One larger than the keypad takes, between good ones: acked and discarded, never redelivered.
        peer.publish(DOWN, b"y" * 400, qos=1).wait_for_publish(10)
        peer.publish(DOWN, b"pub last", qos=1).wait_for_publish(10)
        with cv:
            assert cv.wait_for(lambda: b"last" in got, 20), got
        assert got == [f"m{i}".encode() for i in range(20)] + [b"last"]
        peer.publish(DOWN, b"dropped", qos=1).wait_for_publish(10)
        assert fw.expect("DROPPED") == "DROPPED 1"
        assert not any(line.startswith("LINK down") for line in fw.seen), fw.seen
        peer.publish(DOWN, b"stop", qos=1).wait_for_publish(10)
        fw.expect("STOPPED")
        assert fw.proc.wait(10) == 0
    finally:
        peer.disconnect()
        peer.loop_stop()
