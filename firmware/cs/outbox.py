# Durable outbox: an append-only log of the signed messages waiting for the gateway's ack.
#
# File format: the same as the CPython reference (common/outbox.py), so either side can read the other's
# file. Records one after another, integers big-endian:
#     kind (1) | body length (2) | body | CRC32 of kind+length+body (4)
#     kind 1 ITEM: epoch (2) | seq (4) | message (the COSE_Mac0 exactly as sent: a resend is identical)
#     kind 2 ACK:  epoch (2) | seq (4) * n        (n <= 32 here)
#
# RAM: no message is kept in RAM. The index is a run table (epoch, first seq, first item number) of the
# item records in file order (consecutive seqs share a run: one run per boot or epoch in practice), a
# bitmap of acked item numbers (~1.2 KB for 9000 items), the file offset of every 128th item (~0.3 KB),
# so that a read can start near any item instead of at the start of the file, and of the last 8.
#
# Sending: a cursor (rewind, next_pending) walks the file once per pass from a remembered offset and
# gives each unacked item once, into the caller's buffer, with no allocation: draining N ratings reads
# about N records, where re-reading the file per free MQTT slot read ~N*N/5 (63,546 for 500). `reads`
# counts every record read (cursor, compaction, load, pending) so tests and the bench can hold it to that.
#
# Durability: one write() per record, then flush(). On the unix port flush() is fsync(); on a device
# littlefs flush() is lfs_file_sync(): the record is committed to flash when it returns, and a power
# cut mid-write leaves the file as it was at the last sync (littlefs is copy-on-write), or, on other
# file systems, a torn last record that fails its length or CRC check on load and is dropped (it was
# never reported as taken).
#
# Compaction drops acked items. It is not done by append() or ack(), which run on the key-scan path (a
# rewrite of thousands of records on flash takes seconds, past the 8 s watchdog), but in bounded steps
# (compact_step: at most _STEP records read per step) by a task of its own, while appends and acks go
# on into the old log. It starts at the checkpoint before the first unacked item, copies the unacked
# items to a temp file, skips unread the ACK records after the last item (their acks are in the bitmap),
# then copies the tail written since it began, ACK records included: an ack made during the copy is in
# the new log as it is in the old. The last step copies what is left of the tail, flushes and closes the
# temp file and os.rename()s it over the log, with no await in between: littlefs renames atomically, so
# a power cut at any instant, between steps too, leaves the old log (every append and ack made so far is
# in it; the temp file is removed on load) or the complete new one; no unacked item is lost and no acked
# one comes back. (MicroPython cannot fsync a folder; littlefs needs none, its rename is committed when
# it returns. On the unix port the rename is POSIX-atomic but, after an OS crash, durable only once the
# kernel writes the folder.) The new log numbers its items afresh; the bitmap and checkpoints are
# renumbered in place as the copy goes (an item's new number is never above its old one), so no second
# copy of them is needed: an item the copy has passed is looked up by (epoch, seq) in the new run table.
# A compaction needs free flash for a second copy of the live items: ~100 bytes per rating, so 900 KB
# for a full outbox of 9000. If a step fails (no room for the copy), the temp file is removed and the
# index is read again from the old log, which is whole.
#
# Still done where they are needed, because nothing else is correct: append() and ack() compact at once
# (all steps) when a failed write may have left bytes after the last record (appending after them would
# hide the new record from the next load) and append() when the bitmap or the run table has no room for
# the new item; load compacts a log with a torn tail or a bad record. The compaction task starts long
# before the room runs out (compact_due), so on a working keypad only a failed flash write leads there.
#
# Full: when `capacity` unacked items are held (or the run table is full), append() raises
# OutboxFull and writes nothing; an unacked record is never overwritten or aged out.
import os
import struct
from array import array
from binascii import crc32
from micropython import const

_ITEM = const(1)
_ACK = const(2)
_HEAD = const(3)            # kind + body length
_IHEAD = const(9)           # kind + length + epoch + seq
_MAX_MSG = const(256)       # PROTOCOL.md MAX_DEVICE_MESSAGE
_MAX_ACK = const(32)        # PROTOCOL.md MAX_ACK_SEQS: seqs per ACK record
_BUF = const(269)           # _IHEAD + _MAX_MSG + CRC
_MAX_RUNS = const(512)      # 10 bytes each; one per seq gap (a reboot's skip-ahead) or epoch change
_SLACK = const(512)         # acked item records the file may hold beyond the capacity
_U32 = const(0xFFFFFFFF)
_STRIDE = const(128)        # items between two checkpoints: a rewind or a compaction re-reads < 128
_STEP = const(32)           # records one compaction step reads at most (~1 ms on the unix port)
_RATIO = const(4)           # compact once dead records are 4x the live ones: the copy stays cheap
_ALL = const(0x3FFFFFFF)    # a step with no bound (a small int on 32-bit ports too)
_TAIL = const(8)            # offsets of the last 8 items: the cursor skips the ACK records between them
# self._v: the outbox's integers, in one array (an attribute each would cost a dict entry each)
_N = const(0)               # item records in the file
_LIVE = const(1)            # of which unacked
_DEAD = const(2)            # acked item records + ack records in the file
_SIZE = const(3)            # bytes of good records in the file
_LEND = const(4)            # where the last item record ends
_CPOS = const(5)            # cursor: offset of the next record to read
_CJ = const(6)              # cursor: item number after the last item read
_FAT = const(7)             # where self._f is positioned, if known (-1)
_GEN = const(8)             # bumped by compaction: pending() reopens the file
_DIRTY = const(9)           # a failed write may have left bytes after the last record: rewrite first
_TAILV = const(10)          # item n's offset at _TAILV + n % _TAIL, for the last _TAIL items
# the compaction in progress (self._cp: [old log, temp file, its runs x 3], or None)
_C_POS = const(18)          # old log: offset of the next record to read
_C_J = const(19)            # old log: item number after the last item read
_C_N = const(20)            # new log: items written
_C_SIZE = const(21)         # new log: bytes written
_C_STOP = const(22)         # old log size when the compaction began: records after it came meanwhile
_C_SKIP = const(23)         # old log end of its last item then: [SKIP, STOP) holds ACK records only
_C_POS0 = const(24)         # where the copy began (old offset, item number): a rewind meanwhile goes there
_C_J0 = const(25)
_C_LEND = const(26)         # new log: end of its last item
_C_DEAD = const(27)         # new log: ACK records copied
_C_TAIL = const(28)         # new log: offsets of its last _TAIL items
_V_LEN = const(36)


class OutboxFull(Exception):
    pass


def _runlen(ridx, n, r):
    return (ridx[r + 1] if r + 1 < len(ridx) else n) - ridx[r]


def _locate(rep, rseq, ridx, n, epoch, seq):
    """Item number of (epoch, seq) in a run table of n items, or -1."""
    for r in range(len(rep) - 1, -1, -1):
        if rep[r] == epoch:
            d = seq - rseq[r]
            if 0 <= d < _runlen(ridx, n, r):
                return ridx[r] + d
    return -1


class Outbox:
    def __init__(self, path, capacity=9000, compact_min=256):
        if capacity < 1:
            raise ValueError("capacity")
        self.path = path
        self.capacity = capacity
        self.compact_min = compact_min
        # Acked bits of the item records in file order; it holds len * 8 records (capacity + slack).
        self._acked = bytearray((capacity + _SLACK + 7) >> 3)
        self._ck = array("I", bytes(4 * ((len(self._acked) << 3) // _STRIDE + 1)))  # item i*128: offset
        self._buf = bytearray(_BUF)             # record being written / read by load and compact
        self._mv = memoryview(self._buf)
        self._v = array("i", bytes(4 * _V_LEN))
        self._v[_FAT] = -1
        self._cp = None
        # Runs (in file order): epoch, first seq, item number of the first item.
        self._rep, self._rseq, self._ridx = array("H"), array("I"), array("I")
        self.cur_epoch = self.cur_seq = -1      # the last item next_pending gave (-1: none since rewind)
        self._f = None
        self.torn = 0                           # bytes dropped at load (torn tail)
        self.bad = 0                            # records dropped at load (bad CRC inside the file)
        self.compactions = 0
        self.reads = 0                          # records read from the file
        try:
            os.remove(path + ".new")    # a compaction cut before its rename: the old log is whole
        except OSError:
            pass
        if self._scan():
            # No truncate() in MicroPython: rewriting the good records drops the torn tail (and bad
            # records) the same atomic way as any compaction.
            self.compact()
        else:
            self._open()

    # -- public -----------------------------------------------------------------------------------

    @property
    def depth(self):
        return self._v[_LIVE]

    @property
    def free(self):
        return 0 if self.full else self.capacity - self._v[_LIVE]

    @property
    def full(self):
        return self._v[_LIVE] >= self.capacity or len(self._rep) >= _MAX_RUNS

    @property
    def dead(self):
        return self._v[_DEAD]

    def max_seq(self, epoch):
        """Highest seq of `epoch` in the file (acked or not; 0 if none): the state's floor on boot."""
        for r in range(len(self._rep) - 1, -1, -1):
            if self._rep[r] == epoch:
                return self._rseq[r] + _runlen(self._ridx, self._v[_N], r) - 1
        return 0

    def append(self, epoch, seq, msg):
        """Write one item; durable (flushed) when it returns. OutboxFull if it cannot be kept."""
        n = len(msg)
        if not 0 <= epoch <= 0xFFFF:
            raise ValueError("epoch")
        if not 1 <= seq <= _U32:
            raise ValueError("seq")
        if not 0 < n <= _MAX_MSG:
            raise ValueError("msg-size")
        if seq <= self.max_seq(epoch):
            raise ValueError("seq-not-increasing")      # a reused or backward seq is never stored
        if epoch < self._last()[0]:
            raise ValueError("epoch-goes-back")         # keeps the file in (epoch, seq) order
        if self._v[_LIVE] >= self.capacity:
            raise OutboxFull("outbox-full")
        newrun = not self._extends(epoch, seq)
        v = self._v
        if v[_DIRTY] or v[_N] >= len(self._acked) << 3 or (newrun and len(self._rep) >= _MAX_RUNS):
            self.compact()      # the unavoidable cases (top of this file)
            newrun = not self._extends(epoch, seq)
            if newrun and len(self._rep) >= _MAX_RUNS:
                raise OutboxFull("outbox-index-full")
        b = self._buf
        struct.pack_into(">BHHI", b, 0, _ITEM, n + 6, epoch, seq)
        b[_IHEAD:_IHEAD + n] = msg
        struct.pack_into(">I", b, _IHEAD + n, crc32(self._mv[:_IHEAD + n]))
        at = self._v[_SIZE]
        self._write(_IHEAD + n + 4)
        if newrun:
            self._rep.append(epoch)
            self._rseq.append(seq)
            self._ridx.append(self._v[_N])
        self._item_at(at)

    def ack(self, epoch, seqs):
        """Mark the given seqs of `epoch` acked, durably; return how many were pending."""
        if self._v[_DIRTY]:
            self.compact()      # before any bit is set: compaction drops what the bitmap marks
        done = 0
        i = 0
        b = self._buf
        while i < len(seqs):
            k = 0                                   # one ACK record per 32 seqs
            while i < len(seqs) and k < _MAX_ACK:
                s = seqs[i]
                i += 1
                j = self._num(self._find(epoch, s), epoch, s)
                if j >= 0 and not self._bit(j):
                    self._set(j, True)              # also makes a repeat within `seqs` a no-op
                    struct.pack_into(">I", b, _HEAD + 2 + 4 * k, s)
                    k += 1
            if not k:
                continue
            blen = 2 + 4 * k
            struct.pack_into(">BHH", b, 0, _ACK, blen, epoch)
            struct.pack_into(">I", b, _HEAD + blen, crc32(self._mv[:_HEAD + blen]))
            try:
                self._write(_HEAD + blen + 4)
            except Exception:
                for q in range(k):                  # not durable: not acked
                    s = struct.unpack_from(">I", b, _HEAD + 2 + 4 * q)[0]
                    self._set(self._num(self._find(epoch, s), epoch, s), False)
                raise
            self._v[_LIVE] -= k
            self._v[_DEAD] += k + 1
            done += k
        return done

    # -- the sender's cursor ------------------------------------------------------------------------

    def rewind(self):
        """Start the cursor over at the oldest unacked item (e.g. after a reconnect)."""
        self.cur_epoch = self.cur_seq = -1
        if self._cp is not None:        # the checkpoints are half renumbered: where the copy began
            self._v[_CPOS], self._v[_CJ] = self._v[_C_POS0], self._v[_C_J0]
        else:
            self._v[_CPOS], self._v[_CJ] = self._start()

    def next_pending(self, buf):
        """Read the next unacked item after the cursor's into buf (a bytearray of 256+ bytes): returns
        the message's length (the message is buf[:n]; cur_epoch, cur_seq say which item), 0 when there
        is none yet. Allocates nothing. Goes on from where it was after appends, acks and a compaction.

        The message's CRC is not checked here (load checked every record, this outbox wrote the rest):
        the gateway checks its MAC, which catches what a CRC would and more.
        """
        f = self._f or self._open()
        b, v = self._buf, self._v
        while v[_CJ] < v[_N]:                   # an item record lies after the cursor
            if v[_N] - v[_CJ] <= _TAIL and v[_TAILV + v[_CJ] % _TAIL] > v[_CPOS]:
                v[_CPOS] = v[_TAILV + v[_CJ] % _TAIL]   # only ACK records before it: skipped unread
            if v[_FAT] != v[_CPOS]:
                f.seek(v[_CPOS])
            v[_FAT] = -1
            if f.readinto(b, _IHEAD) != _IHEAD:
                return 0                        # shorter than the index says: damaged since load
            self.reads += 1
            ln = _HEAD + 4 + (b[1] << 8 | b[2])
            v[_CPOS] += ln
            if b[0] == _ACK:
                continue
            m = ln - _IHEAD - 4
            if b[0] != _ITEM or not 0 < m <= _MAX_MSG:
                return 0                        # framing lost (damaged since load): stop here
            e = b[3] << 8 | b[4]
            s = ((b[5] << 8 | b[6]) << 8 | b[7]) << 8 | b[8]
            j = self._find(e, s)
            if j < 0:
                continue                        # not an indexed item (damaged since load)
            v[_CJ] = j + 1
            j = self._num(j, e, s)
            if j < 0 or self._bit(j) or e < self.cur_epoch or (e == self.cur_epoch and s <= self.cur_seq):
                continue                        # acked, or given before a compaction moved the cursor
            if f.readinto(buf, m) != m or f.readinto(b, 4) != 4:    # the message, then its CRC
                return 0
            v[_FAT] = v[_CPOS]
            self.cur_epoch, self.cur_seq = e, s
            return m
        return 0

    def pending(self, buf=None):
        """Yield (epoch, seq, msg) of every unacked item in (epoch, seq) order, read from the file (for
        tests and tools: the sender uses the cursor, which allocates nothing per record).

        msg is a fresh bytes object, or, when `buf` (a bytearray of 269 bytes) is given, a memoryview
        into it valid until the next step. Appends and acks may run between steps (items appended
        after the call are not yielded); after a compaction it reopens the new file and goes on
        after the last item it gave (the file is in (epoch, seq) order: append enforces it).
        """
        pb = bytearray(_BUF) if buf is None else buf
        pmv = memoryview(pb)
        le = ls = -1                            # last (epoch, seq) given
        stop_e, stop_s = self._last()           # the newest item when called: nothing after it
        while True:
            gen = self._v[_GEN]
            f = open(self.path, "rb")
            try:
                pos = 0
                while pos < self._v[_SIZE] and gen == self._v[_GEN]:
                    ln = self._read_rec(f, pb, pmv)
                    if ln < -1:
                        pos -= ln
                        continue
                    if ln <= 0:
                        return
                    self.reads += 1
                    pos += ln
                    if pb[0] != _ITEM:
                        continue
                    epoch, seq = struct.unpack_from(">HI", pb, _HEAD)
                    j = self._num(self._find(epoch, seq), epoch, seq)
                    if j < 0 or self._bit(j):
                        continue
                    if epoch < le or (epoch == le and seq <= ls):
                        continue                # given before the compaction
                    if epoch > stop_e or (epoch == stop_e and seq > stop_s):
                        return
                    le, ls = epoch, seq
                    m = pmv[_IHEAD:ln - 4]
                    yield epoch, seq, (m if buf is not None else bytes(m))
                if gen == self._v[_GEN]:
                    return
            finally:
                f.close()

    # -- compaction ---------------------------------------------------------------------------------

    def compact_due(self):
        """Whether a compaction step should run: one is under way, or one is worth its copy now (or
        needed soon for room in the index)."""
        v = self._v
        d, live = v[_DEAD], v[_LIVE]
        return (self._cp is not None or v[_DIRTY] or v[_N] + (_SLACK >> 1) >= len(self._acked) << 3
                or (d >= self.compact_min and (d >= _RATIO * live or len(self._rep) > _MAX_RUNS - 16))
                or (d >= 64 and not live))

    def compact_step(self, k=_STEP):
        """One step of a compaction, started here if none is running: reads at most k records. True
        when the compaction is done (the new log renamed over the old), False while steps remain."""
        try:
            cp = self._cp
            if cp is None:
                c = self._v
                pos, j = self._start()  # everything before that checkpoint is acked: not read at all
                c[_C_POS] = c[_C_POS0] = pos
                c[_C_J] = c[_C_J0] = j
                c[_C_N] = c[_C_SIZE] = c[_C_DEAD] = c[_C_LEND] = 0
                c[_C_STOP] = self._v[_SIZE]
                c[_C_SKIP] = self._v[_LEND] if j < self._v[_N] else self._v[_SIZE]
                cp = self._cp = [None, open(self.path + ".new", "wb"), array("H"), array("I"), array("I")]
                cp[0] = open(self.path, "rb")
                cp[0].seek(pos)
            return self._copy(cp, k)
        except Exception:
            # The old log is whole (appends and acks went on into it), but the bits and checkpoints
            # are half renumbered: read the index from the log again, then let the error be seen.
            self._abort()
            if self._scan():
                self._v[_DIRTY] = 1      # a torn tail after a failed write: the next append rewrites
            self.rewind()
            raise

    def compact(self):
        """Rewrite the log with only the unacked items now (all steps at once)."""
        while not self.compact_step(_ALL):
            pass

    def close(self):
        self._abort()
        self._close()

    # -- internals --------------------------------------------------------------------------------

    def _last(self):
        r = len(self._rep) - 1
        if r < 0:
            return -1, -1
        return self._rep[r], self._rseq[r] + _runlen(self._ridx, self._v[_N], r) - 1

    def _extends(self, epoch, seq):
        r = len(self._rep) - 1
        return r >= 0 and self._rep[r] == epoch and self._rseq[r] + _runlen(self._ridx, self._v[_N], r) == seq

    def _find(self, epoch, seq):
        """Item number of (epoch, seq) in the file, or -1."""
        return _locate(self._rep, self._rseq, self._ridx, self._v[_N], epoch, seq)

    def _bit(self, j):
        return self._acked[j >> 3] & (1 << (j & 7))

    def _set(self, j, on):
        if on:
            self._acked[j >> 3] |= 1 << (j & 7)
        else:
            self._acked[j >> 3] &= ~(1 << (j & 7)) & 0xFF

    def _num(self, j, epoch, seq):
        # Where item j's bit is: while compacting, an item the copy has passed has it under its new
        # number (-1: dropped, it was acked).
        if self._cp is not None and 0 <= j < self._v[_C_J]:
            c = self._cp
            return _locate(c[2], c[3], c[4], self._v[_C_N], epoch, seq)
        return j

    def _start(self):
        # (offset, item number) of the checkpoint at or before the oldest unacked item, or the end.
        a, n = self._acked, self._v[_N]
        i = 0
        while i < n >> 3 and a[i] == 0xFF:
            i += 1
        j = i << 3
        while j < n and self._bit(j):
            j += 1
        if j >= n:
            return self._v[_SIZE], n
        return self._ck[j // _STRIDE], j - j % _STRIDE

    def _item_at(self, at):
        # The item record just written or loaded at offset `at` (runs already updated).
        n = self._v[_N]
        if n % _STRIDE == 0:
            if n // _STRIDE < len(self._ck):
                self._ck[n // _STRIDE] = at
            else:
                self._ck.append(at)
        self._v[_TAILV + n % _TAIL] = at
        self._v[_LEND] = self._v[_SIZE]
        self._v[_N] = n + 1
        self._v[_LIVE] += 1

    def _copy(self, cp, k):
        c, b, mv = self._v, self._buf, self._mv
        src = cp[0]
        while True:
            pos = c[_C_POS]
            if pos < c[_C_STOP]:
                # ACK records from before the copy are dropped unread where no item can lie among them:
                # after the last item, and before each of the last _TAIL items.
                at = pos
                if pos >= c[_C_SKIP]:
                    at = c[_C_STOP]
                elif 0 < self._v[_N] - c[_C_J] <= _TAIL:
                    at = min(self._v[_TAILV + c[_C_J] % _TAIL], c[_C_STOP])
                if at > pos:
                    pos = c[_C_POS] = at
                    src.seek(pos)
            if pos >= self._v[_SIZE]:
                break
            if k <= 0:
                return False
            k -= 1
            ln = self._read_rec(src, b, mv)
            if ln == 0 or ln == -1:
                # On littlefs a file opened before the last appends does not see them: open it again.
                src.close()
                src = cp[0] = open(self.path, "rb")
                src.seek(pos)
                ln = self._read_rec(src, b, mv)
                if ln == 0 or ln == -1:
                    raise OSError(5)                # unreadable inside the log: keep the old log
            self.reads += 1
            if ln < 0:
                c[_C_POS] = pos - ln                # a bad CRC (counted by load, or since): not copied
                continue
            c[_C_POS] = pos + ln
            if b[0] == _ITEM:
                epoch, seq = struct.unpack_from(">HI", b, _HEAD)
                j = self._find(epoch, seq)
                if j < 0:
                    continue
                # Old bits at or above j are untouched: the new numbers written so far are below it.
                acked = self._bit(j)
                c[_C_J] = j + 1
                if acked:
                    continue                        # acked before its copy: dropped
                n = c[_C_N]
                rep, rseq, ridx = cp[2], cp[3], cp[4]
                if not (rep and rep[-1] == epoch and rseq[-1] + (n - ridx[-1]) == seq):
                    rep.append(epoch)
                    rseq.append(seq)
                    ridx.append(n)
                if n % _STRIDE == 0:
                    self._ck[n // _STRIDE] = c[_C_SIZE]     # at or below the old entry: renumbered in place
                self._set(n, False)
                c[_C_TAIL + n % _TAIL] = c[_C_SIZE]
                c[_C_LEND] = c[_C_SIZE] + ln
                c[_C_N] = n + 1
            elif pos < c[_C_STOP]:
                continue                            # an ACK record from before: its acks are in the bits
            else:
                c[_C_DEAD] += 1                     # an ack made during the copy: the new log needs it
            if cp[1].write(mv[:ln]) != ln:
                raise OSError(28)
            c[_C_SIZE] += ln
        # The whole old log is copied, and nothing can be appended before the rename: commit.
        cp[1].flush()
        cp[1].close()
        src.close()
        self._close()
        # The new file is complete on flash before the rename; the rename is the commit point.
        os.rename(self.path + ".new", self.path)
        n, a = c[_C_N], self._acked
        for i in range(n, min((n + 7) & ~7, self._v[_N])):
            self._set(i, False)
        for i in range((n + 7) >> 3, (self._v[_N] + 7) >> 3):
            a[i] = 0
        self._rep, self._rseq, self._ridx = cp[2], cp[3], cp[4]
        self._cp = None
        self._v[_DEAD] = c[_C_DEAD] + n - self._v[_LIVE]    # every unacked item was copied
        self._v[_N], self._v[_SIZE], self._v[_LEND] = n, c[_C_SIZE], c[_C_LEND]
        for i in range(_TAIL):
            self._v[_TAILV + i] = c[_C_TAIL + i]
        # The cursor goes on after the last item it gave, from the checkpoint before it: j is how
        # many items of the new log are at or before that one (the runs are in (epoch, seq) order).
        e, s, j = self.cur_epoch, self.cur_seq, n
        for r in range(len(self._rep)):
            re, rs = self._rep[r], self._rseq[r]
            if re > e or (re == e and s < rs):
                j = self._ridx[r]
                break
            if re == e and s - rs < _runlen(self._ridx, n, r):
                j = self._ridx[r] + s - rs + 1
                break
        if j < n:
            self._v[_CPOS], self._v[_CJ] = self._ck[j // _STRIDE], j - j % _STRIDE
        else:
            self._v[_CPOS], self._v[_CJ] = self._v[_SIZE], n
        self._v[_DIRTY] = 0
        self._v[_GEN] += 1
        self.compactions += 1
        self._open()
        return True

    def _abort(self):
        # Close and remove the temp file of a compaction that will not finish.
        if self._cp is None:
            return
        for f in self._cp[:2]:
            try:
                f.close()
            except OSError:
                pass
        self._cp = None
        try:
            os.remove(self.path + ".new")
        except OSError:
            pass

    def _open(self):
        # Appends go to the end whatever the position; the cursor reads through the same handle, so
        # it sees every synced record (a littlefs handle does not see another handle's later writes).
        self._f = open(self.path, "a+b")
        self._v[_FAT] = -1
        return self._f

    def _close(self):
        if self._f is not None:
            self._f.close()
            self._f = None

    def _write(self, n):
        f = self._f or self._open()
        self._v[_FAT] = -1
        try:
            # One write per record: a cut leaves it whole or torn at the end, never interleaved.
            w = f.write(self._mv[:n])
            f.flush()
        except Exception:
            self._v[_DIRTY] = 1      # bytes of a partial record may follow _size: rewrite before more
            raise
        if w != n:
            self._v[_DIRTY] = 1
            raise OSError(28)       # ENOSPC
        self._v[_SIZE] += n

    def _read_rec(self, f, b, mv):
        """Read the record at the file position into b. Returns its length; 0 at the end of the
        file; -1 torn or garbage (nothing after it can be trusted); -length for a bad CRC under a
        plausible header (the file position is then just after it, so the caller can skip it)."""
        got = f.readinto(mv[:_HEAD])
        if got != _HEAD:
            return -1 if got else 0
        kind, blen = struct.unpack_from(">BH", b, 0)
        ln = _HEAD + blen + 4
        if not ((kind == _ITEM and 6 < blen <= 6 + _MAX_MSG)
                or (kind == _ACK and 2 < blen <= 2 + 4 * _MAX_ACK and not (blen - 2) & 3)):
            return -1
        if f.readinto(mv[_HEAD:ln]) != ln - _HEAD:
            return -1
        if crc32(mv[:ln - 4]) != struct.unpack_from(">I", b, ln - 4)[0]:
            return -ln
        return ln

    def _scan(self):
        """Index the log from its start; True if it holds a torn tail or bad records."""
        self._rep, self._rseq, self._ridx = array("H"), array("I"), array("I")
        a = self._acked
        for i in range(len(a)):
            a[i] = 0
        self._v[_N] = self._v[_LIVE] = self._v[_DEAD] = self._v[_SIZE] = 0
        try:
            f = open(self.path, "rb")
        except OSError:
            return False                # new, empty log
        b, mv = self._buf, self._mv
        pos = 0
        fix = False
        try:
            while True:
                ln = self._read_rec(f, b, mv)
                if ln == 0:
                    break
                if ln < -1:
                    # Bad CRC under a plausible header: skip this record alone (bit rot, not a
                    # power cut; a torn tail is short, not mis-summed).
                    self.bad += 1
                    fix = True
                    pos -= ln
                    self._v[_SIZE] = pos
                    continue
                if ln < 0:
                    fix = True          # torn tail (or garbage): everything from pos is dropped
                    break
                self.reads += 1
                self._v[_SIZE] = pos + ln
                self._index(b, pos)
                pos += ln
            f.seek(0, 2)
            self.torn = f.tell() - pos
        finally:
            f.close()
        return fix

    def _index(self, b, at):
        kind = b[0]
        epoch = struct.unpack_from(">H", b, _HEAD)[0]
        if kind == _ITEM:
            seq = struct.unpack_from(">I", b, _HEAD + 2)[0]
            if self._v[_N] >= len(self._acked) << 3:
                # More items than this capacity's bitmap (capacity lowered since): grow it; an
                # append compacts before it writes past it again.
                self._acked.extend(bytes(64))
            if not self._extends(epoch, seq):
                self._rep.append(epoch)
                self._rseq.append(seq)
                self._ridx.append(self._v[_N])
            self._item_at(at)
            return
        blen = struct.unpack_from(">H", b, 1)[0]
        for o in range(_HEAD + 2, _HEAD + blen, 4):
            j = self._find(epoch, struct.unpack_from(">I", b, o)[0])
            if j >= 0 and not self._bit(j):
                self._set(j, True)
                self._v[_LIVE] -= 1
                self._v[_DEAD] += 1
        self._v[_DEAD] += 1
