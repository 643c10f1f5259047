# The keypad's USB serial console, read without blocking from the key-scan loop (every board).
#
# On a keypad the console is MicroPython's stdin: the USB-UART (UART0) and, on the C3, USB serial/JTAG;
# on the simulator it is the unix port's stdin, the device end of a virtual serial cable. Lines typed
# there are the app's commands (`status`). Ctrl-C is not MicroPython's interrupt while the app runs
# (main.py turns it off with micropython.kbd_intr(-1): a REPL would hand the device key to anyone with a
# USB cable): it is an ordinary byte here, and only in service mode (cs/start.py) does it stop the app,
# by raising KeyboardInterrupt at this safe point of the scan loop rather than in the middle of a flash
# write. The bytes after it are left unread for the REPL (mpremote sends Ctrl-C, then Ctrl-A).
import select
import sys

from micropython import const

_MAX_LINE = const(64)
_PER_POLL = const(32)      # bytes taken per call: a flood on the console cannot hold up the keys


class Console:
    def __init__(self):
        self.brk = False           # service mode: Ctrl-C ends the app
        self._in = bytearray()
        self._line = None
        self._p = select.poll()
        try:
            self._p.register(sys.stdin, select.POLLIN)
            self._on = True
        except (OSError, TypeError):
            self._on = False       # no console at all (a process without stdin)

    def _ready(self):
        # ipoll, not poll: poll() returns a new list on every call, and this runs on every key scan.
        for _ in self._p.ipoll(0):
            return True
        return False

    def line(self):
        """A whole line typed since the last call (str), or None."""
        n = 0
        while self._on and n < _PER_POLL and self._ready():
            c = sys.stdin.buffer.read(1)
            n += 1
            if not c:              # EOF or hang-up: nobody can type here any more
                self._p.unregister(sys.stdin)
                self._on = False
                break
            if c == b"\x03":
                if self.brk:
                    raise KeyboardInterrupt
                self._in = bytearray()
            elif c == b"\n" or c == b"\r":
                if self._in:
                    line = self._in
                    self._in = bytearray()
                    try:
                        return line.decode()
                    except UnicodeError:
                        return "?"
            elif len(self._in) < _MAX_LINE:
                self._in.extend(c)
        return None
