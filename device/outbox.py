"""A keypad's outbox file (``outbox.bin``) read on the host, without changing it.

The format is firmware/cs/outbox.py's (and common/outbox.py's): records ``kind (1) | body length (2) | body
| CRC32 (4)``, ITEM bodies ``epoch (2) | seq (4) | the COSE_Mac0 as sent``, ACK bodies ``epoch (2) |
seq (4) * n``. A torn or damaged tail ends the read (the keypad drops it on load as well).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from countersign.common.outbox import KIND_ITEM, ack_seqs, item, records


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
    for kind, body, end in records(raw):
        if kind == KIND_ITEM:
            epoch, seq, msg = item(body)
            items[(epoch, seq)] = msg
        else:
            epoch, seqs = ack_seqs(body)
            for s in seqs:
                items.pop((epoch, s), None)
            view.last_ack = (epoch, seqs)
        pos = end
    view.torn = len(raw) - pos
    view.pending = [Pending(e, s, m) for (e, s), m in sorted(items.items())]
    return view
