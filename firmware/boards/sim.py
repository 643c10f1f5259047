# The simulator board: the firmware on the MicroPython unix port, keys and outputs over a local TCP socket.
#
# Device config: `sim_port` (required), `sim_host` (default 127.0.0.1), `sim_connect` (False: listen on
# the port and take one simulator at a time, a new connection replacing the old; True: connect to a
# simulator listening there, retried every second), `sim_tap_ms` (how long a tap holds its key down,
# default 100 ms: longer than the debounce so the scan sees it, like a finger would), `wdt_ms` (the
# watchdog, as on the ESP32 boards).
#
# Simulator -> device, one command a line:  P <key>  press (hold)   R <key>  release   T <key>  tap
#   <key> is the key's label: 1..5 for the score keys, i for the invite key. Unknown lines are ignored.
# Device -> simulator, one a line:  LED <pattern>   BUZ <pattern>   OLED <text>   (boards/__init__.py)
#
# The hardware around the CPU is the simulator's (sim/port/esp32boot.py, sim/fwdevice.py): the watchdog
# (machine.WDT, which kills and restarts this process 8 s after the last feed, in the REPL too), the
# reset line, the reset cause, and keys held down while the keypad powers up (CS_SIM_HOLD, e.g. "1,4",
# each held for CS_SIM_HOLD_MS, default 3000: a technician's fingers asking for service mode).
#
# Console (stdin, the virtual USB serial port): boards/console.py, as on every board.
#
# Everything is non-blocking: poll() (called on every key scan) accepts, reads and applies commands with
# select.poll and a zero timeout. Feedback that cannot be sent at once is dropped: it is cosmetic, the
# rating itself is already on flash. The network is up at once (loopback).
import os
import select
import socket
import time

from micropython import const

import boards
from boards import cfg_get
from boards.console import Console

_LABELS = "12345i"      # key labels in pin order: score keys 1..5, then invite
_RETRY_MS = const(1000)

# The keypad's clock is a 32-bit port's, not the unix port's: ticks wrap at 2**30 ms (12.4 days) on the
# C3, at 2**62 here, where no test would ever see a wrap. So this board's ticks have the C3's period and
# start CS_SIM_WRAP_S seconds (default 30) before the wrap: every simulated keypad crosses it soon
# after boot, and code that compares ticks without ticks_diff, or feeds a growing count to it, fails
# in the simulator as it would on a keypad after 12 days.
_PERIOD = const(0x40000000)
_HALF = const(0x20000000)
_MASK = const(0x3FFFFFFF)
_OFF = (_PERIOD - int(os.getenv("CS_SIM_WRAP_S") or "30") * 1000 - time.ticks_ms()) & _MASK  # type: ignore[operator]


def ticks_ms():
    # The stubs type ticks as opaque (_TicksMs); they are small ints on every port, and this stand-in
    # for a 32-bit port's clock is arithmetic on them by design.
    return (time.ticks_ms() + _OFF) & _MASK  # type: ignore[operator]


def ticks_diff(a, b):
    return ((a - b + _HALF) & _MASK) - _HALF


def ticks_add(a, d):
    return (a + d) & _MASK


class VPin:
    """A virtual key: .value() is 0 while down (active low, as on the real keypad)."""

    def __init__(self):
        self._down = False
        self._until = None          # end of a tap, in ticks

    def set(self, down, hold_ms=None):
        self._down = down
        self._until = None if hold_ms is None else ticks_add(ticks_ms(), hold_ms)

    def value(self):
        if self._until is not None and ticks_diff(ticks_ms(), self._until) >= 0:
            self._down = False
            self._until = None
        return 0 if self._down else 1


class Board:
    name = "sim"

    def __init__(self, cfg):
        # cfg None: a keypad whose config is unreadable (cs/start.py): keys and console only.
        port = cfg_get(cfg, "sim_port")
        if cfg is not None and (not isinstance(port, int) or not 0 < port < 65536):
            raise ValueError("sim_port")
        self._connect = bool(cfg_get(cfg, "sim_connect", False))
        self._tap_ms = cfg_get(cfg, "sim_tap_ms", 100)
        self._wdt_ms = cfg_get(cfg, "wdt_ms", 8000)
        self._wdt = None
        self.ticks_ms = ticks_ms
        self.ticks_diff = ticks_diff
        self.ticks_add = ticks_add
        self.port = port
        self._pins = [VPin() for _ in _LABELS]
        held = os.getenv("CS_SIM_HOLD")
        if held:
            ms = int(os.getenv("CS_SIM_HOLD_MS") or "3000")
            for label in held.split(","):
                k = _LABELS.find(label.strip())
                if k >= 0:
                    self._pins[k].set(True, ms)
        self._buf = b""
        self._poll = select.poll()
        self._listener = None
        self._conn = None
        self._next_try = ticks_ms()
        self.feedback = self        # the feedback calls below send the lines of boards/__init__.py
        self.commands = 0           # key commands applied (for tests and the console)
        self.console = Console()
        if port is None:
            return
        self._addr = socket.getaddrinfo(cfg_get(cfg, "sim_host", "127.0.0.1"), port)[0][-1]
        if not self._connect:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(self._addr)
            s.listen(1)
            s.setblocking(False)
            self._listener = s
            self._poll.register(s, select.POLLIN)
            print("SIM LISTEN", port)   # the console (stdout) is the virtual serial port
        else:
            self._try_connect()

    # -- the board interface ---------------------------------------------------------------------------

    def keys(self, scale=4, invite=True):
        if scale != 4 and scale != 5:
            raise ValueError("bad-scale")
        pins = self._pins[:scale]
        if invite:
            pins.append(self._pins[5])
        return pins

    def network_up(self):
        return True

    def connect_network(self, cfg=None):
        return True

    def watchdog_feed(self):
        if self._wdt is None:
            from machine import WDT     # the simulator's (sim/port/esp32boot.py), esp32 semantics

            self._wdt = WDT(timeout=self._wdt_ms)
            boards.wdt_ms = self._wdt_ms
        self._wdt.feed()

    def reset_cause(self):
        import machine

        return machine.reset_cause()

    def allow_break(self, on):
        self.console.brk = on

    def reset(self):
        import machine

        machine.reset()

    def rssi(self):
        return None

    @property
    def connected(self):
        """A simulator is attached (feedback goes somewhere)."""
        return self._conn is not None

    def poll(self):
        if self._conn is None and self._connect:
            if ticks_diff(ticks_ms(), self._next_try) >= 0:
                self._try_connect()
            return
        for obj, ev in self._poll.ipoll(0):
            if obj is self._listener:
                self._accept()
            elif obj is self._conn:
                if ev & (select.POLLHUP | select.POLLERR):
                    self._drop()
                else:
                    self._read()

    def console_line(self):
        """A whole line typed on the console since the last call, or None (boards/console.py)."""
        return self.console.line()

    def close(self):
        self._drop()
        if self._listener is not None:
            self._poll.unregister(self._listener)
            self._listener.close()
            self._listener = None

    # -- feedback: the pattern names of boards/__init__.py as lines ----------------------------------

    def pressed(self, score):
        self._send("LED green")
        self._send("BUZ beep")

    def stored(self):
        self._send("LED green2")

    def show(self, text):
        self._send("OLED " + str(text).replace("\n", " "))

    def error(self, code):
        self._send("LED red %d" % code)
        self._send("BUZ low")

    def idle(self):
        self._send("LED off")
        self._send("BUZ off")

    # -- socket plumbing -------------------------------------------------------------------------------

    def _try_connect(self):
        self._next_try = ticks_add(ticks_ms(), _RETRY_MS)
        s = socket.socket()
        try:
            s.connect(self._addr)       # loopback: refused or accepted at once
        except OSError:
            s.close()
            return
        self._attach(s)

    def _accept(self):
        listener = self._listener
        if listener is None:
            return
        try:
            s, _ = listener.accept()
        except OSError:
            return
        self._drop()                    # the newest simulator wins
        self._attach(s)

    def _attach(self, s):
        s.setblocking(False)
        self._conn = s
        self._buf = b""
        self._poll.register(s, select.POLLIN)
        print("SIM ATTACHED")

    def _drop(self):
        if self._conn is not None:
            self._poll.unregister(self._conn)
            self._conn.close()
            self._conn = None
            print("SIM DETACHED")
            if self._connect:
                self._next_try = ticks_add(ticks_ms(), _RETRY_MS)

    def _read(self):
        conn = self._conn
        if conn is None:
            return
        try:
            data = conn.recv(256)
        except OSError:
            return                      # EAGAIN: nothing after all
        if not data:
            self._drop()
            return
        buf = self._buf + data
        while True:
            i = buf.find(b"\n")
            if i < 0:
                break
            self._command(buf[:i])
            buf = buf[i + 1:]
        self._buf = buf[-128:]          # a line longer than that is garbage anyway

    def _command(self, line):
        parts = line.strip().split()
        if len(parts) != 2 or len(parts[1]) != 1:     # one label character (not a substring)
            return
        try:
            k = _LABELS.index(parts[1].decode().lower())
        except (ValueError, UnicodeError):
            return
        cmd = parts[0]
        pin = self._pins[k]
        if cmd == b"P":
            pin.set(True)
        elif cmd == b"R":
            pin.set(False)
        elif cmd == b"T":
            pin.set(True, self._tap_ms)
        else:
            return
        self.commands += 1

    def _send(self, line):
        if self._conn is None:
            return
        try:
            self._conn.send((line + "\n").encode())
        except OSError:
            pass                        # would block or gone: feedback is cosmetic, poll() sees a hang-up
