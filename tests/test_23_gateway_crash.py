"""The gateway as its own process, SIGKILLed just before and just after a group commit, then restarted:
the rating is stored exactly once and the device gets its ack (the broker redelivers what was not
PUBACKed; a redelivered rating that was already committed is a duplicate and is acked again)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import GATEWAY_PASSWORD, device_key, make_keystore
from gw_helpers import Device, rating, wait_for

from countersign.protocol.keystore import Keystore
from countersign.sim.broker import Mosquitto

A = "hf01-w01"
KA = device_key(1)


class GatewayProcess:
    def __init__(self, config: Path, pause_at: str | None) -> None:
        env = {k: v for k, v in os.environ.items() if k != "COUNTERSIGN_TEST_PAUSE_AT"}
        if pause_at:
            env["COUNTERSIGN_TEST_PAUSE_AT"] = pause_at
        self.proc = subprocess.Popen([sys.executable, "-m", "countersign.cli", "gateway", "run",
                                      "--config", str(config)], stderr=subprocess.PIPE, env=env, text=True)
        self.lines: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.lines.append("<exit>")
            self.cond.notify_all()

    def wait_line(self, prefix: str, timeout: float = 20.0) -> str:
        def found() -> bool:
            return any(ln.startswith(prefix) or ln == "<exit>" for ln in self.lines)
        assert wait_for(self.cond, found, timeout), f"no {prefix!r} in {self.lines}"
        line = next(ln for ln in self.lines if ln.startswith(prefix) or ln == "<exit>")
        assert line != "<exit>", f"gateway exited: {self.lines}"
        return line

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
