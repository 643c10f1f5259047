"""Shared by the technicians'-tool tests: a hall whose gateway is its own process, and the tool's CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from countersign.cli import main
from countersign.sim.chain import Chain, ChainConfig


def hall_with_gateway_process(tmp_path: Path) -> Iterator[Chain]:
    """Body of the test files' `chain` fixture: a started hall, its gateway a process (SIGHUP-able)."""
    c = Chain(ChainConfig(workdir=tmp_path / "chain", devices=1, retry_s=1.0, gateway_process=True))
    c.start(devices=False)
    try:
        yield c
    finally:
        c.stop()


def hall_args(chain: Chain) -> list[str]:
    """The hall's files and processes as a technician names them to `countersign device ...`."""
    h = chain.first
    assert chain.hall_broker.proc is not None and chain.gateway is not None
    gw_pid = chain.gateway.proc.pid       # type: ignore[union-attr]  # a GatewayProcess here
    return ["--keystore", str(h.keystore_path), "--registry", str(chain.registry_path),
            "--broker-dir", str(h.dir / "hall-broker"), "--broker-pid", str(chain.hall_broker.proc.pid),
            "--gateway-pid", str(gw_pid), "--broker-host", "127.0.0.1", "--broker-port", str(h.port)]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["device", *argv])
    out, err = capsys.readouterr()
    return rc, out, err
