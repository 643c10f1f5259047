"""Firmware keys, rating flow and the sim board, on the real MicroPython unix port.

cs.keys and cs.flow run their own scripts (tests/fw/mp_keys.py, mp_flow.py) with an injected clock. The
sim board is driven the way the simulator drives it: this test holds the other end of the board's TCP
socket, sends key events as lines and reads the feedback lines back.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mpy import FIRMWARE, FW_TESTS, SIM_PORT, VECTORS, assert_mpy_ok, micropython

from countersign.sim.broker import free_port

T = 15.0        # generous limit; every wait returns as soon as its line arrives
STOCK_PINS = FIRMWARE.parent / "hardware" / "micropython-pins.json"
MODULES = ["cs/keys.py", "cs/flow.py", "boards/__init__.py", "boards/sim.py", "boards/esp32c3.py",
           "boards/esp32s3.py"]


def test_keys_debounce_chatter_stuck_no_allocation() -> None:
    out = assert_mpy_ok("mp_keys.py")
    for name in ("a held key counts once", "chatter on press and release gives exactly one press",
                 "two keys pressed together: the first stable one only",
                 "stuck clears on release, release is no press", "scan() runs with the heap locked"):
        assert f"ok {name}" in out
    assert "passed" in out


def test_keys_in_a_64k_heap() -> None:
    assert_mpy_ok("mp_keys.py", heap="64K")


def test_clock_across_the_ticks_wrap_of_this_port_and_of_a_32_bit_port() -> None:
    out = assert_mpy_ok("mp_clock.py", heap="64K")
    for name in ("uptime and mono go on across the wrap", "the synced time goes on across the wrap",
                 "tick() allocates nothing"):
        assert f"ok port: {name}" in out and f"ok 32-bit: {name}" in out, out


def test_flow_every_transition() -> None:
    out = assert_mpy_ok("mp_flow.py", heap="64K")
    for name in ("first press rates: key 2 is score 3", "timeout: expired, the app sends a no-rating for 7",
                 "prompt 9 replaces unrated 8", "a redelivered prompt is stale",
                 "invite with no clerk signed in: refused", "press() and tick() allocate nothing"):
        assert f"ok {name}" in out


@pytest.mark.parametrize("module", MODULES)
def test_module_compiles_with_mpy_cross(module: str, tmp_path: Path) -> None:
    exe = Path(micropython()).with_name("mpy-cross")
    assert exe.exists(), "mpy-cross is installed with micropython (make test)"
    out = tmp_path / "m.mpy"
    r = subprocess.run([str(exe), "-o", str(out), str(FIRMWARE / module)], capture_output=True, text=True,
                       check=False, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert out.stat().st_size > 0


def test_esp32_boards_on_a_fake_machine() -> None:
    """The board modules on a fake machine whose Pin refuses what the stock image's pin table lacks."""
    out = assert_mpy_ok("mp_board_sim.py", "esp32", env={"CS_STOCK_PINS": str(STOCK_PINS)})
    for name in ("keys in score order, then invite", "watchdog armed once at the first feed, fed",
                 "LED: one RGB pixel on GPIO8 (the board's own LED and the panel's)",
                 "pressed: LED green, beep",
                 "stored: LED blinks green twice", "error(2): LED blinks red twice",
                 "an LED on GPIO19: Board() raises invalid pin",
                     "no access point: the driver keeps trying, the board makes no second connect()",
                     "rejoined by the driver, still one connect()",
                     "idle: one more connect() after the backoff, then up",
                     "disconnect() never called (it cancels the driver's reconnects)",
                     "OLED: the SSD1306 initialised at 0x3C, display on last",
                     "OLED: show() sends one whole frame with the text lit",
                 "esp32s3: the same board on its own pins (ESP32_GENERIC_S3)",
                 "esp32s3: the same board on its own pins (ESP32_GENERIC_S3-SPIRAM_OCT)"):
        assert f"ok {name}" in out


# -- the sim board over its socket ------------------------------------------------------------------------

class Sim:
    """The simulator's end of the socket: send key lines, read feedback lines."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buf = b""
        self.lines: list[str] = []

    def send(self, line: str) -> None:
        self.conn.sendall(line.encode() + b"\n")

    def expect(self, line: str) -> list[str]:
        """Read until `line` arrives; return the lines read since the previous expect (inclusive)."""
        start = len(self.lines)
        deadline = time.monotonic() + T
        while line not in self.lines[start:]:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {line!r} from the device; got {self.lines[start:]}")
            self.conn.settimeout(left)
            data = self.conn.recv(4096)
            if not data:
                raise AssertionError(f"device hung up before {line!r}; got {self.lines[start:]}")
            self.buf += data
            *done, self.buf = self.buf.split(b"\n")
            self.lines += [d.decode() for d in done]
        return self.lines[start:]


@contextmanager
def device(mode: str, port: int) -> Iterator[subprocess.Popen[str]]:
    env = dict(os.environ, CS_FIRMWARE=str(FIRMWARE), CS_VECTORS=str(VECTORS), CS_FW_TESTS=str(FW_TESTS),
               CS_SIM_PORT=str(SIM_PORT))
    proc = subprocess.Popen([micropython(), str(FW_TESTS / "mp_board_sim.py"), mode, str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)


def _conversation(sim: Sim, proc: subprocess.Popen[str]) -> None:
    sim.expect("OLED ready")
    sim.send("T 2")
    got = sim.expect("OLED hold")
    # The device saw key 2 exactly once (its own check), then played each feedback pattern.
    assert got == ["LED green", "BUZ beep", "LED green2", "LED red 3", "BUZ low", "LED off", "BUZ off",
                   "OLED hold"], got
    sim.send("P 5")
    sim.expect("OLED stuck 16")          # key 5 = index 4 = bit 16, held past stuck_ms
    sim.send("R 5")
    sim.expect("OLED released")
    sim.send("X 1")                      # garbage: ignored
    sim.send("T 9")                      # no such key: ignored
    sim.send("hello world and more")     # not a command
    sim.send("T i")
    sim.expect("OLED bye")
    out, _ = proc.communicate(timeout=T)
    assert proc.returncode == 0, out
    assert "ok T 2: the scan sees key 2 (index 1) exactly once" in out
    assert "ok T i is" not in out and "ok garbage and unknown keys ignored" in out


def test_sim_board_connects_to_the_simulator() -> None:
    port = free_port()
    with socket.create_server(("127.0.0.1", port)) as srv, device("connect", port) as proc:
        srv.settimeout(T)
        conn, _ = srv.accept()
        with conn:
            _conversation(Sim(conn), proc)


def test_sim_board_listens_for_the_simulator() -> None:
    port = free_port()
    with device("listen", port) as proc:
        assert proc.stdout is not None
        deadline = time.monotonic() + T
        for line in proc.stdout:        # the console marker says the socket is listening
            if line.strip() == f"SIM LISTEN {port}":
                break
            assert time.monotonic() < deadline, "no SIM LISTEN marker"
        else:
            pytest.fail(f"device exited before listening (rc {proc.wait()})")
        with socket.create_connection(("127.0.0.1", port), timeout=T) as conn:
            _conversation(Sim(conn), proc)
