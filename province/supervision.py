"""The supervisor: every stored rating looked at once, and the platform's clocks (silence, escalation,
overdue cases) looked at often, by one thread per receiver process.

A trigger on ``ratings`` (schema step 4) queues each stored rating in ``supervision_queue`` in the
rating's own transaction, whichever code stored it (the receiver, an enrollment's release, a test). A
pass takes the queue in id order, gives the ratings to each step (cases, alerts, flags: ``on_ratings``),
dequeues them and then lets each step look at the time (``on_tick``), all in one transaction: a crash
before the commit leaves the ratings queued, a commit leaves each one handled once.
Receivers write on one database; on PostgreSQL a pass holds an advisory lock, so two receivers' passes
never interleave (the second one skips), on SQLite the write transaction does the same.

The workers wake the thread after each commit, so an alert is raised within a second of its rating being
stored; without a wake-up it runs every ``interval_s`` for the rules that are about time passing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Protocol
from zoneinfo import ZoneInfo

from . import alerts, audit, cases, flags, rated, workdays
from .db import Conn, Database, DatabaseError
from .rated import Rated

log = logging.getLogger(__name__)

__all__ = ["STEPS", "Pass", "Supervisor", "run_pass"]

_LOCK_KEY = 0x7375706572766973   # "supervis"
BATCH = 500
ACTOR = "supervisor"


@dataclass(frozen=True)
class Pass:
    """What every step of one pass shares: its time, the province's zone, the working-day calendar."""

    now_ms: int
    tz: ZoneInfo
    cal: workdays.Calendar


class Step(Protocol):
    def on_ratings(self, conn: Conn, ratings: Sequence[Rated], p: Pass) -> None: ...
    def on_tick(self, conn: Conn, p: Pass) -> None: ...


# Cases first: an alert for a dissatisfied rating links to the case it opened.
STEPS: tuple[ModuleType, ...] = (cases, alerts, flags)


def run_pass(db: Database | Conn, tz: ZoneInfo, now_ms: int, steps: Sequence[Step] | None = None, *,
             tick: bool = True) -> int:
    """One pass (the thread's, or a test's with its own clock); returns the ratings handled, -1 when
    another receiver's pass held the lock. ``tick=False``: the queued ratings only."""
    todo: Sequence[Step] = steps if steps is not None else STEPS
    if isinstance(db, Conn):
        return _pass(db, tz, now_ms, todo, tick)
    with db.connect() as conn:
        return _pass(conn, tz, now_ms, todo, tick)


def _pass(conn: Conn, tz: ZoneInfo, now_ms: int, steps: Sequence[Step], tick: bool) -> int:
    handled = 0
    while True:
        with conn.transaction():
            if conn.dialect == "postgres" and not conn.scalar("SELECT pg_try_advisory_xact_lock(?)",
                                                              (_LOCK_KEY,)):
                return -1
            p = Pass(now_ms, tz, workdays.load(conn))
            ids = [int(r[0]) for r in conn.all("SELECT rating FROM supervision_queue ORDER BY rating LIMIT ?",
                                               (BATCH,))]
            batch = rated.load(conn, ids)
            if batch:
                _ratings(conn, batch, p, steps)
            _dequeue(conn, ids)
            if tick and len(ids) < BATCH:
                for step in steps:
                    _tick(conn, step, p)
        handled += len(ids)
        if len(ids) < BATCH:
            return handled


def _ratings(conn: Conn, batch: list[Rated], p: Pass, steps: Sequence[Step]) -> None:
    """The steps over a batch; a rating a step cannot handle (a bug, not bad input: ratings are verified
    before they are stored) is recorded as an alarm and dequeued, never retried forever, and never stops
    the ratings after it."""
    conn.execute("SAVEPOINT batch")
    try:
        for step in steps:
            step.on_ratings(conn, batch, p)
        conn.execute("RELEASE SAVEPOINT batch")
        return
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        conn.execute("ROLLBACK TO SAVEPOINT batch")
        conn.execute("RELEASE SAVEPOINT batch")
    for one in batch:
        conn.execute("SAVEPOINT one")
        try:
            for step in steps:
                step.on_ratings(conn, [one], p)
            conn.execute("RELEASE SAVEPOINT one")
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            conn.execute("ROLLBACK TO SAVEPOINT one")
            conn.execute("RELEASE SAVEPOINT one")
            log.error("supervision of rating %d failed: %r", one.id, exc, exc_info=exc)
            conn.execute("INSERT INTO alarms (ms, kind, hall, device, detail) VALUES (?, ?, ?, ?, ?)",
                         (p.now_ms, "supervision-error", one.hall, one.device,
                          f"rating {one.id}: {type(exc).__name__}: {exc}"[:500]))
            audit.record(conn, ACTOR, "supervision.error", str(one.id), {"error": type(exc).__name__},
                         p.now_ms)


def _tick(conn: Conn, step: Step, p: Pass) -> None:
    """One step's time rules; a bug in them (not a database fault) is logged and leaves that step's tick
    undone, never the other steps' nor the thread: the next tick tries again."""
    conn.execute("SAVEPOINT tick")
    try:
        step.on_tick(conn, p)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        conn.execute("ROLLBACK TO SAVEPOINT tick")
        log.error("supervision: the time rules of %s failed: %r", getattr(step, "__name__", step), exc,
                  exc_info=exc)
    conn.execute("RELEASE SAVEPOINT tick")


def _dequeue(conn: Conn, ids: list[int]) -> None:
    if ids:
        conn.execute(f"DELETE FROM supervision_queue WHERE rating IN ({','.join('?' for _ in ids)})", ids)


class Supervisor:
    """The thread: a pass after each wake-up (a worker's commit) and at least every ``interval_s``."""

    def __init__(self, db: Database, tz: ZoneInfo, now_ms: Callable[[], int], *, interval_s: float = 15.0,
                 tick_s: float = 5.0, after_pass: Callable[[], None] = lambda: None,
                 steps: Sequence[Step] | None = None) -> None:
        self.db, self.tz, self.now_ms, self.interval_s = db, tz, now_ms, interval_s
        # The rules about time passing look at every keypad and case: at most every tick_s, however
        # often commits wake the thread (a busy morning commits many times a second).
        self.tick_ms = int(tick_s * 1000)
        self._last_tick: int | None = None
        self.steps = steps
        self.after_pass = after_pass
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.passes = 0
        self._done = threading.Condition()
        self._thread: threading.Thread | None = None

    def start(self) -> Supervisor:
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def wait_passes(self, n: int, timeout: float) -> bool:
        """Until ``n`` passes have completed (tests)."""
        with self._done:
            return self._done.wait_for(lambda: self.passes >= n, timeout)

    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            now = self.now_ms()
            tick = self._last_tick is None or not 0 <= now - self._last_tick < self.tick_ms
            try:
                run_pass(self.db, self.tz, now, self.steps, tick=tick)
                delay = 0.5
                if tick:
                    self._last_tick = now
            except DatabaseError as exc:
                # The database is down or busy: the queue waits in it; try again.
                log.error("supervisor: pass failed (%s); retrying in %.1fs", exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)
                self._wake.set()
                continue
            with self._done:
                self.passes += 1
                self._done.notify_all()
            self.after_pass()
