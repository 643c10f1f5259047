# Fake `machine`, `network` and `neopixel` modules that behave like MicroPython's esp32 port, for
# running the ESP32 board modules (and the whole app on them) on the unix port: tests/fw/mp_board_sim.py
# (esp32) and tests/fw/mp_esp32_app.py.
#
# - machine.Pin refuses, as the stock image does, every GPIO outside that image's pin table
#   (hardware/micropython-pins.json, its path in CS_STOCK_PINS; ports/esp32/machine_pin.c).
# - network.WLAN follows ports/esp32/network_wlan.c: connect() once and the driver keeps (re)connecting
#   by itself; status() is STAT_GOT_IP, STAT_CONNECTING, a failure reason while it keeps trying (201: no
#   access point), or STAT_IDLE when nothing is requested (after disconnect(), or when the driver
#   stopped: stop()); disconnect() cancels the reconnects; connect() while a connect is in progress can
#   raise OSError. The test moves the world: `ap` (the access point is there), drop(), stop().
# - machine.WDT: one watchdog, every construction reconfigures its timeout; feeds are counted.
import json
import os
import sys
import time

_STAT_IDLE = 1000
_STAT_CONNECTING = 1001
_STAT_GOT_IP = 1010
_NO_AP_FOUND = 201
_ASSOC_LEAVE = 8
_JOIN_MS = 300          # from a request to an IP address, with the access point there


class Mod:
    pass


class FakePin:
    IN, OUT, PULL_UP = 1, 3, 2
    made = {}
    table = ()          # the stock image's pin table (machine_pin.h): Pin(n) for any other n is refused

    def __init__(self, n, mode=None, pull=None, value=None):
        if n not in FakePin.table:
            raise ValueError("invalid pin")     # ports/esp32/machine_pin.c machine_pin_find()
        self.n, self.mode, self.pull, self.v = n, mode, pull, 1 if value is None else value
        FakePin.made[n] = self

    def init(self, mode=None, pull=None, value=None):
        self.mode = mode

    def value(self, v=None):
        if v is None:
            return self.v
        self.v = v


class FakePWM:
    def __init__(self, pin, freq=0, duty_u16=0):
        self.pin, self.f, self.duty = pin, freq, duty_u16

    def freq(self, f):
        self.f = f

    def duty_u16(self, d):
        self.duty = d


class FakeNeoPixel:
    """micropython-lib's neopixel.NeoPixel as the board uses it: np[0] = (r, g, b); np.write() shows it."""
    made = []

    def __init__(self, pin, n, bpp=3, timing=1):
        pin.init(pin.OUT)                       # as the real one does
        self.pin, self.n, self.px, self.shown = pin, n, [(0, 0, 0)] * n, []
        FakeNeoPixel.made.append(self)

    def __setitem__(self, i, rgb):
        self.px[i] = tuple(rgb)

    def write(self):
        self.shown.append(self.px[0])

    def now(self):
        """The colour the LED shows: the last pixel written (none yet: dark)."""
        return self.shown[-1] if self.shown else (0, 0, 0)


class FakeWDT:
    armed = []      # every timeout it was constructed with

    def __init__(self, timeout):
        self.feeds = 0
        FakeWDT.armed.append(timeout)
        FakeWDT.last = self

    def feed(self):
        self.feeds += 1


class FakeWLAN:
    last = None

    def __init__(self, _):
        self.on = False
        self.ap = True              # the access point is there
        self.requested = False
        self.connected = False
        self.reason = 0
        self.joins = 0
        self.disconnects = 0
        self._since = 0
        FakeWLAN.last = self

    def active(self, on=None):
        if on is not None:
            self.on = on
        return self.on

    def connect(self, ssid, pw):
        if not self.on:
            raise OSError("Wifi Not Started")
        self.joins += 1
        self.requested = True
        self.reason = 0
        self._since = time.ticks_ms()

    def disconnect(self):
        self.disconnects += 1
        self.requested = False
        self.connected = False
        self.reason = _ASSOC_LEAVE

    def drop(self):
        """The link drops (beacon timeout): the driver reconnects by itself while requested."""
        self.connected = False
        self.reason = 200
        self._since = time.ticks_ms()

    def stop(self):
        """The driver stops trying (STA stopped): nothing requested any more."""
        self.connected = False
        self.requested = False
        self.reason = 0

    def _advance(self):
        if self.requested and not self.connected:
            if not self.ap:
                self.reason = _NO_AP_FOUND
                self._since = time.ticks_ms()
            elif time.ticks_diff(time.ticks_ms(), self._since) >= _JOIN_MS:
                self.connected = True
                self.reason = 0

    def isconnected(self):
        self._advance()
        return self.connected

    def status(self, what=None):
        self._advance()
        if what == "rssi":
            if not self.connected:
                raise OSError("not connected")
            return -67
        if self.connected:
            return _STAT_GOT_IP
        if self.reason == _NO_AP_FOUND:
            return _NO_AP_FOUND
        if self.reason == _ASSOC_LEAVE or not self.requested:
            return _STAT_IDLE
        return _STAT_CONNECTING


class FakeI2C:
    """machine.I2C with an SSD1306 on the bus when `display` is set: records what is written to it."""
    display = True
    last = None

    def __init__(self, bus, sda=None, scl=None, freq=400000):
        self.sda, self.scl, self.freq = sda, scl, freq
        self.writes = []
        FakeI2C.last = self

    def scan(self):
        return [0x3C] if FakeI2C.display else []

    def writeto(self, addr, data):
        self.writes.append((addr, bytes(data)))

    def writevto(self, addr, parts):
        self.writes.append((addr, b"".join(bytes(p) for p in parts)))


def stock_tables():
    path = os.getenv("CS_STOCK_PINS")
    if not path:
        raise SystemExit("CS_STOCK_PINS must name hardware/micropython-pins.json")
    with open(path) as f:
        images = json.load(f)["images"]
    return {name: set(img["pin_table"]) for name, img in images.items()}


def install(image, reset_cause=1):
    """Put the fake machine, network and neopixel of a stock image in sys.modules; returns machine."""
    FakePin.table = stock_tables()[image]
    machine = Mod()
    machine.Pin, machine.PWM, machine.WDT, machine.I2C = FakePin, FakePWM, FakeWDT, FakeI2C
    machine.reset_cause = lambda: reset_cause
    machine.resets = []
    machine.reset = lambda: machine.resets.append(time.ticks_ms())
    network = Mod()
    network.WLAN, network.STA_IF = FakeWLAN, 0
    network.STAT_IDLE, network.STAT_CONNECTING, network.STAT_GOT_IP = _STAT_IDLE, _STAT_CONNECTING, _STAT_GOT_IP
    neopixel = Mod()
    neopixel.NeoPixel = FakeNeoPixel
    sys.modules["machine"] = machine
    sys.modules["network"] = network
    sys.modules["neopixel"] = neopixel
    return machine
