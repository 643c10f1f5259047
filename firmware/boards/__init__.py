# Board modules: the only code that touches pins, radios and the watchdog. See firmware/DESIGN.md.
#
# Every board module defines `Board(cfg)` (cfg: the device config, a dict or an object with attributes)
# with the same interface, so cs/app.py never knows which board it runs on:
#
#   keys(scale=4, invite=True) -> list of pin objects (.value() == 0 while down): the score keys 1..scale
#                                 in order, then the invite key if `invite` (cs.keys index = that order)
#   feedback                    -> an object with pressed(score), stored(), show(text), error(code), idle()
#                                  (the sim board is its own feedback)
#   ticks_ms(), ticks_diff(a, b), ticks_add(t, ms)
#                               -> the keypad's ticks clock: time's on a keypad; on the sim board a 32-bit
#                                  port's (2**30 period, starting just before the wrap). Every ticks value
#                                  is compared with this ticks_diff, never subtracted.
#   poll()                      -> service the board without blocking: LED/buzzer patterns, the sim socket,
#                                  the Wi-Fi state; call it on every key scan (every ~10 ms)
#   network_up() -> bool, connect_network(cfg) (starts joining once, never blocks; boards/wifi.py)
#   console_line() -> str|None  -> a line typed on the USB serial console (boards/console.py); raises
#                                  KeyboardInterrupt at a Ctrl-C once allow_break(True) (service mode)
#   allow_break(on), reset()    -> service mode's Ctrl-C; reset the keypad (never returns)
#   watchdog_feed()             -> feed the hardware watchdog (armed at the first call)
#   reset_cause() -> int        -> PROTOCOL.md hello `reset`: 1 power-on, 2 hard reset, 3 watchdog,
#                                  4 deep-sleep wake, 5 soft reset (MicroPython's machine constants)
#   rssi() -> int or None       -> Wi-Fi RSSI in dBm, None when unknown (sim: always None)
#   close()
#
# load(name, cfg) imports boards.<name> and returns its Board(cfg).
#
# Feedback patterns, the same on every board (the sim board sends the names as lines, real boards play
# them on the LEDs and the buzzer with esp32c3.py's Player):
#
#   call          LED line / physical pattern                     BUZ line / physical pattern
#   pressed(s)    "green"  green on 600 ms (press taken, on flash)  "beep"  one 60 ms beep
#   stored()      "green2" green blinks twice 80/80 ms (gateway ack)  -
#   error(code)   "red N"  red blinks N times 150/150 ms              "low"   one 300 ms low tone
#   idle()        "off"    LEDs off                                   "off"   silent
#   show(text)    OLED: the text (ASCII; the SSD1306 font has no CJK glyphs), or nothing without a display

# RAM: this package module is imported on every board, so it holds only what every board needs (the
# pattern timings, key role names and Player live in esp32c3.py, the line names in sim.py): its
# functions and names cost heap on the keypad.


# The hardware watchdog's timeout once a board armed it this boot (0: not armed). It outlives the app
# in the REPL, as the watchdog does: a technician's tool reads it to know it must extend the watchdog
# before its session (device/link.py).
wdt_ms = 0


def cfg_get(cfg, name, default=None):
    """A config value from a dict or an object (cs.config's shape is its own business)."""
    if cfg is None:
        return default
    if isinstance(cfg, dict):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def reset():
    """Reset the keypad (the app never ends in a REPL; cs/start.py). Never returns."""
    import machine

    machine.reset()


def load(name, cfg):
    if name not in ("sim", "esp32c3", "esp32s3"):
        raise ValueError("unknown board")
    return __import__("boards." + name, None, None, ("Board",)).Board(cfg)
