"""Shared fixtures: real mosquitto brokers on free ports, each with its own config and folder."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from browser_helpers import chromium
from selenium.webdriver.remote.webdriver import WebDriver

from countersign.gateway.brokerconf import write_broker_files
from countersign.protocol.keystore import DeviceKey, Keystore
from countersign.province.db import Database
from countersign.sim.broker import Mosquitto, free_port, run_as_clause
from countersign.sim.postgres import PgServer

GATEWAY_PASSWORD = "test-gateway-password"


def device_key(n: int) -> bytes:
    """Deterministic test keys: device n's key is 32 bytes of n (never used outside tests)."""
    return bytes([n % 256]) * 32


def make_keystore(hall: str = "hf01", devices: int = 2, epoch: int = 1) -> Keystore:
    ks = Keystore(hall=hall)
    for i in range(1, devices + 1):
        ks.add_device(f"{hall}-w{i:02d}", DeviceKey(device_key(i), epoch=epoch, window=str(i), hall=hall))
    return ks


@pytest.fixture
def hall_broker(tmp_path: Path) -> Iterator[Callable[[Keystore], Mosquitto]]:
    """Factory: start the hall broker from the config the gateway generates for ``keystore``."""
    started: list[Mosquitto] = []

    def start(keystore: Keystore, name: str = "hall") -> Mosquitto:
        port = free_port()
        files = write_broker_files(tmp_path / f"broker-{name}", keystore, GATEWAY_PASSWORD, port=port,
                                   bind="127.0.0.1", run_as=run_as_clause())
        b = Mosquitto(files.conf, port).start()
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's HTTP proxy must not swallow calls to the gateway's local API.
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    """One real PostgreSQL server for the whole run (Debian's binaries, a cluster of its own)."""
    server = PgServer(tmp_path_factory.mktemp("postgres")).start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def province_db(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """The province's database on each backend: an SQLite file, or a new database on the real server."""
    if request.param == "sqlite":
        return Database(str(tmp_path / "province.db"))
    server: PgServer = request.getfixturevalue("pg_server")
    name = "t_" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:16]
    return Database(server.create_db(name))


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """Debian's headless Chromium (browser_helpers.chromium), one per test."""
    with chromium(tmp_path) as driver:
        yield driver
