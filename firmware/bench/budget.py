# The whole keypad job for N ratings, as fast as the gateway acks them, with heap figures.
#
# Run by tests/test_67_fw_budget.py and `make bench` on the MicroPython unix port, in a provisioned
# device folder (config.json, device.key, the app installed as a .mpy tree or a ROMFS image) next to a
# real broker and gateway, booted by sim/port/esp32boot.py in main.py's place, which leaves the app
# exactly the heap budget of its install mode (sim/fwbench.py). Key scanning is
# replaced by calling the flow directly (taps through the sim board would take minutes per thousand);
# everything else is the real application: flow, outbox on files, COSE, the MQTT client, acks.
#
# Prints: "BUDGET start <free>", "BUDGET at <n> <free> <peak-since-last>", "BUDGET end <free>", and
# latency percentiles "LAT commit p50 p99 max" and "LAT stored p50 p99 max" in microseconds.
import gc
import os
import sys
import time
from array import array

with open("app.txt") as _f:          # what main.py does: the installed app's folder (or /rom)
    sys.path.insert(0, _f.read().strip())

import asyncio  # noqa: E402

import micropython  # noqa: E402

import boards  # noqa: E402
from cs import config  # noqa: E402
from cs.app import App  # noqa: E402

N = int(os.getenv("CS_BUDGET_N") or 1000)
WINDOW = 20           # ratings in flight at most, like a busy window's outbox between acks
SAMPLES = 200         # latency samples kept (preallocated)


def isort(a, n):
    # In place (an array has no sort(); a sorted copy of 200 ints would need 2 KB at once).
    for i in range(1, n):
        v = a[i]
        j = i - 1
        while j >= 0 and a[j] > v:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = v


def pct(a, n, q):
    return a[min(n - 1, int(q * n))]


async def drive(app, commit, stored):
    while not app.client.up:
        await asyncio.sleep_ms(20)
    every = max(1, N // SAMPLES)
    gc.collect()
    print("BUDGET start", gc.mem_free())
    micropython.mem_info()      # "max free sz": the largest free block, in GC blocks of 4 words
    step = max(1, N // 10)
    k = 0
    for i in range(N):
        sample = i % every == 0 and k < SAMPLES
        # A sampled rating is made on an idle keypad (as a customer meets it) and followed to its ack;
        # the rest keep up to WINDOW ratings in flight, as after a busy minute.
        limit = 1 if sample else WINDOW
        while app.outbox.depth >= limit:
            await asyncio.sleep_ms(0 if sample else 1)
        app.flow.invite()                        # a prompt (invite key: prompt 0)
        t0 = time.ticks_us()
        ok = app._record(True, 1 + i % 4, 0, 1500)
        t1 = time.ticks_us()
        if not ok:
            print("BUDGET refused at", i)
            return
        if sample:
            while app.outbox.depth:
                await asyncio.sleep_ms(0)
            commit[k] = time.ticks_diff(t1, t0)
            stored[k] = time.ticks_diff(time.ticks_us(), t0)
            k += 1
        app.flow.tick()
        if (i + 1) % step == 0:
            gc.collect()
            print("BUDGET at", i + 1, gc.mem_free())
        await asyncio.sleep_ms(0)
    while app.outbox.depth:
        await asyncio.sleep_ms(5)
    gc.collect()
    print("BUDGET end", gc.mem_free())
    micropython.mem_info()
    isort(commit, k)
    isort(stored, k)
    print("LAT commit", pct(commit, k, 0.5), pct(commit, k, 0.99), commit[k - 1])
    print("LAT stored", pct(stored, k, 0.5), pct(stored, k, 0.99), stored[k - 1])
    print("BUDGET done", N)


async def main():
    # The driver's own sample arrays first, before the app fragments the heap (800 bytes each).
    commit = array("i", bytes(4 * SAMPLES))
    stored = array("i", bytes(4 * SAMPLES))
    cfg = config.load()
    board = boards.load("sim", cfg)
    app = App(board, cfg)
    # Session: the clerk signed in (the invite key needs one); no gateway prompt is used.
    app.flow.on_session("bench", None)
    t = asyncio.create_task(app.run())
    await drive(app, commit, stored)
    t.cancel()


asyncio.run(main())
