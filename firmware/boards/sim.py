# The simulator board: the firmware on the MicroPython unix port, keys and outputs over a local TCP socket.
#
# Device config: `sim_port` (required), `sim_host` (default 127.0.0.1), `sim_connect` (False: listen on
# the port and take one simulator at a time, a new connection replacing the old; True: connect to a
# simulator listening there, retried every second), `sim_tap_ms` (how long a tap holds its key down,
# default 100 ms: longer than the debounce so the scan sees it, like a finger would).
#
# Simulator -> device, one command a line:  P <key>  press (hold)   R <key>  release   T <key>  tap
#   <key> is the key's label: 1..5 for the score keys, i for the invite key. Unknown lines are ignored.
# Device -> simulator, one a line:  LED <pattern>   BUZ <pattern>   OLED <text>   (boards/__init__.py)
#
# Console (stdin, the virtual USB serial port): lines typed there go to the app (`status`); a 0x03 byte
# (Ctrl-C) raises KeyboardInterrupt out of the app, as on a real board, so mpremote reaches the REPL
# (the simulator starts the keypad as `micropython -i main.py`).
#
# Everything is non-blocking: poll() (called on every key scan) accepts, reads and applies commands with
# select.poll and a zero timeout. Feedback that cannot be sent at once is dropped: it is cosmetic, the
# rating itself is already on flash. Network is always up, there is no watchdog, rssi is unknown.
import select
import sys
import socket
import time

from micropython import const

from boards import cfg_get

_LABELS = "12345i"      # key labels in pin order: score keys 1..5, then invite
_RETRY_MS = const(1000)


class VPin:
    """A virtual key: .value() is 0 while down (active low, as on the real keypad)."""

    def __init__(self, ticks_ms):
        self._ticks = ticks_ms
        self._down = False
        self._until = None          # end of a tap, in ticks

    def set(self, down, hold_ms=None):
        self._down = down
        self._until = None if hold_ms is None else time.ticks_add(self._ticks(), hold_ms)

    def value(self):
        if self._until is not None and time.ticks_diff(self._ticks(), self._until) >= 0:
            self._down = False
            self._until = None
        return 0 if self._down else 1


class Board:
    name = "sim"

    def __init__(self, cfg):
        port = cfg_get(cfg, "sim_port")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError("sim_port")
        self._addr = socket.getaddrinfo(cfg_get(cfg, "sim_host", "127.0.0.1"), port)[0][-1]
        self._connect = bool(cfg_get(cfg, "sim_connect", False))
        self._tap_ms = cfg_get(cfg, "sim_tap_ms", 100)
        self.ticks_ms = time.ticks_ms
        self.port = port
        self._pins = [VPin(time.ticks_ms) for _ in _LABELS]
        self._buf = b""
        self._poll = select.poll()
        self._listener = None
        self._conn = None
        self._next_try = time.ticks_ms()
        self.feedback = self        # the feedback calls below send the lines of boards/__init__.py
        self.commands = 0           # key commands applied (for tests and the console)
        # The console: stdin is the keypad's (virtual) USB serial port. Lines typed there are commands
        # for the app (`status`); a closed stdin (EOF) simply stops being polled.
        self._cin = bytearray()
        self._cline = None
        try:
            self._poll.register(sys.stdin, select.POLLIN)
            self._stdin = True
        except (OSError, TypeError):
            self._stdin = False
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
        pass

    def reset_cause(self):
        return 1                    # power-on: every unix-port start is a fresh boot

    def rssi(self):
        return None

    @property
    def connected(self):
        """A simulator is attached (feedback goes somewhere)."""
        return self._conn is not None

    def poll(self):
        if self._conn is None and self._connect:
            if time.ticks_diff(self.ticks_ms(), self._next_try) >= 0:
                self._try_connect()
            return
        for obj, ev in self._poll.ipoll(0):
            if obj is sys.stdin:
                self._console(ev)
            elif obj is self._listener:
                self._accept()
            elif obj is self._conn:
                if ev & (select.POLLHUP | select.POLLERR):
                    self._drop()
                else:
                    self._read()

    def console_line(self):
        """A whole line typed on the console since the last call, or None."""
        line, self._cline = self._cline, None
        return line

    def _console(self, ev):
        c = sys.stdin.buffer.read(1) if ev & select.POLLIN else b""
        if not c:                        # EOF or hang-up: nobody can type here
            self._poll.unregister(sys.stdin)
            return
        if c == b"\x03":
            # Ctrl-C from a technician's tool (mpremote): the unix port's terminal is raw, so no SIGINT
            # comes; stop the app as a real board's Ctrl-C would. Free the simulator's port first so the
            # app can be started again in this process (`countersign device` resumes it), then the
            # KeyboardInterrupt ends main.py and `micropython -i` drops into the REPL on this console.
            self.close()
            raise KeyboardInterrupt
        if c == b"\n" or c == b"\r":
            if self._cin:
                self._cline = self._cin.decode()
                self._cin = bytearray()
        elif len(self._cin) < 64:
            self._cin.extend(c)

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
        self._next_try = time.ticks_add(self.ticks_ms(), _RETRY_MS)
        s = socket.socket()
        try:
            s.connect(self._addr)       # loopback: refused or accepted at once
        except OSError:
            s.close()
            return
        self._attach(s)

    def _accept(self):
        try:
            s, _ = self._listener.accept()
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
                self._next_try = time.ticks_add(self.ticks_ms(), _RETRY_MS)

    def _read(self):
        try:
            data = self._conn.recv(256)
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
