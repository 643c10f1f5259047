# Durable outbox: an append-only log of the signed messages waiting for the gateway's ack.
#
# File format: the same as the CPython reference (sim/outbox.py), so either side can read the other's
# file. Records one after another, integers big-endian:
#     kind (1) | body length (2) | body | CRC32 of kind+length+body (4)
#     kind 1 ITEM: epoch (2) | seq (4) | message (the COSE_Mac0 exactly as sent: a resend is identical)
#     kind 2 ACK:  epoch (2) | seq (4) * n        (n <= 32 here)
#
# RAM: no message is kept in RAM. The index is a run table (epoch, first seq, first item number) of the
# item records in file order (consecutive seqs share a run: one run per boot or epoch in practice) and
# a bitmap of acked item numbers, about 1.2 KB for 9000 items. pending() streams the file.
#
# Durability: one write() per record, then flush(). On the unix port flush() is fsync(); on a device
# littlefs flush() is lfs_file_sync(): the record is committed to flash when it returns, and a power
# cut mid-write leaves the file as it was at the last sync (littlefs is copy-on-write), or, on other
# file systems, a torn last record that fails its length or CRC check on load and is dropped (it was
# never reported as taken). Compaction copies the unacked items into a temp file, flushes and closes
# it, then os.rename()s it over the log: littlefs renames atomically, so the log on flash is either
# the old one or the complete new one; a leftover temp file is removed on load. (MicroPython cannot
# fsync a folder; littlefs needs none, its rename is committed when it returns. On the unix port the
# rename is POSIX-atomic but, after an OS crash, durable only once the kernel writes the folder.)
# Compaction needs free flash for a second copy of the live items: ~100 bytes per rating, so 900 KB
# for a full outbox of 9000.
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
_SLACK = const(512)         # acked item records the file may hold before an append compacts it
_U32 = const(0xFFFFFFFF)


class OutboxFull(Exception):
    pass


class Outbox:
    def __init__(self, path, capacity=9000, compact_min=256):
        if capacity < 1:
            raise ValueError("capacity")
        self.path = path
        self.capacity = capacity
        self.compact_min = compact_min
        # Acked bits of the item records in file order; it holds len * 8 records (capacity + slack).
        self._acked = bytearray((capacity + _SLACK + 7) >> 3)
        self._rep = array("H")                  # run: epoch
        self._rseq = array("I")                 # run: first seq
        self._ridx = array("I")                 # run: item number of its first record
        self._n = 0                             # item records in the file
        self._live = 0                          # of which unacked
        self._dead = 0                          # acked item records + ack records in the file
        self._size = 0                          # bytes of good records in the file
        self._buf = bytearray(_BUF)             # record being written / read by load and compact
        self._mv = memoryview(self._buf)
        self._gen = 0                           # bumped by compaction: pending() reopens the file
        self._f = None
        self._dirty = False                     # a failed write may have left bytes: rewrite first
        self.torn = 0                           # bytes dropped at load (torn tail)
        self.bad = 0                            # records dropped at load (bad CRC inside the file)
        self.compactions = 0
        self._load()

    # -- public -----------------------------------------------------------------------------------

    @property
    def depth(self):
        return self._live

    @property
    def free(self):
        return 0 if self.full else self.capacity - self._live

    @property
    def full(self):
        return self._live >= self.capacity or len(self._rep) >= _MAX_RUNS

    @property
    def dead(self):
        return self._dead

    def max_seq(self, epoch):
        """Highest seq of `epoch` in the file (acked or not; 0 if none): the state's floor on boot."""
        for r in range(len(self._rep) - 1, -1, -1):
            if self._rep[r] == epoch:
                return self._rseq[r] + self._runlen(r) - 1
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
        if self._live >= self.capacity:
            raise OutboxFull("outbox-full")
        newrun = not self._extends(epoch, seq)
        if self._dirty or self._n >= len(self._acked) << 3 or (newrun and len(self._rep) >= _MAX_RUNS):
            self.compact()
            newrun = not self._extends(epoch, seq)
            if newrun and len(self._rep) >= _MAX_RUNS:
                raise OutboxFull("outbox-index-full")
        b = self._buf
        struct.pack_into(">BHHI", b, 0, _ITEM, n + 6, epoch, seq)
        b[_IHEAD:_IHEAD + n] = msg
        struct.pack_into(">I", b, _IHEAD + n, crc32(self._mv[:_IHEAD + n]))
        self._write(_IHEAD + n + 4)
        if newrun:
            self._rep.append(epoch)
            self._rseq.append(seq)
            self._ridx.append(self._n)
        self._n += 1
        self._live += 1

    def ack(self, epoch, seqs):
        """Mark the given seqs of `epoch` acked, durably; return how many were pending."""
        if self._dirty:
            self.compact()      # before any bit is set: compaction drops what the bitmap marks
        done = 0
        i = 0
        b = self._buf
        while i < len(seqs):
            k = 0                                   # one ACK record per 32 seqs
            while i < len(seqs) and k < _MAX_ACK:
                s = seqs[i]
                i += 1
                j = self._find(epoch, s)
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
                    self._set(self._find(epoch, struct.unpack_from(">I", b, _HEAD + 2 + 4 * q)[0]),
                              False)
                raise
            self._live -= k
            self._dead += k + 1
            done += k
        if done and ((self._dead >= self.compact_min and self._dead >= self._live)
                     or (self._live == 0 and self._dead >= 64)):
            self.compact()
        return done

    def pending(self, buf=None):
        """Yield (epoch, seq, msg) of every unacked item in (epoch, seq) order, read from the file.

        msg is a fresh bytes object, or, when `buf` (a bytearray of 269 bytes) is given, a memoryview
        into it valid until the next step (the app passes one: no buffer is allocated per call). Appends and acks may run between steps (items appended
        after the call are not yielded); after a compaction it reopens the new file and goes on
        after the last item it gave (the file is in (epoch, seq) order: append enforces it).
        """
        pb = bytearray(_BUF) if buf is None else buf
        pmv = memoryview(pb)
        le = ls = -1                            # last (epoch, seq) given
        stop_e, stop_s = self._last()           # the newest item when called: nothing after it
        while True:
            gen = self._gen
            f = open(self.path, "rb")
            try:
                pos = j = 0
                while pos < self._size and gen == self._gen:
                    ln = self._read_rec(f, pb, pmv)
                    if ln < -1:
                        pos -= ln
                        continue
                    if ln <= 0:
                        return
                    pos += ln
                    if pb[0] != _ITEM:
                        continue
                    j += 1
                    if self._bit(j - 1):
                        continue
                    epoch, seq = struct.unpack_from(">HI", pb, _HEAD)
                    if epoch < le or (epoch == le and seq <= ls):
                        continue                # given before the compaction
                    if epoch > stop_e or (epoch == stop_e and seq > stop_s):
                        return
                    le, ls = epoch, seq
                    m = pmv[_IHEAD:ln - 4]
                    yield epoch, seq, (m if buf is not None else bytes(m))
                if gen == self._gen:
                    return
            finally:
                f.close()

    def _last(self):
        r = len(self._rep) - 1
        if r < 0:
            return -1, -1
        return self._rep[r], self._rseq[r] + self._runlen(r) - 1

    def compact(self):
        """Rewrite the log with only the unacked items: copy to a temp file, then rename over."""
        self._close()
        src = open(self.path, "rb")
        tmp = self.path + ".new"
        dst = open(tmp, "wb")
        b, mv = self._buf, self._mv
        rep, rseq, ridx = array("H"), array("I"), array("I")
        n = size = 0
        try:
            j = pos = 0
            while pos < self._size:
                ln = self._read_rec(src, b, mv)
                if ln < -1:
                    pos -= ln           # a bad record (dropped by load, or rot since): not indexed
                    continue
                if ln <= 0:
                    break
                pos += ln
                if b[0] != _ITEM:
                    continue
                if not self._bit(j):
                    epoch, seq = struct.unpack_from(">HI", b, _HEAD)
                    if not (rep and rep[-1] == epoch and rseq[-1] + (n - ridx[-1]) == seq):
                        rep.append(epoch)
                        rseq.append(seq)
                        ridx.append(n)
                    if dst.write(mv[:ln]) != ln:
                        raise OSError(28)
                    n += 1
                    size += ln
                j += 1
            dst.flush()
        finally:
            dst.close()
            src.close()
        # The new file is complete on flash before the rename; the rename is the commit point.
        os.rename(tmp, self.path)
        self._rep, self._rseq, self._ridx = rep, rseq, ridx
        self._n = self._live = n
        self._size = size
        self._dead = 0
        for i in range(len(self._acked)):
            self._acked[i] = 0
        self._dirty = False
        self._gen += 1
        self.compactions += 1
        self._open()

    def close(self):
        self._close()

    # -- internals --------------------------------------------------------------------------------

    def _runlen(self, r):
        return (self._ridx[r + 1] if r + 1 < len(self._ridx) else self._n) - self._ridx[r]

    def _extends(self, epoch, seq):
        r = len(self._rep) - 1
        return r >= 0 and self._rep[r] == epoch and self._rseq[r] + self._runlen(r) == seq

    def _find(self, epoch, seq):
        """Item number of (epoch, seq) in the file, or -1."""
        for r in range(len(self._rep) - 1, -1, -1):
            if self._rep[r] == epoch:
                d = seq - self._rseq[r]
                if 0 <= d < self._runlen(r):
                    return self._ridx[r] + d
        return -1

    def _bit(self, j):
        return self._acked[j >> 3] & (1 << (j & 7))

    def _set(self, j, on):
        if on:
            self._acked[j >> 3] |= 1 << (j & 7)
        else:
            self._acked[j >> 3] &= ~(1 << (j & 7)) & 0xFF

    def _open(self):
        self._f = open(self.path, "ab")

    def _close(self):
        if self._f is not None:
            self._f.close()
            self._f = None

    def _write(self, n):
        if self._f is None:
            self._open()
        try:
            # One write per record: a cut leaves it whole or torn at the end, never interleaved.
            w = self._f.write(self._mv[:n])
            self._f.flush()
        except Exception:
            self._dirty = True      # bytes of a partial record may follow _size: rewrite before more
            raise
        if w != n:
            self._dirty = True
            raise OSError(28)       # ENOSPC
        self._size += n

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

    def _load(self):
        try:
            os.remove(self.path + ".new")   # a compaction cut before its rename: the old log is whole
        except OSError:
            pass
        try:
            f = open(self.path, "rb")
        except OSError:
            self._open()                # new, empty log
            return
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
                    self._size = pos
                    continue
                if ln < 0:
                    fix = True          # torn tail (or garbage): everything from pos is dropped
                    break
                self._index(b)
                pos += ln
                self._size = pos
            f.seek(0, 2)
            self.torn = f.tell() - pos
        finally:
            f.close()
        if fix or self._dead:
            # No truncate() in MicroPython: rewriting the good records drops the torn tail (and bad
            # records, and acked items) the same atomic way as any compaction.
            self.compact()
        else:
            self._open()

    def _index(self, b):
        kind = b[0]
        epoch = struct.unpack_from(">H", b, _HEAD)[0]
        if kind == _ITEM:
            seq = struct.unpack_from(">I", b, _HEAD + 2)[0]
            if self._n >= len(self._acked) << 3:
                # More items than this capacity's bitmap (capacity lowered since): grow it; an
                # append compacts before it writes past it again.
                self._acked.extend(bytes(64))
            if not self._extends(epoch, seq):
                self._rep.append(epoch)
                self._rseq.append(seq)
                self._ridx.append(self._n)
            self._n += 1
            self._live += 1
            return
        blen = struct.unpack_from(">H", b, 1)[0]
        for o in range(_HEAD + 2, _HEAD + blen, 4):
            j = self._find(epoch, struct.unpack_from(">I", b, o)[0])
            if j >= 0 and not self._bit(j):
                self._set(j, True)
                self._live -= 1
                self._dead += 1
        self._dead += 1
