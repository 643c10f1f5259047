"""The one way the project opens an SQLite database: WAL, synchronous=FULL, explicit transactions.

The gateway's store and forwarder and the province's workers all keep ratings, batches and ack state
that must survive a power cut, so they open their files the same way.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

# Ratings name clerks: no other local user reads them. SQLite gives the -wal and -shm files the main
# file's mode (and, run as root, its owner), so setting it here covers all three.
DB_MODE = 0o640


def open_db(path: str | Path, *, check_same_thread: bool = True, timeout: float = 30.0,
            foreign_keys: bool = True) -> sqlite3.Connection:
    """A connection in autocommit mode; the caller writes ``BEGIN IMMEDIATE`` ... ``COMMIT`` itself.

    ``check_same_thread=False`` only for a connection the caller guards with its own lock.
    """
    if str(path) != ":memory:":
        _not_world_readable(Path(path))
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


def _not_world_readable(path: Path) -> None:
    """Create the file 0640 (not the process's umask, 0644 by default); an older file's world bits go."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, DB_MODE)
    except FileExistsError:
        st = path.stat()
        if st.st_mode & 0o007 and st.st_uid == os.geteuid():
            for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                with contextlib.suppress(FileNotFoundError):
                    p.chmod(p.stat().st_mode & 0o7770)
        return
    os.close(fd)
