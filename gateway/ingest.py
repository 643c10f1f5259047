"""Ingest: MQTT in, strict verification, group commit, then MACed device acks, then MQTT PUBACKs.

Order per group of messages (DESIGN-BRIEF invariants 1 and 2):
  1. on_message only queues the message (manual_ack=True: paho does not PUBACK it);
  2. the worker drains up to ``group_max`` queued messages, verifies each, and writes them all in ONE
     transaction (dedup on (device, epoch, seq) inside it) and commits (synchronous=FULL);
  3. only then it publishes the MACed application acks, and only then PUBACKs every message of the group.
A crash before 2 completes means the broker redelivers; a crash after it means a redelivery is a
duplicate, acked again. Bad messages are quarantined and PUBACKed too, so they are never redelivered.

Test hook: env ``COUNTERSIGN_TEST_PAUSE_AT`` = ``before-commit`` or ``after-commit`` makes the worker print
``PAUSED <point>`` to stderr and block forever the first time it reaches that point, so a crash test can
SIGKILL the process at a known instant. Unset, it has no effect.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import sys
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass

import paho.mqtt.client as mqtt

from countersign.common.group import take_group
from countersign.common.mqtt import Handlers, Options, make_client
from countersign.protocol import cose, limits, messages, topics
from countersign.protocol.context import Context
from countersign.protocol.errors import LimitError, ProtocolError, SchemaError
from countersign.protocol.keystore import DeviceKey, Keystore

from .config import GatewayConfig
from .stats import Stats
from .store import Outcome, RatingRecord, Store
from .watch import Watch

log = logging.getLogger("countersign.gateway.ingest")

# Seqs per ack sent to a keypad (the protocol allows 32): half the list the keypad decodes an ack into,
# so a 64 KB heap fragmented by a long drain still finds the block for it.
ACK_SEQS = 16

PAUSE_ENV = "COUNTERSIGN_TEST_PAUSE_AT"

WORKER = "ingest-worker"
MQTT_LOOP = "hall-mqtt"


@dataclass
class _Reject:
    reason: str
    detail: str
    device: str | None


@dataclass
class _Up:
    device: str
    key: DeviceKey
    msg: messages.Message


@dataclass
class _Will:
    device: str


_Verdict = _Reject | _Up | _Will


class _ContextError(SchemaError):
    """A MAC-valid rating that cannot be bound to a prompt: quarantined and still acked."""


class Ingest:
    def __init__(self, cfg: GatewayConfig, store: Store, keystore: Callable[[], Keystore], stats: Stats,
                 on_commit: Callable[[], None], on_fatal: Callable[[BaseException], None],
                 watch: Watch | None = None) -> None:
        """``watch``: the gateway's (a worker or loop that ends is fatal to it); alone, one of our own."""
        self.cfg, self.store, self.keystore, self.stats = cfg, store, keystore, stats
        self.on_commit = on_commit
        self.watch = watch if watch is not None else Watch(on_fatal)
        self.ready = threading.Event()          # subscribed (the broker now queues for us)
        self._q: queue.Queue[mqtt.MQTTMessage | None] = queue.Queue()
        self._pause_at = os.environ.get(PAUSE_ENV) or None
        self._worker: threading.Thread | None = None
        # Persistent session and manual PUBACKs: the hall broker keeps what arrives while we are down and
        # redelivers whatever we had not committed. No jitter: one client per hall broker, on the same host.
        self.client = make_client(
            Options(client_id=cfg.mqtt_client_id, username=topics.GATEWAY_USER, password=cfg.gateway_password,
                    clean_session=False, manual_ack=True, reconnect_min_s=1, reconnect_max_s=10, jitter=False,
                    max_inflight=200),
            Handlers(connected=self._on_connect, refused=self._on_refused, disconnected=self._on_disconnect,
                     message=self._on_message))

    # --- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        self._worker = self.watch.spawn(WORKER, self._run)
        self.client.connect_async(self.cfg.broker_host, self.cfg.broker_port, keepalive=30)
        self.client.loop_start()
        # paho keeps its network thread here; without it the gateway hears no keypad.
        self.watch.adopt(MQTT_LOOP, self.client._thread)

    def stop(self) -> None:
        self.watch.retire(MQTT_LOOP)
        self.watch.retire(WORKER)
        self.client.disconnect()
        self.client.loop_stop()
        self._q.put(None)
        if self._worker is not None:
            self._worker.join(10)

    # --- MQTT callbacks (paho's network thread: keep them tiny) ----------------------------------------

    def _on_refused(self, reason: str) -> None:
        log.error("hall broker refused the gateway: %s", reason)

    def _on_connect(self, _session_present: bool) -> None:
        self.client.subscribe([(topics.DEVICE_UP_FILTER, 1), (topics.DEVICE_WILL_FILTER, 1)])
        log.info("connected to the hall broker %s:%d", self.cfg.broker_host, self.cfg.broker_port)
        self.ready.set()

    def _on_disconnect(self, reason: str | None) -> None:
        self.ready.clear()
        if reason is not None:
            log.warning("lost the hall broker (%s); paho reconnects", reason)

    def _on_message(self, msg: mqtt.MQTTMessage) -> None:
        self._q.put(msg)

    # --- downlink -------------------------------------------------------------------------------------

    def send(self, device: str, msg: messages.Message) -> bool:
        """MAC ``msg`` with the device's key (kid = device id) and publish it QoS1 to its down topic."""
        dk = self.keystore().devices.get(device)
        if dk is None or dk.revoked:
            return False
        data = cose.mac0_encode(dk.key, device.encode(), msg.encode())
        topic = topics.device_down(device)
        if 2 + len(topic) + 2 + len(data) > limits.MAX_DOWNLINK_PACKET:
            # The keypad would discard it. An ack splits into two that fit (large seqs, a long id);
            # nothing else the gateway sends can grow this large (text fields are bounded).
            if isinstance(msg, messages.Ack) and len(msg.seqs) > 1:
                half = len(msg.seqs) // 2
                first = self.send(device, messages.Ack(msg.epoch, msg.seqs[:half]))
                return self.send(device, messages.Ack(msg.epoch, msg.seqs[half:])) and first
            log.error("%s: a %s downlink of %d bytes is over the keypad's %d: not sent", device,
                      type(msg).__name__, len(data), limits.MAX_DOWNLINK_PACKET)
            self.stats.incr("downlinks_oversize")
            return False
        self.client.publish(topic, data, qos=1)
        return True

    # --- the worker -----------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            # A bug, not bad input (that is quarantined). Nothing un-committed was PUBACKed, so the safe
            # reaction is to stop (the watch tells the daemon) and let systemd start us again.
            log.critical("ingest worker died: %r", exc, exc_info=True)
            raise

    def _loop(self) -> None:
        while True:
            group, stop = take_group(self._q, self.cfg.group_max)
            if group:
                with self.watch.busy(WORKER):
                    self._process(group)
            if stop:
                return

    def _pause(self, point: str) -> None:
        if self._pause_at == point:
            self._pause_at = None
            print(f"PAUSED {point}", file=sys.stderr, flush=True)
            threading.Event().wait()     # forever: the test SIGKILLs us here

    def _process(self, group: list[mqtt.MQTTMessage]) -> None:
        now = self.cfg.now_ms()
        ks = self.keystore()
        verdicts = [self._verify(m.topic, bytes(m.payload), ks) for m in group]
        acks: dict[tuple[str, int], list[int]] = defaultdict(list)
        replies: list[tuple[str, int, str]] = []       # (device, nonce, window) for time sync + session
        try:
            with self.store.transaction() as c:
                for m, v in zip(group, verdicts, strict=True):
                    self._apply(c, now, m.topic, bytes(m.payload), v, acks, replies)
                self._pause("before-commit")
        except sqlite3.Error:
            # Nothing was committed and nothing is PUBACKed: the broker redelivers after a reconnect.
            # Dropping the connection is the only way to get the redelivery without restarting.
            log.exception("commit of a group of %d failed; reconnecting for redelivery", len(group))
            self.stats.incr("commit_failures")
            self.client.reconnect()
            return
        self._pause("after-commit")
        self.stats.incr("group_commits")
        self.stats.incr("messages", len(group))
        for (dev, epoch), seqs in acks.items():
            for i in range(0, len(seqs), ACK_SEQS):
                if self.send(dev, messages.Ack(epoch, tuple(seqs[i:i + ACK_SEQS]))):
                    self.stats.incr("acks_sent")
        if replies:
            with self.store.read() as c:
                sessions = {w: Store.get_session(c, w) for _d, _n, w in replies}
            for dev, nonce, window in replies:
                self.send(dev, messages.TimeSync(self.cfg.now_ms(), nonce))
                s = sessions[window]
                self.send(dev, messages.Session(s[0], s[1]) if s else messages.Session())
        for m in group:
            if m.qos > 0:
                self.client.ack(m.mid, m.qos)
        self.on_commit()

    def _verify(self, topic: str, payload: bytes, ks: Keystore) -> _Verdict:
        device: str | None = None
        try:
            if len(payload) > limits.MAX_DEVICE_MESSAGE:
                raise LimitError(f"message is {len(payload)} bytes, limit {limits.MAX_DEVICE_MESSAGE}",
                                 "oversized")
            kind, device, leaf = topics.parse(topic)
            if kind != "d" or leaf not in ("up", "will"):
                raise topics.TopicError(f"not a device uplink topic: {topic!r}")
            if leaf == "will":
                return _Will(device)
            # The broker ACL (pattern on %u) makes the topic segment the authenticated username, so
            # kid == topic segment means kid == MQTT username.
            v = cose.mac0_verify(payload, ks.key_for, expected_kid=device.encode())
            msg = messages.decode_payload(v.payload, messages.DEVICE_UP)
            dk = ks.devices[device]
            epoch = getattr(msg, "epoch", 0)
            if epoch > dk.epoch:
                raise SchemaError(f"epoch {epoch} is newer than the keystore's {dk.epoch}", "unknown-epoch")
            if isinstance(msg, messages.Rating) and msg.scale != dk.scale:
                raise SchemaError(f"scale {msg.scale} but the device is registered with {dk.scale}",
                                  "wrong-scale")
            return _Up(device, dk, msg)
        except ProtocolError as exc:
            return _Reject(exc.reason, str(exc), device)
        except (ValueError, TypeError, KeyError) as exc:   # a decoder gap, still a bad message: quarantine
            return _Reject("malformed", f"{type(exc).__name__}: {exc}", device)

    def _apply(self, c: sqlite3.Connection, now: int, topic: str, payload: bytes, v: _Verdict,
               acks: dict[tuple[str, int], list[int]], replies: list[tuple[str, int, str]]) -> None:
        if isinstance(v, _Reject):
            self._quarantine(c, now, topic, v.device, v.reason, v.detail, payload)
            return
        if isinstance(v, _Will):
            Store.set_offline(c, v.device)
            self.stats.incr("wills")
            log.info("device %s went offline (last will)", v.device)
            return
        msg = v.msg
        if isinstance(msg, messages.Hello):          # Heartbeat subclasses Hello
            fields = asdict(msg)
            fields["type"] = msg.TYPE.name.lower()
            Store.update_health(c, v.device, now, fields)
            replies.append((v.device, msg.nonce, v.key.window))
            self.stats.incr("health")
            return
        if not isinstance(msg, messages.Rating | messages.NoRating):
            self._quarantine(c, now, topic, v.device, "bad-type", "not a device uplink message", payload)
            return
        Store.update_health(c, v.device, now, None)
        acks[(v.device, msg.epoch)].append(msg.seq)     # every outcome below is durable: ack it
        prior = Store.seen(c, v.device, msg.epoch, msg.seq, payload)
        if prior is Outcome.DUPLICATE:
            self.stats.incr("duplicates")
            return
        if prior is Outcome.CONFLICT:
            self._conflict(c, now, topic, v.device, msg, payload)
            return
        try:
            ctx = self._context(c, v, msg)
        except _ContextError as exc:
            self._quarantine(c, now, topic, v.device, exc.reason, str(exc), payload)
            return
        is_rating = isinstance(msg, messages.Rating)
        rec = RatingRecord(
            device=v.device, epoch=msg.epoch, seq=msg.seq, kind="rating" if is_rating else "no-rating",
            score=msg.score if isinstance(msg, messages.Rating) else None,
            scale=msg.scale if isinstance(msg, messages.Rating) else None,
            prompt=msg.prompt, press_time=msg.time, mono_ms=msg.mono, boot=msg.boot, delay_ms=msg.delay,
            received_ms=now, ctx=ctx, msg=payload)
        self.store.store_rating(c, rec)     # STORED: checked just above in the same transaction
        self.stats.incr("stored")

    def _context(self, c: sqlite3.Connection, v: _Up, msg: messages.Rating | messages.NoRating) -> Context:
        if msg.prompt == 0:
            # Opened on the keypad by the invite key: the clerk signed in at the window now, service unknown.
            s = Store.get_session(c, v.key.window)
            return Context(v.key.window, s[0] if s else None, 0, None, None, s[1] if s else None)
        p = Store.get_prompt(c, msg.prompt)
        if p is None:
            raise _ContextError(f"prompt {msg.prompt} was never opened", "unknown-prompt")
        if p.device != v.device:
            raise _ContextError(f"prompt {msg.prompt} belongs to {p.device}", "prompt-mismatch")
        if Store.prompt_rated(c, msg.prompt):
            raise _ContextError(f"prompt {msg.prompt} already has its rating", "prompt-already-rated")
        return p.ctx

    def _conflict(self, c: sqlite3.Connection, now: int, topic: str, device: str,
                  msg: messages.Rating | messages.NoRating, payload: bytes) -> None:
        detail = f"({device}, {msg.epoch}, {msg.seq}) arrived again with different bytes; original kept"
        Store.raise_alarm(c, now, "security", device, detail)
        self.stats.incr("security_alarms")
        log.warning("SECURITY: %s", detail)
        self._quarantine(c, now, topic, device, "conflicting-duplicate", detail, payload)

    def _quarantine(self, c: sqlite3.Connection, now: int, topic: str, device: str | None, reason: str,
                    detail: str, payload: bytes) -> None:
        flood = Store.quarantine(c, now, topic, device, reason, detail, payload,
                                 keep=self.cfg.quarantine_keep, sample=self.cfg.quarantine_sample)
        self.stats.reject(reason)
        if flood:
            Store.raise_alarm(c, now, "quarantine-flood", device or topic,
                              f"more than {self.cfg.quarantine_keep} rejected messages from "
                              f"{device or topic}: now one in {self.cfg.quarantine_sample} is kept",
                              once=True)
            log.error("quarantine flood from %s: sampling from now on", device or topic)
        log.warning("rejected message on %s: %s (%s)", topic, reason, detail)
