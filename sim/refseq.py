"""The reference keypad's durable counters: boot count and the seq reservation (``state.json``).

Seqs are handed out from blocks of ``SEQ_BLOCK``; the block's end is written (atomically, fsynced)
before the first seq of it is used, and every boot continues after the reserved end. So a power cut at
any instant can skip seqs but never reuse one. A new epoch (re-provisioned keypad) starts again at 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from countersign.protocol.keystore import write_atomic

SEQ_BLOCK = 64
U32 = 0xFFFFFFFF


class SeqStore:
    def __init__(self, state_dir: Path, epoch: int) -> None:
        self.path = state_dir / "state.json"
        self.epoch = epoch
        self.boot = 0
        self._next = 1
        self._reserved = 0

    def boot_up(self, outbox_max_seq: int) -> int:
        """Count this boot and continue after the reserved end; returns the boot number.

        ``outbox_max_seq`` is belt and braces: a seq still waiting in the outbox is never handed out again.
        """
        st: dict[str, Any] = {}
        if self.path.exists():
            try:
                st = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                # write_atomic never leaves a torn file; an unreadable one is damage, not a crash.
                raise RuntimeError(f"device state {self.path} is unreadable: {exc}") from exc
        self.boot = int(st.get("boot", 0)) + 1
        reserved = int(st.get("reserved", 0)) if st.get("epoch") == self.epoch else 0
        self._next = max(reserved, outbox_max_seq) + 1
        self._reserved = self._next - 1
        self._save()
        return self.boot

    def take(self) -> int:
        if self._next > self._reserved:
            if self._next + SEQ_BLOCK - 1 > U32:
                raise RuntimeError("seq space of this epoch is exhausted: re-provision with a new epoch")
            self._reserved = self._next + SEQ_BLOCK - 1
            self._save()      # durable before any seq of the block leaves the keypad
        seq = self._next
        self._next += 1
        return seq

    def _save(self) -> None:
        write_atomic(self.path,
                     json.dumps({"epoch": self.epoch, "boot": self.boot, "reserved": self._reserved}))
