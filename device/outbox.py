"""A keypad's outbox file (``outbox.bin``) read on the host, without changing it.

The format is firmware/cs/outbox.py's (and sim/outbox.py's): records ``kind (1) | body length (2) | body
| CRC32 (4)``, ITEM bodies ``epoch (2) | seq (4) | the COSE_Mac0 as sent``, ACK bodies ``epoch (2) |
seq (4) * n``. A torn or damaged tail ends the read (the keypad drops it on load as well).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

_ITEM = 1
_ACK = 2


@dataclass(frozen=True)
class Pending:
    epoch: int
    seq: int
    msg: bytes          # the signed message exactly as the keypad sends it


@dataclass
class OutboxView:
    pending: list[Pending] = field(default_factory=list)
    last_ack: tuple[int, list[int]] | None = None       # (epoch, seqs) of the last ack record in the log
    torn: int = 0                                       # bytes after the last good record

    @property
    def depth(self) -> int:
        return len(self.pending)

    def seqs(self) -> list[tuple[int, int]]:
        return [(p.epoch, p.seq) for p in self.pending]


def parse(raw: bytes | None) -> OutboxView:
    view = OutboxView()
    if not raw:
        return view
    items: dict[tuple[int, int], bytes] = {}
    pos = 0
    while pos + 3 <= len(raw):
        kind, blen = struct.unpack_from(">BH", raw, pos)
        end = pos + 3 + blen + 4
        if end > len(raw):
            break
        (crc,) = struct.unpack_from(">I", raw, end - 4)
        if zlib.crc32(raw[pos:end - 4]) != crc:
            break
        body = raw[pos + 3:end - 4]
        if kind == _ITEM and blen > 6:
            epoch, seq = struct.unpack_from(">HI", body)
            items[(epoch, seq)] = body[6:]
        elif kind == _ACK and blen >= 2 and (blen - 2) % 4 == 0:
            (epoch,) = struct.unpack_from(">H", body)
            seqs = [struct.unpack_from(">I", body, 2 + 4 * i)[0] for i in range((blen - 2) // 4)]
            for s in seqs:
                items.pop((epoch, s), None)
            view.last_ack = (epoch, seqs)
        else:
            break
        pos = end
    view.torn = len(raw) - pos
    view.pending = [Pending(e, s, m) for (e, s), m in sorted(items.items())]
    return view
