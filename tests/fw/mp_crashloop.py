# One boot of a keypad that stores ratings in a loop, for tests/test_62_fw_outbox.py, which kills it
# (SIGKILL) at seeded random moments and boots it again on the same folder.
#
# argv: folder seed epoch [mode [fs]]; mode "run" (default: loop until killed, at most 3000 steps),
# "load" (load, report, stop), "tear:K:C" (the K-th append writes only C bytes of its record, then
# the process dies: a power cut mid-write), "cutcompact:K" (the K-th compaction dies after its temp
# file is written, before the rename). fs "host" (default: the files in the folder) or "lfsfile"
# (littlefs on folder/flash.img, tests/fw/lfsrig.py: a kill can land mid-way through a flash write;
# "load" then copies the log out to folder/outbox.log for the host's reader).
#
# Compactions run both ways the firmware runs them: all at once, and in steps (cs/app.py's compactor
# task) with appends and acks between the steps, so a kill can land between two steps.
#
# Output, one line each, printed only AFTER what it states is done (a kill may cut the next one):
#   load <depth> <torn> <bad> <compactions>   pending <e:s,...>   msgs <ok|bad>   boot <n> <next seq>
#   take <e> <s>    (next_seq returned)        stored <e> <s>   (append returned: durable)
#   acking <e> <s,..> (before ack)             acked <e> <s,..> (ack returned: durable)
#   compacting / compacted                      end
import mpyboot  # noqa: F401  (puts the firmware on sys.path)
import random
import sys
import cs.outbox
from cs.outbox import Outbox
from cs.state import State

HOST, SEED, EPOCH = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
MODE = sys.argv[4] if len(sys.argv) > 4 else "run"
FS = sys.argv[5] if len(sys.argv) > 5 else "host"
if FS == "host":
    D = HOST
else:
    import lfsrig
    D = lfsrig.setup(FS, HOST)
random.seed(SEED)


def msg(e, s):
    # Length and bytes depend on (epoch, seq): a reload must give back exactly these.
    n = 60 + (s * 13 + e) % 40
    b = bytearray(n)
    for i in range(n):
        b[i] = (s * 31 + e * 7 + i) & 0xFF
    return bytes(b)


def out(line):
    sys.stdout.write(line + "\n")


ob = Outbox(D + "/outbox.log", capacity=400, compact_min=10000)   # compaction only when asked
pend = []
ok = True
for e, s, m in ob.pending():
    pend.append((e, s))
    ok = ok and m == msg(e, s)
out("load %d %d %d %d" % (ob.depth, ob.torn, ob.bad, ob.compactions))
out("pending " + ",".join("%d:%d" % p for p in pend))
out("msgs " + ("ok" if ok else "bad"))
if MODE == "load":
    ob.close()
    if D != HOST:
        with open(D + "/outbox.log", "rb") as f:
            data = f.read()
        with open(HOST + "/outbox.log", "wb") as f:
            f.write(data)
    out("end")
    sys.exit(0)
st = State(D + "/state.json", epoch=EPOCH, max_seq=ob.max_seq(EPOCH))

tear_at = cut_at = -1
if MODE.startswith("tear:"):
    tear_at, tear_len = int(MODE.split(":")[1]), int(MODE.split(":")[2])
elif MODE.startswith("cutcompact:"):
    cut_at = int(MODE.split(":")[1])


class TornFile:
    # Stands in for the log file at one append: writes the first bytes of the record, then the
    # power goes (the process ends without closing anything).
    def __init__(self, f):
        self.f = f

    def write(self, b):
        self.f.write(bytes(b)[:tear_len])
        self.f.flush()
        out("tearing")
        raise SystemExit(9)


class CutOs:
    # os as cs.outbox sees it, with a power cut just before the rename that ends a compaction.
    def __init__(self, real):
        self.real = real

    def rename(self, a, b):
        out("cut")
        raise SystemExit(9)

    def remove(self, p):
        self.real.remove(p)


n_compact = 0
stepping = False
for step in range(3000):
    if stepping:
        if ob.compact_step(1 + random.getrandbits(2)):     # 1..4 records: many steps, many kill points
            stepping = False
            n_compact += 1
            out("compacted")
    e = st.epoch
    s = st.next_seq()
    if step == 0:
        out("boot %d %d" % (st.boot, s))
    out("take %d %d" % (e, s))
    if step == tear_at:
        ob._f = TornFile(ob._f)
    ob.append(e, s, msg(e, s))
    out("stored %d %d" % (e, s))
    pend.append((e, s))
    r = random.getrandbits(8)
    if r < 64 and len(pend) > 3:
        # ack a few of the oldest pending of one epoch, not always in order (a lost ack shows up later)
        e0 = pend[0][0]
        cand = [p[1] for p in pend[:8] if p[0] == e0]
        pick = [q for q in cand if random.getrandbits(2)]
        if pick:
            out("acking %d %s" % (e0, ",".join(str(q) for q in pick)))
            ob.ack(e0, pick)
            out("acked %d %s" % (e0, ",".join(str(q) for q in pick)))
            pend = [p for p in pend if not (p[0] == e0 and p[1] in pick)]
    elif r > 245 and not stepping:
        if n_compact == cut_at:
            cs.outbox.os = CutOs(cs.outbox.os)
        out("compacting")
        if r & 1:
            stepping = True             # in steps from the next iteration on
        else:
            ob.compact()
            n_compact += 1
            out("compacted")
out("end")
