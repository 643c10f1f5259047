"""Every alarm raise and clear pushed to the hall's people through apprise (WeCom, DingTalk, mail, webhooks).

The queue is durable: ``Store.raise_alarm``/``clear_alarms`` write an ``alarm_events`` row in the alarm's
own transaction, and each configured URL (a *target*) has its own thread that walks those events in order
and records each delivery in ``notify_deliveries``. A receiver that is down only delays its own target:
the event is retried with a doubling backoff, across gateway restarts, until it is delivered. A target
added to the config starts with the events after it was added (not the whole history).

URLs carry secrets (tokens, passwords): only their scheme and host are ever logged, and the database
keys a target by a digest of its URL.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import apprise

from countersign.common.notifyurl import safe_url, target_id

from .store import Store
from .watch import Watch

log = logging.getLogger("countersign.gateway.notify")

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS notify_targets (
        target TEXT PRIMARY KEY,         -- sha256 of the URL (never the URL: it holds secrets)
        since_event INTEGER NOT NULL     -- events after this one are this target's to deliver
    )""",
    """CREATE TABLE IF NOT EXISTS notify_deliveries (
        target TEXT NOT NULL, event INTEGER NOT NULL,
        tries INTEGER NOT NULL, next_ms INTEGER, sent_ms INTEGER,
        PRIMARY KEY (target, event)
    )""",
)

KIND_ZH = {
    "offline": "键盘离线", "silent": "营业时间无评价", "stuck-key": "卡键", "outbox-full": "待发送将满",
    "storage": "存储空间不足", "backlog": "上传积压", "security": "安全告警",
    "quarantine-flood": "异常消息过多", "province-rejected": "省平台拒收",
}


@dataclass(frozen=True)
class Event:
    id: int
    event: str          # 'raised' | 'cleared'
    ms: int
    kind: str
    device: str | None
    detail: str
    tries: int
    next_ms: int | None


class Notifier:
    def __init__(self, store: Store, urls: tuple[str, ...], hall: str, tz: ZoneInfo,
                 now_ms: Callable[[], int], retry_s: float, retry_max_s: float) -> None:
        self.store, self.urls, self.hall, self.tz, self.now_ms = store, urls, hall, tz, now_ms
        self.retry_ms, self.retry_max_ms = int(retry_s * 1000), int(retry_max_s * 1000)
        self._stop = threading.Event()
        self._wake = [threading.Event() for _ in urls]
        self._names = [f"notify-{i + 1}" for i in range(len(urls))]
        self._watch: Watch | None = None
        with store.transaction() as c:
            for stmt in SCHEMA:
                c.execute(stmt)
            (last,) = c.execute("SELECT coalesce(max(id), 0) FROM alarm_events").fetchone()
            for url in urls:
                c.execute("INSERT OR IGNORE INTO notify_targets (target, since_event) VALUES (?, ?)",
                          (target_id(url), last))

    def start(self, watch: Watch) -> None:
        self._watch = watch
        for i, url in enumerate(self.urls):
            watch.spawn(self._names[i], lambda i=i, url=url: self._run(i, url))   # type: ignore[misc]

    def stop(self) -> None:
        if self._watch is not None:
            for name in self._names:
                self._watch.retire(name)
        self._stop.set()
        for w in self._wake:
            w.set()

    def wake(self) -> None:
        """New events may be queued (after an alarm pass)."""
        for w in self._wake:
            w.set()

    def pending(self) -> int:
        """Events not yet delivered, summed over the targets (the page and the tests)."""
        with self.store.read() as c:
            return sum(len(_undelivered(c, target_id(u), 1_000_000)) for u in self.urls)

    # --- one target's thread ------------------------------------------------------------------------------

    def _run(self, i: int, url: str) -> None:
        target, shown = target_id(url), safe_url(url)
        ap = apprise.Apprise()
        if not ap.add(url):
            # A URL apprise cannot parse never becomes deliverable: say so once and leave the others be.
            log.error("alarms.notify: %s is not a URL apprise understands; nothing is sent to it", shown)
            self._stop.wait()
            return
        wake = self._wake[i]
        while not self._stop.is_set():
            with self.store.read() as c:
                queue = _undelivered(c, target, 1)
            if not queue:
                wake.wait()
                wake.clear()
                continue
            ev = queue[0]
            now = self.now_ms()
            if ev.next_ms is not None and ev.next_ms > now:
                wake.wait((ev.next_ms - now) / 1000)
                wake.clear()
                continue
            ok = self._send(ap, ev, shown)
            self._record(target, ev, ok, shown)

    def _send(self, ap: apprise.Apprise, ev: Event, shown: str) -> bool:
        what = KIND_ZH.get(ev.kind, ev.kind)
        when = dt.datetime.fromtimestamp(ev.ms / 1000, self.tz).strftime("%Y-%m-%d %H:%M:%S")
        if ev.event == "raised":
            title = f"[{self.hall}] 告警：{what}" + (f"（{ev.device}）" if ev.device else "")
            body = f"{when} {what}: {ev.detail}"
            kind = apprise.NotifyType.FAILURE
        else:
            title = f"[{self.hall}] 已恢复：{what}" + (f"（{ev.device}）" if ev.device else "")
            body = f"{when} 已恢复: {ev.detail}"
            kind = apprise.NotifyType.SUCCESS
        try:
            return bool(ap.notify(title=title, body=body, notify_type=kind))
        except OSError as exc:       # apprise catches its plugins' errors; a socket error is still one
            log.warning("alarm notification to %s failed: %s", shown, type(exc).__name__)
            return False

    def _record(self, target: str, ev: Event, ok: bool, shown: str) -> None:
        now = self.now_ms()
        tries = ev.tries + 1
        if ok:
            next_ms, sent = None, now
            log.info("alarm %s %s pushed to %s", ev.kind, ev.event, shown)
        else:
            next_ms, sent = now + min(self.retry_max_ms, self.retry_ms * 2 ** min(tries - 1, 20)), None
            log.warning("alarm %s %s not delivered to %s (try %d); retrying in %.0f s", ev.kind, ev.event,
                        shown, tries, (next_ms - now) / 1000)
        with self.store.transaction() as c:
            c.execute("INSERT INTO notify_deliveries (target, event, tries, next_ms, sent_ms)"
                      " VALUES (?,?,?,?,?) ON CONFLICT (target, event) DO UPDATE SET tries=excluded.tries,"
                      " next_ms=excluded.next_ms, sent_ms=excluded.sent_ms",
                      (target, ev.id, tries, next_ms, sent))


def _undelivered(c: sqlite3.Connection, target: str, limit: int) -> list[Event]:
    rows = c.execute(
        "SELECT e.id, e.event, e.ms, a.kind, a.device, a.detail, coalesce(d.tries, 0), d.next_ms"
        " FROM alarm_events e JOIN alarms a ON a.id = e.alarm"
        " JOIN notify_targets t ON t.target = ?"
        " LEFT JOIN notify_deliveries d ON d.target = t.target AND d.event = e.id"
        " WHERE e.id > t.since_event AND d.sent_ms IS NULL ORDER BY e.id LIMIT ?", (target, limit)).fetchall()
    return [Event(*r) for r in rows]
