# Board modules: the only code that touches pins, radios and the watchdog. See firmware/DESIGN.md.
#
# Every board module defines `Board(cfg)` (cfg: the device config, a dict or an object with attributes)
# with the same interface, so cs/app.py never knows which board it runs on:
#
#   keys(scale=4, invite=True) -> list of pin objects (.value() == 0 while down): the score keys 1..scale
#                                 in order, then the invite key if `invite` (cs.keys index = that order)
#   feedback                    -> Feedback: pressed(score), stored(), show(text), error(code), idle()
#   ticks_ms()                  -> millisecond clock (time.ticks_ms)
#   poll()                      -> service the board without blocking: LED/buzzer patterns, the sim socket,
#                                  Wi-Fi reconnect; call it on every key scan (every ~10 ms)
#   network_up() -> bool, connect_network(cfg) (starts joining, never blocks; poll() retries with backoff)
#   watchdog_feed()             -> feed the hardware watchdog (armed at the first call)
#   reset_cause() -> int        -> PROTOCOL.md hello `reset`: 1 power-on, 2 hard reset, 3 watchdog,
#                                  4 deep-sleep wake, 5 soft reset (MicroPython's machine constants)
#   rssi() -> int or None       -> Wi-Fi RSSI in dBm, None when unknown (sim: always None)
#   close()
#
# load(name, cfg) imports boards.<name> and returns its Board(cfg).
#
# Feedback patterns, the same on every board (the sim board sends the names as lines, real boards play
# them on the LEDs and the buzzer with Player below):
#
#   call          LED line / physical pattern                     BUZ line / physical pattern
#   pressed(s)    "green"  green on 600 ms (press taken, on flash)  "beep"  one 60 ms beep
#   stored()      "green2" green blinks twice 80/80 ms (gateway ack)  -
#   error(code)   "red N"  red blinks N times 150/150 ms              "low"   one 300 ms low tone
#   idle()        "off"    LEDs off                                   "off"   silent
#   show(text)    OLED: the text (ASCII; the SSD1306 font has no CJK glyphs), or nothing without a display

from time import ticks_diff

LED_PRESSED = "green"
LED_STORED = "green2"
LED_ERROR = "red"
LED_OFF = "off"
BUZ_PRESSED = "beep"
BUZ_ERROR = "low"
BUZ_OFF = "off"

# (on, off, on, off, ...) durations in ms for Player
PAT_PRESSED = (600,)
PAT_STORED = (80, 80, 80)
PAT_ERROR_BLINK = (150, 150)        # repeated `code` times
PAT_BEEP = (60,)
PAT_LOW = (300,)

# Names of the pin map entries (hardware/<board>/pins.json "pins"), in cs.keys order.
SCORE_KEYS = ("key1", "key2", "key3", "key4", "key5")
INVITE_KEY = "invite"


def cfg_get(cfg, name, default=None):
    """A config value from a dict or an object (cs.config's shape is its own business)."""
    if cfg is None:
        return default
    if isinstance(cfg, dict):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def load(name, cfg):
    if name not in ("sim", "esp32c3", "esp32s3"):
        raise ValueError("unknown board")
    mod = __import__("boards." + name, None, None, ("Board",))
    return mod.Board(cfg)


class Player:
    """Plays an on/off pattern on an output (anything with .value(v)) without blocking.

    start(pattern, repeat) switches the output on at once; poll() advances it by the clock. A new start()
    replaces a pattern still playing (the newest feedback wins).
    """

    def __init__(self, out, ticks_ms):
        self._out = out
        self._ticks = ticks_ms
        self._pat = ()
        self._i = 0
        self._left = 0
        self._t = 0
        out.value(0)

    def start(self, pattern, repeat=1):
        self._pat = pattern
        self._left = repeat
        self._i = 0
        self._t = self._ticks()
        self._out.value(1)

    def stop(self):
        self._pat = ()
        self._out.value(0)

    @property
    def busy(self):
        return bool(self._pat)

    def poll(self):
        pat = self._pat
        if not pat:
            return
        now = self._ticks()
        while pat and ticks_diff(now, self._t) >= pat[self._i]:
            self._t += pat[self._i]
            self._i += 1
            if self._i == len(pat):
                self._left -= 1
                if self._left <= 0:
                    self.stop()
                    return
                self._i = 0                 # repeat > 1 wants an even pattern (ends with an off gap)
            self._out.value(1 if self._i % 2 == 0 else 0)
