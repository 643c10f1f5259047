"""Receive signed batches from hall gateways: verify, re-verify every device MAC, dedup, store, ack.

Each worker is one paho-mqtt client on the shared subscription ``$share/province/cs/1/h/+/batch`` (the
broker hands each batch to one worker) with ``manual_ack``: the MQTT PUBACK goes out only after the
batch is committed, and after the signed application ack was published. Neither ack is the end-to-end
guarantee on its own: the gateway keeps every batch until it holds a signed ``BatchAck``, and resends.

A worker has two threads: paho's network loop, which only queues messages, and a processing thread,
which takes whatever has queued up (up to ``max_group`` batches) into one SQLite transaction: one fsync
for many batches, so synchronous=FULL stays affordable.

What a hall gateway can do wrong and what happens:
- batch not signed by that hall's key (forged, unknown hall, kid != topic hall), malformed, hall field
  != topic hall: quarantined, MQTT-acked (a resend would not fix it), no signed ack, nothing stored;
- an entry whose device MAC fails, whose device belongs to another hall or is unknown/revoked, whose
  epoch is newer than registered, or which is not a rating/no-rating: that entry is rejected with a
  reason in the ack, the rest of the batch is stored (a gateway cannot invent or alter ratings);
- the same (device, epoch, seq) with other bytes: security alarm, the first copy kept.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from countersign.common.group import take_group
from countersign.common.mqtt import Handlers, Options, make_client
from countersign.protocol import batch, cose, messages, topics
from countersign.protocol.errors import ProtocolError
from countersign.protocol.keystore import Keystore
from countersign.protocol.outcome import Outcome

from . import store as st
from .config import ProvinceConfig

log = logging.getLogger(__name__)

ACK_KID = b"province"
# Rejection reasons that mean someone tried to pass off a rating that is not a device's own: alarms.
SECURITY_REASONS = frozenset({"bad-mac", "wrong-hall", "conflicting-duplicate", "kid-mismatch"})


class ReceiverStats:
    """Counters shared by the workers of one Province (never module-global)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.counts: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.quarantined: Counter[str] = Counter()
        self.per_worker: Counter[str] = Counter()

    def add(self, worker: str, counts: Counter[str], rejected: Counter[str],
            quarantined: Counter[str]) -> None:
        with self._cond:
            self.counts.update(counts)
            self.rejected.update(rejected)
            self.quarantined.update(quarantined)
            self.per_worker[worker] += counts["batches"]
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> bool:
        """Block until ``predicate(snapshot)`` holds (re-checked after every commit) or the timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self._snapshot()), timeout)

    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            return self._snapshot()

    def _snapshot(self) -> dict[str, Any]:
        return {**dict(self.counts), "rejected_by_reason": dict(self.rejected),
                "quarantined_by_reason": dict(self.quarantined), "batches_by_worker": dict(self.per_worker)}


@dataclass
class Result:
    """What to do for one MQTT message once the transaction holding it has committed."""

    ack_topic: str | None = None
    ack: bytes | None = None
    counts: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    quarantined: Counter[str] = field(default_factory=Counter)


class EntryRejected(ProtocolError, ValueError):
    reason = "rejected"


def _quarantine(s: st.Store, res: Result, topic: str, hall: str | None, reason: str, detail: str,
                payload: bytes) -> Result:
    log.warning("quarantined message on %s: %s (%s)", topic, reason, detail)
    s.quarantine(topic, hall, reason, detail, payload)
    if reason in ("bad-signature", "unknown-signer", "kid-mismatch", "hall-mismatch"):
        s.alarm("forged-batch", hall, None, f"{reason}: {detail}")
    res.quarantined[reason] += 1
    return res


def _device_row(registry: Keystore, hall: str, b: batch.Batch, e: batch.DeviceEntry) -> st.RatingRow:
    """Re-verify one device message exactly as the gateway had to; raise EntryRejected with a reason."""
    kid = cose.peek_kid(e.msg)
    known = registry.devices.get(kid.decode("ascii", "replace")) if kid else None
    if known is not None and known.revoked:
        raise EntryRejected("device key is revoked", "revoked-device")
    try:
        v = cose.mac0_verify(e.msg, registry.key_for)
        device = topics.check_id(v.kid.decode("ascii"))
    except (ProtocolError, UnicodeDecodeError) as exc:
        raise EntryRejected(str(exc), getattr(exc, "reason", "bad-kid")) from exc
    dk = registry.devices[device]
    if dk.hall != hall:
        raise EntryRejected(f"device {device} belongs to hall {dk.hall!r}, not {hall!r}", "wrong-hall")
    try:
        msg = messages.decode_payload(v.payload, messages.DEVICE_UP)
    except ProtocolError as exc:
        raise EntryRejected(str(exc), exc.reason) from exc
    if not isinstance(msg, messages.Rating | messages.NoRating):
        raise EntryRejected(f"{type(msg).__name__} is not a rating", "not-a-rating")
    if msg.epoch > dk.epoch:
        raise EntryRejected(f"epoch {msg.epoch} is newer than the registered {dk.epoch}", "future-epoch")
    rating = msg if isinstance(msg, messages.Rating) else None
    return st.RatingRow(
        device=device, epoch=msg.epoch, seq=msg.seq, kind="rating" if rating else "no-rating",
        score=rating.score if rating else None, scale=rating.scale if rating else None, prompt=msg.prompt,
        press_s=msg.time, delay_ms=msg.delay, boot=msg.boot, hall=hall, ctx=e.ctx, received_ms=e.received_ms,
        batch_hall=hall,
        batch_id=b.batch, cose=e.msg)


def process_message(s: st.Store, registry: Keystore, province_key: Ed25519PrivateKey, topic: str,
                    payload: bytes) -> Result:
    """Handle one batch message inside the caller's open transaction."""
    res = Result()
    try:
        kind, hall, leaf = topics.parse(topic)
    except ProtocolError as exc:
        return _quarantine(s, res, topic, None, exc.reason, str(exc), payload)
    if kind != "h" or leaf != "batch":
        return _quarantine(s, res, topic, None, "bad-topic", "not a hall batch topic", payload)
    try:
        verified = cose.sign1_verify(payload, registry.gateway_public_key, expected_kid=hall.encode())
        b = batch.decode_batch(verified.payload)
    except ProtocolError as exc:
        return _quarantine(s, res, topic, hall, exc.reason, str(exc), payload)
    except ValueError as exc:   # e.g. a registry public key of the wrong length
        return _quarantine(s, res, topic, hall, "bad-hall-key", str(exc), payload)
    if b.hall != hall:
        return _quarantine(s, res, topic, hall, "hall-mismatch", f"batch says hall {b.hall!r}", payload)
    res.ack_topic = topics.hall_ack(hall)
    res.counts["batches"] += 1
    seen = s.seen_batch(hall, b.batch)
    if seen is not None:
        # The gateway did not get our ack (lost, or sent while it was offline): the same bytes again.
        res.ack = seen
        res.counts["batches_seen_again"] += 1
        return res
    stored = duplicates = 0
    rejected: list[tuple[int, str]] = []
    for i, e in enumerate(b.entries):
        if isinstance(e, batch.PromptEntry):
            dk = registry.devices.get(e.device)
            if dk is None or dk.hall != hall:
                # A prompt counts in the participation rate's denominator: only for this hall's keypads.
                rejected.append((i, "wrong-hall" if dk else "unknown-device"))
                log.warning("hall %s batch %d entry %d: prompt for device %s not of this hall", hall,
                            b.batch, i, e.device)
                continue
            outcome = s.insert_prompt(st.PromptRow(hall, e.prompt, e.device, e.ctx, e.timeout, b.batch))
        else:
            try:
                row = _device_row(registry, hall, b, e)
            except (ProtocolError, ValueError, TypeError, KeyError) as exc:
                # EntryRejected carries its reason; anything else is a gap in a decoder, still one bad
                # entry: it must not cost the rest of the batch.
                reason = exc.reason if isinstance(exc, EntryRejected) else "bad-entry"
                rejected.append((i, reason))
                log.warning("hall %s batch %d entry %d rejected: %s (%r)", hall, b.batch, i, reason, exc)
                if reason in SECURITY_REASONS:
                    s.alarm("rejected-entry", hall, None, f"batch {b.batch} entry {i}: {reason}: {exc}")
                continue
            outcome = s.insert_rating(row)
        if outcome is Outcome.STORED:
            stored += 1
        elif outcome is Outcome.DUPLICATE:
            duplicates += 1
        else:
            rejected.append((i, outcome.value))
            log.error("hall %s batch %d entry %d: same (device, epoch, seq) with different bytes", hall,
                      b.batch, i)
    for _i, reason in rejected:
        res.rejected[reason] += 1
    ack = batch.BatchAck(hall, b.batch, stored, duplicates, rejected)
    res.ack = cose.sign1_encode(province_key, ACK_KID, ack.encode())
    s.record_batch(hall, b.batch, b.created_ms, len(b.entries), stored, duplicates, rejected, res.ack)
    res.counts.update({"entries": len(b.entries), "stored": stored, "duplicates": duplicates,
                       "rejected": len(rejected)})
    return res


@dataclass
class _Item:
    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int



class Worker:
    """One MQTT client on the shared subscription plus its processing thread."""

    def __init__(self, n: int, cfg: ProvinceConfig, registry: Callable[[], Keystore],
                 province_key: Ed25519PrivateKey, stats: ReceiverStats) -> None:
        self.name = cfg.worker_usernames()[n - 1]
        self.cfg, self._registry, self._key, self._stats = cfg, registry, province_key, stats
        self.subscribed = threading.Event()
        self.failed: str | None = None
        self._q: queue.Queue[_Item | None] = queue.Queue()   # None: stop
        self._stop = threading.Event()
        self._generation = 0          # bumped per connection: a PUBACK must not go to a later session
        self._gen_lock = threading.Lock()
        # clean_session: the broker then only hands batches to connected workers. A persistent session of
        # a worker that is not running would hold its share of batches until the gateway's resend timer.
        self.client = make_client(
            Options(client_id=self.name, username=self.name, password=cfg.password, clean_session=True,
                    manual_ack=True, reconnect_min_s=1, reconnect_max_s=5, jitter=False),
            Handlers(connected=self._on_connect, refused=self._on_refused, subscribed=self._on_subscribe,
                     message=self._on_message))
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-store", daemon=True)

    # paho network thread -------------------------------------------------------------------------------
    def _on_refused(self, reason: str) -> None:
        self.failed = f"connect refused: {reason}"
        log.error("%s: %s", self.name, self.failed)

    def _on_connect(self, _session_present: bool) -> None:
        with self._gen_lock:
            self._generation += 1
        self.client.subscribe(topics.PROVINCE_SHARED_FILTER, qos=1)

    def _on_subscribe(self, ok: bool, reasons: list[str]) -> None:
        if not ok:
            self.failed = f"subscription refused: {reasons}"
            log.error("%s: %s (check the broker ACL)", self.name, self.failed)
            return
        self.failed = None
        self.subscribed.set()

    def _on_message(self, msg: mqtt.MQTTMessage) -> None:
        with self._gen_lock:
            gen = self._generation
        self._q.put(_Item(msg.topic, bytes(msg.payload), msg.mid, msg.qos, gen))

    # processing thread ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        self.client.connect_async(self.cfg.broker_host, self.cfg.broker_port, keepalive=30)
        self.client.loop_start()

    def stop(self) -> None:
        self._stop.set()
        self._q.put(None)
        self._thread.join(30)
        self.client.disconnect()
        self.client.loop_stop()

    def _run(self) -> None:
        conn = st.connect(self.cfg.db_path)
        try:
            while True:
                group, stop = take_group(self._q, self.cfg.max_group)
                if group and not self._commit_group(conn, group):
                    return
                if stop:
                    return
        except BaseException:
            log.exception("%s: processing thread died; its batches stay un-acked", self.name)
            self.failed = "processing thread died"
            raise
        finally:
            conn.close()

    def _commit_group(self, conn: sqlite3.Connection, group: list[_Item]) -> bool:
        """Store a group in one transaction, then ack each message. False if stopped before committing."""
        delay = 0.1
        registry = self._registry()
        while True:
            s = st.Store(conn, self.cfg.now_ms())
            try:
                s.begin()
                results = [process_message(s, registry, self._key, it.topic, it.payload) for it in group]
                s.commit()
                break
            except sqlite3.Error as exc:
                # Disk full, I/O error, lock held past the timeout: nothing is acked, so nothing is lost;
                # retry until it works (the gateway keeps the batches and resends meanwhile).
                s.rollback()
                log.error("%s: store failed (%s); retrying in %.1fs", self.name, exc, delay)
                self._stats.add(self.name, Counter({"db_errors": 1}), Counter(), Counter())
                if self._stop.wait(delay):
                    return False
                delay = min(delay * 2, 5.0)
            except (ProtocolError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
                # A bug met by one message, not bad input (that is quarantined inside process_message).
                # Nothing of the group is committed; the others go on one by one, so one hall's batch
                # cannot stop this worker from serving every other hall.
                s.rollback()
                if len(group) > 1:
                    return all(self._commit_group(conn, [it]) for it in group)
                self._held_back(conn, group[0], exc)
                return True
        # Counters first: they describe what is committed, and anyone holding an ack sees them updated.
        counts: Counter[str] = Counter({"commits": 1})
        rejected: Counter[str] = Counter()
        quarantined: Counter[str] = Counter()
        for res in results:
            counts.update(res.counts)
            counts["acks_published"] += res.ack is not None
            rejected.update(res.rejected)
            quarantined.update(res.quarantined)
        self._stats.add(self.name, counts, rejected, quarantined)
        with self._gen_lock:
            gen = self._generation
        for it, res in zip(group, results, strict=True):
            if res.ack is not None and res.ack_topic is not None:
                self.client.publish(res.ack_topic, res.ack, qos=1)
            # A PUBACK only on the connection the message came in on: packet ids restart per connection.
            if it.generation == gen:
                self.client.ack(it.mid, it.qos)
        return True


    def _held_back(self, conn: sqlite3.Connection, it: _Item, exc: BaseException) -> None:
        """A message that processing could not handle: kept in quarantine, its MQTT delivery PUBACKed (a
        held packet would fill the broker's in-flight window) but no batch ack sent, so its gateway keeps
        the batch and sends it again: once the fault is fixed, it is stored."""
        log.error("%s: processing a message on %s failed: %r", self.name, it.topic, exc, exc_info=exc)
        s = st.Store(conn, self.cfg.now_ms())
        s.begin()
        s.quarantine(it.topic, None, "processing-error", f"{type(exc).__name__}: {exc}", it.payload)
        s.alarm("processing-error", None, None, f"{it.topic}: {type(exc).__name__}: {exc}")
        s.commit()
        self._stats.add(self.name, Counter({"processing_errors": 1}), Counter(),
                        Counter({"processing-error": 1}))
        with self._gen_lock:
            if it.generation == self._generation:
                self.client.ack(it.mid, it.qos)


def open_store(path: Path) -> None:
    """Create the database and its tables (the workers open their own connections)."""
    st.connect(path).close()
