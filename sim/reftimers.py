"""The reference keypad's timers: one-shot and repeating callbacks on a scheduler.

Hundreds of keypads in one process share one ``devclock.Scheduler`` (no thread of their own); a keypad
given none runs a scheduler of its own, closed when it stops.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .devclock import Cancellable, Scheduler, TimerLike


class Timers:
    def __init__(self, name: str, shared: TimerLike | None, lock: threading.Condition) -> None:
        self._name = name
        self._lock = lock             # the keypad's: re-arming and cancelling never interleave
        self._shared = shared
        self._own: Scheduler | None = None
        self._sched: TimerLike | None = shared
        self._repeating: list[Cancellable] = []

    def open(self) -> None:
        if self._sched is None:
            self._own = Scheduler(self._name)
            self._sched = self._own

    def later(self, delay_s: float, fn: Callable[[], None]) -> Cancellable:
        if self._sched is None:
            raise RuntimeError("timers used before open()")
        return self._sched.call_later(delay_s, fn)

    def every(self, period_s: float, fn: Callable[[], None], alive: Callable[[], bool]) -> None:
        """Run ``fn`` every ``period_s``, re-armed after each run while ``alive()``."""
        slot = len(self._repeating)

        def tick() -> None:
            fn()
            with self._lock:
                if alive():
                    self._repeating[slot] = self.later(period_s, tick)

        self._repeating.append(self.later(period_s, tick))

    def cancel_repeating(self) -> None:
        for t in self._repeating:
            t.cancel()
        self._repeating.clear()

    def close(self) -> None:
        """Close a scheduler of our own (a later open() makes a new one); a shared one is left running."""
        if self._own is not None:
            self._own.close()
            self._own, self._sched = None, self._shared
