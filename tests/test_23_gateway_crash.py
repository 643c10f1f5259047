"""The gateway as its own process, SIGKILLed just before and just after a group commit, then restarted:
the rating is stored exactly once and the device gets its ack (the broker redelivers what was not
PUBACKed; a redelivered rating that was already committed is a duplicate and is acked again)."""

from __future__ import annotations

import os
import signal
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import GATEWAY_PASSWORD, device_key, make_keystore
from gw_helpers import Device, GatewayRun, rating

from countersign.protocol.keystore import Keystore
from countersign.sim.broker import Mosquitto

A = "hf01-w01"
KA = device_key(1)


class GatewayProcess(GatewayRun):
    def __init__(self, config: Path, pause_at: str | None) -> None:
        env = {k: v for k, v in os.environ.items() if k != "COUNTERSIGN_TEST_PAUSE_AT"}
        if pause_at:
            env["COUNTERSIGN_TEST_PAUSE_AT"] = pause_at
        super().__init__(config, env)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)


@pytest.fixture
def world(tmp_path: Path, hall_broker: Callable[[Keystore], Mosquitto]) -> Iterator[tuple[Path, Device]]:
    ks = make_keystore(devices=1)
    broker = hall_broker(ks)
    ks.save(tmp_path / "keystore.json")
    (tmp_path / "gw-password").write_text(GATEWAY_PASSWORD + "\n")
    conf = tmp_path / "gateway.toml"
    conf.write_text(f'hall = "hf01"\ndb = "gw.db"\nkeystore = "keystore.json"\n'
                    f'[broker]\nport = {broker.port}\npassword_file = "gw-password"\n'
                    f'[http]\nport = 0\n', encoding="utf-8")
    dev = Device(broker.port, A, KA).start()
    yield conf, dev
    dev.stop()


def ratings(db: Path) -> list[tuple[int, int]]:
    with sqlite3.connect(db) as c:
        return list(c.execute("SELECT seq, score FROM ratings ORDER BY seq").fetchall())


@pytest.mark.parametrize("point", ["before-commit", "after-commit"])
def test_sigkill_at_commit_then_restart(world: tuple[Path, Device], point: str) -> None:
    conf, dev = world
    db = conf.parent / "gw.db"
    gw = GatewayProcess(conf, pause_at=point)
    try:
        gw.wait_line("gateway hf01 ready http=")
        dev.publish(rating(KA, A, 1, score=2))
        gw.wait_line(f"PAUSED {point}")
        gw.kill()
    finally:
        if gw.proc.poll() is None:
            gw.kill()
    assert ratings(db) == ([] if point == "before-commit" else [(1, 2)])
    assert dev.acked_seqs() == []           # no ack ever goes out before the commit, nor here after it

    gw = GatewayProcess(conf, pause_at=None)
    try:
        gw.wait_line("gateway hf01 ready http=")
        assert dev.wait_acked({1}, timeout=20), gw.lines
        assert ratings(db) == [(1, 2)]          # exactly once
        dev.publish(rating(KA, A, 2, score=4))  # and it keeps working
        assert dev.wait_acked({1, 2})
        assert gw.terminate() == 0
    finally:
        if gw.proc.poll() is None:
            gw.kill()
    assert ratings(db) == [(1, 2), (2, 4)]
