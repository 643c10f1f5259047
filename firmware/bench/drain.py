# A week offline, then the link comes back: the keypad's outbox drains to the gateway.
#
# Run by sim/fwbench.py (drain) for tests/test_67_fw_budget.py and `make bench`, like budget.py: in a
# provisioned device folder next to a real broker and gateway, booted by sim/port/esp32boot.py in
# main.py's place with the heap budget of its install mode. The hall broker is down when it starts: the
# real application rates N times (the flow called directly, as in budget.py; each rating signed and
# appended to the outbox as on a keypad), then says so and waits for the link, which the host brings up
# by starting the broker. From the moment the link is up it times the drain (every rating acked by the
# gateway) and counts the outbox records read meanwhile.
#
# Prints: "DRAIN rated <n> depth <d> free <heap> in <ms>", "DRAIN up", then
# "DRAIN acked <n> ms <t> reads <r> compactions <c> free_min <heap> free_end <heap>" and "DRAIN done <n>".
import gc
import os
import sys
import time

with open("app.txt") as _f:          # what main.py does: the installed app's folder (or /rom)
    sys.path.insert(0, _f.read().strip())

import asyncio  # noqa: E402

import boards  # noqa: E402
from cs import config  # noqa: E402
from cs.app import App  # noqa: E402

N = int(os.getenv("CS_DRAIN_N") or 2100)


async def drive(app):
    ob = app.outbox
    t = time.ticks_ms()
    for i in range(N):
        app.flow.invite()                    # a prompt (invite key: prompt 0)
        if not app._record(True, 1 + i % 4, 0, 1500):
            print("DRAIN refused at", i)
            return
        app.flow.tick()
        await asyncio.sleep_ms(0)
    gc.collect()
    r0, c0 = ob.reads, ob.compactions       # nothing reads the outbox while the link is down
    print("DRAIN rated", N, "depth", ob.depth, "free", gc.mem_free(),
          "in", time.ticks_diff(time.ticks_ms(), t))
    while not app.client.up:
        await asyncio.sleep_ms(1)
    t0 = time.ticks_ms()
    print("DRAIN up")
    low = gc.mem_free()
    k = 0
    while ob.depth:
        await asyncio.sleep_ms(5)
        k += 1
        if k % 20 == 0:
            gc.collect()
            low = min(low, gc.mem_free())
    ms = time.ticks_diff(time.ticks_ms(), t0)
    reads, comps = ob.reads - r0, ob.compactions - c0
    gc.collect()
    print("DRAIN acked", N, "ms", ms, "reads", reads, "compactions", comps,
          "free_min", min(low, gc.mem_free()), "free_end", gc.mem_free())
    print("DRAIN done", N)


async def main():
    cfg = config.load()
    board = boards.load("sim", cfg)
    app = App(board, cfg)
    app.flow.on_session("bench", None)   # the clerk signed in (the invite key needs one)
    t = asyncio.create_task(app.run())
    await drive(app)
    t.cancel()


asyncio.run(main())
