"""The one way the project opens an SQLite database: WAL, synchronous=FULL, explicit transactions.

The gateway's store and forwarder and the province's workers all keep ratings, batches and ack state
that must survive a power cut, so they open their files the same way.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def open_db(path: str | Path, *, check_same_thread: bool = True, timeout: float = 30.0,
            foreign_keys: bool = True) -> sqlite3.Connection:
    """A connection in autocommit mode; the caller writes ``BEGIN IMMEDIATE`` ... ``COMMIT`` itself.

    ``check_same_thread=False`` only for a connection the caller guards with its own lock.
    """
    # isolation_level=None: transactions are explicit, so the group-commit boundary is exactly where the
    # code says, not where the sqlite3 module guesses.
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=check_same_thread,
                           timeout=timeout)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit survives power loss (NORMAL in WAL mode can roll back the last commits, and an
    # acked rating or batch must never be forgotten).
    conn.execute("PRAGMA synchronous=FULL")
    if foreign_keys:
        conn.execute("PRAGMA foreign_keys=ON")
    return conn
