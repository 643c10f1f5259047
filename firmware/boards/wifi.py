# The Wi-Fi station as the esp32 driver expects to be used (ports/esp32/network_wlan.c).
#
# After one connect() the driver reconnects by itself whenever the link drops (reconnects are unlimited
# by default) and status() says what it is doing: STAT_GOT_IP, STAT_CONNECTING, or the reason of the
# last failure (no AP found, wrong password, ...) while it keeps trying. disconnect() cancels that
# (connect requested = false), and a connect() while the driver is connecting can fail with an OSError.
# So this calls connect() once, then only watches, and calls connect() again only on a terminal state:
# STAT_IDLE (the driver is not trying: after an internal stop) or a connect() that raised; those retries
# back off with jitter, so the keypads of a hall do not all ask the access point at once.
import random

from micropython import const

_STAT_IDLE = const(1000)
_STAT_GOT_IP = const(1010)
_POLL_MS = const(250)           # status() every 250 ms: the link state, not a busy loop on the driver
_RETRY_MIN_MS = const(2000)
_RETRY_MAX_MS = const(60000)


class Wifi:
    def __init__(self, wlan, ticks_ms, diff, add):
        self._w = wlan
        self._ticks = ticks_ms
        self._diff = diff
        self._add = add
        self._creds = None
        self._next = ticks_ms()           # next status() (and, when due, connect())
        self._retry_at = None             # a terminal state seen: connect() again at this tick
        self._backoff = _RETRY_MIN_MS
        self.up = False
        self.status = _STAT_IDLE          # the driver's last status (a reason code while failing)
        self.joins = 0                    # connect() calls made

    def start(self, ssid, password):
        self._creds = (ssid, password)
        self._w.active(True)
        self._join()

    def _join(self):
        creds = self._creds
        if creds is None:
            return
        self.joins += 1
        try:
            self._w.connect(creds[0], creds[1])   # returns at once, joins in the background
            self._retry_at = None
        except OSError:
            self._later()

    def _later(self):
        self._retry_at = self._add(self._ticks(), self._backoff + random.getrandbits(10))
        self._backoff = min(self._backoff * 2, _RETRY_MAX_MS)

    def poll(self):
        """Cheap when called on every key scan; returns whether the station has an IP address."""
        if self._creds is None:
            return False
        now = self._ticks()
        if self._diff(now, self._next) < 0:
            return self.up
        self._next = self._add(now, _POLL_MS)
        st = self._w.status()
        self.status = st
        self.up = st == _STAT_GOT_IP
        if self.up:
            self._backoff = _RETRY_MIN_MS
            self._retry_at = None
        elif st == _STAT_IDLE and self._retry_at is None:
            self._later()                   # the driver stopped trying: ask again, after a pause
        if self._retry_at is not None and self._diff(now, self._retry_at) >= 0:
            self._join()
        return self.up
