# cs.clock on MicroPython, on clocks that start just below the wrap: the unix port's own ticks period
# (time.ticks_diff) and a 32-bit port's (the C3's 2**30 ms, as the sim board runs it). The uptime and
# the rating's mono count go on across the wrap, the synced time too, and tick() allocates nothing.
import time

import micropython
import mpyboot
from mpyboot import check, done
from cs.clock import Clock



class Ticks:
    def __init__(self, add, t0):
        self.add = add
        self.t = t0

    def __call__(self):
        return self.t

    def adv(self, ms):
        self.t = self.add(self.t, ms)       # (the port's period itself is not a small int)


def add30(a, ms):
    return (a + ms) & 0x3FFFFFFF


def diff30(a, b):       # boards/sim.py's ticks_diff for a 2**30 period
    return ((a - b + 0x20000000) & 0x3FFFFFFF) - 0x20000000


for name, add, diff in (("port", time.ticks_add, time.ticks_diff), ("32-bit", add30, diff30)):
    t = Ticks(add, add(0, -5000))
    c = Clock(t, diff)
    nonce = c.new_nonce()
    check(c.sync(1_800_000_000_000, nonce) and c.unix_s() == 1_800_000_000, name + ": synced")
    for _ in range(20):                 # 20 x 999 ms: across the wrap in steps like the app's second
        t.adv(999)
        c.tick()
    check(t.t < 20000, name + ": the ticks wrapped", t.t)
    check(c.uptime_s() == 19 and c.mono32() == 19980, name + ": uptime and mono go on across the wrap",
          (c.uptime_s(), c.mono32()))
    check(c.unix_s() == 1_800_000_019, name + ": the synced time goes on across the wrap", c.unix_s())
    ok = True
    k = 0
    micropython.heap_lock()
    try:
        while k < 100:
            t.adv(10)
            c.tick()
            k += 1
    except MemoryError:
        ok = False
    micropython.heap_unlock()
    check(ok, name + ": tick() allocates nothing")
    # Half a period without a tick is more than the clock can tell apart: the app ticks every second.
    check(c.uptime_s() == 20, name + ": 100 x 10 ms more", c.uptime_s())
check(Clock(Ticks(time.ticks_add, 0)).unix_s() is None, "no sync yet: the time is unknown")
done()
