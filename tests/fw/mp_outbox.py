# cs/outbox.py and cs/state.py on the MicroPython unix port. argv[1]: an empty temp folder.
import mpyboot
from mpyboot import check, raises, done
import gc
import os
import sys
from cs.outbox import Outbox, OutboxFull
from cs.state import State

D = sys.argv[1]
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


def size(p):
    return os.stat(p)[6]


def exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False


def whole(ob, want):
    # pending() gives back (epoch, seq, exact bytes) of every expected item, in order
    got = list(ob.pending())
    return [(e, s) for e, s, _ in got] == want and all(m == msg(s) for _, s, m in got)


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
ob = Outbox(fresh("auto"), capacity=50, compact_min=8)
for s in range(1, 31):
    ob.append(1, s, msg(s))
ob.ack(1, list(range(1, 21)))
check(ob.compactions >= 1 and whole(ob, [(1, s) for s in range(21, 31)]),
      "ack compacts automatically once dead records outweigh live ones")
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
        ob.ack(1, list(range(1, 13)))           # outweighs the rest: compacts under the iterator
        ob.append(1, 21, msg(21))               # appended after the call: not part of this pass
check(ob.compactions > n0 and got == [1, 2, 3, 4, 5] + list(range(13, 21)),
      "pending goes on after a compaction from where it was, without repeats", got)
check(raises(lambda: ob.append(0, 99, msg(99)), "epoch-goes-back"), "an older epoch is refused")
ob.append(2, 1, msg(1))
check([(e, s) for e, s, _ in ob.pending()] == [(1, s) for s in range(13, 22)] + [(2, 1)],
      "a new epoch's seq 1 follows the old epoch's items")
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

# -- memory: 9000 appends + acks under -X heapsize=64K -----------------------------------------------------
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
acks = [0] * 32
s = 1
while s <= 9000:
    for k in range(32):
        acks[k] = s + k
    ob.ack(1, acks)
    s += 32
check(ob.depth == 0, "all acked")
gc.collect()
free1 = gc.mem_free()
print("heap total", heap_total, "free before", free0, "free with 9000 pending", free_full,
      "free after", free1, "file bytes at 9000", fsize)
check(free0 - free_full < 2048, "9000 pending items cost under 2 KB of heap", free0 - free_full)
check(free0 - free1 < 1024, "the free heap after the run is within 1 KB of the start", free0 - free1)
ob.close()
done()
