"""The customer routine: one transaction at one window, on any keypad (``keypad.Keypad``).

The counter system opens a prompt (or the clerk presses the invite key), the customer waits to see it,
then presses a score key (or walks away), sometimes a second key. What happened goes into the ledger;
what it came to is returned, and each scenario decides which outcomes are errors for it (the chain and
the province fail on a prompt that never shows; the hall, whose faults take brokers and keypads down,
counts it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from .keypad import Keypad
from .ledger import Ledger
from .plan import Txn


class Served(StrEnum):
    RATED = "rated"
    UNRATED = "unrated"             # pressed, and no rating showed within the patience
    WALKED_AWAY = "walked-away"
    NO_PROMPT = "no-prompt"         # the counter system could not open one, or the invite key opened none
    UNDELIVERED = "undelivered"     # opened, and never shown on the keypad


@dataclass(frozen=True)
class Patience:
    """How long the people wait, in real seconds."""

    prompt_s: float = 10.0          # for the prompt to show on the keypad
    rating_s: float = 10.0          # for the keypad to show the rating after the press
    # A walk-away: wait this long for the keypad's no-rating (the prompt expiring); None: go at once and
    # leave the prompt for the next one to replace.
    walkaway_s: float | None = 40.0


OpenPrompt = Callable[[Txn, str], int | None]     # (txn, txn id) -> prompt id, None: none opened


def serve(keypad: Keypad, txn: Txn, txn_id: str, open_prompt: OpenPrompt, ledger: Ledger,
          patience: Patience, pace: Callable[[float], None] | None = None) -> Served:
    """Serve ``txn``; ``pace(business_s)`` lets a scenario spend the customer's delay before the press."""
    ledger.add(transactions=1)
    if txn.mode == "invite":
        if not keypad.invite(patience.prompt_s):
            return Served.NO_PROMPT
        ledger.add(invites=1)
    else:
        since = keypad.mark()
        pid = open_prompt(txn, txn_id)
        if pid is None:
            return Served.NO_PROMPT
        if not keypad.wait_prompt(pid, patience.prompt_s, since):
            ledger.add(prompts_undelivered=1)
            return Served.UNDELIVERED
        if txn.mode == "walkaway":
            if patience.walkaway_s is not None:
                keypad.wait_no_rating(patience.walkaway_s, since)
            ledger.add(walkaways=1)
            return Served.WALKED_AWAY
    if pace is not None:
        pace(txn.delay_s)
    since = keypad.mark()
    landed = keypad.tap(txn.score)
    rated = keypad.wait_rated(patience.rating_s, since) if landed else None
    ledger.add(presses=1, taps=int(landed))
    if rated is not None:
        ledger.rated(keypad.device_id, keypad.epoch, rated.seq, rated.score)
    if txn.twice:
        again = keypad.tap(txn.again)
        ledger.add(presses=1, taps=int(again), ignored=int(again))
    return Served.RATED if rated is not None else Served.UNRATED
