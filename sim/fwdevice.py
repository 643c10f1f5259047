"""A keypad running the real firmware on the MicroPython unix port, driven like a bench device.

The process boots as an esp32 keypad does (``sim/port/esp32boot.py``: the port's boot sequence, then
``main.py``) in its own folder, its "flash": config.json, device.key, the outbox and counters, the
installed application (``apps/<id>/`` or a ROMFS partition, ``app.txt``). Its console (stdout) carries
the firmware's ``CS:`` markers, which this class collects so tests and the simulator wait on events
instead of sleeping; keys are pressed through the sim board's local TCP socket.

This class is also the hardware around the keypad's CPU (``_Chip``): the watchdog, which resets the
keypad (kills the process and starts it again, reset cause 3) when the firmware has not fed it for its
timeout, in the REPL as much as in the app, as the esp32 port's task watchdog does; and the reset line
(``machine.reset()``, cause 2).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from countersign.common import bundle

from .keypad import Rated
from .proc import end
from .serialport import VirtualSerial

_TAP_GAP_S = 0.1 + 2 * 0.03 + 0.02    # the sim board's hold + twice the debounce + scan slack

DEFAULT_BUNDLE = bundle.DEFAULT_OUT
PORT_BOOT = Path(__file__).resolve().parent / "port" / "esp32boot.py"
# Heap the unix process gets beyond the keypad's budget, for what lives in C or in flash on a keypad
# (esp32boot's shims, a ROMFS partition's bytes): esp32boot hands the app exactly the budget.
PORT_HEAP = 16384
RESET_CAUSES = {1: "power-on", 2: "hard reset", 3: "watchdog"}


def port_boot(budget: int, rom_bytes: int = 0, *, repl: bool = False, main: str | None = None,
              env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The command and environment that boot a simulated keypad (run it in the keypad's folder): the
    app gets ``budget`` bytes of heap, the image a ROMFS partition of ``rom_bytes`` (0: none), ``repl``
    keeps the REPL after main.py, ``main`` runs in main.py's place (a bench driver)."""
    heap = budget + PORT_HEAP + (rom_bytes + 1024 if rom_bytes else 0)
    cmd = [micropython_exe(), "-X", f"heapsize={heap}", *(["-i"] if repl else []), str(PORT_BOOT)]
    e = dict(os.environ, CS_SIM_HEAP=str(budget), **(env or {}))
    if rom_bytes:
        e["CS_SIM_ROMFS"] = str(rom_bytes)
    if main:
        e["CS_SIM_MAIN"] = main
    return cmd, e


class _LineReader:
    """Text lines from a pyserial port, for the console pump (a cable end never reaches EOF)."""

    def __init__(self, port: Any) -> None:
        self.port = port

    def __iter__(self) -> Any:
        buf = b""
        while True:
            try:
                chunk = self.port.read(self.port.in_waiting or 1)
            except (OSError, TypeError, AttributeError):   # closed under us
                return
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                yield line.decode(errors="replace").rstrip("\r") + "\n"


def micropython_exe() -> str:
    exe = Path(sys.executable).parent / "micropython"
    return str(exe) if exe.exists() else "micropython"


@dataclass
class FirmwareConfig:
    device_id: str
    key: bytes
    folder: Path
    broker_port: int
    sim_port: int
    epoch: int = 1
    hall: str = ""
    window: str = ""
    scale: int = 4
    invite_key: bool = True
    heartbeat_s: int = 60
    capacity: int = 9000
    broker_host: str = "127.0.0.1"
    mode: str = "mpy"                       # how the app is installed: "mpy" tree or "romfs" image
    # The simulated MicroPython image has a ROMFS partition (stock esp32 images have none); default:
    # only when the app is installed as a ROMFS image.
    romfs: bool | None = None
    heap: int | None = None                 # RAM budget for the app (default: budget.json's, per mode)
    bundle: Path = DEFAULT_BUNDLE           # where bundles are built (device/bundle.py)
    # "pipe": the console is the process's stdout. "pty": a virtual USB serial cable (socat); the host
    # end (``FirmwareDevice.serial.host``) is what mpremote, pyserial and pytest-embedded open.
    console: str = "pipe"
    read_console: bool = True               # with "pty": False leaves the host end to another tool
    extra: dict[str, object] = field(default_factory=dict)

    def write(self) -> None:
        """What provisioning writes: the key first, the config last (its presence = provisioned)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "device.key").write_bytes(self.key)
        cfg = {"device_id": self.device_id, "epoch": self.epoch, "hall": self.hall, "window": self.window,
               "scale": self.scale, "invite_key": self.invite_key, "broker_host": self.broker_host,
               "broker_port": self.broker_port, "heartbeat_s": self.heartbeat_s, "sim_port": self.sim_port,
               "capacity": self.capacity, **self.extra}
        tmp = self.folder / "config.json.new"
        tmp.write_text(json.dumps(cfg))
        os.replace(tmp, self.folder / "config.json")


class _Chip:
    """The watchdog and reset line of one simulated keypad (esp32boot.py sends it datagrams).

    ``boot`` tags each power-on, so a datagram from a process already gone is ignored. The watchdog is
    off at power-on until the firmware constructs ``machine.WDT``; every construction reconfigures its
    timeout (esp32), every feed restarts it. ``on_reset(cause)`` is called from this thread.
    """

    def __init__(self, on_reset: Callable[[int], None]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self._on_reset = on_reset
        self._lock = threading.Lock()
        self.boot = 0
        self._timeout: float | None = None    # seconds; None: watchdog not running
        self._fed = 0.0
        self.feeds = 0
        self._closed = False
        threading.Thread(target=self._run, daemon=True).start()

    def power_on(self) -> int:
        with self._lock:
            self.boot += 1
            self._timeout = None
            return self.boot

    def power_off(self) -> None:
        with self._lock:
            self.boot += 1                    # whatever the old process still sends is ignored
            self._timeout = None

    def close(self) -> None:
        self._closed = True
        self.power_off()
        self.sock.close()

    def _run(self) -> None:
        while not self._closed:
            with self._lock:
                left = None if self._timeout is None else self._fed + self._timeout - time.monotonic()
            if left is not None and left <= 0:
                self.power_off()
                self._on_reset(3)
                continue
            self.sock.settimeout(0.5 if left is None else min(left, 0.5))
            try:
                data = self.sock.recv(64)
            except TimeoutError:
                continue
            except OSError:
                return                        # closed
            what, _, tag = data.partition(b" ")
            with self._lock:
                if tag != str(self.boot).encode():
                    continue
                if what.startswith(b"W"):
                    self._timeout = int(what[1:]) / 1000
                    self._fed = time.monotonic()
                elif what == b"F":
                    self._fed = time.monotonic()
                    self.feeds += 1
                elif what != b"R":
                    continue
            if what == b"R":
                self.power_off()
                self._on_reset(2)


class FirmwareDevice:
    def __init__(self, cfg: FirmwareConfig) -> None:
        self.cfg = cfg
        self.device_id, self.epoch = cfg.device_id, cfg.epoch      # as the Keypad interface names them
        self.proc: subprocess.Popen[Any] | None = None
        self.lines: list[str] = []
        self._cv = threading.Condition()
        self._sock: socket.socket | None = None
        self._last_tap = 0.0
        self.serial: VirtualSerial | None = None
        self._host: Any = None                  # the pyserial port on the host end, when we read it
        self._power = threading.RLock()         # one power-on / power-cut at a time
        self._chip: _Chip | None = None
        self.resets: list[int] = []             # causes of the resets the chip made (2 hard, 3 watchdog)

    # -- process ---------------------------------------------------------------------------------
    def start(self, write_config: bool = True, install: bool = True, hold: str = "",
              hold_s: float = 3.0, cause: int = 1) -> FirmwareDevice:
        """Power on. ``write_config=False`` leaves an unprovisioned keypad unprovisioned (for
        ``countersign device provision``); ``install=False`` leaves the folder's application as it is
        (a blank keypad: MicroPython and its REPL only, until ``countersign device flash``). ``hold``:
        key labels held down while it powers up (``"1,4"``: service mode), for ``hold_s`` seconds.

        With the "pty" console the process runs with ``-i``: when main.py ends (an unprovisioned keypad,
        or Ctrl-C in service mode) the REPL stays on the cable, as on a real board, so mpremote can
        reach it.
        """
        with self._power:
            self.cfg.folder.mkdir(parents=True, exist_ok=True)
            if write_config and not (self.cfg.folder / "config.json").exists():
                self.cfg.write()
            if install:
                self.install()
            if self._chip is None:
                self._chip = _Chip(self._chip_reset)
            boot = self._chip.power_on()
            chip = {"CS_SIM_CHIP": self._chip.address, "CS_SIM_BOOT": str(boot),
                    "CS_SIM_RESET_CAUSE": str(cause)}
            if hold:
                chip.update(CS_SIM_HOLD=hold, CS_SIM_HOLD_MS=str(int(hold_s * 1000)))
            cmd, env = port_boot(self.cfg.heap or bundle.device_heap(self.cfg.mode), self._rom_bytes(),
                                 repl=self.cfg.console == "pty", env=chip)
            # Console lines are kept across restarts (a power cut does not erase what was seen); use
            # mark() to wait for something after a point.
            if self.cfg.console == "pty":
                if self.serial is None or not self.serial.running:
                    self.serial = VirtualSerial(self.cfg.folder).start()
                    if self.cfg.read_console:
                        self._open_host()
                with open(self.serial.device, "r+b", buffering=0) as tty:
                    self.proc = subprocess.Popen(cmd, cwd=self.cfg.folder, stdin=tty, stdout=tty, stderr=tty,
                                                 env=env)
                return self
            self.proc = subprocess.Popen(cmd, cwd=self.cfg.folder, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                         bufsize=1, env=env)
            threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()
            return self

    def _romfs(self) -> bool:
        return self.cfg.romfs if self.cfg.romfs is not None else self.cfg.mode == "romfs"

    def _rom_bytes(self) -> int:
        """Size of the simulated ROMFS partition (flash on a keypad, heap here), 0 without one."""
        if not self._romfs():
            return 0
        return bundle.romfs_partition_size(bundle.build("sim", self.cfg.bundle))

    def _chip_reset(self, cause: int) -> None:
        """The chip resets: the process dies where it stands and the keypad boots again."""
        with self._power:
            if self.proc is None:
                return
            self._close_sock()
            end(self.proc, signal.SIGKILL)
            self.proc = None
            self.resets.append(cause)
            self._note(f"SIM RESET cause={cause} ({RESET_CAUSES.get(cause, '?')})")
            self.start(write_config=False, install=False, cause=cause)

    def _note(self, line: str) -> None:
        with open(self.cfg.folder / "console.log", "a", encoding="utf-8") as log:
            log.write(line + "\n")
        with self._cv:
            self.lines.append(line)
            self._cv.notify_all()

    def _open_host(self) -> None:
        import serial  # pyserial: the technician's side of the cable

        assert self.serial is not None
        self._host = serial.Serial(str(self.serial.host), 115200, timeout=None)
        threading.Thread(target=self._pump, args=(_LineReader(self._host),), daemon=True).start()

    def attach_console(self) -> None:
        """Read the console here from now on (lines collected as with read_console=True)."""
        if self.serial is None or not self.serial.running:
            raise RuntimeError("no virtual serial cable (console='pty', start() first)")
        if self._host is None:
            self._open_host()

    def detach_console(self) -> None:
        """Let go of the cable's host end, for another tool (mpremote, `countersign device`)."""
        if self._host is not None:
            host, self._host = self._host, None
            host.cancel_read()          # the pump's blocking read returns empty: the pump ends
            host.close()

    def write_console(self, text: str) -> None:
        """Type on the keypad's console (the REPL side of its USB serial port)."""
        if self._host is None:
            raise RuntimeError("the console is not attached here (console='pty', read_console=True)")
        self._host.write(text.encode())

    def install(self) -> None:
        """What flashing does: the application (a .mpy tree or a ROMFS image) and main.py onto the
        keypad's filesystem, switched in by its pointer file (device/bundle.py)."""
        bundle.install_into(self.cfg.folder, bundle.build("sim", self.cfg.bundle), self.cfg.mode)

    def _pump(self, stream: Any) -> None:
        with open(self.cfg.folder / "console.log", "a", encoding="utf-8") as log:
            for line in stream:
                log.write(line)
                log.flush()
                with self._cv:
                    self.lines.append(line.rstrip("\n"))
                    self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def kill(self) -> None:
        """Power cut: SIGKILL, nothing flushed beyond what the firmware already wrote."""
        with self._power:
            if self._chip is not None:
                self._chip.power_off()
            self._close_sock()
            end(self.proc, signal.SIGKILL)
            self.proc = None

    def stop(self) -> None:
        """Unplug: the process ends (the unix port has no clean shutdown) and the cable goes away."""
        self.kill()
        if self._host is not None:
            self._host.close()
            self._host = None
        if self.serial is not None:
            self.serial.stop()
            self.serial = None
        if self._chip is not None:
            self._chip.close()
            self._chip = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- console markers ----------------------------------------------------------------------------
    def wait_line(self, pattern: str, timeout: float = 10.0, start: int = 0) -> re.Match[str] | None:
        """First console line (from index ``start``) matching ``pattern``, waiting up to ``timeout``."""
        rx = re.compile(pattern)
        found: list[re.Match[str]] = []

        def ready() -> bool:
            for line in self.lines[start:]:
                m = rx.search(line)
                if m:
                    found.append(m)
                    return True
            return not self.running

        with self._cv:
            self._cv.wait_for(ready, timeout)
        return found[0] if found else None

    def count(self, pattern: str) -> int:
        rx = re.compile(pattern)
        with self._cv:
            return sum(1 for line in self.lines if rx.search(line))

    def wait_until(self, predicate: Callable[[list[str]], bool], timeout: float) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: predicate(self.lines), timeout)

    def mark(self) -> int:
        with self._cv:
            return len(self.lines)

    # -- keys over the sim board's socket -----------------------------------------------------------
    def _connect(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.create_connection(("127.0.0.1", self.cfg.sim_port), timeout=5)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._sock

    def release_keys(self) -> None:
        """Drop the key socket: the next tap connects again (the app was restarted in its process)."""
        self._close_sock()

    def _close_sock(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def tap(self, key: int | str) -> bool:
        """Press and release a key: 1..5 = the score keys, "i" = the invite key; False if the keypad is
        off (or goes off under the finger: a power-cut fault).

        The sim board holds a tapped key down for ``_TAP_HOLD_S`` and needs it released and stable
        again before the next press counts (debounce), as a finger would; taps closer together than
        that are spaced out here rather than silently merged into one press.
        """
        if not self.running:
            return False
        gap = self._last_tap + _TAP_GAP_S - time.monotonic()
        if gap > 0:
            threading.Event().wait(gap)
        try:
            self._connect().sendall(f"T {key}\n".encode())
        except OSError:
            if self.running:
                raise
            return False                      # it went off under the finger
        self._last_tap = time.monotonic()
        return True

    # -- the Keypad interface (keypad.py): the console is the keypad's history -----------------------
    def power_cut(self) -> None:
        self.kill()

    def wait_connected(self, timeout: float, since: int = 0) -> bool:
        return self.wait_line(r"CS:LINK up", timeout, start=since) is not None

    def wait_clerk(self, clerk: str, timeout: float, since: int = 0) -> bool:
        return self.wait_line(rf"CS:SESSION clerk={re.escape(clerk)}$", timeout, start=since) is not None

    def wait_prompt(self, prompt_id: int, timeout: float, since: int = 0) -> bool:
        return self.wait_line(rf"CS:PROMPT id={prompt_id}\b", timeout, start=since) is not None

    def wait_rated(self, timeout: float, since: int = 0) -> Rated | None:
        m = self.wait_line(r"CS:RATED seq=(\d+) score=(\d+)", timeout, start=since)
        return None if m is None else Rated(int(m.group(1)), int(m.group(2)))

    def wait_no_rating(self, timeout: float, since: int = 0) -> bool:
        return self.wait_line(r"CS:NORATING", timeout, start=since) is not None

    def invite(self, timeout: float = 5.0) -> bool:
        since = self.mark()
        return self.tap("i") and self.wait_line(r"CS:INVITE", timeout, start=since) is not None

    def outbox_depth(self) -> int:
        """As far as the console tells: records made and not yet reported stored."""
        return len((self.seqs("RATED") | self.seqs("NORATING")) - self.seqs("STORED"))

    def wait_settled(self, timeout: float) -> bool:
        return self.wait_until(lambda _lines: self.settled(), timeout)

    def invite_and_rate(self, score: int, timeout: float = 5.0) -> int:
        """The clerk presses the invite key, the customer a score key; the seq the keypad stored."""
        mark = self.mark()
        self.tap("i")
        if self.wait_line(r"CS:INVITE", timeout, start=mark) is None:
            raise RuntimeError(f"no prompt opened by the invite key: {self.lines[mark:]}")
        self.tap(score)
        m = self.wait_line(r"CS:RATED seq=(\d+)", timeout, start=mark)
        if m is None:
            raise RuntimeError(f"the press made no rating: {self.lines[mark:]}")
        return int(m.group(1))

    def seqs(self, marker: str) -> set[int]:
        """Seqs named by a console marker over all runs: RATED, NORATING, STORED."""
        rx = re.compile(rf"CS:{marker} seq=(\d+)")
        with self._cv:
            return {int(m.group(1)) for line in self.lines for m in [rx.search(line)] if m}

    def settled(self) -> bool:
        """Everything this keypad recorded has been acked by the gateway."""
        return (self.seqs("RATED") | self.seqs("NORATING")) <= self.seqs("STORED")
