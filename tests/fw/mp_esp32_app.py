# The whole keypad app on the ESP32-C3 board module, on the unix port, against fake `machine`, `network`
# and `neopixel` modules that behave like the stock esp32 image (tests/fw/fake_esp32.py) and the real
# hall broker and gateway. Run by tests/test_64_fw_esp32_app.py in a keypad folder where the esp32c3
# bundle is installed (app.txt), in main.py's place (sim/port/esp32boot.py, CS_SIM_MAIN).
#
# The test script plays the world around the board: the access point (there, gone, back), a finger on
# the keys (pin levels), and reads the LED. stdin carries "\x03status\n" from the test: in normal mode
# Ctrl-C is no interrupt and `status` is answered on the console.
import sys
import time

import asyncio

import fake_esp32
from fake_esp32 import FakeNeoPixel, FakePin, FakeWDT, FakeWLAN

with open("app.txt") as _f:             # what main.py does: the installed tree
    sys.path.insert(0, _f.read().strip())
machine = fake_esp32.install("ESP32_GENERIC_C3", reset_cause=1)

from cs import config  # noqa: E402
from cs.app import App  # noqa: E402

import boards  # noqa: E402

_n = [0]
GREEN = (0, 48, 0)


def check(cond, name, detail=""):
    _n[0] += 1
    print(("ok " if cond else "FAIL ") + name, detail if not cond else "")
    if not cond:
        sys.exit(1)


async def until(cond, what, ms=15000):
    t0 = time.ticks_ms()
    while not cond():
        if time.ticks_diff(time.ticks_ms(), t0) > ms:
            check(False, what, "timed out")
        await asyncio.sleep_ms(20)
    check(True, what)


async def tap(gpio):
    # A finger: down for 100 ms (past the 30 ms debounce), then up for as long again.
    FakePin.made[gpio].v = 0
    await asyncio.sleep_ms(100)
    FakePin.made[gpio].v = 1
    await asyncio.sleep_ms(100)


async def rate(app, key_gpio):
    n = app.flow.ratings
    await tap(2)                                    # the invite key (GPIO2): the clerk opens a prompt
    await tap(key_gpio)
    await until(lambda: app.flow.ratings == n + 1, "a press rated")


async def drive(app, cfg):
    w = FakeWLAN.last
    np = FakeNeoPixel.made[-1]
    w.ap = False                                    # the hall's access point is not up yet
    task = asyncio.create_task(app.run())
    await asyncio.sleep_ms(1500)
    check(w.on and w.joins == 1, "Wi-Fi started at boot: one connect()", w.joins)
    check(not app.board.network_up() and not app.client.up, "no access point: no Wi-Fi, no MQTT attempt")
    check(FakeWDT.armed == [8000] and FakeWDT.last.feeds > 50, "watchdog armed at 8 s and fed by the scan",
          (FakeWDT.armed, FakeWDT.last.feeds))
    w.ap = True
    await until(lambda: app.client.up, "the access point appears: joined, then the broker")
    check(app.board.rssi() == -67, "rssi known once joined")
    await until(lambda: app.flow.clerk == "10001", "the gateway's session: the clerk signed in")
    await rate(app, 3)                              # GPIO3 is key 3: score 3
    await until(lambda: app.outbox.depth == 0, "the rating acked by the gateway")
    check(GREEN in np.shown, "the LED showed green for the press", np.shown[-6:])
    # The access point goes away: the keypad keeps rating, into its outbox.
    w.ap = False
    w.drop()
    await until(lambda: not app.board.network_up(), "Wi-Fi drop seen")
    await until(lambda: not app.client.up, "MQTT session dropped with the Wi-Fi")
    await rate(app, 0)                              # GPIO0 is key 1
    check(app.outbox.depth == 1, "rated while offline: kept in the outbox", app.outbox.depth)
    feeds = FakeWDT.last.feeds
    await asyncio.sleep_ms(2000)
    check(app.outbox.depth == 1 and not app.client.up, "offline for 2 s: still kept, no link")
    w.ap = True
    await until(lambda: app.client.up, "the access point is back: rejoined by the driver, MQTT back")
    await until(lambda: app.outbox.depth == 0, "the offline rating acked after the rejoin")
    check(w.joins == 1 and w.disconnects == 0, "one connect() in all, disconnect() never",
          (w.joins, w.disconnects))
    check(FakeWDT.last.feeds > feeds + 100, "the watchdog fed all along")
    check(not machine.resets, "no reset")
    task.cancel()
    print("passed", _n[0], "checks")
    sys.exit(0)


cfg = config.load()
check(cfg is not None and cfg.board == "esp32c3", "provisioned for the esp32c3 board")
board = boards.load("esp32c3", cfg)
check(board.name == "esp32c3", "the ESP32-C3 board module loads on the stock image's pins")
app = App(board, cfg)
asyncio.run(drive(app, cfg))
