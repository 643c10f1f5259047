"""The device's durable outbox: an append-only log of signed messages waiting for the gateway's ack.

File format, one record after another (all integers big-endian)::

    kind (1) | body length (2) | body | CRC32 of kind+length+body (4)

    kind 1 ITEM: epoch (2) | seq (4) | message bytes (the COSE_Mac0 exactly as sent, so a resend is
                 byte-identical and the gateway never sees one (device, epoch, seq) with two payloads)
    kind 2 ACK:  epoch (2) | seq (4) * n

Every append is written with one ``write`` and fsynced before it returns, so a rating is on disk before
the keypad says "thank you". A crash mid-write leaves at most one torn record at the end: on load it
fails its length or CRC check, is discarded and the file is truncated to the last good record (a torn
record was never reported as taken, so nothing reported is lost). Acked items are dropped by compaction,
which writes the live items to a new file, fsyncs it, renames it over the old one and fsyncs the folder:
at every instant the file on disk is either the old log or the complete new one.

When ``capacity`` unacked items are held the outbox is full and ``append`` refuses; nothing unacked is
ever overwritten or aged out. Not thread-safe: the owning device serialises calls under its own lock.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

KIND_ITEM = 1
KIND_ACK = 2
_HEAD = struct.Struct(">BH")
_CRC = struct.Struct(">I")
_ITEM = struct.Struct(">HI")
_EPOCH = struct.Struct(">H")
_SEQ = struct.Struct(">I")
DEFAULT_CAPACITY = 9000         # 30 days x 300 ratings
MAX_BODY = 0xFFFF


class OutboxError(RuntimeError):
    pass


class OutboxFull(OutboxError):
    """The outbox holds ``capacity`` unacked items; the new one was not written."""


@dataclass(frozen=True)
class Item:
    epoch: int
    seq: int
    data: bytes


def _record(kind: int, body: bytes) -> bytes:
    if len(body) > MAX_BODY:
        raise OutboxError(f"record body of {len(body)} bytes is too long")
    head = _HEAD.pack(kind, len(body)) + body
    return head + _CRC.pack(zlib.crc32(head))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Outbox:
    def __init__(self, path: Path | str, capacity: int = DEFAULT_CAPACITY, compact_min: int = 256) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.path = Path(path)
        self.capacity = capacity
        self.compact_min = compact_min        # dead records tolerated before compaction is worth it
        self._live: dict[tuple[int, int], Item] = {}    # insertion (= append) order
        self._dead = 0                         # acked item records + ack records still in the file
        self.torn_bytes = 0                    # bytes discarded at load (a torn tail)
        self.compactions = 0
        self._fd: int | None = None
        self._load()

    # -- public ----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._live)

    @property
    def full(self) -> bool:
        return len(self._live) >= self.capacity

    @property
    def free(self) -> int:
        return max(0, self.capacity - len(self._live))

    def items(self) -> list[Item]:
        """Unacked items in the order they were appended (seq order within an epoch)."""
        return list(self._live.values())

    def contains(self, epoch: int, seq: int) -> bool:
        return (epoch, seq) in self._live

    def max_seq(self, epoch: int) -> int:
        return max((s for (e, s) in self._live if e == epoch), default=0)

    def append(self, epoch: int, seq: int, data: bytes) -> None:
        """Write one item durably (fsynced) or raise; on return it survives a power cut."""
        if self.full:
            raise OutboxFull(f"outbox holds {len(self._live)} unacked items (capacity {self.capacity})")
        if (epoch, seq) in self._live:
            raise OutboxError(f"seq {seq} of epoch {epoch} is already in the outbox")
        self._write(_record(KIND_ITEM, _ITEM.pack(epoch, seq) + data))
        self._live[(epoch, seq)] = Item(epoch, seq, data)

    def ack(self, epoch: int, seqs: list[int] | tuple[int, ...]) -> list[int]:
        """Mark the given seqs acked (durably); return those that were pending, in the order given."""
        done: list[int] = []
        for s in seqs:
            if (epoch, s) in self._live and s not in done:
                done.append(s)
        if not done:
            return done
        self._write(_record(KIND_ACK, _EPOCH.pack(epoch) + b"".join(_SEQ.pack(s) for s in done)))
        for s in done:
            del self._live[(epoch, s)]
        self._dead += len(done) + 1
        if self._dead >= self.compact_min and self._dead >= len(self._live):
            self.compact()
        return done

    def compact(self) -> None:
        """Rewrite the file with only the live items (write-new-then-rename, fsync file and folder)."""
        tmp = self.path.with_name(f".{self.path.name}.compact")
        data = b"".join(_record(KIND_ITEM, _ITEM.pack(i.epoch, i.seq) + i.data) for i in self._live.values())
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._close_fd()
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        self._dead = 0
        self.compactions += 1
        self._open()

    def close(self) -> None:
        """Close the file without writing anything (also what a power cut amounts to)."""
        self._close_fd()

    # -- internals -------------------------------------------------------------------------------------

    def _open(self) -> None:
        created = not self.path.exists()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        if created:
            _fsync_dir(self.path.parent)

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _write(self, rec: bytes) -> None:
        if self._fd is None:
            raise OutboxError("outbox is closed")
        # One write call per record: a crash leaves the record whole or torn at the end, never
        # interleaved with another one.
        n = os.write(self._fd, rec)
        if n != len(rec):
            raise OutboxError(f"short write to {self.path} ({n} of {len(rec)} bytes)")
        os.fsync(self._fd)

    def _load(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A compaction that crashed before its rename left a temp file; the old log is still complete.
        self.path.with_name(f".{self.path.name}.compact").unlink(missing_ok=True)
        raw = self.path.read_bytes() if self.path.exists() else b""
        good = 0
        for kind, body, end in records(raw):
            if kind == KIND_ITEM:
                epoch, seq, msg = item(body)
                self._live[(epoch, seq)] = Item(epoch, seq, msg)
            else:
                epoch, seqs = ack_seqs(body)
                for s in seqs:
                    if self._live.pop((epoch, s), None) is not None:
                        self._dead += 1
                self._dead += 1
            good = end
        if good < len(raw):
            self.torn_bytes = len(raw) - good
            log.warning("%s: discarding %d bytes of a torn record at offset %d", self.path,
                        self.torn_bytes, good)
            with open(self.path, "r+b") as f:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())
        self._open()
        if self._dead:
            self.compact()


def records(raw: bytes) -> Iterator[tuple[int, bytes, int]]:
    """(kind, body, end offset) of each good record from the start of an outbox file; stops at the first
    torn or corrupt one (a keypad drops everything from there on load). The firmware writes the same
    format (firmware/cs/outbox.py); the technicians' tools read a keypad's file with this too."""
    pos = 0
    while pos + _HEAD.size <= len(raw):
        kind, length = _HEAD.unpack_from(raw, pos)
        end = pos + _HEAD.size + length + _CRC.size
        if kind not in (KIND_ITEM, KIND_ACK) or end > len(raw):
            return
        (crc,) = _CRC.unpack_from(raw, end - _CRC.size)
        if zlib.crc32(raw[pos:end - _CRC.size]) != crc:
            return
        body = raw[pos + _HEAD.size:end - _CRC.size]
        if kind == KIND_ITEM and len(body) < _ITEM.size:
            return
        if kind == KIND_ACK and (len(body) - _EPOCH.size) % _SEQ.size:
            return
        yield kind, body, end
        pos = end


def item(body: bytes) -> tuple[int, int, bytes]:
    """(epoch, seq, signed message) of an ITEM record's body."""
    epoch, seq = _ITEM.unpack_from(body)
    return epoch, seq, body[_ITEM.size:]


def ack_seqs(body: bytes) -> tuple[int, list[int]]:
    """(epoch, seqs) of an ACK record's body."""
    (epoch,) = _EPOCH.unpack_from(body)
    return epoch, [_SEQ.unpack_from(body, off)[0] for off in range(_EPOCH.size, len(body), _SEQ.size)]
