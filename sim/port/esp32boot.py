# The boot sequence of the esp32 port (ports/esp32/main.c and its frozen _boot.py), for a keypad on the
# MicroPython unix port: sim/fwdevice.py starts every simulated keypad as `micropython -i esp32boot.py`
# in the keypad's folder (its flash). simport.py has the parts of the port the app and the tools meet
# (machine.WDT, machine.reset, machine.reset_cause, the ROMFS partition).
#
# Heap: all of this lives in C on a keypad, and a ROMFS partition is flash there, but here both take
# heap. The simulator gives the process more heap than the keypad's budget and CS_SIM_HEAP says what the
# app may have: once set up, this file holds on to the surplus, so main.py finds exactly the budget free.
import os
import sys

import micropython

import simport

_rom = simport.install()
_filler = None
_budget = int(os.getenv("CS_SIM_HEAP") or "0")
if _budget:
    import gc

    gc.collect()
    _surplus = gc.mem_free() - _budget
    if _surplus < 0:
        raise MemoryError("heap: %d bytes short of the keypad's budget" % -_surplus)
    if _surplus > 64:
        _filler = bytearray(_surplus - 64)      # less its own header: kept for the life of the process
    gc.collect()


def _exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False


# The esp32 port's import path: the filesystem root first (here the keypad's folder), a ROMFS image's
# folders, frozen modules (asyncio), then /lib. A script's own folder (this one) is not on it.
sys.path[:] = ["", "/rom", "/rom/lib", ".frozen", "lib"] if _rom else ["", ".frozen", "lib"]
micropython.kbd_intr(3)
_main = os.getenv("CS_SIM_MAIN") or "main"   # a bench keypad runs its driver in main.py's place
if _exists(_main + ".py") or _exists(_main + ".mpy"):
    __import__(_main)       # the port runs main.py after boot; the REPL follows when it returns
