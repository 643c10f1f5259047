"""Clocks and timers for simulated devices.

Hundreds of reference devices run in one process, so none of them owns a busy thread for its timers:
they all share one ``Scheduler`` (one thread, a heap of deadlines, a condition variable). A device can
also be given a fake ``mono_ms`` for tests; the scheduler always runs on real monotonic time.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)


def mono_ms() -> int:
    """Monotonic milliseconds (the stand-in for MicroPython's ``time.ticks_ms()``)."""
    return time.monotonic_ns() // 1_000_000


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class TimerLike(Protocol):
    """What a device needs from a scheduler: one-shot callbacks after a delay, cancellable."""

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> Cancellable: ...


class TimerHandle:
    __slots__ = ("cancelled", "fn", "when")

    def __init__(self, when: float, fn: Callable[[], None]) -> None:
        self.when, self.fn, self.cancelled = when, fn, False

    def cancel(self) -> None:
        # The entry stays in the heap and is skipped when due: O(1) cancel, no heap surgery.
        self.cancelled = True


class Scheduler:
    """One thread running due callbacks in deadline order. Callbacks must be short and not block."""

    def __init__(self, name: str = "devclock") -> None:
        self._name = name
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._count = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.errors = 0         # callbacks that raised (logged with traceback, then the next one runs)

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> TimerHandle:
        h = TimerHandle(time.monotonic() + max(0.0, delay_s), fn)
        with self._cond:
            if self._closed:
                raise RuntimeError("scheduler is closed")
            heapq.heappush(self._heap, (h.when, next(self._count), h))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()
        return h

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()
            t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    if self._heap and self._heap[0][0] <= time.monotonic():
                        break
                    timeout = None if not self._heap else self._heap[0][0] - time.monotonic()
                    self._cond.wait(timeout)
                if self._closed:
                    return
                _, _, h = heapq.heappop(self._heap)
            if h.cancelled:
                continue
            try:
                h.fn()
            except Exception:
                # One device's failing timer must not stop every other device's timers; the error is
                # logged with its traceback and counted, not swallowed.
                self.errors += 1
                log.exception("timer callback %r failed", h.fn)
