# cs/outbox.py and cs/state.py on the MicroPython unix port. argv[1]: an empty temp folder; argv[2]
# (optional): where the files go, "host" (that folder, the default), "lfs" (littlefs on a RAM flash,
# tests/fw/lfsrig.py: run with -X heapsize=16M) or "lfsfile" (littlefs on a flash image in that folder).
import mpyboot
from mpyboot import check, raises, done
import gc
import os
import sys
import time
from array import array
import micropython
from cs.outbox import Outbox, OutboxFull
from cs.state import State

FS = sys.argv[2] if len(sys.argv) > 2 else "host"
if FS == "host":
    D = sys.argv[1]
else:
    import lfsrig
    D = lfsrig.setup(FS, sys.argv[1])
gc.collect()
print("files on", FS, D, "heap free", gc.mem_free())
buf = bytearray(256)
_k = [0]


def fresh(name):
    _k[0] += 1
    return "%s/%s%d" % (D, name, _k[0])


def msg(seq, n=87):
    # A message whose bytes depend on its seq: a reload must give back exactly these bytes.
    b = bytearray(n)
    for i in range(n):
        b[i] = (seq * 7 + i) & 0xFF
    return bytes(b)


def seqs(ob):
    return [s for _, s, _ in ob.pending()]


def same(ob, want):
    # seqs(ob) == want, without a list of them
    i = 0
    for _, s, _ in ob.pending():
        if i >= len(want) or s != want[i]:
            return False
        i += 1
    return i == len(want)


def size(p):
    return os.stat(p)[6]


def exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False


def whole(ob, want):
    # pending() gives back (epoch, seq, exact bytes) of every expected item, in order (one at a time:
    # the 64 KB heap run has no room for them all at once)
    i = 0
    for e, s, m in ob.pending():
        if i >= len(want) or (e, s) != want[i] or m != msg(s):
            return False
        i += 1
    return i == len(want)


# -- memory: 9000 appends, a compaction of all 9000 and their drain under -X heapsize=64K ------------------
def memory():
    p = fresh("mem")
    ob = Outbox(p, capacity=9000)
    st = State(fresh("memstate"), epoch=1, max_seq=ob.max_seq(1))
    m = bytearray(msg(1))
    gc.collect()
    free0 = gc.mem_free()
    heap_total = free0 + gc.mem_alloc()
    for i in range(9000):
        m[0] = i & 0xFF
        ob.append(1, st.next_seq(), m)
    check(ob.depth == 9000 and ob.full, "9000 appends fit the capacity (30 days x 300)")
    gc.collect()
    free_full = gc.mem_free()
    fsize = size(p)
    n = 0
    for e, s, _ in ob.pending():
        n += 1
    check(n == 9000, "pending streams all 9000")
    # A compaction of all 9000 (nothing to drop: the longest copy), in steps: it renumbers the index in
    # place, so the heap holds no second bitmap or checkpoint table meanwhile.
    low = free_full
    i = 0
    while not ob.compact_step():
        i += 1
        if i % 16 == 0:
            gc.collect()
            low = min(low, gc.mem_free())
    # (A second bitmap and checkpoint table would be 1.8 KB; on littlefs each of the two files the copy
    # opens holds a cache buffer and littlefs's file state, ~0.5 KB on the 64-bit port.)
    print("compaction of 9000: %d bytes of heap at most" % (free_full - low))
    check(ob.depth == 9000 and ob.compactions == 1 and free_full - low < (512 if FS == "host" else 1280),
          "a compaction of 9000 pending items needs no second index in the heap", free_full - low)
    # The drain, as the app does it: the cursor gives each once, acks come back 32 at a time, compaction
    # steps in between.
    ob.rewind()
    r0 = ob.reads
    acks = [0] * 32
    k = guard = 0
    while ob.depth and guard < 20000:
        guard += 1
        n = ob.next_pending(buf)
        if n:
            acks[k] = ob.cur_seq
            k += 1
        if k == 32 or (k and not n):
            ob.ack(1, acks if k == 32 else acks[:k])
            k = 0
        if ob.compact_due():
            ob.compact_step()
    while ob.compact_due():
        ob.compact_step()
    reads = ob.reads - r0
    print("drain of 9000: %d records read (%.2f per rating), %d compactions"
          % (reads, reads / 9000, ob.compactions))
    check(ob.depth == 0 and reads <= 2 * 9000, "a drain of 9000 reads at most 2 records per rating", reads)
    check(ob.depth == 0, "all acked")
    gc.collect()
    free1 = gc.mem_free()
    print("heap total", heap_total, "free before", free0, "free with 9000 pending", free_full,
          "free after", free1, "file bytes at 9000", fsize)
    check(free0 - free_full < 2048, "9000 pending items cost under 2 KB of heap", free0 - free_full)
    check(free0 - free1 < 1024, "the free heap after the run is within 1 KB of the start", free0 - free1)
    ob.close()


def finish():
    if FS != "host":
        f = lfsrig.dev
        print("flash: %d erases (most on one block %d), %d programs" % (f.erases, max(f.wear), f.programs))
        check(f.overwrites == 0, "littlefs never programmed flash that was not erased", f.overwrites)
    done()


if len(sys.argv) > 3 and sys.argv[3] == "mem":
    # The 64 KB heap run (.mpy): the outbox's own footprint, measured first, while the heap is in one
    # piece. The checks below keep lists of items to compare with; beside their bytecode (~13 KB) a 64 KB
    # heap has no room for them: they run from source in a larger heap.
    memory()
    finish()
    sys.exit(0)


# -- append / ack / pending order, depth, free --------------------------------------------------------
p = fresh("ob")
ob = Outbox(p, capacity=10)
check(ob.depth == 0 and ob.free == 10 and not ob.full and seqs(ob) == [], "empty outbox")
for s in range(1, 7):
    ob.append(1, s, msg(s))
check(ob.depth == 6 and ob.free == 4, "depth and free after 6 appends", (ob.depth, ob.free))
check(whole(ob, [(1, s) for s in range(1, 7)]), "pending in seq order with exact bytes")
check(ob.ack(1, [2, 4, 4, 99]) == 2, "ack counts only newly acked, once each")
check(ob.ack(2, [1]) == 0, "ack of another epoch acks nothing")
check(ob.ack(1, [2]) == 0, "a repeated ack is a no-op")
check(seqs(ob) == [1, 3, 5, 6] and ob.depth == 4 and ob.free == 6, "acked seqs leave pending")
check(raises(lambda: ob.append(1, 6, msg(6)), "seq-not-increasing"), "a stored seq is refused")
check(raises(lambda: ob.append(1, 3, msg(3)), "seq-not-increasing"), "a backward seq is refused")
check(raises(lambda: ob.append(1, 7, b""), "msg-size"), "an empty message is refused")
check(raises(lambda: ob.append(1, 7, bytes(257)), "msg-size"), "a message over 256 bytes is refused")
check(raises(lambda: ob.append(1, 0, b"x"), "seq"), "seq 0 is refused")
ob.append(1, 40, msg(40))       # a gap (a reboot's skip-ahead): a new run
ob.close()
ob = Outbox(p, capacity=10)
check(whole(ob, [(1, 1), (1, 3), (1, 5), (1, 6), (1, 40)]), "reopen: same pending, acks kept")
check(ob.max_seq(1) == 40 and ob.max_seq(2) == 0, "max_seq per epoch")
check(ob.ack(1, [40, 1]) == 2 and seqs(ob) == [3, 5, 6], "acks across runs")
buf = bytearray(269)
got = [(s, bytes(m)) for _, s, m in ob.pending(buf)]
check(got == [(3, msg(3)), (5, msg(5)), (6, msg(6))], "pending into a caller's buffer")
ob.close()

# -- full policy ---------------------------------------------------------------------------------------
p = fresh("full")
ob = Outbox(p, capacity=5)
for s in range(1, 6):
    ob.append(3, s, msg(s))
check(ob.full and ob.free == 0, "full at capacity")
before = size(p)
try:
    ob.append(3, 6, msg(6))
    refused = False
except OutboxFull:
    refused = True
check(refused and size(p) == before and ob.depth == 5, "append when full: refused, nothing written")
check(whole(ob, [(3, s) for s in range(1, 6)]), "full: every unsent record kept")
ob.ack(3, [1])
check(not ob.full and ob.free == 1, "an ack makes room")
ob.append(3, 6, msg(6))
check(whole(ob, [(3, s) for s in range(2, 7)]), "the next rating is taken once there is room")
ob.close()

# -- compaction keeps every unacked record ---------------------------------------------------------------
p = fresh("cmp")
ob = Outbox(p, capacity=200, compact_min=10000)      # no automatic compaction here
for s in range(1, 101):
    ob.append(1, s, msg(s))
acked = [s for s in range(1, 101) if s % 3 == 0 or s < 20]
ob.ack(1, acked)
want = [(1, s) for s in range(1, 101) if s not in acked]
big = size(p)
ob.compact()
check(whole(ob, want) and ob.depth == len(want), "compaction keeps every unacked record, in order")
check(size(p) < big and ob.dead == 0 and not exists(p + ".new"), "compaction shrinks the file, no temp")
ob.append(1, 101, msg(101))
ob.ack(1, [2, 101])
ob.close()
ob = Outbox(p, capacity=200)
want = [w for w in want if w[1] != 2]
check(whole(ob, want), "compacted log reloads with later acks applied")
ob.close()
p = fresh("auto")
ob = Outbox(p, capacity=50, compact_min=8)
for s in range(1, 31):
    ob.append(1, s, msg(s))
before = size(p)
ob.ack(1, list(range(1, 21)))
check(ob.compactions == 0 and size(p) > before and not ob.compact_due(),
      "ack never compacts (the key path); 21 dead records beside 10 live are not worth a copy yet")
ob.ack(1, list(range(21, 26)))
check(ob.compact_due(), "a compaction is due once dead records are 4 times the live ones")
while not ob.compact_step():
    pass
check(ob.compactions == 1 and not ob.compact_due() and whole(ob, [(1, s) for s in range(26, 31)]),
      "compaction in steps keeps every unacked record")
ob.ack(1, list(range(26, 31)))
for s in range(31, 90):
    ob.append(1, s, msg(s))
    ob.ack(1, [s])
check(ob.depth == 0 and ob.compact_due(), "an empty outbox with 64+ dead records is due")
r = ob.reads
ob.compact()
check(ob.reads == r and size(p) == 0 and ob.dead == 0, "compacting an empty outbox reads nothing")
ob.close()

# pending() while acks, appends and a compaction happen between its steps (a resend loop in asyncio)
ob = Outbox(fresh("iter"), capacity=100, compact_min=4)
for s in range(1, 21):
    ob.append(1, s, msg(s))
got = []
for e, s, m in ob.pending():
    got.append(s)
    if s == 5:
        n0 = ob.compactions
        ob.ack(1, list(range(1, 13)))
        ob.compact()                            # under the iterator
        ob.append(1, 21, msg(21))               # appended after the call: not part of this pass
check(ob.compactions > n0 and got == [1, 2, 3, 4, 5] + list(range(13, 21)),
      "pending goes on after a compaction from where it was, without repeats", got)
check(raises(lambda: ob.append(0, 99, msg(99)), "epoch-goes-back"), "an older epoch is refused")
ob.append(2, 1, msg(1))
check([(e, s) for e, s, _ in ob.pending()] == [(1, s) for s in range(13, 22)] + [(2, 1)],
      "a new epoch's seq 1 follows the old epoch's items")
ob.close()

# -- the sender's cursor: in order, once each, resumes after appends, acks, compactions, a link drop -----


def drain_all(ob):
    # Everything the cursor gives from where it is, as (seq, exact bytes ok).
    out = []
    while True:
        n = ob.next_pending(buf)
        if not n:
            return out
        out.append(ob.cur_seq)
        if buf[:n] != msg(ob.cur_seq):
            out.append("bad bytes at %d" % ob.cur_seq)


p = fresh("cur")
ob = Outbox(p, capacity=300, compact_min=10000)
for s in range(1, 11):
    ob.append(1, s, msg(s))
ob.ack(1, [2, 3])
ob.rewind()
check(drain_all(ob) == [1] + list(range(4, 11)), "the cursor gives the unacked items in order, exact bytes")
check(drain_all(ob) == [], "and then nothing until something is appended")
ob.append(1, 11, msg(11))
ob.ack(1, [4, 5, 6])
ob.append(1, 12, msg(12))
r = ob.reads
check(drain_all(ob) == [11, 12] and ob.reads - r <= 3,
      "appends after the end are given next, reading little more than them", ob.reads - r)
ob.rewind()
check(drain_all(ob) == [1] + list(range(7, 13)), "rewind (a link drop) starts over at the oldest unacked")
ob.rewind()
check([ob.next_pending(buf) and ob.cur_seq for _ in range(3)] == [1, 7, 8], "a new pass, part way")
ob.ack(1, [1, 7, 8, 9])
ob.compact()                                    # under the cursor: the file is rewritten
check(drain_all(ob) == [10, 11, 12], "after a compaction the cursor goes on after its last item")
for s in range(13, 200):
    ob.append(1, s, msg(s))
ob.rewind()
got = [ob.next_pending(buf) and ob.cur_seq for _ in range(100)]
ob.ack(1, list(range(10, 80)) + list(range(150, 160)))    # some before it, some after it
while not ob.compact_step(8):
    ob.append(1, ob.max_seq(1) + 1, msg(ob.max_seq(1) + 1))
rest = drain_all(ob)
want = [s for s in range(got[-1] + 1, ob.max_seq(1) + 1) if not 150 <= s < 160]
check(got == [10, 11, 12] + list(range(13, 110)) and rest == want,
      "a compaction in steps under the cursor, with appends meanwhile: no item skipped or repeated",
      (rest[:5], want[:5]))
ob.rewind()
n0 = ob.reads
ob.ack(1, [110, 111])
while not ob.compact_step(8):
    pass
check(drain_all(ob)[:3] == [80, 81, 82], "a rewind during a compaction still starts at the oldest unacked")
ob.close()

# No allocation per record: the cursor's send path under micropython.heap_lock().
p = fresh("lock")
ob = Outbox(p, capacity=100)
for s in range(1, 41):
    ob.append(1, s, msg(s))
ob.ack(1, [3, 4, 10])
for s in range(41, 46):
    ob.append(1, s, msg(s))
    ob.ack(1, [s - 1])
ob.rewind()
given = array("I", bytes(4 * 50))
k = n = 0
ok = False      # globals made before the lock: creating one would allocate
micropython.heap_lock()
try:
    while True:
        n = ob.next_pending(buf)
        if not n:
            break
        given[k] = ob.cur_seq
        k += 1
    ok = True
except MemoryError:
    ok = False
micropython.heap_unlock()
want = [s for s in range(1, 46) if s not in (3, 4, 10) and not 40 <= s <= 44]
check(ok and list(given[:k]) == want, "next_pending allocates nothing per record", (ok, k))
ob.close()

# A drain of 2,100 ratings (a week offline), as the app does it: 4 in flight, acks in batches as the
# gateway sends them, new ratings meanwhile, compaction steps between, a link drop half way.
p = fresh("drain")
ob = Outbox(p, capacity=9000)
N = 2100
for s in range(1, N + 1):
    ob.append(1, s, msg(s))
ob.close()
ob = Outbox(p)                                  # booted with them: load's reads are not the drain's
r0, c0 = ob.reads, ob.compactions
ob.rewind()
inflight = []
times = bytearray(N + 64)                       # times each seq was given (a list of 2,100 ints is 17 KB)
sent = last = 0
in_order = True
made = N
dropped = False
maxstep = maxstep_us = steps = 0
it = 0
while True:
    it += 1
    if len(inflight) < 4:
        n = ob.next_pending(buf)
        if n:
            if buf[:n] != msg(ob.cur_seq):
                check(False, "drain: exact bytes", ob.cur_seq)
            in_order = in_order and ob.cur_seq > last
            last = ob.cur_seq
            times[last] += 1
            sent += 1
            inflight.append(last)
            continue
    if inflight:
        ob.ack(1, inflight[:1 + it % 3])       # the gateway acks what one commit held
        del inflight[:1 + it % 3]
    elif ob.depth == 0 and not ob.compact_due():
        break
    else:
        ob.rewind()                             # nothing in flight, nothing given: the ack timeout
        last = 0
    if it % 97 == 0 and made < N + 40:
        made += 1
        ob.append(1, made, msg(made))           # a customer rates meanwhile
    if not dropped and sent >= N // 2:
        dropped = True
        inflight = []                           # the link drops: what was in flight is not acked
        ob.rewind()                             # the link is back: from the oldest unacked
        last = 0
    if ob.compact_due():
        r, t = ob.reads, time.ticks_us()
        ob.compact_step()
        maxstep_us = max(maxstep_us, time.ticks_diff(time.ticks_us(), t))
        maxstep = max(maxstep, ob.reads - r)
        steps += 1
reads = ob.reads - r0
print("drain: %d ratings, %d sent, %d records read (%.2f per rating), %d compactions in %d steps, "
      "largest step %d records %d us" % (made, sent, reads, reads / made, ob.compactions - c0, steps,
                                          maxstep, maxstep_us))
check(in_order, "drain: each pass gives the ratings in seq order")
check(all(times[s] for s in range(1, made + 1)) and sent - made <= 4 and max(times) <= 2,
      "drain: every rating sent, again only those in flight at the link drop", sent - made)
check(reads <= 2 * made, "drain: at most 2 records read per rating sent", reads / made)
check(ob.compactions - c0 >= 2 and maxstep <= 32, "drain: compactions ran in steps of at most 32 records")
ob.close()
ob = Outbox(p)
check(ob.depth == 0 and ob.torn == 0 and ob.bad == 0, "drain: the log reloads empty and clean")
ob.close()

# -- compaction in bounded steps while appends and acks go on; a power cut between any two steps --------


def copy(a, b):
    with open(a, "rb") as f, open(b, "wb") as g:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            g.write(memoryview(buf)[:n])


p = fresh("steps")
ob = Outbox(p, capacity=2000, compact_min=1)
for s in range(1, 601):
    ob.append(1, s, msg(s))
for s in range(1, 601, 20):
    ob.ack(1, [q for q in range(s, s + 20) if q % 5])
want = [s for s in range(1, 601) if s % 5 == 0]      # 120 live among 600, 480 acked
step = 0
bounded = cut_ok = True
while True:
    r = ob.reads
    fin = ob.compact_step(16)
    bounded = bounded and ob.reads - r <= 16
    if fin:
        break
    step += 1
    s = 600 + step                              # appends and acks between the steps
    ob.append(1, s, msg(s))
    want.append(s)
    if step % 2:
        ob.ack(1, [want[0]])                    # an item the copy has passed
        del want[0]
    if step % 3 == 0:
        two = [want[-2], want[len(want) // 2]]  # an appended one, one maybe not copied yet
        ob.ack(1, two)
        want = [x for x in want if x not in two]
    # A power cut now: the log on flash and the temp file, as they are. Load removes the temp file.
    copy(p, p + ".cut")
    if exists(p + ".new"):
        copy(p + ".new", p + ".cut.new")
    cut = Outbox(p + ".cut", capacity=2000)
    cut_ok = cut_ok and same(cut, want) and not exists(p + ".cut.new")
    cut.close()
    os.remove(p + ".cut")
    gc.collect()
check(bounded and step >= 8, "compaction steps read at most 16 records each", step)
check(cut_ok, "a power cut between two steps leaves the old log with every append and ack made so far")
check(ob.compactions == 1 and same(ob, want) and ob.depth == len(want),
      "appends and acks made during the compaction are kept (acked ones stay acked)")
ob.close()
ob = Outbox(p, capacity=2000)
check(same(ob, want) and ob.torn == 0 and not exists(p + ".new"), "the compacted log reloads the same")
ob.close()

# -- torn record: truncate mid-record, reopen -----------------------------------------------------------
p = fresh("torn")
ob = Outbox(p)
for s in range(1, 6):
    ob.append(1, s, msg(s))
ob.close()
good = size(p)
rec = good // 5
for cut in (1, 2, 3, 9, rec - 4, rec - 1):
    f = open(p, "ab")
    f.write(msg(6, rec)[:cut])      # the first `cut` bytes of a record that never finished
    f.close()
    ob = Outbox(p)
    check(ob.torn == cut and size(p) == good and whole(ob, [(1, s) for s in range(1, 6)]),
          "torn tail of %d bytes dropped, earlier records whole" % cut, (ob.torn, size(p)))
    ob.append(1, 6 + cut, msg(6 + cut))
    ob.ack(1, [6 + cut])
    ob.close()
    ob = Outbox(p)
    check(ob.torn == 0 and whole(ob, [(1, s) for s in range(1, 6)]), "append after the cut reloads clean")
    ob.compact()                # load leaves dead records to the compaction task: the next cut's base
    ob.close()
    good = size(p)
# an ack record cut halfway: the ack never happened
ob = Outbox(p)
ob.ack(1, [1, 2])
ob.close()
with open(p, "rb") as f:
    data = f.read()
with open(p, "wb") as f:
    f.write(data[:-5])
ob = Outbox(p)
check(ob.torn > 0 and seqs(ob) == [1, 2, 3, 4, 5], "a torn ack record is not an ack")
ob.close()

# -- bad CRC ---------------------------------------------------------------------------------------------
p = fresh("crc")
ob = Outbox(p)
for s in range(1, 6):
    ob.append(1, s, msg(s))
ob.close()
with open(p, "rb") as f:
    data = bytearray(f.read())
rec = len(data) // 5
data[2 * rec + 20] ^= 0x40          # flip a bit in the body of the third record (seq 3)
with open(p, "wb") as f:
    f.write(data)
ob = Outbox(p)
check(ob.bad == 1 and whole(ob, [(1, 1), (1, 2), (1, 4), (1, 5)]),
      "a bad CRC drops that record alone, the rest load", (ob.bad, seqs(ob)))
ob.close()
ob = Outbox(p)
check(ob.bad == 0 and seqs(ob) == [1, 2, 4, 5], "the rewritten log is clean")
ob.close()
data = bytearray(data)
data[2 * rec + 1] = 0xFF            # a garbage length: nothing after it can be trusted
with open(p, "wb") as f:
    f.write(data)
ob = Outbox(p)
check(seqs(ob) == [1, 2] and ob.torn == len(data) - 2 * rec, "a garbage header ends the log there")
ob.close()

# -- leftover temp file -----------------------------------------------------------------------------------
p = fresh("tmp")
ob = Outbox(p)
for s in range(1, 4):
    ob.append(1, s, msg(s))
ob.close()
with open(p + ".new", "wb") as f:
    f.write(b"\x01\x00\x5dhalf a compaction")
ob = Outbox(p)
check(not exists(p + ".new") and whole(ob, [(1, 1), (1, 2), (1, 3)]), "a leftover temp file is removed")
ob.close()

# -- state: reservation across reopen ---------------------------------------------------------------------
sp = fresh("state")
st = State(sp, epoch=1)
check(st.boot == 1 and st.epoch == 1, "first boot")
a = [st.next_seq() for _ in range(5)]
check(a == [1, 2, 3, 4, 5] and st.reserved == 32, "seqs from 1, a block of 32 reserved before use")
st = State(sp, epoch=1)              # power cut: 6..32 were reserved and may have been used
check(st.boot == 2 and st.next_seq() == 33 and st.reserved == 64, "reopen continues after the reserved end")
for _ in range(40):
    last = st.next_seq()
check(last == 73 and st.reserved == 96, "a new block is reserved when one runs out")
st = State(sp, epoch=1, max_seq=500)
check(st.next_seq() == 501, "reopen continues after the highest seq in the outbox")
st = State(sp)
check(st.epoch == 1 and st.boot == 4 and st.next_seq() == 533, "epoch kept when none is given")
with open(sp + ".new", "w") as f:
    f.write('{"epoch": 1, "bo')
st = State(sp, epoch=1)
check(not exists(sp + ".new") and st.next_seq() == 565, "a leftover temp state file is ignored")

# -- epoch change: seq restarts at 1, (epoch, seq) never reused --------------------------------------
used = set()
for s in range(3):
    used.add((1, st.next_seq()))
st = State(sp, epoch=2)
check(st.epoch == 2 and st.next_seq() == 1, "a new epoch restarts seq at 1")
used.add((2, 1))
check(raises(lambda: State(sp, epoch=1), "epoch-goes-back"), "an older epoch is refused")
st = State(sp, epoch=2)
n = st.next_seq()
check(n == 33 and (2, n) not in used, "the new epoch continues after its own reservation")
check(raises(lambda: st.set_epoch(2), "epoch-goes-back"), "set_epoch refuses the same epoch")
st.set_epoch(3)
check(st.next_seq() == 1 and State(sp).epoch == 3, "set_epoch: durable, seqs from 1")
with open(sp, "w") as f:
    f.write("not json")
check(raises(lambda: State(sp), "state-unreadable"), "a damaged state file is refused, not guessed")
sp2 = fresh("state")
with open(sp2 + ".new", "w") as f:
    f.write('{"epoch": 4, "boot": 9, "reserved": 64}')
st = State(sp2)
check(st.epoch == 4 and st.boot == 10 and st.next_seq() == 65 and exists(sp2),
      "a whole temp state with no main file (FAT remove-then-rename cut) is taken")

memory()
finish()
