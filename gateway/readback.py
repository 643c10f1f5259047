"""What became of a prompt, for the counter system: read back on request, and pushed when it ends.

The tables here live in the gateway's store, beside ``prompts`` and ``ratings``, and are written in the
same transactions: a transaction id is claimed by a trigger on the prompt's insert (so no insert path
can reuse one), and a prompt's outcome enqueues its webhook deliveries in the transaction that stores
it (``prompt_ended``, called by Store.store_rating), so a stored outcome is never left unannounced.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

STATES = ("open", "rated", "no-rating", "expired")

SCHEMA = (
    # Every transaction id once per hall; the trigger makes the prompt's insert fail on a reused one.
    "CREATE TABLE IF NOT EXISTS prompt_txns (txn TEXT PRIMARY KEY, prompt INTEGER NOT NULL)",
    # Prompts still waiting for their outcome, by when the keypad should have sent it.
    "CREATE TABLE IF NOT EXISTS prompt_due (prompt INTEGER PRIMARY KEY, due_ms INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS prompt_due_ms ON prompt_due (due_ms)",
    """CREATE TRIGGER IF NOT EXISTS prompts_claim_txn AFTER INSERT ON prompts BEGIN
        INSERT INTO prompt_txns (txn, prompt) VALUES (NEW.txn, NEW.id);
        INSERT INTO prompt_due (prompt, due_ms) VALUES (NEW.id, NEW.opened_ms + NEW.timeout * 1000);
    END""",
    # One webhook per credential; its secret signs the deliveries (kept in clear: HMAC needs it).
    """CREATE TABLE IF NOT EXISTS webhooks (
        caller TEXT PRIMARY KEY, url TEXT NOT NULL, secret TEXT NOT NULL,
        windows TEXT,                -- JSON list of the windows its credential drives; NULL = every window
        created_ms INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS webhook_deliveries (
        id INTEGER PRIMARY KEY,
        caller TEXT NOT NULL, prompt INTEGER NOT NULL, state TEXT NOT NULL,
        result TEXT NOT NULL,        -- the read-back as JSON when the prompt ended: sent unchanged
        created_ms INTEGER NOT NULL, next_ms INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT, delivered_ms INTEGER
    )""",
    "CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (next_ms)"
    " WHERE delivered_ms IS NULL",
)


def init_schema(c: sqlite3.Connection) -> None:
    """Create the tables (inside the caller's transaction, after the store's own schema).

    A store from before these tables may hold the same txn twice: the first prompt of each keeps it, the
    rest stay as they are, and from here on every txn is new or refused."""
    fresh = c.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='prompt_txns'").fetchone() \
        is None
    for stmt in SCHEMA:
        c.execute(stmt)
    if fresh:
        c.execute("INSERT OR IGNORE INTO prompt_txns (txn, prompt)"
                  " SELECT txn, min(id) FROM prompts GROUP BY txn")


def txn_prompt(c: sqlite3.Connection, txn: str) -> int | None:
    """The prompt that used ``txn``, if any."""
    row = c.execute("SELECT prompt FROM prompt_txns WHERE txn=?", (txn,)).fetchone()
    return None if row is None else int(row[0])


def result(c: sqlite3.Connection, pid: int, now_ms: int, grace_ms: int) -> dict[str, Any] | None:
    """The read-back of prompt ``pid``; "expired" once timeout + ``grace_ms`` passed with no outcome."""
    p = c.execute("SELECT window, txn, clerk, service, opened_ms, timeout FROM prompts WHERE id=?",
                  (pid,)).fetchone()
    if p is None:
        return None
    window, txn, clerk, service, opened_ms, timeout = p
    out: dict[str, Any] = {"prompt": pid, "window": window, "txn": txn, "clerk": clerk, "service": service,
                           "opened_ms": opened_ms, "timeout": timeout, "state": "open", "score": None,
                           "scale": None, "rated_ms": None}
    r = c.execute("SELECT kind, score, scale, received_ms FROM ratings WHERE prompt=?", (pid,)).fetchone()
    if r is not None:
        out.update(state="rated" if r[0] == "rating" else "no-rating", score=r[1], scale=r[2], rated_ms=r[3])
    elif now_ms >= opened_ms + timeout * 1000 + grace_ms:
        out["state"] = "expired"
    return out


def _enqueue(c: sqlite3.Connection, res: dict[str, Any], now_ms: int) -> int:
    n = 0
    for caller, windows in c.execute("SELECT caller, windows FROM webhooks").fetchall():
        if windows is not None and res["window"] not in json.loads(windows):
            continue
        c.execute("INSERT INTO webhook_deliveries (caller, prompt, state, result, created_ms, next_ms)"
                  " VALUES (?,?,?,?,?,?)",
                  (caller, res["prompt"], res["state"], json.dumps(res, ensure_ascii=False), now_ms, now_ms))
        n += 1
    return n


def prompt_ended(c: sqlite3.Connection, pid: int, now_ms: int) -> int:
    """Prompt ``pid`` got its outcome (just inserted in this transaction): enqueue its deliveries."""
    c.execute("DELETE FROM prompt_due WHERE prompt=?", (pid,))
    res = result(c, pid, now_ms, 0)
    return 0 if res is None else _enqueue(c, res, now_ms)


def expire_due(c: sqlite3.Connection, now_ms: int, grace_ms: int) -> int:
    """Prompts past timeout + grace with no outcome: enqueue their "expired" deliveries, once each.

    A late outcome (the keypad was offline and sends it on reconnecting) is still stored and announced
    again with its real state."""
    due = [r[0] for r in c.execute("SELECT prompt FROM prompt_due WHERE due_ms <= ? ORDER BY due_ms",
                                   (now_ms - grace_ms,)).fetchall()]
    for pid in due:
        c.execute("DELETE FROM prompt_due WHERE prompt=?", (pid,))
        res = result(c, pid, now_ms, grace_ms)
        if res is not None and res["state"] == "expired":
            _enqueue(c, res, now_ms)
    return len(due)


def next_due_ms(c: sqlite3.Connection) -> int | None:
    """When the earliest waiting prompt falls due (before the grace), if any."""
    row = c.execute("SELECT min(due_ms) FROM prompt_due").fetchone()
    return None if row[0] is None else int(row[0])


__all__ = ["STATES", "expire_due", "init_schema", "next_due_ms", "prompt_ended", "result", "txn_prompt"]
