# ESP32-C3 DevKitM-1 keypad board (and, by subclassing with other PINS, every ESP32 board: esp32s3.py).
#
# Pin numbers: PINS below is the "pins" object of hardware/esp32c3-devkitm-1/pins.json, embedded rather
# than read from /pins.json at boot: nothing to copy or lose on the device, no file read or JSON parse
# before the keys work. tests/test_65_board_pins.py checks the two agree, that every Pin() here takes its
# number from PINS, and that every number is valid and not reserved on the board (the json says why).
#
# Keys: inputs with pull-up, active low. Feedback: one RGB LED (WS2812-type: green or red), a buzzer on
# PWM, and an SSD1306 on I2C if the `ssd1306` driver (firmware/drivers/ssd1306.py, in the bundle of a
# board with an OLED) is there and the display answers at 0x3C; without it show() does nothing.
# Patterns: boards/__init__.py (their timings and the Player that plays them are here: only the hardware
# boards need them).
# Network: Wi-Fi station, boards/wifi.py (one connect(), then the driver's own reconnects).
# Watchdog: machine.WDT, armed at the first watchdog_feed() (so boot work such as loading the outbox is
# not raced against it), wdt_ms in the config (default 8000). Console: boards/console.py, polled on
# stdin (the USB-UART) without blocking.
import time

import network
from machine import I2C, PWM, WDT, Pin
from machine import reset as _machine_reset
from machine import reset_cause as _machine_reset_cause
from micropython import const
from time import ticks_add, ticks_diff

import boards
from boards import cfg_get
from boards.console import Console
from boards.wifi import Wifi

PINS = {
    "key1": 0,
    "key2": 1,
    "key3": 3,
    "key4": 4,
    "key5": 5,
    "invite": 2,
    "sda": 6,
    "scl": 7,
    "buzzer": 10,
    "led": 8,
}

# (on, off, on, off, ...) durations in ms for Player
PAT_PRESSED = (600,)
PAT_STORED = (80, 80, 80)
PAT_ERROR_BLINK = (150, 150)        # repeated `code` times
PAT_BEEP = (60,)
PAT_LOW = (300,)

# Names of the pin map entries (hardware/<board>/pins.json "pins"), in cs.keys order.
SCORE_KEYS = ("key1", "key2", "key3", "key4", "key5")
INVITE_KEY = "invite"

_OLED_ADDR = 0x3C
_BEEP_HZ = 2700         # near a typical passive buzzer's resonance: loud for little current
_LOW_HZ = 1000
# LED levels out of 255: a WS2812 colour draws ~12-20 mA at 255 and the C3 lights two LEDs; a few mA each is
# bright enough indoors and stays inside the USB power budget (hardware/README.md, Power).
_GREEN = const(48)
_RED = const(64)


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
            self._t = ticks_add(self._t, pat[self._i])
            self._i += 1
            if self._i == len(pat):
                self._left -= 1
                if self._left <= 0:
                    self.stop()
                    return
                self._i = 0                 # repeat > 1 wants an even pattern (ends with an off gap)
            self._out.value(1 if self._i % 2 == 0 else 0)


class _Buzzer:
    """A Player output: .value(1) sounds the current tone, .value(0) silences it."""

    def __init__(self, pin):
        self._pwm = PWM(pin, freq=_BEEP_HZ, duty_u16=0)

    def tone(self, hz):
        self._pwm.freq(hz)

    def value(self, v):
        self._pwm.duty_u16(32768 if v else 0)


class _Rgb:
    """One RGB pixel on a WS2812-type data line (the C3's own LED and the panel LED in parallel on it)."""

    def __init__(self, pin):
        from neopixel import NeoPixel       # micropython-lib, frozen into every stock esp32 image
        self._np = NeoPixel(pin, 1)
        self._rgb = [0, 0, 0]

    def set(self, i, level):
        self._rgb[i] = level
        self._np[0] = self._rgb
        self._np.write()


class _Channel:
    """A Player output: one colour of the pixel. Colours lit together add up, as two LEDs would both show."""

    def __init__(self, rgb, i, level):
        self._rgb = rgb
        self._i = i
        self._level = level

    def value(self, v):
        self._rgb.set(self._i, self._level if v else 0)


class Feedback:
    def __init__(self, green, red, buzzer, oled, ticks_ms):
        self._green = Player(green, ticks_ms)
        self._red = Player(red, ticks_ms)
        self._buzzer = buzzer
        self._buz = Player(buzzer, ticks_ms)
        self._oled = oled

    def pressed(self, score):
        self._red.stop()
        self._green.start(PAT_PRESSED)
        self._buzzer.tone(_BEEP_HZ)
        self._buz.start(PAT_BEEP)

    def stored(self):
        self._green.start(PAT_STORED)

    def error(self, code):
        self._green.stop()
        self._red.start(PAT_ERROR_BLINK, code)
        self._buzzer.tone(_LOW_HZ)
        self._buz.start(PAT_LOW)

    def idle(self):
        self._green.stop()
        self._red.stop()
        self._buz.stop()

    def show(self, text):
        d = self._oled
        if d is None:
            return
        d.fill(0)
        text = str(text)
        for row in range(6):                # 8x8 font: 16 characters a line, 6 lines of 10 px
            part = text[row * 16:(row + 1) * 16]
            if not part:
                break
            d.text(part, 0, row * 10)
        d.show()                            # ~25 ms of I2C at 400 kHz: only on a change of screen

    def poll(self):
        self._green.poll()
        self._red.poll()
        self._buz.poll()


class Board:
    name = "esp32c3"
    PINS = PINS

    def __init__(self, cfg):
        p = self.PINS
        self._keys = [Pin(p[n], Pin.IN, Pin.PULL_UP) for n in SCORE_KEYS + (INVITE_KEY,)]
        self.ticks_ms = time.ticks_ms
        self.ticks_diff = ticks_diff
        self.ticks_add = ticks_add
        rgb = _Rgb(Pin(p["led"], Pin.OUT, value=0))
        self.feedback = Feedback(_Channel(rgb, 1, _GREEN), _Channel(rgb, 0, _RED),
                                 _Buzzer(Pin(p["buzzer"], Pin.OUT, value=0)),
                                 self._oled(p, cfg), time.ticks_ms)
        self._wlan = network.WLAN(network.STA_IF)
        self.wifi = Wifi(self._wlan, time.ticks_ms, ticks_diff, ticks_add)
        self.console = Console()
        self._wdt = None
        self._wdt_ms = cfg_get(cfg, "wdt_ms", 8000)

    @staticmethod
    def _oled(p, cfg):
        if not cfg_get(cfg, "oled", True):
            return None
        try:
            import ssd1306
        except ImportError:
            return None
        i2c = I2C(0, sda=Pin(p["sda"]), scl=Pin(p["scl"]), freq=400000)
        if _OLED_ADDR not in i2c.scan():
            return None                 # display optional: the keypad works without one
        return ssd1306.SSD1306_I2C(128, 64, i2c, addr=_OLED_ADDR)

    # -- the board interface (boards/__init__.py) ------------------------------------------------------

    def keys(self, scale=4, invite=True):
        if scale != 4 and scale != 5:
            raise ValueError("bad-scale")
        pins = self._keys[:scale]
        if invite:
            pins.append(self._keys[5])
        return pins

    def poll(self):
        self.feedback.poll()
        self.wifi.poll()

    def network_up(self):
        return self.wifi.up

    def connect_network(self, cfg):
        ssid = cfg_get(cfg, "wifi_ssid")
        if not ssid:
            raise ValueError("wifi_ssid")
        self.wifi.start(ssid, cfg_get(cfg, "wifi_password", ""))

    def watchdog_feed(self):
        if self._wdt is None:
            self._wdt = WDT(timeout=self._wdt_ms)
            boards.wdt_ms = self._wdt_ms
        self._wdt.feed()

    def reset_cause(self):
        return _machine_reset_cause()

    def console_line(self):
        return self.console.line()

    def allow_break(self, on):
        self.console.brk = on

    def reset(self):
        _machine_reset()

    def rssi(self):
        if not self.wifi.up:
            return None
        try:
            r = self._wlan.status("rssi")
        except (OSError, ValueError):
            return None
        return r if -200 <= r <= 200 else None

    def close(self):
        self.feedback.idle()
