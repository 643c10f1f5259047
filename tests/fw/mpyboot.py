# Imported first by every MicroPython test script: puts the firmware on sys.path and gives `check`.
import os
import sys

FIRMWARE = os.getenv("CS_FIRMWARE")
VECTORS = os.getenv("CS_VECTORS")
if FIRMWARE and FIRMWARE not in sys.path:
    sys.path.insert(0, FIRMWARE)

_n = [0]


def check(cond, name, detail=""):
    """Print the check; exit 1 at the first failure (the pytest wrapper shows this output)."""
    _n[0] += 1
    if cond:
        print("ok", name)
        return
    print("FAIL", name, detail)
    sys.exit(1)


def raises(fn, reason=None):
    """True if fn() raises ValueError (with `reason` as its first argument, when given)."""
    try:
        fn()
    except ValueError as e:
        return reason is None or (e.args and e.args[0] == reason)
    return False


def done():
    print("passed", _n[0], "checks")


def h(b):
    from binascii import hexlify
    return hexlify(b).decode()


def x(s):
    """bytes from hex with spaces, as the cases are written"""
    from binascii import unhexlify
    return unhexlify(s.replace(" ", ""))


def reason_of(fn):
    """The reason fn() is refused with (ValueError's first argument), or None if it is accepted."""
    try:
        fn()
    except ValueError as e:
        return e.args[0] if e.args else "?"
    return None
