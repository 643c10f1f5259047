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
# Usage: mp_board_sim.py esp32  runs the ESP32 board modules against a fake `machine`, `network` and
# `neopixel` (put in sys.modules): pin directions and pulls, the LED's colours and the feedback patterns
# over time, the lazy watchdog, the Wi-Fi rejoin backoff, and that the S3 board is the C3 board on other
# pins. The fake machine.Pin refuses, as the stock image does, every GPIO outside that image's pin table
# (hardware/micropython-pins.json, its path in CS_STOCK_PINS).
import sys
import time
import mpyboot
from mpyboot import check, raises, done
from cs.keys import Keys

mode = sys.argv[1]


from fake_esp32 import FakeI2C, FakeNeoPixel, FakePin, FakeWDT, install, stock_tables


def run(b, ms):
    t0 = time.ticks_ms()
    while time.ticks_diff(time.ticks_ms(), t0) < ms:
        b.poll()
        time.sleep_ms(10)


def colours(b, np, ms):
    """The LED's colours, each change once, while poll() runs the patterns for `ms`."""
    seen = [np.now()]
    t0 = time.ticks_ms()
    while time.ticks_diff(time.ticks_ms(), t0) < ms:
        b.poll()
        if np.now() != seen[-1]:
            seen.append(np.now())
        time.sleep_ms(5)
    return seen


def esp32_checks():
    tables = stock_tables()
    install("ESP32_GENERIC_C3", reset_cause=3)
    check(raises(lambda: FakePin(19, FakePin.OUT), "invalid pin") and raises(lambda: FakePin(18), "invalid pin"),
          "the fake C3 image refuses GPIO18/19 (USB serial/JTAG), as the stock one does")
    from boards import load
    from boards.esp32c3 import Board, PINS
    b = load("esp32c3", {"oled": False, "wdt_ms": 5000})
    check(b.name == "esp32c3", "esp32c3 board loads (fake machine)")
    keys = b.keys(5, True)
    check([p.n for p in keys] == [0, 1, 3, 4, 5, 2], "keys in score order, then invite", [p.n for p in keys])
    check(all(p.mode == FakePin.IN and p.pull == FakePin.PULL_UP for p in keys), "keys: inputs with pull-up")
    check([p.n for p in b.keys(4, False)] == [0, 1, 3, 4], "4 keys without invite")
    np = FakeNeoPixel.made[-1]
    check(np.pin is FakePin.made[8] and np.pin.mode == FakePin.OUT and np.n == 1,
          "LED: one RGB pixel on GPIO8 (the board's own LED and the panel's)", (np.pin.n, np.n))
    check(np.shown and np.now() == (0, 0, 0), "LED written dark at start", np.shown)
    buz = b.feedback._buzzer._pwm
    check(buz.pin.n == 10 and buz.duty == 0, "buzzer PWM on GPIO10, silent")
    check(not FakeWDT.armed, "watchdog not armed before the first feed")
    b.watchdog_feed()
    b.watchdog_feed()
    check(FakeWDT.armed == [5000] and FakeWDT.last.feeds == 2, "watchdog armed once at the first feed, fed")
    check(b.reset_cause() == 3, "reset cause from machine (3 = watchdog)")
    check(b.rssi() is None, "rssi unknown while Wi-Fi is down")
    # feedback patterns run by poll(), without blocking
    green, red, dark = (0, 48, 0), (64, 0, 0), (0, 0, 0)
    b.feedback.pressed(3)
    check(np.now() == green and buz.duty > 0 and buz.f == 2700, "pressed: LED green, beep", np.now())
    seen = colours(b, np, 200)
    check(seen == [green] and buz.duty == 0, "after 200 ms: beep over, LED still green", seen)
    seen = colours(b, np, 500)
    check(seen == [green, dark], "after 600 ms: LED dark", seen)
    b.feedback.stored()
    seen = colours(b, np, 400)
    check(seen == [green, dark, green, dark], "stored: LED blinks green twice", seen)
    b.feedback.error(2)
    seen = colours(b, np, 800)
    check(seen == [red, dark, red, dark], "error(2): LED blinks red twice", seen)
    check(buz.f == 1000 and buz.duty == 0, "error: low tone, finished")
    b.feedback.stored()
    b.feedback.error(1)
    check(np.now() == red, "error over a stored blink: red only", np.now())
    b.feedback.idle()
    check(np.now() == dark, "idle: LED dark")
    b.feedback.show("no display")     # no OLED: nothing to do, no error
    # Wi-Fi as the esp32 driver wants it: one connect(), the driver's own reconnects, never disconnect()
    check(raises(lambda: b.connect_network({})), "no SSID: ValueError")
    w = b._wlan
    w.ap = False
    b.connect_network({"wifi_ssid": "hall", "wifi_password": "pw"})
    check(w.on and w.joins == 1 and not b.network_up(), "connect_network: one connect(), returns at once")
    run(b, 3000)
    check(w.joins == 1 and b.wifi.status == 201 and not b.network_up(),
          "no access point: the driver keeps trying, the board makes no second connect()", b.wifi.status)
    w.ap = True
    run(b, 1000)
    check(b.network_up() and b.rssi() == -67 and w.joins == 1, "the access point appears: up, rssi known")
    w.drop()                            # beacon timeout: the driver reconnects by itself
    run(b, 100)
    check(not b.network_up(), "a drop is seen as down")
    run(b, 1000)
    check(b.network_up() and w.joins == 1, "rejoined by the driver, still one connect()")
    w.stop()                            # the driver gave up (STAT_IDLE): now it is the board's turn
    run(b, 1500)
    check(not b.network_up() and w.joins == 1, "idle: not asked again at once (backoff)")
    run(b, 2500)
    check(b.network_up() and w.joins == 2, "idle: one more connect() after the backoff, then up", w.joins)
    check(w.disconnects == 0, "disconnect() never called (it cancels the driver's reconnects)")
    # The OLED, through the SSD1306 driver the bundle ships (firmware/drivers/ssd1306.py).
    sys.path.append(mpyboot.FIRMWARE + "/drivers")
    o = load("esp32c3", {"oled": True})
    i2c = FakeI2C.last
    check(i2c.sda.n == 6 and i2c.scl.n == 7 and i2c.freq == 400000, "OLED: I2C on GPIO6/7 at 400 kHz")
    check(i2c.writes and i2c.writes[0][0] == 0x3C and i2c.writes[0][1][-1] == 0xAF,
          "OLED: the SSD1306 initialised at 0x3C, display on last", i2c.writes[:1])
    i2c.writes.clear()
    o.feedback.show("Please rate")
    frame = i2c.writes[-1][1]
    check(len(frame) == 1 + 128 * 64 // 8 and frame[0] == 0x40 and any(frame[1:]),
          "OLED: show() sends one whole frame with the text lit", len(frame))
    FakeI2C.display = False
    check(load("esp32c3", {"oled": True}).feedback._oled is None, "no display answering: the keypad works without")
    FakeI2C.display = True
    # The previous pin plan (an LED on GPIO19, the other on GPIO18) stops the keypad before the app starts.
    for n in (19, 18):
        old = dict(PINS)
        old["led"] = n

        class Old(Board):
            PINS = old
        check(raises(lambda: Old({"oled": False}), "invalid pin"), "an LED on GPIO%d: Board() raises invalid pin" % n)
    # A console pin is in the table: the image accepts it (tests/test_65_board_pins.py refuses the map).
    check(20 in FakePin.table and 21 in FakePin.table, "GPIO20/21 (the UART REPL) are in the C3 table")
    for image in ("ESP32_GENERIC_S3", "ESP32_GENERIC_S3-SPIRAM_OCT"):
        FakePin.table = tables[image]
        s3 = load("esp32s3", {"oled": False})
        check(s3.name == "esp32s3" and [p.n for p in s3.keys(5, True)] == [4, 5, 6, 7, 15, 16],
              "esp32s3: the same board on its own pins (%s)" % image)
        np = FakeNeoPixel.made[-1]
        check(s3.feedback._buzzer._pwm.pin.n == 10 and np.pin.n == 17 and np.pin.mode == FakePin.OUT,
              "s3 outputs: buzzer GPIO10, LED GPIO17")
        s3.feedback.pressed(1)
        check(np.now() == green, "s3: pressed lights the LED green")
    check(raises(lambda: FakePin(34), "invalid pin"), "the octal-PSRAM image refuses GPIO34")
    done()


if mode == "esp32":
    esp32_checks()
    sys.exit(0)
import os
sys.path.append(os.getenv("CS_SIM_PORT"))      # sim/port: the esp32 port's machine.WDT and reset_cause,
import simport                                 # as every simulated keypad has them
simport.install()
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
