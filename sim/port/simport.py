# What the esp32 port does around the keypad's app, for a keypad on the MicroPython unix port: the
# library part (esp32boot.py is the boot sequence that uses it; test scripts call install() themselves).
#
# The unix port runs scripts; a keypad runs MicroPython's esp32 firmware, whose C code and frozen
# _boot.py do things the app relies on and the tools meet: the boot sequence (mount the ROMFS partition
# if it holds an image, then run main.py, then the REPL), a hardware watchdog that keeps running when
# the app stops (Ctrl-C, raw REPL) and is reconfigured by every WDT() construction
# (ports/esp32/machine_wdt.c: esp_task_wdt_reconfigure), machine.reset(), machine.reset_cause(), and,
# on an image built with ROMFS, vfs.rom_ioctl(). This file stands in for those; sim/fwdevice.py starts
# every simulated keypad as `micropython -i .../esp32boot.py` in the keypad's folder (its flash).
#
# The parts outside the CPU (the watchdog counter, the reset line) are in the simulator, which kills
# and restarts this process as the chip would reset: esp32boot talks to it by UDP datagrams on
# CS_SIM_CHIP ("W<ms>" arm or reconfigure, "F" feed, "R" reset), tagged with CS_SIM_BOOT so a
# datagram from a process already killed is ignored. CS_SIM_RESET_CAUSE is what machine.reset_cause()
# answers (1 power-on, 2 hard reset, 3 watchdog: the esp32 port's mapping). CS_SIM_ROMFS=<bytes>
# gives the simulated image a ROMFS partition of that size, kept in the file romfs.partition.
#
# Heap: all of this lives in C on a keypad, and a ROMFS partition is flash there, but here both take
# heap. The simulator gives the process more heap than the keypad's budget and CS_SIM_HEAP says what the
# app may have: once set up, this file holds on to the surplus, so main.py finds exactly the budget free.
import os
import sys
import time

import micropython
import vfs as _vfs
from micropython import const

_FEED_MS = const(200)          # a feed datagram at most this often: the watchdog sees feeds <= 0.2 s late


class _Chip:
    def __init__(self):
        import socket

        where = os.getenv("CS_SIM_CHIP")
        self.boot = (os.getenv("CS_SIM_BOOT") or "0").encode()
        self.sock = None
        if where:
            host, port = where.split(":")
            self.addr = socket.getaddrinfo(host, int(port))[0][-1]
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.fed = time.ticks_ms()

    def send(self, what):
        if self.sock is not None:
            self.sock.sendto(what + b" " + self.boot, self.addr)


_chip = _Chip()


class WDT:
    """machine.WDT as on esp32: one watchdog; a new WDT(timeout=...) reconfigures it."""

    def __init__(self, id=0, timeout=5000):
        if id != 0:
            raise ValueError
        if timeout <= 0:
            raise ValueError("WDT timeout too short")
        _chip.send(b"W%d" % timeout)
        _chip.fed = time.ticks_ms()

    def feed(self):
        now = time.ticks_ms()
        if time.ticks_diff(now, _chip.fed) >= _FEED_MS:
            _chip.fed = now
            _chip.send(b"F")


def reset():
    if _chip.sock is None:
        raise SystemExit(2)     # no simulated chip around this process: end it
    _chip.send(b"R")
    while True:                 # the simulator kills this process now, as the chip resets
        time.sleep_ms(100)


def reset_cause():
    return int(os.getenv("CS_SIM_RESET_CAUSE") or "1")


class _Module:
    """A module object whose names are ours first, then the unix port's own module's."""

    def __init__(self, real, **names):
        self._real = real
        self._names = names

    def __getattr__(self, name):
        try:
            return self._names[name]
        except KeyError:
            return getattr(self._real, name)


class _Rom:
    """vfs.rom_ioctl of an esp32 image built with ROMFS (the partition is a file in the keypad's folder).

    The calls mpremote's `romfs deploy` makes: 1 number of partitions, 2 the partition (a memoryview),
    3 erase (returns the minimum write size), 4 write at an offset, 5 end of writing."""

    PATH = "romfs.partition"

    def __init__(self, size):
        self.size = size
        self.buf = bytearray(size)
        try:
            with open(self.PATH, "rb") as f:
                f.readinto(self.buf)
        except OSError:
            for i in range(size):
                self.buf[i] = 0xFF

    def ioctl(self, op, *args):
        if op == 1:
            return 1
        if args and args[0] != 0:
            return -19          # ENODEV: one partition
        if op == 2:
            return memoryview(self.buf)
        if op == 3:
            n = args[2] if len(args) > 2 else args[1]
            lo = args[1] if len(args) > 2 else 0
            for i in range(lo, min(lo + n, self.size)):
                self.buf[i] = 0xFF
            return 4096
        if op == 4:
            off, data = args[1], args[2]
            self.buf[off:off + len(data)] = data
            return 0
        if op == 5:
            with open(self.PATH + ".new", "wb") as f:
                f.write(self.buf)
            os.rename(self.PATH + ".new", self.PATH)
            return 0
        return -22              # EINVAL

    def image(self):
        return self.buf if self.buf[:3] == b"\xd2\xcd\x31" else None


def install():
    """Put the esp32 port's machine (and, with CS_SIM_ROMFS, vfs) in front of the unix port's. True when
    a ROMFS image was mounted at /rom."""
    import machine as real_machine

    sys.modules["machine"] = _Module(real_machine, WDT=WDT, reset=reset, reset_cause=reset_cause,
                                     PWRON_RESET=1, HARD_RESET=2, WDT_RESET=3, SOFT_RESET=5)
    size = int(os.getenv("CS_SIM_ROMFS") or "0")
    if size:
        rom = _Rom(size)
        sys.modules["vfs"] = _Module(_vfs, rom_ioctl=rom.ioctl)
        img = rom.image()
        if img is not None:                 # the port mounts a valid ROMFS image at /rom at boot
            _vfs.mount(_vfs.VfsRom(memoryview(img)), "/rom")
            return True
    return False


