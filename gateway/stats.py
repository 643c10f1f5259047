"""The gateway's counters (stored, duplicates, rejected by reason, prompts, acks...), kept across restarts.

Counted in memory where the event happens (cheap, under a lock) and written to the ``counters`` table of
the gateway's database by ``flush``, which the alarm thread calls after commits and every few seconds,
and the gateway at stop. A crash can lose the counts since the last flush, never the ratings (those are
counted from their rows). One instance per gateway (never module-level: several gateways share a process).
"""

from __future__ import annotations

import threading
from collections import Counter

from .store import Store

SCHEMA = "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, n INTEGER NOT NULL)"
REJECTED = "rejected:"          # prefix of a rejection reason's row in ``counters``


class Stats:
    def __init__(self, store: Store | None = None) -> None:
        """``store`` None: counted in memory only (a part tested on its own)."""
        self._store = store
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()
        self._unflushed: Counter[str] = Counter()      # row name -> increments not yet written
        if store is None:
            return
        with store.transaction() as c:
            c.execute(SCHEMA)
            rows = c.execute("SELECT name, n FROM counters").fetchall()
        for name, n in rows:
            if name.startswith(REJECTED):
                self._rejected[name[len(REJECTED):]] = n
            else:
                self._counts[name] = n

    def incr(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n
            self._unflushed[name] += n

    def reject(self, reason: str) -> None:
        with self._lock:
            self._rejected[reason] += 1
            self._counts["rejected"] += 1
            self._unflushed[REJECTED + reason] += 1
            self._unflushed["rejected"] += 1

    def flush(self) -> None:
        """Write the increments since the last flush; kept for the next one if the write fails."""
        with self._lock:
            pending, self._unflushed = self._unflushed, Counter()
        if not pending or self._store is None:
            return
        try:
            with self._store.transaction() as c:
                c.executemany("INSERT INTO counters (name, n) VALUES (?, ?)"
                              " ON CONFLICT (name) DO UPDATE SET n = n + excluded.n", sorted(pending.items()))
        except BaseException:
            with self._lock:
                self._unflushed.update(pending)
            raise

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def rejected(self) -> dict[str, int]:
        with self._lock:
            return dict(self._rejected)
