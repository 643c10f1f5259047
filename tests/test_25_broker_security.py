"""The shipped hall broker config: devices cannot act as other devices (DESIGN-BRIEF invariant 4)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import device_key, make_keystore
from gw_helpers import Device, rating, rows, start_gateway, write_config

from countersign.gateway.gateway import Gateway
from countersign.protocol import topics
from countersign.protocol.keystore import Keystore, mqtt_password
from countersign.sim.broker import Mosquitto

A, B = "hf01-w01", "hf01-w02"
KA, KB = device_key(1), device_key(2)


@pytest.fixture
def env(tmp_path: Path, hall_broker: Callable[[Keystore], Mosquitto]) -> Iterator[tuple[Gateway, int]]:
    ks = make_keystore(devices=2)
    broker = hall_broker(ks)
    gw = start_gateway(write_config(tmp_path, ks, broker.port))
    yield gw, broker.port
    gw.stop()


def test_device_cannot_publish_as_another(env: tuple[Gateway, int]) -> None:
    gw, port = env
    a = Device(port, A, KA).start()
    b = Device(port, B, KB).start()
    try:
        # A publishes B's genuine, correctly MACed rating on B's topic: the ACL (on %u) stops it at the
        # broker (mosquitto 2.0 drops it and may also cut A's connection; either way it goes nowhere)
        a.client.publish(topics.device_up(B), rating(KB, B, 1), qos=1)
        a.wait(lambda: a.disconnects > 0, timeout=1.0)   # at most a short grace for the broker's reaction
        a.stop()
        # A sentinel through a new connection of A, routed by the broker after the forbidden one
        a = Device(port, A, KA).start()
        a.publish(rating(KA, A, 1))
        assert a.wait_acked({1})
        assert rows(gw, "SELECT device, seq FROM ratings") == [(A, 1)]
        assert gw.stats()["messages"] == 1 and gw.store.quarantine_counts() == {}
        # B itself is unaffected and its seq 1 is still free (nothing was stored in its name)
        b.publish(rating(KB, B, 1))
        assert b.wait_acked({1})
        assert rows(gw, "SELECT device, seq FROM ratings ORDER BY device") == [(A, 1), (B, 1)]
    finally:
        a.stop()
        b.stop()


def test_client_id_takeover_prevented(env: tuple[Gateway, int]) -> None:
    _gw, port = env
    b = Device(port, B, KB).start()
    # A logs in with its own credentials but B's client id: the broker uses A's username as client id
    thief = Device(port, A, KA, client_id=B).start()
    try:
        b.publish(rating(KB, B, 1))
        assert b.wait_acked({1})
        assert b.connected and b.disconnects == 0
    finally:
        thief.stop()
        b.stop()


@pytest.mark.parametrize("kind", ["wrong-password", "other-device-password", "anonymous", "service-user"])
def test_bad_credentials_refused(env: tuple[Gateway, int], kind: str) -> None:
    _gw, port = env
    if kind == "wrong-password":
        d = Device(port, A, KA, password="not-the-password")
    elif kind == "other-device-password":
        d = Device(port, A, KA, password=mqtt_password(KB))    # B's valid password, A's username
    elif kind == "anonymous":
        d = Device(port, A, KA, anonymous=True)
    else:
        d = Device(port, A, KA, username=topics.GATEWAY_USER, password="guess")
    d.start(expect_ok=False)
    try:
        assert d.connect_rc is not None and d.connect_rc.is_failure, d.connect_rc
        assert not d.connected
    finally:
        d.stop()
