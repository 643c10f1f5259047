"""Every alert raised, escalated and cleared pushed to the people responsible through apprise (WeCom/
企业微信, DingTalk, e-mail, webhooks), as gateway/notify.py does for a hall's alarms, on the province's
database (SQLite or PostgreSQL).

The queue is durable: alerts.py writes an ``alert_events`` row in the alert's own transaction (the
supervisor's pass), and each configured target (``[[notify]]`` in the province TOML: a URL, the halls it
is for, the escalation levels it receives) has its own thread that walks the events in order and records
each delivery in ``notify_deliveries``. A receiver that is down only delays its own target: the event is
retried with a doubling backoff, across restarts, until it is delivered. A target added to the config
starts with the events after it was added (not the whole history).

Several receiver processes share one database, and each runs these threads: before sending, a thread
claims the event (an upsert that succeeds for one of them only, leaving a lease in ``next_ms``), so an
alert reaches a target once, not once per process. A process that dies mid-send leaves a lease that
expires and the event is sent again (at least once, never lost). After each delivery the target's
``since_event`` moves up to it (the events before it are all done), so the look-up stays short.

Which events a target receives: a raise or an escalation at one of its levels, and the clearing of an
alert that reached one of its levels (a city office that was told of an escalated alert is told it ended).

URLs carry secrets (tokens, passwords): only their scheme and host are ever logged, and the database keys
a target by a digest of its URL.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import apprise

from countersign.common.clock import wall_ms
from countersign.common.notifyurl import safe_url, target_id

from . import hours
from .alerts import KIND_ZH, LEVEL_ZH
from .config import NotifyTarget
from .db import Conn, Database, DatabaseError

log = logging.getLogger("countersign.province.notify")

__all__ = ["Event", "Notifier", "safe_url", "target_id"]

LEASE_MS = 120_000          # a claimed event another process may take over after this (its sender died)


@dataclass(frozen=True)
class Event:
    id: int
    event: str          # 'raised' | 'escalated' | 'cleared'
    level: int
    ms: int
    alert: int
    kind: str
    hall: str
    hall_name: str
    device: str | None
    detail: str
    tries: int
    next_ms: int | None

    def message(self, tz: ZoneInfo) -> tuple[str, str, apprise.NotifyType]:
        what = KIND_ZH.get(self.kind, self.kind)
        when = hours.local(self.ms, tz).strftime("%Y-%m-%d %H:%M:%S")
        where = f"[{self.hall_name}]" + (f"（{self.device}）" if self.device else "")
        if self.event == "raised":
            title, kind = f"{where} 告警 Alert：{what}", apprise.NotifyType.FAILURE
        elif self.event == "escalated":
            to = LEVEL_ZH.get(self.level, str(self.level))
            title = f"{where} 告警升级至{to} Escalated (not acknowledged)：{what}"
            kind = apprise.NotifyType.WARNING
        else:
            title, kind = f"{where} 已恢复 Cleared：{what}", apprise.NotifyType.SUCCESS
        body = f"{when} 告警 alert #{self.alert} {self.hall}: {self.detail}"
        return title, body, kind


def _filter(t: NotifyTarget) -> tuple[str, list[object]]:
    where, args = t.scope.sql("a.hall")
    marks = ",".join("?" for _ in t.levels)
    cond = (f"((e.event <> 'cleared' AND e.level IN ({marks})) OR (e.event = 'cleared' AND e.level >= ?))"
            f"{where}")
    return cond, [*t.levels, min(t.levels), *args]


def _undelivered(conn: Conn, t: NotifyTarget, limit: int) -> list[Event]:
    cond, args = _filter(t)
    rows = conn.all(
        "SELECT e.id, e.event, e.level, e.ms, a.id, a.kind, a.hall, COALESCE(h.name, a.hall), a.device,"
        " a.detail, COALESCE(d.tries, 0), d.next_ms"
        " FROM alert_events e JOIN alerts a ON a.id = e.alert LEFT JOIN halls h ON h.hall = a.hall"
        " JOIN notify_targets t ON t.target = ?"
        " LEFT JOIN notify_deliveries d ON d.target = t.target AND d.event = e.id"
        f" WHERE e.id > t.since_event AND d.sent_ms IS NULL AND {cond} ORDER BY e.id LIMIT ?",
        [target_id(t.url), *args, limit])
    return [Event(int(r[0]), str(r[1]), int(r[2]), int(r[3]), int(r[4]), str(r[5]), str(r[6]), str(r[7]),
                  None if r[8] is None else str(r[8]), str(r[9]), int(r[10]),
                  None if r[11] is None else int(r[11])) for r in rows]


class Notifier:
    """One thread per target; ``wake()`` after a supervisor pass pushes its events at once.

    ``now_ms`` is the wall clock by default whatever clock the province runs on: retries and leases
    are about real time passing (a receiver coming back), shared by every process on the database."""

    def __init__(self, db: Database, targets: Sequence[NotifyTarget], tz: ZoneInfo, *,
                 now_ms: Callable[[], int] = wall_ms, retry_s: float = 5.0,
                 retry_max_s: float = 600.0) -> None:
        self.db, self.targets, self.tz, self.now_ms = db, tuple(targets), tz, now_ms
        self.retry_ms, self.retry_max_ms = max(1, int(retry_s * 1000)), int(retry_max_s * 1000)
        self._stop = threading.Event()
        self._wake = [threading.Event() for _ in self.targets]
        self._threads: list[threading.Thread] = []
        self._cond = threading.Condition()
        self._gen = 0
        self._idle = [0 for _ in self.targets]       # the wake-up generation each thread last found empty
        self.sent = 0

    def start(self) -> Notifier:
        """Register the targets (a new one starts after the events already queued) and start the threads.
        The database is the province's, already upgraded."""
        if not self.targets:
            return self
        with self.db.connect() as conn, conn.transaction():
            last = int(conn.scalar("SELECT COALESCE(MAX(id), 0) FROM alert_events"))
            for t in self.targets:
                conn.execute("INSERT INTO notify_targets (target, since_event) VALUES (?, ?)"
                             " ON CONFLICT (target) DO NOTHING", (target_id(t.url), last))
        self._stop.clear()
        for i, t in enumerate(self.targets):
            th = threading.Thread(target=self._run, args=(i, t), name=f"notify-{i + 1}", daemon=True)
            th.start()
            self._threads.append(th)
        return self

    def stop(self) -> None:
        self._stop.set()
        for w in self._wake:
            w.set()
        for th in self._threads:
            th.join(15)
        self._threads = []

    def wake(self) -> None:
        """New events may be queued (after a supervisor pass)."""
        with self._cond:
            self._gen += 1
        for w in self._wake:
            w.set()

    def wait_idle(self, timeout: float) -> bool:
        """Until every target's thread has found nothing left to send since this call (tests)."""
        self.wake()
        with self._cond:
            gen = self._gen
            return self._cond.wait_for(lambda: all(g >= gen for g in self._idle), timeout)

    def pending(self) -> int:
        """Events not yet delivered, summed over the targets (pages and tests)."""
        with self.db.connect() as conn:
            return sum(len(_undelivered(conn, t, 1_000_000)) for t in self.targets)

    # --- one target's thread ------------------------------------------------------------------------------

    def _set_idle(self, i: int, gen: int) -> None:
        with self._cond:
            self._idle[i] = max(self._idle[i], gen)
            self._cond.notify_all()

    def _run(self, i: int, t: NotifyTarget) -> None:
        shown = safe_url(t.url)
        ap = apprise.Apprise()
        if not ap.add(t.url):
            # A URL apprise cannot parse never becomes deliverable: say so once and leave the others be.
            log.error("alerts.notify: %s is not a URL apprise understands; nothing is sent to it", shown)
            self._set_idle(i, 1 << 62)
            return
        wake, delay = self._wake[i], 0.5
        conn: Conn | None = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = self.db.connect()
                with self._cond:
                    gen = self._gen
                queue = _undelivered(conn, t, 1)
                if not queue:
                    self._set_idle(i, gen)
                    wake.wait()
                    wake.clear()
                    continue
                ev = queue[0]
                now = self.now_ms()
                if ev.next_ms is not None and ev.next_ms > now:
                    wake.wait((ev.next_ms - now) / 1000)
                    wake.clear()
                    continue
                if not self._claim(conn, t, ev, now):
                    continue                           # another receiver process is sending it
                ok = self._send(ap, ev, shown)
                self._record(conn, t, ev, ok, shown)
                delay = 0.5
            except DatabaseError as exc:
                # The database is down or busy: the events wait in it; never end the thread.
                log.error("alerts.notify %s: database error (%s); retrying in %.1fs", shown,
                          type(exc).__name__, delay)
                if conn is not None:
                    with contextlib.suppress(*DatabaseError):
                        conn.close()
                    conn = None
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)

        if conn is not None:
            conn.close()

    def _claim(self, conn: Conn, t: NotifyTarget, ev: Event, now: int) -> bool:
        row = conn.one("INSERT INTO notify_deliveries (target, event, tries, next_ms, sent_ms)"
                       " VALUES (?, ?, 0, ?, NULL) ON CONFLICT (target, event) DO UPDATE"
                       " SET next_ms = excluded.next_ms WHERE notify_deliveries.sent_ms IS NULL"
                       " AND (notify_deliveries.next_ms IS NULL OR notify_deliveries.next_ms <= ?)"
                       " RETURNING tries", (target_id(t.url), ev.id, now + LEASE_MS, now))
        return row is not None

    def _send(self, ap: apprise.Apprise, ev: Event, shown: str) -> bool:
        title, body, kind = ev.message(self.tz)
        try:
            return bool(ap.notify(title=title, body=body, notify_type=kind))
        except OSError as exc:
            # apprise catches its plugins' errors, but a socket error still escapes now and then: it is
            # one failed try, retried, never the end of this target's thread (as gateway/notify.py).
            log.warning("alert notification to %s failed: %s", shown, type(exc).__name__)
            return False

    def _record(self, conn: Conn, t: NotifyTarget, ev: Event, ok: bool, shown: str) -> None:
        now = self.now_ms()
        tries = ev.tries + 1
        if ok:
            next_ms, sent = None, now
            log.info("alert #%d %s %s pushed to %s", ev.alert, ev.kind, ev.event, shown)
        else:
            next_ms, sent = now + min(self.retry_max_ms, self.retry_ms * 2 ** min(tries - 1, 20)), None
            log.warning("alert #%d %s %s not delivered to %s (try %d); retrying in %.1f s", ev.alert, ev.kind,
                        ev.event, shown, tries, (next_ms - now) / 1000)
        conn.execute("UPDATE notify_deliveries SET tries = ?, next_ms = ?, sent_ms = ? WHERE target = ?"
                     " AND event = ?", (tries, next_ms, sent, target_id(t.url), ev.id))
        if ok:
            # The events are walked in order, so every one up to this is done for this target: the next
            # look starts after it, not at the first event the target ever had (a year of them).
            conn.execute("UPDATE notify_targets SET since_event = ? WHERE target = ? AND since_event < ?",
                         (ev.id, target_id(t.url), ev.id))
            with self._cond:
                self.sent += 1
                self._cond.notify_all()
