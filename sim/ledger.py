"""What the keypads did, as the simulator saw it: the truth every scenario reconciles the stores against.

One ledger per run (a province worker keeps its own and sends it to the parent, which merges them).
Ratings are keyed by (keypad, epoch, seq), the key the gateway and the province store them under.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

COUNTS = ("transactions", "prompts", "presses", "taps", "ignored", "walkaways", "invites",
          "prompts_undelivered", "breaks", "child_taps")


@dataclass
class Ledger:
    ratings: dict[tuple[str, int, int], int] = field(default_factory=dict)     # (dev, epoch, seq) -> score
    transactions: int = 0       # customers served (or turned away: no prompt could be opened)
    prompts: int = 0            # prompts opened through the gateway's API
    presses: int = 0            # keys the customers pressed
    taps: int = 0               # ... of which reached a running keypad, children's keys included
    ignored: int = 0            # second presses (the keypad ignores them)
    walkaways: int = 0
    invites: int = 0            # prompts opened by the invite key
    prompts_undelivered: int = 0
    breaks: int = 0
    child_taps: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self.lock:
            for k, v in counts.items():
                if k not in COUNTS:
                    raise KeyError(f"the ledger counts no {k!r}")
                setattr(self, k, getattr(self, k) + v)

    def rated(self, device: str, epoch: int, seq: int, score: int) -> None:
        with self.lock:
            self.ratings[(device, epoch, seq)] = score

    def snapshot(self) -> dict[str, Any]:
        """Picklable: what a province worker sends to the parent."""
        with self.lock:
            out: dict[str, Any] = {k: getattr(self, k) for k in COUNTS}
            out["ratings"] = dict(self.ratings)
            return out

    def merge(self, snap: dict[str, Any]) -> None:
        with self.lock:
            self.ratings.update(snap["ratings"])
            for k in COUNTS:
                setattr(self, k, getattr(self, k) + snap[k])


def losses(r: dict[str, Any]) -> str:
    """The reconciliation's line: 0 is the only good value of each."""
    return f"lost {r['lost']}  duplicated {r['duplicated']}  invented {r['invented']}  altered {r['altered']}"


__all__ = ["COUNTS", "Ledger", "losses"]
