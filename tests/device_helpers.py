"""Shared by the technicians'-tool tests: a hall whose gateway is its own process, the tool's CLI, and
simulated keypads as a technician meets them (fresh from the box, flashed, in service mode)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from countersign.cli import main
from countersign.sim.broker import free_port
from countersign.sim.chain import Chain, ChainConfig
from countersign.sim.fwdevice import FirmwareConfig, FirmwareDevice

SERVICE = "1,4"                 # keys held at power-up for service mode (firmware/cs/start.py)


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


def blank_keypad(folder: Path, broker_port: int | None = None, sim_port: int | None = None,
                 **kw: object) -> FirmwareDevice:
    """A board fresh from the box: MicroPython and its REPL only (no app, no identity), on a virtual
    USB cable whose host end the tools open (``host(fw)``)."""
    cfg = FirmwareConfig("unset", b"\0" * 32, folder, broker_port or free_port(), sim_port or free_port(),
                         console="pty", read_console=False, **kw)   # type: ignore[arg-type]
    fw = FirmwareDevice(cfg)
    fw.start(write_config=False, install=False)
    return fw


def host(fw: FirmwareDevice) -> str:
    if fw.serial is None:
        raise RuntimeError("the keypad has no virtual cable (console='pty')")
    return str(fw.serial.host)


def power_cycle(fw: FirmwareDevice, hold: str = "", hold_s: float = 3.0) -> int:
    """Unplug and plug in again (``hold=SERVICE``: keys 1 and 4 held, service mode), watching the
    console from the first line; returns the mark to wait from. ``detach_console()`` before a tool."""
    fw.kill()
    mark = fw.mark()
    if fw.serial is not None and fw.serial.running:
        fw.attach_console()
    else:
        fw.cfg.read_console = True          # its first power-on: the cable is made and read from now
    fw.release_keys()
    fw.start(write_config=False, install=False, hold=hold, hold_s=hold_s)
    return mark


def service_mode(fw: FirmwareDevice, timeout: float = 20.0) -> None:
    """Restart a provisioned keypad in service mode and hand its cable to the tools once its app runs
    (the REPL is reachable from then on: Ctrl-C stops the app)."""
    mark = power_cycle(fw, SERVICE)
    if fw.wait_line(r"CS:SERVICE", timeout, start=mark) is None or fw.wait_line(
            r"CS:PROVISIONED", timeout, start=mark) is None:
        raise RuntimeError(f"no service-mode boot: {fw.lines[mark:]}")
    fw.detach_console()


def wait_reset(fw: FirmwareDevice, mark: int, cause: int = 2, timeout: float = 10.0) -> bool:
    """The simulated chip reset (cause 2: machine.reset(), 3: the watchdog) after console mark ``mark``
    (the reset line and the watchdog live in the simulator's thread: it happens a moment later)."""
    return fw.wait_until(lambda lines: any(f"SIM RESET cause={cause}" in ln for ln in lines[mark:]), timeout)
