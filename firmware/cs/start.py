# What the keypad does at power-up, after main.py found the application: provisioned or not, service
# mode or not, then the app, which never returns.
#
# The REPL is where a USB cable reads the device key, so it is reachable only where nothing secret is
# at stake or a technician asked for it with a physical action:
#   - unprovisioned (no config.json): no key is in use; main() returns and the port's REPL waits for
#     `countersign device provision` (provisioning removes an old key before anything else);
#   - service mode: keys 1 and 4 held down together while the keypad powers up, for _HOLD_MS. The app
#     runs as usual (it rates, its watchdog runs), and Ctrl-C on the console now stops it into the REPL
#     (boards/console.py), which is how the technicians' tools reach a provisioned keypad;
#   - otherwise (normal mode) Ctrl-C is an ordinary byte, the console takes only the app's own commands,
#     and anything that ends the app resets the keypad instead of leaving a REPL behind.
# A damaged config.json with a key beside it is not "unprovisioned": the keypad reports it and waits for
# a service-mode boot (or a reset) without a REPL.
import sys
import time

import micropython
from micropython import const

from . import VERSION, config

_HOLD_MS = const(2000)          # both keys held this long from boot: service mode
_BADCONFIG_EVERY_MS = const(30000)


def board_name(cfg):
    # The unix port is the simulator's board; on hardware the config names the board (default: the
    # reference ESP32-C3).
    if sys.platform == "linux":
        return "sim"
    import boards

    return boards.cfg_get(cfg, "board", "esp32c3")


def _held(board):
    """Keys 1 and 4 down from power-up for _HOLD_MS (raw levels: no debounce wanted, a bounce fails)."""
    pins = board.keys(4, False)
    k1, k4 = pins[0], pins[3]
    t0 = board.ticks_ms()
    while time.ticks_diff(board.ticks_ms(), t0) < _HOLD_MS:
        if k1.value() or k4.value():        # active low: 1 = released
            return False
        board.poll()
        time.sleep_ms(10)
    return True


def _reset():
    import boards

    boards.reset()


def _release():
    # The REPL gets the heap back: the stopped app's tasks sit in asyncio's queue (a module global) and
    # hold the app, its buffers and its modules; a technician's tool needs that room at once.
    import gc

    if "asyncio.core" in sys.modules:
        sys.modules["asyncio"].new_event_loop()
        # The task that was running, the app's (asyncio.core's own global; not in the stubs).
        sys.modules["asyncio.core"].cur_task = None  # type: ignore[attr-defined]
    # The boards package stays (its wdt_ms tells a tool that the watchdog runs, device/link.py), without
    # its submodules; a package keeps each imported submodule as an attribute.
    b = sys.modules.get("boards")
    for name in list(sys.modules):
        if name == "cs" or name.startswith("cs.") or name.startswith("boards.") or name == "ssd1306":
            del sys.modules[name]
            if b is not None and name.startswith("boards."):
                try:
                    delattr(b, name[7:])
                except AttributeError:
                    pass
    gc.collect()


def _wait_for_service(board, why):
    # No REPL: a technician restarts the keypad in service mode (keys 1 + 4 held) to repair it.
    while True:
        print("CS:BADCONFIG", why)
        if board is not None:
            board.feedback.error(4)
        t0 = time.ticks_ms()
        while time.ticks_diff(time.ticks_ms(), t0) < _BADCONFIG_EVERY_MS:
            if board is not None:
                board.poll()
                board.console_line()
            time.sleep_ms(10)


def run():
    import boards

    board = None
    service = False
    try:
        try:
            cfg = config.load()
        except (ValueError, OSError) as e:
            why = e.args[0] if e.args else type(e).__name__
            board = boards.load(board_name(None), None)
            if _held(board):
                print("CS:SERVICE")
                print("CS:BADCONFIG", why)
                micropython.kbd_intr(3)
                return                      # service mode: the REPL, to provision again
            _wait_for_service(board, why)
        if cfg is None:
            print("CS:BOOT fw=%s" % VERSION)
            print("CS:UNPROVISIONED")
            micropython.kbd_intr(3)
            return                          # the REPL stays available for provisioning
        board = boards.load(board_name(cfg), cfg)
        service = _held(board)
        board.allow_break(service)
        if service:
            print("CS:SERVICE")
        import asyncio

        from .app import App

        asyncio.run(App(board, cfg).run())
    except KeyboardInterrupt:
        # Only the console raises it, and only in service mode: the technician's REPL.
        if not service:
            _reset()
        if board is not None:
            board.close()
        _release()
        micropython.kbd_intr(3)
        raise
    except Exception as e:  # noqa: the app must never leave a REPL behind: report, then reset
        print("CS:CRASH", repr(e))
        sys.print_exception(e)
        _reset()
