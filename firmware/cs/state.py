# Persistent counters: key epoch, boot count and the seq reservation.
#
# Seqs are handed out from blocks reserved in flash before use: the file records the end of the
# current block, and a boot continues after that end (and after the highest seq in the outbox), so a
# power cut at any instant may skip seqs but never hands one out twice or goes back (PROTOCOL.md 11).
#
# The file is small JSON written new-then-rename: write "<path>.new", flush (fsync on the unix port,
# lfs_file_sync on littlefs), close, os.rename over the old one. littlefs renames atomically, so the
# file on flash is always a whole old or a whole new state. A file system whose rename refuses an
# existing target (FAT) gets remove-then-rename; the load then takes a whole ".new" when the main
# file is missing.
import json
import os
from micropython import const

_BLOCK = const(32)
_U32 = const(0xFFFFFFFF)


class State:
    def __init__(self, path, epoch=None, max_seq=0, block=_BLOCK):
        """Load the state and count this boot. `epoch`: the provisioned key epoch (None keeps the
        stored one); a newer epoch restarts seqs at 1, an older one is refused. `max_seq`: highest
        seq of this epoch still in the outbox (Outbox.max_seq), a floor for the next seq."""
        if not 1 <= block <= 4096:
            raise ValueError("block")
        self.path = path
        self._tmp = path + ".new"
        self._block = block
        st = self._read()
        self.boot = st.get("boot", 0) + 1
        old = st.get("epoch")
        reserved = st.get("reserved", 0)
        if epoch is None:
            epoch = 0 if old is None else old
        if not 0 <= epoch <= 0xFFFF:
            raise ValueError("epoch")
        if old is not None and epoch < old:
            # Going back to an older epoch would hand out its seqs again.
            raise ValueError("epoch-goes-back")
        if epoch != old:
            reserved = 0
        self.epoch = epoch
        self._next = max(reserved, max_seq) + 1     # skip what the last boot may have used
        self._end = self._next - 1
        self._save()

    def next_seq(self):
        """The next seq of this epoch; its block's end is durable before it is returned."""
        if self._next > self._end:
            end = self._next + self._block - 1
            if end > _U32:
                if self._next > _U32:
                    raise ValueError("seq-exhausted")   # re-provision with a new epoch
                end = _U32
            self._end = end
            self._save()
        s = self._next
        self._next += 1
        return s

    def set_epoch(self, epoch):
        """Re-provisioned: a newer epoch, seqs restart at 1 (an older or equal one is refused)."""
        if not self.epoch < epoch <= 0xFFFF:
            raise ValueError("epoch-goes-back" if epoch <= self.epoch else "epoch")
        self.epoch = epoch
        self._next = 1
        self._end = 0
        self._save()

    @property
    def reserved(self):
        return self._end

    def _read(self):
        if self._exists(self.path):
            try:
                os.remove(self._tmp)    # a save cut before its rename: the main file is whole
            except OSError:
                pass
            st = self._parse(self.path)
            if st is None:
                # Never torn (new-then-rename): this is damage. Guessing a seq could reuse one.
                raise ValueError("state-unreadable")
            return st
        if not self._exists(self._tmp):
            return {}                   # first boot
        # No main file but a temp one: FAT's remove-then-rename was cut (the temp is whole), or the
        # very first save was cut (nothing was handed out yet: start afresh).
        st = self._parse(self._tmp)
        if st is None:
            os.remove(self._tmp)
            return {}
        os.rename(self._tmp, self.path)
        return st

    @staticmethod
    def _parse(p):
        f = open(p)
        try:
            st = json.loads(f.read())
        except ValueError:
            return None
        finally:
            f.close()
        if not isinstance(st, dict):
            return None
        for k in ("boot", "epoch", "reserved"):
            v = st.get(k)
            if not isinstance(v, int) or v < 0:
                return None
        return st

    def _save(self):
        f = open(self._tmp, "w")
        try:
            f.write(json.dumps({"epoch": self.epoch, "boot": self.boot, "reserved": self._end}))
            f.flush()
        finally:
            f.close()
        try:
            os.rename(self._tmp, self.path)
        except OSError:
            os.remove(self.path)        # FAT: rename will not replace; .new is whole, see _read
            os.rename(self._tmp, self.path)

    @staticmethod
    def _exists(p):
        try:
            os.stat(p)
            return True
        except OSError:
            return False
