"""A hall login cannot join the receivers' shared subscription (issue 12, deliverable 7).

mosquitto hands each batch to one member of ``$share/province/...`` and only then checks that member's
read ACL: a hall login in the group would make the batches routed to it vanish (until its gateway
resends). The generated provincial broker config refuses such a subscription (the dynamic-security
plugin beside the password and ACL files, province/brokerconf.py). Real mosquitto, the real receiver.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from province_helpers import HALLS, World, entry, hall_password, make_world, rating, signed_batch

from countersign.protocol import topics
from countersign.province.brokerconf import DYNSEC_FILE, write_province_broker_files
from countersign.sim.broker import Mosquitto, free_port, run_as_clause

HALL, THIEF = HALLS            # hf01 sends its batches; hf02's login tries to steal them
N = 12


class Thief:
    """A paho client with a hall's own login that tries every way into the batches."""

    def __init__(self, port: int, hall: str) -> None:
        self.cond = threading.Condition()
        self.granted: dict[str, bool] = {}
        self.got: list[str] = []
        self._pending: dict[int, str] = {}
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=hall, protocol=mqtt.MQTTv5)
        self.c.username_pw_set(hall, hall_password(hall))
        self.c.on_subscribe = self._on_subscribe
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on_subscribe(self, _c: object, _u: object, mid: int, codes: list[mqtt.ReasonCode],
                      _p: object) -> None:
        with self.cond:
            self.granted[self._pending.pop(mid)] = not codes[0].is_failure
            self.cond.notify_all()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.got.append(msg.topic)
            self.cond.notify_all()

    def subscribe(self, flt: str) -> bool:
        with self.cond:
            _rc, mid = self.c.subscribe(flt, qos=1)
            self._pending[mid] = flt
            assert self.cond.wait_for(lambda: flt in self.granted, 5), f"no SUBACK for {flt}"
            return self.granted[flt]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = make_world(tmp_path, devices_per_hall=1, workers=2)
    yield w
    w.close()


def _send(world: World, hall: str, first: int, n: int) -> None:
    client = world.hall_client(hall)
    dev = f"{hall}-w01"
    for b in range(first, first + n):
        msg = rating(world.device_key(dev), dev, b)
        client.publish(hall, signed_batch(world.gateway_keys[hall], hall, b, [entry(msg)]))
    acks = client.wait_acks(n)
    assert sorted(a.batch for _raw, a in acks) == list(range(first, first + n))
    assert all(a.stored == 1 and not a.rejected for _raw, a in acks)


def test_hall_login_is_refused_the_shared_group_and_workers_get_every_batch(world: World) -> None:
    world.province(workers=2)
    thief = Thief(world.port, THIEF)
    try:
        # Refused: the group with any hall, its own hall's topic, and a group of its own choosing.
        for flt in (topics.PROVINCE_SHARED_FILTER, f"$share/province/{topics.hall_batch(THIEF)}",
                    f"$share/{topics.PROVINCE_SHARE_GROUP}/#", "$share/mine/cs/1/h/+/batch"):
            assert thief.subscribe(flt) is False, flt
        # A plain subscription is allowed by mosquitto but the read ACL gives it nothing of others'.
        assert thief.subscribe(topics.HALL_BATCH_FILTER) is True
        # The real workers get and ack every batch of the other hall, and the thief's hall can still
        # publish its own batches and read its own acks on the same broker.
        _send(world, HALL, 1, N)
        _send(world, THIEF, 1, 3)
        with thief.cond:
            assert thief.got == []
    finally:
        thief.close()
    with world.provinces[0].config.database.connect() as conn:
        assert conn.scalar("SELECT COUNT(*) FROM ratings WHERE hall = ?", (HALL,)) == N


def test_the_attack_is_real_without_the_plugin(tmp_path: Path, world: World) -> None:
    """The control: the same broker without the plugin's lines lets the hall join, and a batch the broker
    routes to it is acked by nobody (the test above would fail against such a config)."""
    conf = world.broker.conf
    text = conf.read_text()
    assert "plugin " in text and "plugin_opt_config_file" in text
    world.broker.stop()
    conf.write_text("\n".join(ln for ln in text.splitlines() if not ln.startswith("plugin")) + "\n")
    world.broker.start()
    world.province(workers=1)
    thief = Thief(world.port, THIEF)
    try:
        assert thief.subscribe(topics.PROVINCE_SHARED_FILTER) is True
        client = world.hall_client(HALL)
        dev = f"{HALL}-w01"
        for b in range(1, 7):
            msg = rating(world.device_key(dev), dev, b)
            client.publish(HALL, signed_batch(world.gateway_keys[HALL], HALL, b, [entry(msg)]))
        # mosquitto alternates the group's two members (the worker subscribed first): the worker acks
        # 1, 3 and 5; batches 2 and 4 went to the hall login, whose read ACL drops them: nobody acks them,
        # although the worker has already gone past them (5 is acked).
        acked = {a.batch for _raw, a in client.wait_acks(3)}
        assert acked == {1, 3, 5}
    finally:
        thief.close()


def test_generated_plugin_file_lists_every_hall_and_the_observer_not_the_workers(tmp_path: Path,
                                                                                world: World) -> None:
    files = write_province_broker_files(tmp_path / "b", world.registry, {h: hall_password(h) for h in HALLS},
                                        "pw", port=free_port(), bind="127.0.0.1", run_as=run_as_clause(),
                                        workers=3, observer_password="obs")
    doc = json.loads((files.conf.parent / DYNSEC_FILE).read_text())
    assert [c["username"] for c in doc["clients"]] == ["_observer", *sorted(HALLS)]
    assert doc["roles"][0]["acls"] == [{"acltype": "subscribePattern", "topic": "$share/#", "priority": 0,
                                        "allow": False}]
    assert (files.conf.parent / DYNSEC_FILE).stat().st_mode & 0o777 == 0o640
    # The broker starts on it (a wrong plugin file would stop mosquitto at once).
    port = int(files.conf.read_text().split("listener ", 1)[1].split()[0])
    with Mosquitto(files.conf, port):
        pass
