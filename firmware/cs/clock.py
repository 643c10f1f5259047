# Device time. There is no RTC: wall time comes only from the gateway's time sync, which must echo the
# nonce of our last hello/heartbeat (a replayed sync is refused). Until the first sync the time is
# unknown (None) and ratings carry only the milliseconds since boot, never a made-up date.
#
# ticks_ms wraps: at 2**30 ms (12.4 days) on a 32-bit port such as the C3, and ticks_diff is only valid
# between two ticks values less than half a period apart. So ticks are only ever compared with the
# injected diff (time.ticks_diff, or the simulator board's 32-bit-port stand-in), and the long count is
# kept in whole seconds (a small int for 34 years on a 32-bit port: no heap object per update) plus the
# milliseconds into the current second. Nothing here is fed back into ticks arithmetic.
import random
from time import ticks_diff


class Clock:
    def __init__(self, ticks_ms, diff=ticks_diff):
        self._ticks = ticks_ms
        self._diff = diff
        self._last = ticks_ms()
        self._s = 0               # whole seconds since boot
        self._ms = 0              # and milliseconds into the current one
        self._base = None         # (unix ms, _s, _ms) at the last accepted sync
        self._nonce = None

    def tick(self):
        """Advance the count. Called every second by the app (at least once per half ticks period)."""
        now = self._ticks()
        d = self._diff(now, self._last)
        self._last = now
        if d > 0:
            ms = self._ms + d
            if ms >= 1000:
                self._s += ms // 1000
                ms %= 1000
            self._ms = ms

    def uptime_s(self):
        """Whole seconds since boot (the heartbeat's uptime; long intervals)."""
        self.tick()
        return self._s

    def mono32(self):
        """Milliseconds since boot modulo 2**32: the `mono` field of a rating."""
        self.tick()
        return (self._s * 1000 + self._ms) & 0xFFFFFFFF

    def new_nonce(self):
        self._nonce = random.getrandbits(32)
        return self._nonce

    def sync(self, now_ms, nonce):
        """Accept a time sync only for our latest nonce, once."""
        if self._nonce is None or nonce != self._nonce:
            return False
        self._nonce = None
        self.tick()
        self._base = (now_ms, self._s, self._ms)
        return True

    def unix_s(self):
        """Unix seconds now, or None while the time is unknown."""
        b = self._base
        if b is None:
            return None
        self.tick()
        return (b[0] + (self._s - b[1]) * 1000 + self._ms - b[2]) // 1000

    @property
    def known(self):
        return self._base is not None
