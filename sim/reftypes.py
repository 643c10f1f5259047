"""The reference keypad's vocabulary and configuration: its prompt states, what a press did, its config."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from countersign.common.outbox import DEFAULT_CAPACITY

from .devclock import TimerLike
from .devclock import mono_ms as _default_mono_ms


class State(StrEnum):
    READY = "ready"
    PROMPT_OPEN = "prompt_open"
    RATED = "rated"
    EXPIRED = "expired"


class PressOutcome(StrEnum):
    """What a key press did on the keypad (not the storage outcome of the gateway or the province)."""

    RATED = "rated"
    IGNORED = "ignored"         # a second press in a prompt already rated
    NO_PROMPT = "no-prompt"     # no prompt open: not a rating
    FULL = "full"               # outbox full: refused, nothing overwritten
    OFF = "off"                 # device not running


@dataclass(frozen=True)
class PressResult:
    outcome: PressOutcome
    seq: int | None = None

    def __eq__(self, other: object) -> bool:
        # Lets callers write ``dev.press(3) == "rated"`` as well as compare whole results.
        if isinstance(other, str):
            return self.outcome == other
        if isinstance(other, PressResult):
            return (self.outcome, self.seq) == (other.outcome, other.seq)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.outcome, self.seq))


@dataclass
class DeviceConfig:
    device_id: str
    key: bytes
    epoch: int
    host: str
    port: int
    state_dir: Path
    scale: int = 4
    invite_key: bool = True
    heartbeat_s: float = 60.0
    fw: str = "ref-0.1.0"
    mono_ms: Callable[[], int] = _default_mono_ms
    scheduler: TimerLike | None = None          # None: the device runs a scheduler of its own
    ack_timeout_s: float = 10.0                 # resend unacked records this long after sending
    invite_timeout_s: int = 20                  # window of a prompt opened by the invite key
    outbox_capacity: int = DEFAULT_CAPACITY
    keepalive_s: int = 30
    reconnect_min_s: float = 0.5                # paho doubles it per failed attempt, up to the max;
    reconnect_max_s: float = 8.0                # each device adds its own random jitter to the min
    on_stored: Callable[[int], None] | None = None   # called with each seq the gateway acked
    rng: random.Random = field(default_factory=random.Random)
