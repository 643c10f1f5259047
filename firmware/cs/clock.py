# Device time. There is no RTC: wall time comes only from the gateway's time sync, which must echo the
# nonce of our last hello/heartbeat (a replayed sync is refused). Until the first sync the time is
# unknown (None) and ratings carry only the monotonic milliseconds, never a made-up date.
import random
from time import ticks_diff


class Clock:
    def __init__(self, ticks_ms):
        self._ticks = ticks_ms
        self._diff = ticks_diff
        self._last = ticks_ms()
        self._mono = 0            # ms since boot; a Python int, so it never wraps like ticks_ms does
        self._base_mono = None    # mono at the last sync
        self._base_unix_ms = 0
        self._nonce = None

    def mono(self):
        """Milliseconds since boot. Call often enough (the app's tick loop) for ticks_ms not to wrap."""
        now = self._ticks()
        self._mono += self._diff(now, self._last)
        self._last = now
        return self._mono

    def new_nonce(self):
        self._nonce = random.getrandbits(32)
        return self._nonce

    def sync(self, now_ms, nonce):
        """Accept a time sync only for our latest nonce, once."""
        if self._nonce is None or nonce != self._nonce:
            return False
        self._nonce = None
        self._base_mono = self.mono()
        self._base_unix_ms = now_ms
        return True

    def unix_s(self, mono=None):
        """Unix seconds at `mono` (default: now), or None while the time is unknown."""
        if self._base_mono is None:
            return None
        m = self.mono() if mono is None else mono
        return (self._base_unix_ms + m - self._base_mono) // 1000

    @property
    def known(self):
        return self._base_mono is not None
