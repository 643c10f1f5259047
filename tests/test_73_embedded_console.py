"""A simulated keypad on a virtual USB serial port, driven by pytest-embedded (as a real board would be):
boot banner, provisioned state, a status command."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from countersign.sim.chain import Chain, ChainConfig
from countersign.sim.fwdevice import FirmwareDevice
from countersign.sim.serialport import VirtualSerial

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    c = Chain(ChainConfig(workdir=tmp_path / "chain", devices=1, firmware=1, retry_s=1.0))
    c.start(devices=False)
    try:
        yield c
    finally:
        c.stop()


def test_pytest_embedded_over_the_virtual_serial_port(chain: Chain, tmp_path: Path) -> None:
    dev = chain.device_ids[0]
    cfg = chain.firmware_config(dev)
    cfg.console, cfg.read_console = "pty", False      # the console belongs to pytest-embedded
    fw = FirmwareDevice(cfg)
    chain.fw[dev] = fw
    fw.serial = VirtualSerial(cfg.folder).start()      # the cable is plugged in before power-on
    nested = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "pytest_embedded", "-s", "-q", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "--embedded-services", "serial", "--port", str(fw.serial.host),
         "--baud", "115200", str(ROOT / "tests" / "embedded" / "test_keypad_console.py")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert nested.stdout is not None
    out = []
    for line in nested.stdout:
        out.append(line)
        if "CONSOLE-OPEN" in line:
            fw.start()                                  # power on: the banner goes to pytest-embedded
            break
    out.append(nested.stdout.read())
    rc = nested.wait(120)
    assert rc == 0, "".join(out)[-4000:]
    assert "1 passed" in "".join(out)
