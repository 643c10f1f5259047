"""Store-and-forward from the hall gateway to the province: signed batches, kept until the province acks.

How a rating travels (DESIGN-BRIEF invariant 1: nothing is lost, nothing is aged out):

1. The store (store.py) calls ``enqueue(conn, entry)`` inside the same transaction that stores the rating
   (or opens the prompt), so a committed rating is always in ``uplink_entries``; a rolled-back one never
   is. The queue's tables and SQL are the store's; this module is the thread that empties it.
2. The forwarder thread, woken by ``wake()``, takes the oldest unbatched entries in one transaction,
   builds a ``batch.Batch``, signs it (COSE_Sign1, Ed25519, kid = hall id) and stores the signed bytes in
   ``batches`` while marking the entries with the batch id. From then on the batch is a fixed byte
   string: every resend is exactly the same bytes, so the province's dedup on (hall, batch id) holds.
3. Unacked batches are published QoS1 to ``cs/1/h/<hall>/batch``, oldest first, at most ``max_inflight``
   of them outstanding, and resent after ``retry_s`` and after every reconnect, forever. A broker PUBACK
   means nothing here; only the province's signed ``BatchAck`` (verified with the pinned province key,
   hall checked) marks a batch acked. A forged or malformed ack is counted, logged and ignored.

The thread is woken by an Event (``wake()``, a (re)connect, an incoming ack, the retry deadline); it
never polls. All SQLite work happens on the forwarder thread's own connection (WAL, synchronous=FULL),
except ``backlog()``, which reads through a second, lock-guarded connection so any thread may call it.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from countersign.common.clock import wall_ms
from countersign.common.db import open_db
from countersign.common.mqtt import Handlers, Options, make_client
from countersign.protocol import batch, cose, keystore, limits, topics
from countersign.protocol.errors import ProtocolError

from .reports import ReportConfig, Reporter, init_report_schema
from .store import HELD_BATCH_ID, init_uplink_schema, uplink_backlog
from .watch import Watch

log = logging.getLogger(__name__)

PROVINCE_KID = b"province"

# Part names in the gateway's watch.
THREAD = "forwarder"
MQTT_LOOP = "uplink-mqtt"

def _no_alarm(kind: str, detail: str) -> None:
    del kind, detail


def _public_key(raw: bytes | str) -> Ed25519PublicKey:
    if isinstance(raw, str):   # the gateway's TOML config holds it as hex
        try:
            raw = bytes.fromhex(raw)
        except ValueError as exc:
            raise ValueError("province_public_key must be 32 bytes or 64 hex digits") from exc
    if len(raw) != 32:
        raise ValueError(f"province_public_key must be 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


@dataclass
class ForwarderConfig:
    db_path: Path
    hall: str
    signing_key_path: Path
    province_public_key: bytes | str        # 32 raw bytes (or 64 hex digits)
    uplink_host: str
    uplink_port: int
    uplink_password: str
    batch_size: int = 500
    retry_s: float = 10.0
    backlog_threshold: int = 10_000
    max_inflight: int = 8
    now_ms: Callable[[], int] = wall_ms
    # Called on the forwarder thread. Kinds: 'backlog', 'backlog-cleared', 'province-rejected',
    # 'uplink-held' (an entry could not be read back), 'forwarder-failed' (the thread died).
    on_alarm: Callable[[str, str], None] = _no_alarm
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    keepalive_s: int = 30
    # The gateway's own reports (reports.py: keypad status, backlog, day counts, enrollment notices),
    # made on this thread; None sends none. Needs the gateway store's tables in the same database.
    reports: ReportConfig | None = None

    def check(self) -> None:
        topics.check_id(self.hall, "hall id")
        if not 1 <= self.batch_size <= limits.MAX_BATCH_ENTRIES:
            raise ValueError(f"batch_size must be 1..{limits.MAX_BATCH_ENTRIES}, got {self.batch_size}")
        if self.retry_s <= 0 or self.max_inflight < 1 or self.backlog_threshold < 0:
            raise ValueError("retry_s must be > 0, max_inflight >= 1, backlog_threshold >= 0")


@dataclass
class _Stats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: dict[str, int] = field(default_factory=dict)

    def inc(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] = self.counts.get(name, 0) + n

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.counts)


_STAT_NAMES = (
    "batches_created", "batches_sent", "batches_resent", "batches_acked", "entries_acked",
    "entries_rejected", "entries_held",
    "acks_received", "acks_rejected",  # acks_rejected = acks_bad + acks_wrong_hall + acks_unknown_batch
    "acks_bad", "acks_wrong_hall", "acks_unknown_batch", "acks_duplicate", "acks_count_mismatch",
    "publish_failed", "connects", "disconnects", "connect_refused", "db_busy", "reports_failed",
)


class Forwarder:
    """One hall's uplink. Several may run in one process (each with its own client, DB and thread)."""

    def __init__(self, cfg: ForwarderConfig) -> None:
        cfg.check()
        self.cfg = cfg
        self._signing_key = keystore.load_signing_key(cfg.signing_key_path)
        self._province_key = _public_key(cfg.province_public_key)
        self._topic_batch = topics.hall_batch(cfg.hall)
        self._topic_ack = topics.hall_ack(cfg.hall)
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._acks: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._connected = False
        self._new_connection = False          # set by on_connect: everything unacked is due again
        self._changed = threading.Condition()  # notified after every round (for wait_until)
        self._stats = _Stats(counts={n: 0 for n in _STAT_NAMES})
        self._backlog_alarmed = False
        self._reporter = None if cfg.reports is None else Reporter(cfg.reports, cfg.now_ms)
        self._thread: threading.Thread | None = None
        self._watch: Watch | None = None
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()
        self._client = self._make_client()

    # ---- public API ----------------------------------------------------------------------------------

    def start(self, watch: Watch | None = None) -> None:
        """With the gateway's ``watch``, the forwarder's thread and its MQTT loop ending is fatal to it."""
        if self._thread is not None:
            raise RuntimeError("forwarder already started")
        # Create the tables here (not only on the thread) so a bad db path fails start(), loudly.
        conn = open_db(self.cfg.db_path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            init_uplink_schema(conn)
            if self._reporter is not None:
                init_report_schema(conn)
            conn.execute("COMMIT")
        finally:
            conn.close()
        self._stopping.clear()
        self._watch = watch
        if watch is not None:
            self._thread = watch.spawn(THREAD, self._run)
        else:
            self._thread = threading.Thread(target=self._run, name=f"forward-{self.cfg.hall}", daemon=True)
            self._thread.start()
        # connect_async + loop_start: the gateway starts even when the province is unreachable, and paho
        # reconnects with backoff for as long as it runs.
        self._client.connect_async(self.cfg.uplink_host, self.cfg.uplink_port, keepalive=self.cfg.keepalive_s)
        self._client.loop_start()
        if watch is not None:
            watch.adopt(MQTT_LOOP, self._client._thread)

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.retire(MQTT_LOOP)
            self._watch.retire(THREAD)
        self._stopping.set()
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
        self._client.disconnect()
        self._client.loop_stop()
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def wake(self) -> None:
        """Something was committed to uplink_entries: form and send batches now."""
        self._wakeup.set()

    def backlog(self) -> int:
        """Entries not yet acked by the province (unbatched, in unacked batches, or held)."""
        with self._reader_lock:
            if self._reader is None:
                self._reader = open_db(self.cfg.db_path, check_same_thread=False)
            return uplink_backlog(self._reader)

    def stats(self) -> dict[str, int]:
        s = self._stats.snapshot()
        with self._lock:
            s["connected"] = int(self._connected)
        s["backlog_alarm"] = int(self._backlog_alarmed)
        thread = self._thread
        s["running"] = int(thread is not None and thread.is_alive())
        return s

    @property
    def connected(self) -> bool:
        with self._lock:
            return self._connected

    def wait_until(self, predicate: Callable[[Forwarder], bool], timeout: float) -> bool:
        """Block until ``predicate(self)`` holds, re-checked after every forwarder round (for tests/tools)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 1.0))
        return True

    # ---- MQTT (paho's network thread) ----------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        hall = self.cfg.hall
        # Persistent session: acks the province publishes while we are away are queued for us. Jitter:
        # every hall of the province comes back at once after a provincial broker restart.
        return make_client(
            Options(client_id=hall, username=hall, password=self.cfg.uplink_password, clean_session=False,
                    reconnect_min_s=self.cfg.reconnect_min_s, reconnect_max_s=self.cfg.reconnect_max_s,
                    max_inflight=max(20, self.cfg.max_inflight * 2)),
            Handlers(connected=self._on_connect, refused=self._on_refused, disconnected=self._on_disconnect,
                     message=self._on_message))

    def _on_refused(self, reason: str) -> None:
        self._stats.inc("connect_refused")
        log.error("hall %s: uplink broker refused the connection: %s", self.cfg.hall, reason)

    def _on_connect(self, session_present: bool) -> None:
        # Subscribe before any publish on this connection, so the ack of a resent batch has a subscriber
        # even if the broker lost our session.
        self._client.subscribe(self._topic_ack, qos=1)
        with self._lock:
            self._connected = True
            self._new_connection = True
        self._stats.inc("connects")
        log.info("hall %s: uplink connected (session present: %s)", self.cfg.hall, session_present)
        self._wakeup.set()

    def _on_disconnect(self, reason: str | None) -> None:
        with self._lock:
            was = self._connected
            self._connected = False
        if was:
            self._stats.inc("disconnects")
            # Our own stop() is not news; a dropped link is (the backlog grows until it is back).
            level = logging.INFO if self._stopping.is_set() else logging.WARNING
            log.log(level, "hall %s: uplink disconnected: %s", self.cfg.hall, reason or "on request")
            self._wakeup.set()   # a round re-checks the backlog alarm and tells wait_until() callers

    def _on_message(self, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self._topic_ack:
            self._acks.put(bytes(msg.payload))
            self._wakeup.set()

    # ---- the forwarder thread ------------------------------------------------------------------------

    def _run(self) -> None:
        conn = open_db(self.cfg.db_path)
        sent: dict[int, float] = {}   # batch id -> monotonic time of its last send on this connection
        try:
            while not self._stopping.is_set():
                try:
                    # In the gateway, a round that never ends stops the watchdog pings.
                    with self._watch.busy(THREAD) if self._watch is not None else nullcontext():
                        timeout = self._round(conn, sent)
                except sqlite3.OperationalError as exc:
                    # Locked/busy past the timeout, or a full disk: nothing was half-done (each step is
                    # one transaction); try again after retry_s, loudly.
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    self._stats.inc("db_busy")
                    log.error("hall %s: forwarding round failed, retrying in %.1fs: %s", self.cfg.hall,
                              self.cfg.retry_s, exc)
                    timeout = self.cfg.retry_s
                with self._changed:
                    self._changed.notify_all()
                self._wakeup.wait(timeout)
                self._wakeup.clear()
        except BaseException as exc:
            log.exception("hall %s: forwarder thread failed", self.cfg.hall)
            self.cfg.on_alarm("forwarder-failed", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            conn.close()
            with self._changed:
                self._changed.notify_all()

    def _round(self, conn: sqlite3.Connection, sent: dict[int, float]) -> float | None:
        """One pass: take in acks, form batches, send what is due. Returns how long to sleep at most."""
        while True:
            try:
                data = self._acks.get_nowait()
            except queue.Empty:
                break
            self._handle_ack(conn, data, sent)
        with self._lock:
            connected = self._connected
            if self._new_connection:
                self._new_connection = False
                sent.clear()   # a new connection: every unacked batch is resent
        # Reports first, so what they queue goes out in this round's batches.
        timeout = None if self._reporter is None else self._report(conn)
        if connected:
            self._form_batches(conn)
            due = self._publish_due(conn, sent)
            timeout = due if timeout is None else timeout if due is None else min(timeout, due)
        self._check_backlog(conn)
        return timeout

    def _report(self, conn: sqlite3.Connection) -> float | None:
        if self._reporter is None:
            return None
        try:
            return self._reporter.run(conn)
        except ProtocolError as exc:
            # A report this code cannot encode is a bug in it; the ratings must still go: said loudly,
            # tried again next round (the reporter rolled its transaction back).
            self._stats.inc("reports_failed")
            log.error("hall %s: the gateway's reports failed: %s", self.cfg.hall, exc)
            return self.cfg.retry_s

    def _form_batches(self, conn: sqlite3.Connection) -> None:
        # Only as many unacked batches as may be in flight: while acks are awaited, new entries gather
        # into full batches instead of one tiny batch per wake().
        while True:
            unacked = conn.execute("SELECT count(*) FROM batches WHERE acked_ms IS NULL").fetchone()[0]
            if unacked >= self.cfg.max_inflight or not self._make_batch(conn):
                return

    def _make_batch(self, conn: sqlite3.Connection) -> bool:
        cfg = self.cfg
        conn.execute("BEGIN IMMEDIATE")
        try:
            rows = conn.execute("SELECT id, entry FROM uplink_entries WHERE batch_id IS NULL ORDER BY id "
                                "LIMIT ?", (cfg.batch_size,)).fetchall()
            if not rows:
                conn.execute("ROLLBACK")
                return False
            ids: list[int] = []
            entries: list[batch.Entry] = []
            held: list[int] = []
            for row_id, blob in rows:
                try:
                    entries.append(_decode_entry(blob))
                    ids.append(row_id)
                except ProtocolError as exc:
                    held.append(row_id)
                    log.error("hall %s: uplink entry %d cannot be decoded (%s); held, not sent",
                              cfg.hall, row_id, exc)
            if held:
                conn.executemany("UPDATE uplink_entries SET batch_id = ? WHERE id = ?",
                                 [(HELD_BATCH_ID, i) for i in held])
            if not entries:
                conn.execute("COMMIT")
                self._held(held)
                return True
            now = cfg.now_ms()
            # Batch ids never repeat for a hall, even if this database is replaced by a fresh one (the
            # province dedups on (hall, batch id) and would answer a reused id with an old batch's ack,
            # silently losing the new batch): the next id is at least the wall clock in ms.
            last = conn.execute("SELECT max(id) FROM batches").fetchone()[0] or 0
            batch_id = max(last + 1, now)
            signed, n = self._sign(batch_id, now, entries)
            if n < len(entries):   # over the size limit: the rest go in the next batch
                ids = ids[:n]
            conn.execute("INSERT INTO batches (id, created_ms, signed, entries) VALUES (?, ?, ?, ?)",
                         (batch_id, now, signed, len(ids)))
            conn.executemany("UPDATE uplink_entries SET batch_id = ? WHERE id = ?",
                             [(batch_id, i) for i in ids])
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._stats.inc("batches_created")
        if held:
            self._held(held)
        log.debug("hall %s: batch %d formed with %d entries", cfg.hall, batch_id, len(ids))
        return True

    def _held(self, held: list[int]) -> None:
        self._stats.inc("entries_held", len(held))
        self.cfg.on_alarm("uplink-held", f"{len(held)} uplink entries cannot be decoded and are held: "
                                         f"ids {held[:10]}")

    def _sign(self, batch_id: int, now: int, entries: list[batch.Entry]) -> tuple[bytes, int]:
        """Sign the largest prefix of ``entries`` that fits the batch size limit; return (bytes, count)."""
        n = len(entries)
        while True:
            b = batch.Batch(self.cfg.hall, batch_id, now, entries[:n])
            signed = cose.sign1_encode(self._signing_key, self.cfg.hall.encode(), b.encode())
            if len(signed) <= limits.MAX_BATCH_MESSAGE or n == 1:
                return signed, n
            n = max(1, n * limits.MAX_BATCH_MESSAGE // len(signed) - 1)

    def _publish_due(self, conn: sqlite3.Connection, sent: dict[int, float]) -> float | None:
        """Publish the oldest max_inflight unacked batches that were not sent within retry_s."""
        cfg = self.cfg
        now = time.monotonic()
        rows = conn.execute("SELECT id, sent_count FROM batches WHERE acked_ms IS NULL ORDER BY id LIMIT ?",
                            (cfg.max_inflight,)).fetchall()
        window = {r[0] for r in rows}
        for stale in set(sent) - window:
            del sent[stale]
        published: list[int] = []
        next_due: float | None = None
        for batch_id, sent_count in rows:
            last = sent.get(batch_id)
            if last is not None and now - last < cfg.retry_s:
                due = last + cfg.retry_s - now
                next_due = due if next_due is None else min(next_due, due)
                continue
            signed = conn.execute("SELECT signed FROM batches WHERE id = ?", (batch_id,)).fetchone()[0]
            info = self._client.publish(self._topic_batch, signed, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                # Not connected after all; the next on_connect wakes us and everything is resent.
                self._stats.inc("publish_failed")
                log.warning("hall %s: publishing batch %d failed: %s", cfg.hall, batch_id,
                            mqtt.error_string(info.rc))
                break
            sent[batch_id] = now
            published.append(batch_id)
            self._stats.inc("batches_sent" if sent_count == 0 and last is None else "batches_resent")
            next_due = cfg.retry_s if next_due is None else min(next_due, cfg.retry_s)
        if published:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("UPDATE batches SET sent_count = sent_count + 1, last_sent_ms = ? WHERE id = ?",
                             [(cfg.now_ms(), i) for i in published])
            conn.execute("COMMIT")
        return next_due

    def _handle_ack(self, conn: sqlite3.Connection, data: bytes, sent: dict[int, float]) -> None:
        cfg = self.cfg
        self._stats.inc("acks_received")
        try:
            v = cose.sign1_verify(data, lambda kid: self._province_key if kid == PROVINCE_KID else None,
                                  expected_kid=PROVINCE_KID, max_size=64 * 1024)
            ack = batch.decode_batch_ack(v.payload)
        except ProtocolError as exc:
            self._stats.inc("acks_bad")
            self._stats.inc("acks_rejected")
            log.warning("hall %s: ignoring a batch ack that does not verify or decode (%s): %s",
                        cfg.hall, exc.reason, exc)
            return
        if ack.hall != cfg.hall:
            self._stats.inc("acks_wrong_hall")
            self._stats.inc("acks_rejected")
            log.warning("hall %s: ignoring a batch ack for hall %r (batch %d)", cfg.hall, ack.hall, ack.batch)
            return
        row = conn.execute("SELECT entries, acked_ms FROM batches WHERE id = ?", (ack.batch,)).fetchone()
        if row is None:
            self._stats.inc("acks_unknown_batch")
            self._stats.inc("acks_rejected")
            log.warning("hall %s: ignoring an ack for unknown batch %d", cfg.hall, ack.batch)
            return
        entries, acked_ms = row
        if acked_ms is not None:
            self._stats.inc("acks_duplicate")   # the province re-acks a resend: normal
            return
        if ack.stored + ack.duplicates + len(ack.rejected) != entries:
            self._stats.inc("acks_count_mismatch")
            log.warning("hall %s: ack of batch %d accounts for %d entries, the batch has %d", cfg.hall,
                        ack.batch, ack.stored + ack.duplicates + len(ack.rejected), entries)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE batches SET acked_ms = ?, stored = ?, dups = ?, rejected = ? WHERE id = ?",
                     (cfg.now_ms(), ack.stored, ack.duplicates, json.dumps([list(r) for r in ack.rejected]),
                      ack.batch))
        conn.execute("COMMIT")
        sent.pop(ack.batch, None)
        self._stats.inc("batches_acked")
        self._stats.inc("entries_acked", entries)
        if ack.rejected:
            self._stats.inc("entries_rejected", len(ack.rejected))
            detail = self._rejected_detail(conn, ack)
            log.error("hall %s: %s", cfg.hall, detail)
            cfg.on_alarm("province-rejected", detail)

    def _rejected_detail(self, conn: sqlite3.Connection, ack: batch.BatchAck) -> str:
        """Name the device (or prompt) of each rejected entry, so the hall manager can act on it."""
        rows = conn.execute("SELECT entry FROM uplink_entries WHERE batch_id = ? ORDER BY id",
                            (ack.batch,)).fetchall()
        parts = []
        for index, reason in ack.rejected[:20]:
            what = "?"
            if index < len(rows):
                try:
                    e = _decode_entry(rows[index][0])
                    what = _entry_name(e)
                except ProtocolError:
                    pass
            parts.append(f"#{index} ({what}): {reason}")
        more = f" (+{len(ack.rejected) - 20} more)" if len(ack.rejected) > 20 else ""
        return f"province rejected {len(ack.rejected)} entries of batch {ack.batch}: {'; '.join(parts)}{more}"

    def _check_backlog(self, conn: sqlite3.Connection) -> None:
        n = uplink_backlog(conn)
        t = self.cfg.backlog_threshold
        if not self._backlog_alarmed and n > t:
            self._backlog_alarmed = True
            self.cfg.on_alarm("backlog", f"{n} entries not yet acked by the province (threshold {t})")
        elif self._backlog_alarmed and n < t:
            self._backlog_alarmed = False
            self.cfg.on_alarm("backlog-cleared", f"backlog down to {n} entries (threshold {t})")


def _entry_name(e: batch.Entry) -> str:
    """What an entry is about, for the hall manager: a device, a prompt, or one of the gateway's reports."""
    if isinstance(e, batch.DeviceEntry):
        kid = cose.peek_kid(e.msg)
        return "?" if kid is None else kid.decode("ascii", "replace")
    if isinstance(e, batch.PromptEntry):
        return f"prompt {e.prompt}"
    if isinstance(e, batch.KeypadStatusEntry):
        return f"status of {e.device}"
    if isinstance(e, batch.GatewayStatusEntry):
        return "gateway status"
    if isinstance(e, batch.DayCountEntry):
        return f"day count {e.device} {e.day}"
    return f"enrollment of {e.device}"


def _decode_entry(blob: bytes) -> batch.Entry:
    # The protocol's own entry validator (same rules the province applies).
    return batch.decode_entry(blob)
