"""The province's schema, as numbered migrations applied in order, each in its own transaction.

Why not Alembic: it works through SQLAlchemy, which nothing else here uses (the store speaks SQL to
sqlite3 and psycopg directly), and the province's few schema steps are SQL text and, now and then, a
backfill in Python. A table ``schema_migrations`` records what is applied; ``upgrade`` applies the rest,
and a database newer than this code is refused rather than written to.

A database made before migrations existed (the tables of step 1, no ``schema_migrations``) is at step 1:
step 1 creates only what is missing, so it is applied to it as to an empty one, then the rest; nothing is
copied or dropped, so no row is lost (test_43).

Concurrent upgrades (two receivers starting on one PostgreSQL) are serialised by an advisory lock held
for the upgrade; on SQLite BEGIN IMMEDIATE does the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from countersign.common.clock import wall_ms

from .db import Conn, Database
from .errors import ProvinceError
from .period import DEFAULT_TZ, rating_day

log = logging.getLogger(__name__)

__all__ = ["MIGRATIONS", "SchemaError", "current_version", "upgrade"]

_LOCK_KEY = 0x636F756E74657273   # "counters": the advisory lock of an upgrade on PostgreSQL


class SchemaError(ProvinceError, RuntimeError):
    reason = "bad-schema"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str = ""                                          # statements separated by ';'
    python: Callable[[Conn, ZoneInfo], None] | None = None  # run after the SQL, in the same transaction


BASE = """
CREATE TABLE IF NOT EXISTS ratings (
    id {id},
    device TEXT NOT NULL, epoch BIGINT NOT NULL, seq BIGINT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('rating', 'no-rating')),
    score BIGINT, scale BIGINT,              -- NULL for a no-rating
    prompt BIGINT NOT NULL,                  -- prompt id; 0 = opened by the invite key
    press_s BIGINT,                          -- unix seconds of the press/expiry; NULL = device clock unknown
    delay_ms BIGINT, boot BIGINT,
    hall TEXT NOT NULL, "window" TEXT NOT NULL, clerk TEXT, service BIGINT NOT NULL, txn TEXT,
    prompt_ms BIGINT,                        -- gateway clock
    received_ms BIGINT NOT NULL,             -- when the gateway received (and stored) it
    stored_ms BIGINT NOT NULL,               -- when the province stored it
    batch_hall TEXT NOT NULL, batch_id BIGINT NOT NULL,
    cose {blob} NOT NULL,                    -- the device's COSE_Mac0, unchanged: re-verifiable at any time
    digest {blob} NOT NULL,
    UNIQUE (device, epoch, seq)
);
CREATE INDEX IF NOT EXISTS ratings_hall ON ratings (hall, clerk);
CREATE TABLE IF NOT EXISTS prompts (
    id {id},
    hall TEXT NOT NULL, prompt BIGINT NOT NULL, device TEXT NOT NULL, "window" TEXT NOT NULL,
    clerk TEXT, service BIGINT NOT NULL, txn TEXT, opened_ms BIGINT NOT NULL, timeout BIGINT NOT NULL,
    batch_id BIGINT NOT NULL,
    UNIQUE (hall, prompt)
);
CREATE TABLE IF NOT EXISTS batches (
    id {id},
    hall TEXT NOT NULL, batch BIGINT NOT NULL, created_ms BIGINT NOT NULL, received_ms BIGINT NOT NULL,
    entries BIGINT NOT NULL, stored BIGINT NOT NULL, duplicates BIGINT NOT NULL,
    rejected TEXT NOT NULL,                  -- JSON [[index, reason], ...]
    ack {blob} NOT NULL,                     -- the signed ack, re-published as is when the batch comes again
    UNIQUE (hall, batch)
);
CREATE TABLE IF NOT EXISTS quarantine (
    id {id},
    received_ms BIGINT NOT NULL, topic TEXT NOT NULL, hall TEXT, reason TEXT NOT NULL, detail TEXT NOT NULL,
    payload {blob} NOT NULL
);
CREATE TABLE IF NOT EXISTS alarms (
    id {id},
    ms BIGINT NOT NULL, kind TEXT NOT NULL, hall TEXT, device TEXT, detail TEXT NOT NULL
)
"""

# The provincial platform (issue 12): days, held ratings, the registry and enrollments in the database,
# the hall hierarchy, the keypad fleet and per-hop day counts forwarded by gateways, people and the audit
# log. Designed for the supervision loop too: a case or an appeal refers to ratings.id and to users.
PLATFORM = """
ALTER TABLE ratings ADD COLUMN day TEXT;
CREATE INDEX ratings_day ON ratings (day, hall);
ALTER TABLE prompts ADD COLUMN day TEXT;
CREATE INDEX prompts_day ON prompts (day, hall);
CREATE INDEX prompts_device ON prompts (device);
ALTER TABLE alarms ADD COLUMN acked_ms BIGINT;
ALTER TABLE alarms ADD COLUMN acked_by TEXT;
ALTER TABLE alarms ADD COLUMN batch_id BIGINT;
CREATE TABLE held (
    id {id},
    hall TEXT NOT NULL, device TEXT NOT NULL,
    epoch BIGINT, seq BIGINT,                -- read from the payload before any MAC check; NULL if unreadable
    kind TEXT, score BIGINT, scale BIGINT, prompt BIGINT, press_s BIGINT, delay_ms BIGINT, boot BIGINT,
    "window" TEXT NOT NULL, clerk TEXT, service BIGINT NOT NULL, txn TEXT, prompt_ms BIGINT,
    received_ms BIGINT NOT NULL, stored_ms BIGINT NOT NULL,
    batch_hall TEXT NOT NULL, batch_id BIGINT NOT NULL,
    cose {blob} NOT NULL, digest {blob} NOT NULL,
    reason TEXT NOT NULL,                    -- unknown-device, prompt-mismatch, prompt-reused, ...
    detail TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'held' CHECK (state IN ('held', 'released', 'refused')),
    decided_ms BIGINT, decided_by TEXT, decision TEXT,
    rating_id BIGINT,                        -- released: the ratings row it became
    day TEXT NOT NULL,                       -- as a rating's: press time, else the gateway's receipt
    UNIQUE (digest)
);
CREATE INDEX held_device ON held (device, epoch, seq);
CREATE INDEX held_prompt ON held (hall, prompt);
CREATE INDEX ratings_prompt ON ratings (hall, prompt);
CREATE INDEX held_state ON held (state, hall);
CREATE TABLE devices (
    device TEXT PRIMARY KEY,
    hall TEXT NOT NULL, key {blob} NOT NULL, epoch BIGINT NOT NULL, "window" TEXT NOT NULL,
    scale BIGINT NOT NULL, revoked BIGINT NOT NULL DEFAULT 0,
    source TEXT NOT NULL CHECK (source IN ('registry', 'enrollment')),
    changed_ms BIGINT NOT NULL, changed_by TEXT
);
CREATE TABLE enrollments (
    id {id},
    device TEXT NOT NULL, hall TEXT NOT NULL, "window" TEXT NOT NULL, epoch BIGINT NOT NULL, scale BIGINT,
    kcv TEXT,                                -- key check value the gateway's notice carries (never the key)
    key {blob},                              -- from the technician's enrollment record only
    gateway_ms BIGINT,                       -- when the hall gateway's notice arrived
    technician_ms BIGINT, technician TEXT,   -- when the technician's record was uploaded, and by whom
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'approved', 'refused')),
    decided_ms BIGINT, decided_by TEXT, reason TEXT,
    UNIQUE (device, epoch)
);
CREATE TABLE halls (
    hall TEXT PRIMARY KEY,
    name TEXT NOT NULL, city TEXT NOT NULL, county TEXT
);
CREATE TABLE keypad_status (
    device TEXT PRIMARY KEY,
    hall TEXT NOT NULL, seen_ms BIGINT NOT NULL, online BIGINT NOT NULL,
    fw TEXT, reset_cause TEXT, free_heap BIGINT, outbox BIGINT, rssi BIGINT, stuck_keys TEXT,
    reported_ms BIGINT NOT NULL
);
CREATE TABLE gateway_status (
    hall TEXT PRIMARY KEY,
    backlog BIGINT NOT NULL, oldest_ms BIGINT, reported_ms BIGINT NOT NULL
);
CREATE TABLE day_counts (
    hall TEXT NOT NULL, device TEXT NOT NULL, epoch BIGINT NOT NULL, day TEXT NOT NULL,
    ratings BIGINT NOT NULL, no_ratings BIGINT NOT NULL,   -- as stored at the gateway
    first_seq BIGINT, last_seq BIGINT, reported_ms BIGINT NOT NULL,
    PRIMARY KEY (device, epoch, day)
);
CREATE TABLE users (
    id {id},
    username TEXT NOT NULL UNIQUE, name TEXT NOT NULL, pw_hash TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('province', 'city', 'hall')),
    scope TEXT,                              -- city: the city's name; hall: the hall id; province: NULL
    disabled BIGINT NOT NULL DEFAULT 0,
    session_gen BIGINT NOT NULL DEFAULT 0,   -- bumped to end every session of the user
    created_ms BIGINT NOT NULL
);
CREATE TABLE audit_log (
    id {id},
    ms BIGINT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT, detail TEXT NOT NULL
);
CREATE TABLE api_clients (
    id {id},
    name TEXT NOT NULL UNIQUE, token_hash {blob} NOT NULL UNIQUE,
    created_ms BIGINT NOT NULL, created_by TEXT NOT NULL, revoked_ms BIGINT
)
"""


def _backfill_days(conn: Conn, tz: ZoneInfo) -> None:
    """Rows stored before the day columns existed get their day (in the province's zone)."""
    rows = conn.all("SELECT id, press_s, received_ms FROM ratings WHERE day IS NULL")
    conn.executemany("UPDATE ratings SET day = ? WHERE id = ?",
                     [(rating_day(p, r, tz), i) for i, p, r in rows])
    rows = conn.all("SELECT id, opened_ms FROM prompts WHERE day IS NULL")
    conn.executemany("UPDATE prompts SET day = ? WHERE id = ?",
                     [(rating_day(None, o, tz), i) for i, o in rows])


# The columns a held row shares with a rating.
_SHARED = ('hall, device, epoch, seq, kind, score, scale, prompt, press_s, delay_ms, boot, "window", clerk,'
           " service, txn, prompt_ms, received_ms, stored_ms, batch_hall, batch_id, cose, digest")
_HELD_FROM_RATING = (f"INSERT INTO held ({_SHARED}, reason, detail, day)"
                     f" SELECT {_SHARED}, 'prompt-reused', ?, day FROM ratings WHERE id = ?"
                     " ON CONFLICT (digest) DO NOTHING")


def _one_outcome_per_prompt(conn: Conn, _tz: ZoneInfo) -> None:
    """A prompt has one outcome, as a constraint: two receivers racing with two outcomes for one prompt
    (a gateway's doing) then leave one, and the other is held when its transaction is retried. Outcomes
    stored before the rule (a second one for a prompt) are moved to ``held`` as 'prompt-reused', kept,
    not counted, so the unique index can be built without dropping a row."""
    later = conn.all("SELECT r.id, r.hall, r.prompt FROM ratings r WHERE r.prompt > 0 AND EXISTS (SELECT 1"
                     " FROM ratings o WHERE o.hall = r.hall AND o.prompt = r.prompt AND o.id < r.id)"
                     " ORDER BY r.id")
    for rid, hall, prompt in later:
        conn.execute(_HELD_FROM_RATING, (f"schema 3: prompt {prompt} of hall {hall} already had an outcome"
                                         " when one outcome per prompt became the rule", rid))
        conn.execute("DELETE FROM ratings WHERE id = ?", (rid,))
    if later:
        log.warning("schema 3: %d second outcome(s) of a prompt moved to held (prompt-reused)", len(later))
    conn.execute("CREATE UNIQUE INDEX ratings_one_outcome ON ratings (hall, prompt) WHERE prompt > 0")

# The supervision loop (issue 13): alerts and their deliveries, cases (通报 -> 整改 -> 复核 -> 关闭), appeals,
# integrity flags, business hours per hall and the working-day calendar's corrections, assessment weights.
# Every rating stored from now on is queued by a trigger (in its own transaction, whatever inserts it) for
# the supervisor, which opens its case, raises its alerts and flags and dequeues it in one transaction:
# exactly once. Ratings stored before this step are not queued: a case for last year's rating would be
# overdue the moment it opened.
SUPERVISION = """
CREATE TABLE supervision_queue (
    rating BIGINT PRIMARY KEY,               -- ratings.id stored and not yet looked at by the supervisor
    queued_ms BIGINT NOT NULL
);
CREATE TABLE hall_hours (                    -- 统一营业时间; a hall without a row has the default hours
    hall TEXT PRIMARY KEY,
    days TEXT NOT NULL,                      -- "mon-sat", "mon,tue,..."; working-day calendar applied on top
    open TEXT NOT NULL, close TEXT NOT NULL, -- "08:30", "17:30", the province's zone
    changed_ms BIGINT NOT NULL, changed_by TEXT NOT NULL
);
CREATE TABLE calendar_days (                 -- corrections to chinese-calendar, or years it has no data for
    day TEXT PRIMARY KEY,                    -- YYYY-MM-DD
    workday BIGINT NOT NULL,                 -- 1: a working day (调休 make-up day), 0: a holiday
    name TEXT NOT NULL, changed_ms BIGINT NOT NULL, changed_by TEXT NOT NULL
);
CREATE TABLE alert_rules (
    kind TEXT PRIMARY KEY,                   -- dissatisfied, negative-share, offline, silent, stuck-key, ...
    enabled BIGINT NOT NULL DEFAULT 1,
    params TEXT NOT NULL,                    -- JSON, per kind (share, min_count, window_s, level, ...)
    escalate_s BIGINT NOT NULL,              -- not acknowledged this long: escalated to the next level
    changed_ms BIGINT NOT NULL, changed_by TEXT NOT NULL
);
CREATE TABLE alerts (
    id {id},
    kind TEXT NOT NULL, hall TEXT NOT NULL, device TEXT, "window" TEXT,
    rating BIGINT,                           -- ratings.id, for an alert raised by one rating
    dedup TEXT NOT NULL,                     -- one alert not cleared per key (kind, hall, subject)
    state TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'acked', 'cleared')),
    detail TEXT NOT NULL,
    raised_ms BIGINT NOT NULL, last_ms BIGINT NOT NULL, repeats BIGINT NOT NULL DEFAULT 0,
    acked_ms BIGINT, acked_by TEXT, cleared_ms BIGINT,
    level BIGINT NOT NULL DEFAULT 0,         -- 0 hall, 1 city, 2 province: raised by escalation
    escalated_ms BIGINT
);
CREATE UNIQUE INDEX alerts_one_open ON alerts (dedup) WHERE state <> 'cleared';
CREATE INDEX alerts_hall ON alerts (hall, state);
CREATE TABLE alert_events (                  -- the durable queue the notification threads walk
    id {id},
    alert BIGINT NOT NULL, event TEXT NOT NULL CHECK (event IN ('raised', 'escalated', 'cleared')),
    level BIGINT NOT NULL, ms BIGINT NOT NULL
);
CREATE TABLE notify_targets (
    target TEXT PRIMARY KEY,                 -- sha256 of the apprise URL (never the URL: it holds secrets)
    since_event BIGINT NOT NULL
);
CREATE TABLE notify_deliveries (
    target TEXT NOT NULL, event BIGINT NOT NULL,
    tries BIGINT NOT NULL, next_ms BIGINT, sent_ms BIGINT,
    PRIMARY KEY (target, event)
);
CREATE TABLE cases (
    id {id},
    hall TEXT NOT NULL,
    rating BIGINT UNIQUE,                    -- ratings.id of the dissatisfied rating; NULL: opened by hand
    source TEXT NOT NULL CHECK (source IN ('rating', 'manual')),
    title TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'notified'
        CHECK (state IN ('notified', 'rectifying', 'review', 'closed')),
    opened_ms BIGINT NOT NULL, opened_by TEXT NOT NULL,
    deadline TEXT NOT NULL,                  -- YYYY-MM-DD: 15 working days after the day it was opened
    callback_ms BIGINT, callback_by TEXT, callback_outcome TEXT,   -- 回访
    cause TEXT, measures TEXT, submitted_ms BIGINT, submitted_by TEXT,
    reviewed_ms BIGINT, reviewed_by TEXT, review_note TEXT,
    closed_ms BIGINT, on_time BIGINT,        -- closed by the deadline (1) or after it (0)
    overdue_ms BIGINT                        -- when it was found overdue and escalated
);
CREATE INDEX cases_hall ON cases (hall, state);
CREATE TABLE case_events (
    id {id},
    case_id BIGINT NOT NULL, ms BIGINT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX case_events_case ON case_events (case_id);
CREATE TABLE appeals (
    id {id},
    rating BIGINT NOT NULL, hall TEXT NOT NULL,
    reason TEXT NOT NULL CHECK (reason IN ('misoperation', 'malicious', 'not-our-customer')),
    evidence TEXT NOT NULL,
    filed_ms BIGINT NOT NULL, filed_by TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'upheld', 'rejected')),
    decided_ms BIGINT, decided_by TEXT, decision TEXT
);
CREATE UNIQUE INDEX appeals_one_open ON appeals (rating) WHERE state <> 'rejected';
CREATE TABLE flags (
    id {id},
    kind TEXT NOT NULL,                      -- fast-press, invite-pattern, txn-reused, one-key
    hall TEXT NOT NULL, device TEXT, clerk TEXT,
    dedup TEXT NOT NULL UNIQUE,
    why TEXT NOT NULL,
    ratings TEXT NOT NULL,                   -- JSON list of ratings.id
    raised_ms BIGINT NOT NULL,
    state TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'dismissed', 'confirmed')),
    reviewed_ms BIGINT, reviewed_by TEXT, note TEXT
);
CREATE TABLE assessment_weights (
    version {id},
    weights TEXT NOT NULL,                   -- JSON object: part name -> weight
    min_sample BIGINT NOT NULL,
    created_ms BIGINT NOT NULL, created_by TEXT NOT NULL, note TEXT NOT NULL
)
"""


def _supervision_triggers(conn: Conn, _tz: ZoneInfo) -> None:
    """Triggers (their bodies hold ';', so not in the SQL text): each new rating queued for the supervisor;
    a case, its history and an appeal never deleted, refused by the database itself."""
    if conn.dialect == "sqlite":
        conn.execute("CREATE TRIGGER ratings_supervised AFTER INSERT ON ratings BEGIN"
                     " INSERT INTO supervision_queue (rating, queued_ms) VALUES (NEW.id, NEW.stored_ms); END")
    else:
        conn.execute("CREATE FUNCTION ratings_supervised() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN"
                     " INSERT INTO supervision_queue (rating, queued_ms) VALUES (NEW.id, NEW.stored_ms);"
                     " RETURN NULL; END$$")
        conn.execute("CREATE TRIGGER ratings_supervised AFTER INSERT ON ratings"
                     " FOR EACH ROW EXECUTE FUNCTION ratings_supervised()")
    for table in ("cases", "case_events", "appeals"):
        if conn.dialect == "sqlite":
            conn.execute(f"CREATE TRIGGER {table}_never_deleted BEFORE DELETE ON {table}"
                         f" BEGIN SELECT RAISE(ABORT, '{table} rows are never deleted'); END")
        else:
            conn.execute(f"CREATE FUNCTION {table}_never_deleted() RETURNS trigger LANGUAGE plpgsql AS"
                         f" $$BEGIN RAISE EXCEPTION '{table} rows are never deleted'; END$$")
            conn.execute(f"CREATE TRIGGER {table}_never_deleted BEFORE DELETE ON {table}"
                         f" FOR EACH ROW EXECUTE FUNCTION {table}_never_deleted()")



MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "ratings, prompts, batches, quarantine, alarms", BASE),
    Migration(2, "the provincial platform", PLATFORM, _backfill_days),
    Migration(3, "one outcome per prompt", python=_one_outcome_per_prompt),
    Migration(4, "the supervision loop", SUPERVISION, _supervision_triggers),
)


def _statements(sql: str) -> list[str]:
    # Comments first: a ';' inside one would split a statement.
    lines = [ln.split("--", 1)[0] for ln in sql.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def current_version(conn: Conn) -> int:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY,"
                 " name TEXT NOT NULL, applied_ms BIGINT NOT NULL)")
    v = conn.scalar("SELECT MAX(version) FROM schema_migrations")
    return int(v or 0)


def upgrade(db: Database, tz: ZoneInfo | None = None,
            migrations: tuple[Migration, ...] = MIGRATIONS) -> list[int]:
    """Apply every migration not applied yet; return the versions applied now."""
    tz = tz or ZoneInfo(DEFAULT_TZ)
    latest = migrations[-1].version
    done: list[int] = []
    with db.connect() as conn:
        conn.begin()
        try:
            if conn.dialect == "postgres":
                conn.execute("SELECT pg_advisory_xact_lock(?)", (_LOCK_KEY,))
            have = current_version(conn)
            if have > latest:
                raise SchemaError(f"{db.display()} is at schema {have}, newer than this program's {latest}:"
                                  " upgrade the program, not the database")
            for m in migrations:
                if m.version <= have:
                    continue
                for stmt in _statements(db.ddl(m.sql)):
                    conn.execute(stmt)
                if m.python is not None:
                    m.python(conn, tz)
                conn.execute("INSERT INTO schema_migrations (version, name, applied_ms) VALUES (?, ?, ?)",
                             (m.version, m.name, wall_ms()))
                done.append(m.version)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
    if done:
        log.info("%s: schema upgraded to %d (%s)", db.display(), latest, ", ".join(map(str, done)))
    return done
