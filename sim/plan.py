"""The customers a scenario serves, drawn up front from a seed: one ``Txn`` per customer at a window.

Every scenario (``scenario.py`` on the CPython chain, ``hall.py`` with faults, ``province_sim.py`` over
hundreds of halls) serves the same kind of plan through the same routine (``customer.serve``); each
draws its plan in its own way, and each drawing is fixed for a seed: the same seed gives the same
presses, whatever the threads' interleaving (tests and the README's demo hold the seeds to that).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from countersign.protocol import messages

# A realistic service mix for a business hall (bill payment dominates, complaints are rare).
SERVICE_MIX = {messages.Service.BILL_PAYMENT: 45, messages.Service.ENQUIRY: 25,
               messages.Service.NEW_CONNECTION: 12, messages.Service.CHANGE: 8, messages.Service.METER: 6,
               messages.Service.COMPLAINT: 4}
# Score distribution on the 4-key scale, best first: most customers are satisfied.
SCORE_MIX_4 = {4: 70, 3: 20, 2: 7, 1: 3}
CLERK_NAMES = ["张伟", "王芳", "李娜", "刘洋", "陈静", "杨磊", "赵敏", "黄强", "周丽", "吴军"]


@dataclass(frozen=True)
class Txn:
    """One customer at one window."""

    mode: str           # "prompt" (opened via the gateway's API), "invite" (invite key), "walkaway"
    score: int          # the key pressed (unused for a walk-away)
    service: int        # service item of an API prompt
    twice: bool         # the customer presses a second key (ignored by the keypad)
    again: int          # ... this one
    delay_s: float = 0.0            # business seconds from prompt to press (paced scenarios)
    service_s: float = 0.0          # business seconds the transaction takes before the prompt
    brk: bool = False               # the clerk takes a break afterwards
    child_taps: tuple[int, ...] = ()    # keys a child presses before the next customer


def _service(rng: random.Random) -> int:
    return int(rng.choices(list(SERVICE_MIX), weights=list(SERVICE_MIX.values()))[0])


def _score(rng: random.Random, mix: dict[int, int]) -> int:
    return rng.choices(list(mix), weights=list(mix.values()))[0]


# -- the chain's customers (scenario.py, the chain tests) -----------------------------------------------

def chain_txn(rng: random.Random, walkaway: bool = False, twice: bool = False) -> Txn:
    """A customer on the CPython chain: service, then (unless walking away) a score, then the second
    key; drawn in that order, as the chain always has."""
    service = _service(rng)
    if walkaway:
        return Txn("walkaway", 0, service, False, 0)
    score = _score(rng, SCORE_MIX_4)
    return Txn("prompt", score, service, twice, rng.randint(1, 4) if twice else 0)


def chain_plan(seed: int, devices: list[str], total: int, walkaway_rate: float,
               double_rate: float) -> dict[str, list[Txn]]:
    """``total`` customers spread over ``devices``, each drawn from a sub-seed of ``seed``."""
    rng = random.Random(seed)
    per_device = {dev: total // len(devices) + (1 if i < total % len(devices) else 0)
                  for i, dev in enumerate(devices)}
    draws = {dev: [(rng.random() < walkaway_rate, rng.random() < double_rate, rng.randrange(1 << 30))
                   for _ in range(n)] for dev, n in per_device.items()}
    return {dev: [chain_txn(random.Random(sub), walk, twice) for walk, twice, sub in d]
            for dev, d in draws.items()}


# -- one hall's business day (hall.py) ----------------------------------------------------------------

@dataclass(frozen=True)
class HallMix:
    score_mix: dict[int, int]
    walkaway_rate: float
    double_rate: float
    break_rate: float
    child_rate: float


def hall_plan(rng: random.Random, mix: HallMix, n: int) -> list[Txn]:
    out = []
    for _ in range(n):
        service = _service(rng)
        score = _score(rng, mix.score_mix)
        delay_s = rng.uniform(1.5, 8.0)
        walkaway = rng.random() < mix.walkaway_rate
        twice = rng.random() < mix.double_rate
        service_s = rng.uniform(60, 240)
        brk = rng.random() < mix.break_rate
        child = tuple(rng.randint(1, 4) for _ in range(rng.randint(2, 5))) if rng.random() < mix.child_rate \
            else ()
        # A walk-away's second key was planned too and is never pressed: the draws stay as they were.
        out.append(Txn("walkaway" if walkaway else "prompt", score, service, twice and not walkaway,
                       1 + score % 4, delay_s=delay_s, service_s=service_s, brk=brk, child_taps=child))
    return out


# -- a province's day (province_sim.py) ----------------------------------------------------------------

@dataclass(frozen=True)
class DayConfig:
    per_device: int = 30            # customers per keypad
    seed: int = 7
    walkaway_rate: float = 0.03     # customers who do not rate: a no-rating when the next prompt opens
    double_rate: float = 0.05       # customers who press twice
    invite_rate: float = 0.10       # transactions opened by the keypad's invite key instead of the API
    prompt_timeout: int = 20        # seconds; only the last open prompt of a keypad could reach it


def day_plan(seed: int, device: str, day: DayConfig, invite: bool = True) -> list[Txn]:
    """The customers of one keypad, drawn from ``seed`` and the keypad id only (reproducible anywhere)."""
    rng = random.Random(f"countersign-day/{seed}/{device}")
    out: list[Txn] = []
    for k in range(day.per_device):
        r = rng.random()
        last = k == day.per_device - 1
        prev_walk = bool(out) and out[-1].mode == "walkaway"
        if r < day.walkaway_rate and not last:
            # The last customer always rates, so no prompt is left open to expire after the day.
            mode = "walkaway"
        elif r < day.walkaway_rate + day.invite_rate and invite and not prev_walk:
            # The invite key does nothing while a prompt is open (a walk-away's), so after one the counter
            # system opens the next prompt.
            mode = "invite"
        else:
            mode = "prompt"
        score = _score(rng, SCORE_MIX_4)
        service = _service(rng)
        twice = rng.random() < day.double_rate
        again = rng.randint(1, 4)
        out.append(Txn(mode, score, service, twice and mode != "walkaway", again))
    return out


def plan_digest(plans: dict[str, list[Txn]]) -> str:
    h = hashlib.sha256()
    for dev in sorted(plans):
        h.update(dev.encode())
        for t in plans[dev]:
            h.update(f"|{t.mode},{t.score},{t.service},{int(t.twice)},{t.again}".encode())
    return h.hexdigest()[:16]
