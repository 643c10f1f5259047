# cs.keys on MicroPython with fake pins and an injected clock: debounce, chatter, several keys, stuck
# keys, keys down at start-up, clock wrap, and no allocation in scan().
import mpyboot
from mpyboot import check, raises, done
import micropython
from cs.keys import Keys


class Pin:
    # active low, like a key to ground against a pull-up
    def __init__(self):
        self.v = 1

    def value(self):
        return self.v


class Clock:
    def __init__(self, t=0):
        self.t = t

    def __call__(self):
        return self.t


def make(n=6, t=0, debounce=30, stuck=1000):
    pins = [Pin() for _ in range(n)]
    clk = Clock(t)
    return pins, clk, Keys(pins, clk, debounce_ms=debounce, stuck_ms=stuck)


def run(keys, clk, ms, step=5):
    """Scan every `step` ms for `ms` ms; return the list of reported presses."""
    got = []
    end = clk.t + ms
    while clk.t < end:
        k = keys.scan()
        if k >= 0:
            got.append(k)
        clk.t += step
    return got


# -- a clean press counts once, only after debounce_ms -----------------------------------------------
pins, clk, keys = make()
check(keys.scan() == -1, "idle: nothing pressed")
pins[2].v = 0
seen = []
for _ in range(5):                      # 0..20 ms: not yet stable for 30 ms
    seen.append(keys.scan())
    clk.t += 5
check(seen == [-1] * 5, "no press before debounce_ms", seen)
got = run(keys, clk, 500)
check(got == [2], "a held key counts once", got)
check(keys.down == 1 << 2, "down mask shows the held key", keys.down)
pins[2].v = 1
got = run(keys, clk, 200)
check(got == [] and keys.down == 0, "release is no press", (got, keys.down))
pins[2].v = 0
got = run(keys, clk, 200)
check(got == [2] and keys.presses == 2, "a second press counts again", (got, keys.presses))
pins[2].v = 1
run(keys, clk, 100)

# -- a glitch shorter than debounce is ignored -------------------------------------------------------
pins[1].v = 0
clk.t += 5
keys.scan()
clk.t += 20
pins[1].v = 1
got = run(keys, clk, 200)
check(got == [], "a 25 ms glitch is not a press", got)

# -- chatter on press and on release: one press ------------------------------------------------------
pins, clk, keys = make()
got = []
for lvl in (0, 1, 0, 1, 0, 1, 0):       # bouncing every 3 ms while closing
    pins[0].v = lvl
    k = keys.scan()
    if k >= 0:
        got.append(k)
    clk.t += 3
got += run(keys, clk, 300)
for lvl in (1, 0, 1, 0, 1, 0, 1):       # bouncing while opening
    pins[0].v = lvl
    k = keys.scan()
    if k >= 0:
        got.append(k)
    clk.t += 3
got += run(keys, clk, 300)
check(got == [0], "chatter on press and release gives exactly one press", got)
# chatter that lasts longer than debounce_ms in total, but with no quiet 30 ms: still nothing early
pins, clk, keys = make()
got = []
for i in range(40):                     # 10 ms bounces for 400 ms
    pins[3].v = i % 2
    k = keys.scan()
    if k >= 0:
        got.append(k)
    clk.t += 10
check(got == [], "continuous chatter never settles: no press", got)
pins[3].v = 0
got = run(keys, clk, 200)
check(got == [3], "it counts once it settles", got)

# -- several keys at once: the first stable one --------------------------------------------------------
pins, clk, keys = make()
pins[3].v = 0
clk.t += 10
keys.scan()                             # key 3 seen first
pins[1].v = 0
clk.t += 10
keys.scan()                             # key 1 seen 10 ms later
got = run(keys, clk, 300)
check(got == [3], "two keys pressed together: the first stable one only", got)
check(keys.down == (1 << 3) | (1 << 1), "both are down", keys.down)
pins[3].v = pins[1].v = 1
run(keys, clk, 100)
# same instant: the lowest index (deterministic)
pins[4].v = pins[2].v = 0
got = run(keys, clk, 300)
check(got == [2], "pressed in the same scan: the lowest index", got)
pins[4].v = pins[2].v = 1
run(keys, clk, 100)
# a second key pressed while the first is still held is part of the same touch
pins[0].v = 0
got = run(keys, clk, 200)
pins[5].v = 0
got += run(keys, clk, 200)
check(got == [0], "a key pressed while another is held is swallowed", got)
pins[0].v = 1
got = run(keys, clk, 200)
check(got == [], "releasing the first does not report the second", got)
pins[5].v = 1
run(keys, clk, 100)
pins[5].v = 0
got = run(keys, clk, 100)
check(got == [5], "the second key pressed again on its own counts", got)
pins[5].v = 1
run(keys, clk, 100)

# -- stuck keys --------------------------------------------------------------------------------------
pins, clk, keys = make(stuck=1000)
pins[4].v = 0
got = run(keys, clk, 900)
check(got == [4] and keys.stuck == 0, "held 900 ms: pressed once, not stuck", (got, keys.stuck))
got = run(keys, clk, 200)
check(keys.stuck == 1 << 4 and got == [], "held past stuck_ms: its bit is set", keys.stuck)
pins[1].v = 0
got = run(keys, clk, 100)
check(got == [1], "other keys still work while one is stuck (a stuck key does not block)", got)
pins[1].v = 1
run(keys, clk, 100)
check(keys.stuck == 1 << 4, "only the stuck key's bit", keys.stuck)
pins[4].v = 1
clk.t += 5
keys.scan()
check(keys.stuck == 1 << 4, "a release bounce does not clear stuck yet", keys.stuck)
got = run(keys, clk, 100)
check(keys.stuck == 0 and got == [], "stuck clears on release, release is no press", (keys.stuck, got))

# -- a key down at start-up is not a press but can be stuck ---------------------------------------------
pins = [Pin() for _ in range(5)]
pins[0].v = 0
clk = Clock(100)
keys = Keys(pins, clk, debounce_ms=30, stuck_ms=1000)
got = run(keys, clk, 1200)
check(got == [] and keys.stuck == 1, "down at start: no press, stuck after stuck_ms", (got, keys.stuck))
pins[0].v = 1
run(keys, clk, 100)
pins[0].v = 0
got = run(keys, clk, 100)
check(got == [0] and keys.stuck == 0, "released then pressed: a press", (got, keys.stuck))

# -- the clock wraps (ticks_ms period: 2**30 on the ESP32, larger on the unix port) -------------------
import time
PERIOD = time.ticks_add(0, -1) + 1


class WrapClock(Clock):
    def __call__(self):
        return self.t & (PERIOD - 1)


pins = [Pin() for _ in range(4)]
clk = WrapClock(PERIOD - 12)
keys = Keys(pins, clk, debounce_ms=30, stuck_ms=1000)
pins[1].v = 0
got = run(keys, clk, 300)
check(got == [1], "press across the ticks_ms wrap counts once", got)
got = run(keys, clk, 800)
check(keys.stuck == 2, "stuck timing across the wrap", keys.stuck)

# -- bad arguments -----------------------------------------------------------------------------------
check(raises(lambda: Keys([], Clock())), "no pins refused")
check(raises(lambda: Keys([Pin()] * 17, Clock())), "more than 16 keys refused (16-bit stuck mask)")
check(raises(lambda: Keys([Pin()], Clock(), debounce_ms=50, stuck_ms=40)), "stuck_ms <= debounce refused")

# -- scan() allocates nothing ---------------------------------------------------------------------------
pins, clk, keys = make(stuck=200)
presses = 0
ok = False      # globals made before the lock: creating one would allocate
micropython.heap_lock()
try:
    for i in range(400):
        if i == 20:
            pins[3].v = 0
        if i == 200:
            pins[3].v = 1
        if keys.scan() >= 0:
            presses += 1
        clk.t += 2
    ok = True
except MemoryError:
    ok = False
micropython.heap_unlock()
check(ok, "scan() runs with the heap locked (no allocation)")
check(presses == 1 and keys.stuck == 0, "and still works there", (presses, keys.stuck))
done()
