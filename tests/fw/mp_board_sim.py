# The sim board on the MicroPython unix port, driven by a simulator on the other end of its socket
# (tests/test_64_fw_flow.py plays the simulator). Usage: mp_board_sim.py listen|connect PORT
#
# The conversation (each step waits for a condition, scanning keys every 5 ms like the app):
#   device: OLED ready          sim: T 2          device sees key index 1 (score 2) once, then feedback
#   device: OLED hold           sim: P 5          device sees index 4, then its stuck bit (400 ms)
#   device: OLED stuck 16       sim: R 5          device sees the release, stuck cleared, no press
#   device: OLED released       sim: garbage, T 9, T i   device sees only the invite key (index 5)
#   device: OLED bye
import sys
import time
import mpyboot
from mpyboot import check, raises, done
from boards import load
from cs.keys import Keys

mode, port = sys.argv[1], int(sys.argv[2])
check(raises(lambda: load("sim", {})), "sim_port is required")
check(raises(lambda: load("nope", {"sim_port": port})), "unknown board refused")
board = load("sim", {"sim_port": port, "sim_connect": mode == "connect", "sim_tap_ms": 100})
check(board.network_up() and board.rssi() is None and board.reset_cause() == 1, "sim: up, no rssi, power-on")
board.watchdog_feed()
pins = board.keys(5, True)
check(len(pins) == 6 and len(board.keys(4, False)) == 4, "5 score keys + invite; 4 without invite")
keys = Keys(pins, board.ticks_ms, debounce_ms=30, stuck_ms=400)
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
