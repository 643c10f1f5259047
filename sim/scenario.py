"""A business morning at one hall on the CPython chain: clerks sign in, customers rate, faults happen."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .chain import Chain
from .ledger import losses
from .plan import CLERK_NAMES, chain_plan


@dataclass
class ScenarioConfig:
    ratings: int = 200          # transactions in all, spread over the windows
    seed: int = 7
    ignore_rate: float = 0.03   # customers who walk away: a no-rating after the prompt's timeout
    double_rate: float = 0.05   # customers who press twice: the second press is ignored
    uplink_outage: bool = False  # stop the provincial broker for the middle third of the run


def run(chain: Chain, sc: ScenarioConfig, progress: Callable[[int, int], None] | None = None) -> None:
    for i, dev in enumerate(chain.device_ids):
        window = chain.keystore.devices[dev].window
        chain.sign_in(window, f"{10001 + i}", CLERK_NAMES[i % len(CLERK_NAMES)])
    # Each window's customers are drawn up front from the seed, so a run is reproducible whatever the
    # threads' interleaving.
    plans = chain_plan(sc.seed, chain.device_ids, sc.ratings, sc.ignore_rate, sc.double_rate)
    done = 0
    lock = threading.Lock()
    outage_at, restore_at = sc.ratings // 3, 2 * sc.ratings // 3
    errors: list[BaseException] = []
    # Faults run on their own thread, one after the other: window threads only signal the moments, so a
    # restart can never overlap a stop still in progress.
    outage, restore = threading.Event(), threading.Event()

    def fault_loop() -> None:
        try:
            if not outage.wait(600):
                return
            chain.province_broker.stop()
            restore.wait(600)
            chain.province_broker.start()
        except BaseException as exc:
            errors.append(exc)

    fault_thread = threading.Thread(target=fault_loop, daemon=True)
    if sc.uplink_outage:
        fault_thread.start()

    def window_loop(dev: str) -> None:
        nonlocal done
        for k, txn in enumerate(plans[dev]):
            try:
                chain.serve_txn(dev, txn, f"{dev}-T{k:05d}")
            except BaseException as exc:  # reported after the join, the run fails
                errors.append(exc)
                return
            with lock:
                done += 1
                n = done
            if n == outage_at:
                outage.set()
            if n == restore_at:
                restore.set()
            if progress is not None:
                progress(n, sc.ratings)

    threads = [threading.Thread(target=window_loop, args=(dev,), daemon=True) for dev in chain.device_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    outage.set()
    restore.set()
    if sc.uplink_outage:
        fault_thread.join()
    if errors:
        raise RuntimeError(f"scenario failed: {errors[0]!r}") from errors[0]


def summary(report: dict[str, Any]) -> str:
    r = report
    lines = [
        f"presses {r['presses']}  prompts {r['prompts']}  ratings made {r['ratings_made']}",
        f"stored at gateway {r['stored_gateway']} (+{r['no_ratings_gateway']} no-ratings)  "
        f"received by province {r['received_province']}  prompts at province {r['prompts_province']}",
        losses(r),
        f"rejected {r['rejected'] or 'none'}",
    ]
    return "\n".join(lines)
