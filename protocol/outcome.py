"""What storing a rating (or a prompt record) came to, at the gateway and at the province alike."""

from __future__ import annotations

from enum import Enum


class Outcome(Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"                 # the same bytes again: ack again, store nothing
    # The same (device, epoch, seq) with other bytes: security alarm, the original kept. The value is the
    # reason the gateway quarantines under and the province rejects the entry with.
    CONFLICT = "conflicting-duplicate"
