# The sim board on the MicroPython unix port, driven by a simulator on the other end of its socket
# (tests/test_64_fw_flow.py plays the simulator). Usage: mp_board_sim.py listen|connect PORT
#
# The conversation (each step waits for a condition, scanning keys every 5 ms like the app):
#   device: OLED ready          sim: T 2          device sees key index 1 (score 2) once, then feedback
#   device: OLED hold           sim: P 5          device sees index 4, then its stuck bit (400 ms)
#   device: OLED stuck 16       sim: R 5          device sees the release, stuck cleared, no press
#   device: OLED released       sim: garbage, T 9, T i   device sees only the invite key (index 5)
#   device: OLED bye
#
# Usage: mp_board_sim.py esp32  runs the ESP32 board modules against a fake `machine` and `network`
# (put in sys.modules): pin directions and pulls, feedback patterns over time, the lazy watchdog, the
# Wi-Fi rejoin backoff, and that the S3 board is the C3 board on other pins.
import sys
import time
import mpyboot
from mpyboot import check, raises, done
from cs.keys import Keys

mode = sys.argv[1]


class FakePin:
    IN, OUT, PULL_UP = 1, 3, 2
    made = {}

    def __init__(self, n, mode=None, pull=None, value=None):
        self.n, self.mode, self.pull, self.v = n, mode, pull, 1 if value is None else value
        FakePin.made[n] = self

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


class FakeWDT:
    armed = []

    def __init__(self, timeout):
        self.feeds = 0
        FakeWDT.armed.append(timeout)
        FakeWDT.last = self

    def feed(self):
        self.feeds += 1


class FakeWLAN:
    def __init__(self, _):
        self.up, self.joins, self.on = False, [], False

    def active(self, on):
        self.on = on

    def isconnected(self):
        return self.up

    def disconnect(self):
        pass

    def connect(self, ssid, pw):
        self.joins.append(time.ticks_ms())

    def status(self, what):
        return -67


class Mod:
    pass


def esp32_checks():
    machine = Mod()
    machine.Pin, machine.PWM, machine.WDT, machine.I2C = FakePin, FakePWM, FakeWDT, None
    machine.reset_cause = lambda: 3
    network = Mod()
    network.WLAN, network.STA_IF = FakeWLAN, 0
    sys.modules["machine"] = machine
    sys.modules["network"] = network
    from boards import load
    b = load("esp32c3", {"oled": False, "wdt_ms": 5000})
    check(b.name == "esp32c3", "esp32c3 board loads (fake machine)")
    keys = b.keys(5, True)
    check([p.n for p in keys] == [0, 1, 3, 4, 5, 2], "keys in score order, then invite", [p.n for p in keys])
    check(all(p.mode == FakePin.IN and p.pull == FakePin.PULL_UP for p in keys), "keys: inputs with pull-up")
    check([p.n for p in b.keys(4, False)] == [0, 1, 3, 4], "4 keys without invite")
    green, red = FakePin.made[18], FakePin.made[19]
    check(green.mode == red.mode == FakePin.OUT and green.v == red.v == 0, "LEDs: outputs, off at start")
    buz = b.feedback._buzzer._pwm
    check(buz.pin.n == 10 and buz.duty == 0, "buzzer PWM on GPIO10, silent")
    check(not FakeWDT.armed, "watchdog not armed before the first feed")
    b.watchdog_feed()
    b.watchdog_feed()
    check(FakeWDT.armed == [5000] and FakeWDT.last.feeds == 2, "watchdog armed once at the first feed, fed")
    check(b.reset_cause() == 3, "reset cause from machine (3 = watchdog)")
    check(b.rssi() is None, "rssi unknown while Wi-Fi is down")
    # feedback patterns run by poll(), without blocking
    t0 = time.ticks_ms()
    b.feedback.pressed(3)
    check(green.v == 1 and buz.duty > 0 and buz.f == 2700, "pressed: green on, beep")
    while time.ticks_diff(time.ticks_ms(), t0) < 200:
        b.poll()
        time.sleep_ms(5)
    check(green.v == 1 and buz.duty == 0, "after 200 ms: beep over, green still on")
    while time.ticks_diff(time.ticks_ms(), t0) < 700:
        b.poll()
        time.sleep_ms(5)
    check(green.v == 0, "after 600 ms: green off")
    b.feedback.error(2)
    seen = []
    t0 = time.ticks_ms()
    while time.ticks_diff(time.ticks_ms(), t0) < 800:
        b.poll()
        if not seen or seen[-1] != red.v:
            seen.append(red.v)
        time.sleep_ms(5)
    check(seen == [1, 0, 1, 0], "error(2): red blinks twice", seen)
    check(buz.f == 1000 and buz.duty == 0, "error: low tone, finished")
    b.feedback.show("no display")     # no OLED: nothing to do, no error
    # Wi-Fi: joins at once, rejoins with growing gaps while down, stops once up
    check(raises(lambda: b.connect_network({})), "no SSID: ValueError")
    b.connect_network({"wifi_ssid": "hall", "wifi_password": "pw"})
    w = b._wlan
    check(w.on and len(w.joins) == 1 and not b.network_up(), "connect_network starts joining, returns at once")
    t0 = time.ticks_ms()
    while time.ticks_diff(time.ticks_ms(), t0) < 4500:
        b.poll()
        time.sleep_ms(10)
    gaps = [time.ticks_diff(w.joins[i + 1], w.joins[i]) for i in range(len(w.joins) - 1)]
    check(2 <= len(w.joins) <= 4 and all(gaps[i + 1] > gaps[i] for i in range(len(gaps) - 1)),
          "rejoins back off while down", gaps)
    w.up = True
    n = len(w.joins)
    t0 = time.ticks_ms()
    while time.ticks_diff(time.ticks_ms(), t0) < 1500:
        b.poll()
        time.sleep_ms(10)
    check(len(w.joins) == n and b.network_up() and b.rssi() == -67, "up: no rejoin, rssi known")
    s3 = load("esp32s3", {"oled": False})
    check(s3.name == "esp32s3" and [p.n for p in s3.keys(5, True)] == [4, 5, 6, 7, 15, 16],
          "esp32s3: the same board on its own pins")
    check(s3.feedback._buzzer._pwm.pin.n == 10 and FakePin.made[17].mode == FakePin.OUT, "s3 outputs")
    done()


if mode == "esp32":
    esp32_checks()
    sys.exit(0)
import simport
simport.install()       # the esp32 port's machine.WDT and reset_cause, as every simulated keypad has
from boards import load
port = int(sys.argv[2])
check(raises(lambda: load("sim", {})), "sim_port is required")
check(raises(lambda: load("nope", {"sim_port": port})), "unknown board refused")
board = load("sim", {"sim_port": port, "sim_connect": mode == "connect", "sim_tap_ms": 100})
check(board.network_up() and board.rssi() is None and board.reset_cause() == 1, "sim: up, no rssi, power-on")
board.watchdog_feed()
pins = board.keys(5, True)
check(len(pins) == 6 and len(board.keys(4, False)) == 4, "5 score keys + invite; 4 without invite")
keys = Keys(pins, board.ticks_ms, debounce_ms=30, stuck_ms=400, diff=board.ticks_diff)
got = []


def until(cond, what, ms=10000):
    end = time.ticks_add(time.ticks_ms(), ms)
    while not cond():
        if time.ticks_diff(end, time.ticks_ms()) <= 0:
            check(False, what, "timed out; presses %r down %d stuck %d" % (got, keys.down, keys.stuck))
        board.poll()
        k = keys.scan()
        if k >= 0:
            got.append(k)
        time.sleep_ms(5)        # the scan period, as in the app's key task


until(lambda: board.connected, "the simulator attaches")
board.feedback.show("ready")
until(lambda: got and keys.down == 0, "tap of key 2 seen and released")
check(got == [1], "T 2: the scan sees key 2 (index 1) exactly once", got)
board.feedback.pressed(2)
board.feedback.stored()
board.feedback.error(3)
board.feedback.idle()

board.feedback.show("hold")
until(lambda: keys.stuck, "held key 5 becomes stuck")
check(got == [1, 4], "P 5: key 5 (index 4) pressed once while held", got)
board.feedback.show("stuck %d" % keys.stuck)
until(lambda: keys.down == 0 and board.commands >= 3, "R 5 releases key 5")
check(keys.stuck == 0 and got == [1, 4], "released: stuck cleared, no extra press", (keys.stuck, got))

board.feedback.show("released")
until(lambda: len(got) == 3 and keys.down == 0, "tap of the invite key")
check(got == [1, 4, 5], "garbage and unknown keys ignored; T i is the invite key (index 5)", got)
check(board.commands == 4, "four key commands applied (T 2, P 5, R 5, T i)", board.commands)
board.feedback.show("bye")
board.close()
done()
