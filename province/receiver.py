"""Receive signed batches from hall gateways: verify, re-verify every device MAC, dedup, check, store, ack.

Each worker is one paho-mqtt client on the shared subscription ``$share/province/cs/1/h/+/batch`` (the
broker hands each batch to one worker) with ``manual_ack``: the MQTT PUBACK goes out only after the
batch is committed, and after the signed application ack was published. Neither ack is the end-to-end
guarantee on its own: the gateway keeps every batch until it holds a signed ``BatchAck``, and resends.

A worker has two threads: paho's network loop, which only queues messages, and a processing thread,
which takes whatever has queued up (up to ``max_group`` batches) into one database transaction: one
fsync for many batches. Several receivers (processes, hosts) may share one PostgreSQL database: the
unique constraints make each rating stored once, and a batch two of them processed at once is recorded
by one; the other's transaction fails, is retried, and re-publishes the recorded ack.

What a hall gateway can do wrong and what happens:
- batch not signed by that hall's key (forged, unknown hall, kid != topic hall), malformed, hall field
  != topic hall: quarantined, MQTT-acked (a resend would not fix it), no signed ack, nothing stored;
- an entry whose device MAC fails, whose device belongs to another hall or is revoked, whose epoch is
  newer than registered, or which is not a rating/no-rating: that entry is rejected with a reason in the
  ack, the rest of the batch is stored (a gateway cannot invent or alter ratings);
- an entry of a device the province does not know (yet): held, not rejected (its enrollment may come;
  see enroll.py), counted in the ack's ``stored`` because it is kept durably, counted in no figure;
- an outcome that does not match its prompt record, or a second outcome for one prompt: held with the
  reason (prompts.py), one ``held-entries`` alarm per batch;
- the same (device, epoch, seq) with other bytes: security alarm, the first copy kept.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from countersign.common.group import take_group
from countersign.common.mqtt import Handlers, Options, make_client
from countersign.protocol import batch, cbor, cose, limits, messages, topics
from countersign.protocol.errors import ProtocolError
from countersign.protocol.keystore import Keystore
from countersign.protocol.outcome import Outcome

from . import hallreports
from . import registry as reg
from . import store as st
from .config import ProvinceConfig
from .db import Conn, DatabaseConfigError, DatabaseError
from .prompts import WAITING, prompt_problem, release_waiting

log = logging.getLogger(__name__)

ACK_KID = b"province"
# Rejection reasons that mean someone tried to pass off a rating that is not a device's own: alarms.
SECURITY_REASONS = frozenset({"bad-mac", "wrong-hall", "conflicting-duplicate", "kid-mismatch"})
UNKNOWN_DEVICE = "unknown-device"
# What a worker retries, nothing acked meanwhile: a database error, or no connection to the server at all.
RETRY: tuple[type[Exception], ...] = (*DatabaseError, DatabaseConfigError)


class ReceiverStats:
    """Counters shared by the workers of one Province (never module-global)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.counts: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.quarantined: Counter[str] = Counter()
        self.held: Counter[str] = Counter()
        self.per_worker: Counter[str] = Counter()

    def add(self, worker: str, counts: Counter[str], rejected: Counter[str],
            quarantined: Counter[str], held: Counter[str] | None = None) -> None:
        with self._cond:
            self.counts.update(counts)
            self.rejected.update(rejected)
            self.quarantined.update(quarantined)
            self.held.update(held or Counter())
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
                "quarantined_by_reason": dict(self.quarantined), "held_by_reason": dict(self.held),
                "batches_by_worker": dict(self.per_worker)}


@dataclass
class Result:
    """What to do for one MQTT message once the transaction holding it has committed."""

    ack_topic: str | None = None
    ack: bytes | None = None
    counts: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    quarantined: Counter[str] = field(default_factory=Counter)
    held: Counter[str] = field(default_factory=Counter)


class EntryRejected(ProtocolError, ValueError):
    reason = "rejected"


class EntryUnknown(ProtocolError, ValueError):
    """A well-formed COSE_Mac0 whose kid is no device of the registry: kept as held."""

    reason = UNKNOWN_DEVICE

    def __init__(self, message: str, row: st.HeldRow) -> None:
        super().__init__(message, UNKNOWN_DEVICE)
        self.row = row


def _quarantine(s: st.Store, res: Result, topic: str, hall: str | None, reason: str, detail: str,
                payload: bytes) -> Result:
    log.warning("quarantined message on %s: %s (%s)", topic, reason, detail)
    s.quarantine(topic, hall, reason, detail, payload)
    if reason in ("bad-signature", "unknown-signer", "kid-mismatch", "hall-mismatch"):
        s.alarm("forged-batch", hall, None, f"{reason}: {detail}")
    res.quarantined[reason] += 1
    return res


def _unverified(device: str, hall: str, b: batch.Batch, e: batch.DeviceEntry) -> st.HeldRow:
    """The entry as a held row, its fields read from the payload WITHOUT a MAC check (None if unreadable):
    for a person to look at until the device's enrollment is decided, never for a figure."""
    msg: messages.Message | None = None
    try:
        item = cbor.loads(e.msg, max_size=limits.MAX_DEVICE_MESSAGE, max_depth=limits.MAX_DEPTH,
                          max_items=limits.MAX_ITEMS, allowed_tags=(cose.TAG_MAC0,))
        payload = item.value[2] if isinstance(item, cbor.Tag) else None
        if isinstance(payload, bytes):
            msg = messages.decode_payload(payload, messages.DEVICE_UP)
    except (ProtocolError, ValueError, TypeError, IndexError, KeyError):
        msg = None
    ok = isinstance(msg, messages.Rating | messages.NoRating)
    rating = msg if isinstance(msg, messages.Rating) else None
    up = msg if isinstance(msg, messages.Rating | messages.NoRating) else None
    return st.HeldRow(
        device=device, epoch=up.epoch if up else None, seq=up.seq if up else None,
        kind=("rating" if rating else "no-rating") if ok else None,
        score=rating.score if rating else None, scale=rating.scale if rating else None,
        prompt=up.prompt if up else None, press_s=up.time if up else None, delay_ms=up.delay if up else None,
        boot=up.boot if up else None, hall=hall, ctx=e.ctx, received_ms=e.received_ms, batch_hall=hall,
        batch_id=b.batch, cose=e.msg)


def _device_row(registry: Keystore, hall: str, b: batch.Batch, e: batch.DeviceEntry) -> st.RatingRow:
    """Re-verify one device message exactly as the gateway had to; raise EntryRejected with a reason, or
    EntryUnknown for a device the registry does not know."""
    kid = cose.peek_kid(e.msg)
    known = registry.devices.get(kid.decode("ascii", "replace")) if kid else None
    if known is not None and known.revoked:
        raise EntryRejected("device key is revoked", "revoked-device")
    try:
        v = cose.mac0_verify(e.msg, registry.key_for)
        device = topics.check_id(v.kid.decode("ascii"))
    except (ProtocolError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "reason", "bad-kid")
        if reason == UNKNOWN_DEVICE and kid is not None:
            # The envelope's shape passed (mac0_verify checks it before asking for the key).
            try:
                unknown = topics.check_id(kid.decode("ascii"))
            except (ValueError, UnicodeDecodeError) as bad:
                raise EntryRejected(str(bad), "bad-kid") from bad
            raise EntryUnknown(str(exc), _unverified(unknown, hall, b, e)) from exc
        raise EntryRejected(str(exc), reason) from exc
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
    return st.RatingRow.of(msg, device, hall, e.ctx, e.received_ms, hall, b.batch, e.msg)


@dataclass
class _Tally:
    """One batch's outcomes, for its ack and its one alarm."""

    stored: int = 0
    duplicates: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)
    held: Counter[str] = field(default_factory=Counter)
    held_detail: list[str] = field(default_factory=list)

    def count(self, i: int, outcome: Outcome) -> None:
        if outcome is Outcome.STORED:
            self.stored += 1
        elif outcome is Outcome.DUPLICATE:
            self.duplicates += 1
        else:
            self.rejected.append((i, outcome.value))

    def hold(self, s: st.Store, i: int, row: st.HeldRow | st.RatingRow, reason: str, detail: str) -> None:
        outcome = s.hold(row, reason, detail)
        self.count(i, outcome)
        if outcome is Outcome.STORED:
            self.held[reason] += 1
            self.held_detail.append(f"entry {i} ({row.device}) {reason}: {detail}")


def _prompt_entry(s: st.Store, registry: Keystore, hall: str, b: batch.Batch, i: int, e: batch.PromptEntry,
                  t: _Tally) -> None:
    dk = registry.devices.get(e.device)
    if dk is not None and dk.hall != hall:
        # A prompt counts in the participation rate's denominator: only for this hall's keypads.
        t.rejected.append((i, "wrong-hall"))
        log.warning("hall %s batch %d entry %d: prompt for device %s of hall %s", hall, b.batch, i, e.device,
                    dk.hall)
        return
    # A keypad not enrolled yet keeps its prompt records: once it is approved, its held outcomes are
    # checked against them and its participation has its denominator.
    t.count(i, s.insert_prompt(st.PromptRow(hall, e.prompt, e.device, e.ctx, e.timeout, b.batch)))


def _device_entry(s: st.Store, registry: Keystore, hall: str, b: batch.Batch, i: int, e: batch.DeviceEntry,
                  t: _Tally) -> None:
    try:
        row = _device_row(registry, hall, b, e)
    except EntryUnknown as exc:
        t.hold(s, i, exc.row, UNKNOWN_DEVICE, f"no device {exc.row.device} in the registry (yet)")
        return
    except (ProtocolError, ValueError, TypeError, KeyError) as exc:
        # EntryRejected carries its reason; anything else is a gap in a decoder, still one bad
        # entry: it must not cost the rest of the batch.
        reason = exc.reason if isinstance(exc, EntryRejected) else "bad-entry"
        t.rejected.append((i, reason))
        log.warning("hall %s batch %d entry %d rejected: %s (%r)", hall, b.batch, i, reason, exc)
        if reason in SECURITY_REASONS:
            s.alarm("rejected-entry", hall, None, f"batch {b.batch} entry {i}: {reason}: {exc}",
                    batch_id=b.batch)
        return
    kept = s.kept(row)
    if kept is not None:
        t.count(i, kept)
        return
    problem = prompt_problem(s, row)
    if problem is not None:
        t.hold(s, i, row, *problem)
        return
    t.count(i, s.insert_rating(row))


def _report_entry(s: st.Store, registry: Keystore, hall: str, b: batch.Batch, i: int, e: batch.ReportEntry,
                  t: _Tally) -> None:
    """The gateway's own figures (hallreports.py): kept for the fleet page and the reconciliation, never
    a count of ratings; another hall's keypad is refused (``wrong-hall``)."""
    device = getattr(e, "device", None)
    dk = registry.devices.get(device) if isinstance(device, str) else None
    out = hallreports.store_report(s.conn, hall, e, s.now_ms, dk.hall if dk else None, batch_id=b.batch)
    if isinstance(out, hallreports.Refused):
        t.rejected.append((i, out.reason))
        log.warning("hall %s batch %d entry %d refused: %s (%s)", hall, b.batch, i, out.reason, out.detail)
    else:
        t.count(i, out)


def _batch_alarm(s: st.Store, hall: str, b: batch.Batch, t: _Tally) -> None:
    """One alarm for all that a batch held (a waiting rating is no finding: see prompts.py)."""
    findings = {r: n for r, n in t.held.items() if r != WAITING}
    if not findings:
        return
    counts = ", ".join(f"{r} {n}" for r, n in sorted(findings.items()))
    first = "; ".join(d for d in t.held_detail if f" {WAITING}:" not in d)
    s.alarm("held-entries", hall, None, f"batch {b.batch} held {sum(findings.values())}: {counts}. {first}",
            batch_id=b.batch)


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
    t = _Tally()
    # Prompt records first: an outcome is checked against its record even when the gateway's FIFO put
    # both in this batch.
    for i, e in enumerate(b.entries):
        if isinstance(e, batch.PromptEntry):
            _prompt_entry(s, registry, hall, b, i, e, t)
    for i, e in enumerate(b.entries):
        if isinstance(e, batch.DeviceEntry):
            _device_entry(s, registry, hall, b, i, e, t)
        elif isinstance(e, batch.REPORT_ENTRIES):
            _report_entry(s, registry, hall, b, i, e, t)
    t.rejected.sort()
    res.held.update(t.held)
    res.held.update(release_waiting(s, hall))
    _batch_alarm(s, hall, b, t)
    for _i, reason in t.rejected:
        res.rejected[reason] += 1
    # A held entry is kept durably: the gateway may forget it (PROTOCOL.md), so it counts as stored.
    ack = batch.BatchAck(hall, b.batch, t.stored, t.duplicates, t.rejected)
    res.ack = cose.sign1_encode(province_key, ACK_KID, ack.encode())
    s.record_batch(hall, b.batch, b.created_ms, len(b.entries), t.stored, t.duplicates, t.rejected, res.ack)
    held = sum(t.held.values())
    res.counts.update({"entries": len(b.entries), "stored": t.stored - held, "held": held,
                       "duplicates": t.duplicates, "rejected": len(t.rejected)})
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
                 province_key: Ed25519PrivateKey, stats: ReceiverStats,
                 committed: Callable[[], None] = lambda: None) -> None:
        self.name = cfg.worker_usernames()[n - 1]
        self.cfg, self._file_registry, self._key, self._stats = cfg, registry, province_key, stats
        self._committed = committed      # the supervisor's wake-up: new ratings and reports are in
        self.subscribed = threading.Event()
        self.failed: str | None = None
        self._q: queue.Queue[_Item | None] = queue.Queue()   # None: stop
        self._stop = threading.Event()
        self._generation = 0          # bumped per connection: a PUBACK must not go to a later session
        self._gen_lock = threading.Lock()
        self._conn: Conn | None = None
        # The Keystore of the last group and what it was built from: the file's halls, the devices table.
        self._keystore: Keystore | None = None
        self._built_from: tuple[int, reg.Fingerprint] | None = None
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
        try:
            while True:
                group, stop = take_group(self._q, self.cfg.max_group)
                if group and not self._commit_group(group):
                    return
                if stop:
                    return
        except BaseException:
            log.exception("%s: processing thread died; its batches stay un-acked", self.name)
            self.failed = "processing thread died"
            raise
        finally:
            if self._conn is not None:
                self._conn.close()

    def _connection(self) -> Conn:
        if self._conn is None:
            self._conn = self.cfg.database.connect()
        return self._conn

    def _drop_connection(self) -> None:
        """After a database error: roll back, or, if the connection itself is gone, open a new one next."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.rollback()
        except DatabaseError:
            pass
        else:
            if not _broken(conn):
                self._conn = conn
                return
        with contextlib.suppress(*DatabaseError):
            conn.close()

    def _registry(self, conn: Conn) -> Keystore:
        """The file's halls and the devices table, rebuilt when either changed (a device approved in
        another process is used by the next group, no SIGHUP needed)."""
        file_registry = self._file_registry()
        key = (id(file_registry), reg.fingerprint(conn))
        if self._keystore is None or key != self._built_from:
            self._keystore = reg.keystore(conn, file_registry.halls)
            self._built_from = key
        return self._keystore

    def _commit_group(self, group: list[_Item]) -> bool:
        """Store a group in one transaction, then ack each message. False if stopped before committing."""
        delay = 0.1
        while True:
            s: st.Store | None = None
            try:
                conn = self._connection()
                registry = self._registry(conn)
                s = st.Store(conn, self.cfg.now_ms(), self.cfg.tz)
                s.begin()
                results = [process_message(s, registry, self._key, it.topic, it.payload) for it in group]
                # Ratings held for a prompt record that another receiver committed meanwhile.
                release_waiting(s)
                s.commit()
                break
            except RETRY as exc:
                # Disk full, I/O error, a lock held past the timeout, a lost server, another receiver that
                # recorded the same batch first: nothing is acked, so nothing is lost; retry until it works
                # (the gateway keeps the batches and resends meanwhile; a batch recorded by the other
                # receiver is found by seen_batch and its ack re-published).
                self._drop_connection()
                log.error("%s: store failed (%s); retrying in %.1fs", self.name, exc, delay)
                self._stats.add(self.name, Counter({"db_errors": 1}), Counter(), Counter())
                if self._stop.wait(delay):
                    return False
                delay = min(delay * 2, 5.0)
            except (ProtocolError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
                # A bug met by one message, not bad input (that is quarantined inside process_message).
                # Nothing of the group is committed; the others go on one by one, so one hall's batch
                # cannot stop this worker from serving every other hall.
                if s is not None:
                    s.rollback()
                if len(group) > 1:
                    return all(self._commit_group([it]) for it in group)
                return self._held_back(group[0], exc)
        # Counters first: they describe what is committed, and anyone holding an ack sees them updated.
        counts: Counter[str] = Counter({"commits": 1})
        rejected: Counter[str] = Counter()
        quarantined: Counter[str] = Counter()
        held: Counter[str] = Counter()
        for res in results:
            counts.update(res.counts)
            counts["acks_published"] += res.ack is not None
            rejected.update(res.rejected)
            quarantined.update(res.quarantined)
            held.update(res.held)
        self._stats.add(self.name, counts, rejected, quarantined, held)
        self._committed()
        with self._gen_lock:
            gen = self._generation
        for it, res in zip(group, results, strict=True):
            if res.ack is not None and res.ack_topic is not None:
                self.client.publish(res.ack_topic, res.ack, qos=1)
            # A PUBACK only on the connection the message came in on: packet ids restart per connection.
            if it.generation == gen:
                self.client.ack(it.mid, it.qos)
        return True

    def _held_back(self, it: _Item, exc: BaseException) -> bool:
        """A message that processing could not handle: kept in quarantine, its MQTT delivery PUBACKed (a
        held packet would fill the broker's in-flight window) but no batch ack sent, so its gateway keeps
        the batch and sends it again: once the fault is fixed, it is stored."""
        log.error("%s: processing a message on %s failed: %r", self.name, it.topic, exc, exc_info=exc)
        delay = 0.1
        while True:
            try:
                s = st.Store(self._connection(), self.cfg.now_ms(), self.cfg.tz)
                with s.conn.transaction():
                    s.quarantine(it.topic, None, "processing-error", f"{type(exc).__name__}: {exc}",
                                 it.payload)
                    s.alarm("processing-error", None, None, f"{it.topic}: {type(exc).__name__}: {exc}")
                break
            except RETRY as db_exc:
                self._drop_connection()
                log.error("%s: recording a processing error failed (%s)", self.name, db_exc)
                if self._stop.wait(delay):
                    return False
                delay = min(delay * 2, 5.0)
        self._stats.add(self.name, Counter({"processing_errors": 1}), Counter(),
                        Counter({"processing-error": 1}))
        with self._gen_lock:
            if it.generation == self._generation:
                self.client.ack(it.mid, it.qos)
        return True


def _broken(conn: Conn) -> bool:
    """A PostgreSQL connection that the server (or the network) ended; an SQLite one never is."""
    return bool(getattr(conn.raw, "closed", False)) or getattr(conn.raw, "broken", False) is True
