"""The gateway notices its own failure: a part that dies ends the process (exit 1, the part named on
stderr), a stuck worker stops the systemd watchdog pings, and the pid file tracks the running daemon.

Each part is killed with the ``COUNTERSIGN_TEST_KILL`` hook in a real `countersign gateway run` process
against real mosquitto brokers (hall and provincial); the gateway started afterwards stores the rating a
keypad sent while it was down (the hall broker kept it for the gateway's persistent session).
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import stat
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import GATEWAY_PASSWORD, device_key, make_keystore
from gw_helpers import Device, GatewayRun, rating

from countersign.common.brokerconf import password_hash
from countersign.protocol import topics
from countersign.protocol.keystore import Keystore, new_signing_key, public_bytes, save_signing_key
from countersign.sim.broker import Mosquitto, free_port, run_as_clause

DEV = "hf01-w01"
KEY = device_key(1)
UPLINK_PASSWORD = "test-hall-uplink-password"
PARTS = ("ingest-worker", "hall-mqtt", "uplink-mqtt", "forwarder", "http")
HOOKS = ("COUNTERSIGN_TEST_KILL", "COUNTERSIGN_TEST_PAUSE_AT", "NOTIFY_SOCKET", "WATCHDOG_USEC",
         "WATCHDOG_PID")


def province_broker(folder: Path) -> Mosquitto:
    """The provincial broker, just enough for the hall's uplink to connect and subscribe."""
    folder.mkdir()
    port = free_port()
    (folder / "passwd").write_text(f"hf01:{password_hash(UPLINK_PASSWORD)}\n")
    p = topics.PREFIX
    (folder / "acl").write_text(f"pattern write {p}/h/%u/batch\npattern read {p}/h/%u/ack\n")
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous false", f"password_file {folder / 'passwd'}",
             f"acl_file {folder / 'acl'}", "use_username_as_clientid true"]
    run_as = run_as_clause()
    if run_as:
        lines.append(f"user {run_as}")
    (folder / "mosquitto.conf").write_text("\n".join(lines) + "\n")
    return Mosquitto(folder / "mosquitto.conf", port).start()


class Proc(GatewayRun):
    """`countersign gateway run` with test hooks; its stderr lines collected as they come."""

    def __init__(self, config: Path, env: dict[str, str], *extra: str) -> None:
        clean = {k: v for k, v in os.environ.items() if k not in HOOKS}
        self.started = time.monotonic()
        super().__init__(config, {**clean, **env}, *extra)

    def stderr(self) -> str:
        with self.cond:
            return "\n".join(self.lines)

    def end(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class World:
    config: Path
    db: Path
    device: Device
    procs: list[Proc]

    def gateway(self, env: dict[str, str] | None = None, *extra: str) -> Proc:
        p = Proc(self.config, env or {}, *extra)
        self.procs.append(p)
        return p

    def stored(self) -> set[int]:
        if not self.db.exists():
            return set()
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as c:
            return {s for (s,) in c.execute("SELECT seq FROM ratings WHERE device = ?", (DEV,))}


@pytest.fixture
def world(tmp_path: Path, hall_broker: Callable[[Keystore], Mosquitto]) -> Iterator[World]:
    ks = make_keystore(devices=1)
    broker = hall_broker(ks)
    uplink = province_broker(tmp_path / "province")
    ks.save(tmp_path / "keystore.json")
    (tmp_path / "gw-password").write_text(GATEWAY_PASSWORD + "\n")
    (tmp_path / "uplink-password").write_text(UPLINK_PASSWORD + "\n")
    save_signing_key(tmp_path / "signing.key", new_signing_key())
    province_key = public_bytes(new_signing_key()).hex()
    conf = tmp_path / "gateway.toml"
    conf.write_text(f'hall = "hf01"\ndb = "gw.db"\nkeystore = "keystore.json"\n'
                    f'[broker]\nport = {broker.port}\npassword_file = "gw-password"\n'
                    f'[http]\nport = 0\n'
                    f'[uplink]\nhost = "127.0.0.1"\nport = {uplink.port}\npassword_file = "uplink-password"\n'
                    f'signing_key = "signing.key"\nprovince_public_key = "{province_key}"\n',
                    encoding="utf-8")
    dev = Device(broker.port, DEV, KEY).start()
    w = World(conf, tmp_path / "gw.db", dev, [])
    yield w
    for p in w.procs:
        p.end()
    dev.stop()
    uplink.stop()


def first_run(w: World) -> None:
    """A clean start and stop: the hall broker now keeps a session (and its messages) for the gateway."""
    p = w.gateway()
    p.wait_line("ready http=")
    p.proc.send_signal(signal.SIGTERM)
    assert p.proc.wait(20) == 0, p.stderr()


@pytest.mark.parametrize("part", PARTS)
def test_a_dead_part_ends_the_gateway_and_a_restart_loses_nothing(world: World, part: str) -> None:
    first_run(world)
    p = world.gateway({"COUNTERSIGN_TEST_KILL": part})
    try:
        rc: int | None = p.proc.wait(15)
    except subprocess.TimeoutExpired:
        rc = None
    took = time.monotonic() - p.started
    err = p.stderr()
    assert rc == 1, err
    last = [ln for ln in p.lines if ln.startswith("countersign gateway: ")]
    assert last and part in last[-1] and "exiting for a restart" in last[-1], err
    assert took < 10, f"{part}: the gateway took {took:.1f} s to notice"

    world.device.publish(rating(KEY, DEV, 1))           # while no gateway runs
    assert 1 not in world.stored()
    again = world.gateway()
    again.wait_line("ready http=")
    assert world.device.wait_acked({1}, timeout=20), again.stderr()
    assert world.stored() == {1}
    again.proc.send_signal(signal.SIGTERM)
    assert again.proc.wait(20) == 0, again.stderr()


class NotifySocket:
    """What systemd's end of NOTIFY_SOCKET would receive (an abstract address, as systemd may use)."""

    def __init__(self) -> None:
        self.name = f"@countersign-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.got: list[str] = []

    def until(self, predicate: Callable[[str], bool], timeout: float) -> str | None:
        """Collect datagrams until one satisfies ``predicate`` (returned) or ``timeout`` passes (None)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                msg = self.sock.recv(4096).decode()
            except TimeoutError:
                return None
            self.got.append(msg)
            if predicate(msg):
                return msg
        return None

    def close(self) -> None:
        self.sock.close()


def test_sd_notify_ready_then_watchdog_and_a_stuck_worker_stops_the_pings(world: World) -> None:
    first_run(world)
    ns = NotifySocket()
    try:
        p = world.gateway({"NOTIFY_SOCKET": ns.name, "WATCHDOG_USEC": "2000000",
                           "COUNTERSIGN_TEST_PAUSE_AT": "before-commit"})
        assert ns.until(lambda m: "READY=1" in m, 20) is not None, p.stderr()
        assert not any("WATCHDOG=1" in m for m in ns.got[:-1]), ns.got    # READY comes first
        for _ in range(3):
            assert ns.until(lambda m: m == "WATCHDOG=1", 5) is not None, ns.got
        # A rating: the worker takes it and blocks before its commit, alive but making no progress.
        world.device.publish(rating(KEY, DEV, 1))
        p.wait_line("PAUSED before-commit")
        stuck = ns.until(lambda m: m.startswith("STATUS=stuck"), 10)
        assert stuck is not None and "ingest-worker" in stuck, ns.got
        # With WatchdogSec=2 systemd would kill it within 2 s of the last ping: none comes in 3 s.
        assert ns.until(lambda m: "WATCHDOG=1" in m, 3) is None, ns.got
        assert p.proc.poll() is None                     # still alive: systemd's watchdog ends it
    finally:
        ns.close()


def test_stopping_is_told_to_systemd(world: World) -> None:
    ns = NotifySocket()
    try:
        p = world.gateway({"NOTIFY_SOCKET": ns.name})
        assert ns.until(lambda m: "READY=1" in m, 20) is not None, p.stderr()
        p.proc.send_signal(signal.SIGTERM)
        assert ns.until(lambda m: "STOPPING=1" in m, 20) is not None, (ns.got, p.stderr())
        assert p.proc.wait(20) == 0, p.stderr()
    finally:
        ns.close()


def test_pid_file_holds_the_pid_and_goes_on_a_clean_stop(world: World, tmp_path: Path) -> None:
    pid_file = tmp_path / "run" / "gateway.pid"
    pid_file.parent.mkdir()
    p = world.gateway({}, "--pid-file", str(pid_file))
    p.wait_line("ready http=")
    assert pid_file.read_text().strip() == str(p.proc.pid)
    assert stat.S_IMODE(pid_file.stat().st_mode) == 0o644
    assert sorted(os.listdir(pid_file.parent)) == ["gateway.pid"]      # no temporary file left behind
    p.proc.send_signal(signal.SIGTERM)
    assert p.proc.wait(20) == 0, p.stderr()
    assert not pid_file.exists()


def test_a_pid_file_that_cannot_be_written_stops_the_start(world: World, tmp_path: Path) -> None:
    p = world.gateway({}, "--pid-file", str(tmp_path / "no-such-dir" / "gateway.pid"))
    assert p.proc.wait(20) == 2
    assert "no-such-dir" in p.stderr()


def test_the_device_tools_read_the_pid_file_the_gateway_writes(tmp_path: Path) -> None:
    from countersign.device.hall import read_pid
    from countersign.gateway.daemon import write_pid_file

    pid_file = tmp_path / "gateway.pid"
    write_pid_file(pid_file)
    assert read_pid(None, pid_file) == os.getpid()
