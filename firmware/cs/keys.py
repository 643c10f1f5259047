# Keypad scanning with debounce and stuck-key detection. See firmware/DESIGN.md.
#
# Pins and the clock are injected: each pin is any object whose .value() returns 0 while its key is
# down (keys switch to ground against a pull-up: active low), ticks_ms() is a millisecond clock that
# wraps (the board's ticks_ms: time.ticks_ms on the device, a fake in tests) and diff its ticks_diff. A
# key held longer than half a ticks period (6.2 days on a 32-bit port) stays stuck: its bit is cleared
# only on release. Key index i is pins[i]; the application's order
# is the score keys 1..scale, then the invite key (boards.Board.keys()).
#
# A key changes its stable state only after its raw level has stayed the same for debounce_ms, so
# contact chatter (on press or on release) never makes a second press. A press is reported once, on the
# edge to "down". Several keys at once give one press: of keys that become stable in the same scan, the
# one whose level settled first (lowest index on a tie); a key that settles while another is still held
# is swallowed (a palm on the keypad is one touch, not two ratings). Stuck keys are left out of that, so
# one jammed key does not lock the keypad. A key held
# down past stuck_ms sets its bit in `stuck` (reported in the heartbeat) until it is released.
#
# scan() allocates nothing: state lives in preallocated bytearrays and a list of small ints (ticks_ms
# values are small ints on MicroPython, which are not heap objects).
from time import ticks_diff


class Keys:
    def __init__(self, pins, ticks_ms, debounce_ms=30, stuck_ms=10000, diff=ticks_diff):
        n = len(pins)
        if not 1 <= n <= 16:
            raise ValueError("keys: 1..16 pins")   # `stuck` is a 16-bit mask (PROTOCOL.md heartbeat)
        if debounce_ms < 0 or stuck_ms <= debounce_ms:
            raise ValueError("keys: need 0 <= debounce_ms < stuck_ms")
        self._pins = pins
        self._ticks = ticks_ms
        self._diff = diff
        self._debounce = debounce_ms
        self._stuck_ms = stuck_ms
        self._n = n
        now = ticks_ms()
        # A key already down at start-up (something leaning on the keypad) is taken as the stable state:
        # it is not a press, and it still becomes `stuck` if it stays down.
        self._raw = bytearray(n)        # last level read: 1 = down
        self._stable = bytearray(n)     # debounced level
        self._since = [now] * n         # when the raw level last changed
        for i in range(n):
            d = 1 if pins[i].value() == 0 else 0
            self._raw[i] = d
            self._stable[i] = d
        self.stuck = 0                  # bit i: key i held past stuck_ms
        self.down = 0                   # bit i: key i stably down now
        self.presses = 0                # edges reported by scan() since start

    def scan(self):
        """Read every key once; return the index of a key that has just been pressed, else -1."""
        now = self._ticks()
        raw = self._raw
        stable = self._stable
        since = self._since
        busy = self.down & ~self.stuck  # keys already held (a stuck key must not block the others)
        best = -1
        best_age = -1
        for i in range(self._n):
            d = 1 if self._pins[i].value() == 0 else 0
            if d != raw[i]:
                raw[i] = d
                since[i] = now
                continue
            age = self._diff(now, since[i])
            if d != stable[i]:
                if age < self._debounce:
                    continue
                stable[i] = d
                if d:
                    self.down |= 1 << i
                    if age > best_age:      # settled earliest wins; strict > keeps the lowest index
                        best = i
                        best_age = age
                else:
                    self.down &= ~(1 << i)
                    self.stuck &= ~(1 << i)
            elif d and age >= self._stuck_ms:
                self.stuck |= 1 << i
        if best < 0 or busy:
            return -1
        self.presses += 1
        return best
