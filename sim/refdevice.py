"""The CPython reference keypad: speaks the device protocol exactly as the MicroPython firmware will.

Used by tests now and as the simulator's light-weight device (hundreds in one process): per device
there is one paho network thread and nothing else; timers (prompt expiry, heartbeat, ack-timeout
resend) run on a ``devclock.Scheduler`` that many devices share.

Durable state in ``state_dir``:
- ``outbox.log`` (see ``outbox.py``): every rating / no-rating, fsynced before ``press()`` returns;
- ``state.json``: epoch, boot count and the seq reservation. Seqs are handed out from blocks of
  ``SEQ_BLOCK``; the block's end is written (atomically, fsynced) before the first seq of it is used,
  and every boot continues after the reserved end. So a power cut at any instant can skip seqs but never
  reuse one. A new epoch (re-provisioned device) starts again at seq 1.

Prompt flow (state machine)::

    READY --Prompt (id > last seen) / invite key with a clerk signed in (id 0)--> PROMPT_OPEN
    PROMPT_OPEN --first press--> RATED --window ends--> READY  (further presses: "ignored", counted)
    RATED --Prompt / invite key--> PROMPT_OPEN                  (the next customer need not wait)
    PROMPT_OPEN --window ends without a press--> EXPIRED  (a NoRating is outboxed and sent)
    EXPIRED --Prompt / invite / Session--> ...      (presses in READY/EXPIRED: "no-prompt", counted)

A new Prompt while one is open replaces it: an unrated open prompt first ends with a NoRating (the
customer of the previous transaction did not rate), then the new one opens. A Session message only
changes the clerk shown; it does not close an open prompt.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from countersign.common.mqtt import tcp_no_delay
from countersign.common.outbox import DEFAULT_CAPACITY, Outbox
from countersign.protocol import cose, messages, topics
from countersign.protocol.errors import ProtocolError
from countersign.protocol.keystore import mqtt_password, write_atomic
from countersign.protocol.messages import (
    Ack,
    Heartbeat,
    Hello,
    Message,
    NoRating,
    Prompt,
    Rating,
    Session,
    TimeSync,
)

from .devclock import Cancellable, Scheduler, TimerLike
from .devclock import mono_ms as _default_mono_ms

log = logging.getLogger(__name__)

SEQ_BLOCK = 64
U32 = 0xFFFFFFFF
RESET_POWER_ON = 1


class State(StrEnum):
    READY = "ready"
    PROMPT_OPEN = "prompt_open"
    RATED = "rated"
    EXPIRED = "expired"


class Outcome(StrEnum):
    RATED = "rated"
    IGNORED = "ignored"         # a second press in a prompt already rated
    NO_PROMPT = "no-prompt"     # no prompt open: not a rating
    FULL = "full"               # outbox full: refused, nothing overwritten
    OFF = "off"                 # device not running


@dataclass(frozen=True)
class PressResult:
    outcome: Outcome
    seq: int | None = None

    def __eq__(self, other: object) -> bool:
        # Lets callers write ``dev.press(3) == "rated"`` as well as compare whole results.
        if isinstance(other, str):
            return self.outcome == other
        if isinstance(other, PressResult):
            return (self.outcome, self.seq) == (other.outcome, other.seq)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.outcome, self.seq))


@dataclass
class DeviceConfig:
    device_id: str
    key: bytes
    epoch: int
    host: str
    port: int
    state_dir: Path
    scale: int = 4
    invite_key: bool = True
    heartbeat_s: float = 60.0
    fw: str = "ref-0.1.0"
    mono_ms: Callable[[], int] = _default_mono_ms
    scheduler: TimerLike | None = None          # None: the device runs a scheduler of its own
    ack_timeout_s: float = 10.0                 # resend unacked records this long after sending
    invite_timeout_s: int = 20                  # window of a prompt opened by the invite key
    outbox_capacity: int = DEFAULT_CAPACITY
    keepalive_s: int = 30
    reconnect_min_s: float = 0.5                # paho doubles it per failed attempt, up to the max;
    reconnect_max_s: float = 8.0                # each device adds its own random jitter to the min
    on_stored: Callable[[int], None] | None = None   # called with each seq the gateway acked
    rng: random.Random = field(default_factory=random.Random)


class RefDevice:
    def __init__(self, cfg: DeviceConfig) -> None:
        topics.check_id(cfg.device_id)
        if len(cfg.key) != cose.KEY_LEN:
            raise ValueError(f"device key must be {cose.KEY_LEN} bytes")
        if cfg.scale not in messages.SCALES:
            raise ValueError(f"scale must be one of {messages.SCALES}")
        if not 0 <= cfg.epoch <= 0xFFFF:
            raise ValueError("epoch must be 0..65535")
        self.cfg = cfg
        self._kid = cfg.device_id.encode()
        self._up = topics.device_up(cfg.device_id)
        self._down = topics.device_down(cfg.device_id)
        self._cond = threading.Condition(threading.RLock())
        self._state = State.READY
        self._clerk: str | None = None
        self._clerk_name: str | None = None
        self._prompt: Prompt | None = None          # the open (or just rated) prompt
        self._prompt_id = 0                         # of the open prompt (0 = invite key)
        self._prompt_opened = 0                     # mono ms
        self._prompt_timer: Cancellable | None = None
        self._last_prompt_seen = 0
        self._offset_ms: int | None = None          # unix ms = mono ms + offset, once time-synced
        self._last_nonce: int | None = None
        self._sent_at: dict[tuple[int, int], int] = {}
        self._acked: list[int] = []                 # seqs acked during this run, in ack order
        self._stats = dict.fromkeys(("presses", "ratings", "no_ratings", "ignored", "acked", "bad_downlink",
                                     "resent", "full", "stale_prompts", "connects"), 0)
        self._connected = False
        self._running = False
        self._dead = False
        self._net_gone = threading.Event()
        self._timers: list[Cancellable] = []
        self._own_scheduler: Scheduler | None = None
        self._sched: TimerLike | None = cfg.scheduler
        self._client: mqtt.Client | None = None
        self._outbox: Outbox | None = None
        self._boot = 0
        self._next_seq = 1
        self._reserved = 0
        self._t0 = 0

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> RefDevice:
        with self._cond:
            if self._running or self._dead:
                raise RuntimeError("device is running or was power-cut; make a new one on the same state_dir")
            cfg = self.cfg
            cfg.state_dir.mkdir(parents=True, exist_ok=True)
            self._outbox = Outbox(cfg.state_dir / "outbox.log", capacity=cfg.outbox_capacity)
            self._boot_state()
            self._t0 = cfg.mono_ms()
            if self._sched is None:
                self._own_scheduler = Scheduler(f"devclock-{cfg.device_id}")
                self._sched = self._own_scheduler
            self._running = True
            self._every(cfg.heartbeat_s, self._heartbeat)
            self._every(max(0.05, cfg.ack_timeout_s / 2), self._resend_overdue)
            self._client = self._make_client()
            self._client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
            self._client.loop_start()
            self._cond.notify_all()
        return self

    def stop(self) -> None:
        """Clean stop: timers cancelled, DISCONNECT sent (no last will), files closed."""
        with self._cond:
            if not self._running:
                return
            self._running = False
            self._shutdown_locked()
        client = self._client
        if client is not None:
            client.disconnect()
            client.loop_stop()
        if self._own_scheduler is not None:
            self._own_scheduler.close()
            self._own_scheduler, self._sched = None, self.cfg.scheduler   # a later start() makes a new one

    def power_cut(self) -> None:
        """Everything stops at once: no further write to disk, no DISCONNECT (the broker's will fires)."""
        with self._cond:
            if not self._running:
                return
            self._running = False
            self._dead = True       # every callback from here on is a no-op
            self._shutdown_locked()
        client = self._client
        if client is not None:
            sock = client.socket()
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                # on_disconnect (network thread) sees _dead and ends that thread without reconnecting.
                if not self._net_gone.wait(5.0):
                    client.loop_stop()
            else:
                client.loop_stop()
        if self._own_scheduler is not None:
            self._own_scheduler.close()

    def _shutdown_locked(self) -> None:
        for t in self._timers:
            t.cancel()
        self._timers.clear()
        if self._prompt_timer is not None:
            self._prompt_timer.cancel()
        if self._outbox is not None:
            self._outbox.close()
        self._connected = False
        self._cond.notify_all()

    def _boot_state(self) -> None:
        """Read state.json, count this boot and continue seqs after the reserved end."""
        path = self.cfg.state_dir / "state.json"
        st: dict[str, Any] = {}
        if path.exists():
            try:
                st = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                # write_atomic never leaves a torn file; an unreadable one is damage, not a crash.
                raise RuntimeError(f"device state {path} is unreadable: {exc}") from exc
        self._boot = int(st.get("boot", 0)) + 1
        same_epoch = st.get("epoch") == self.cfg.epoch
        reserved = int(st.get("reserved", 0)) if same_epoch else 0
        assert self._outbox is not None
        # The outbox check is belt and braces: a seq still waiting in it is never handed out again.
        self._next_seq = max(reserved, self._outbox.max_seq(self.cfg.epoch)) + 1
        self._reserved = self._next_seq - 1
        self._save_state()

    def _save_state(self) -> None:
        write_atomic(self.cfg.state_dir / "state.json",
                     json.dumps({"epoch": self.cfg.epoch, "boot": self._boot, "reserved": self._reserved}))

    def _take_seq(self) -> int:
        if self._next_seq > self._reserved:
            if self._next_seq + SEQ_BLOCK - 1 > U32:
                raise RuntimeError("seq space of this epoch is exhausted: re-provision with a new epoch")
            self._reserved = self._next_seq + SEQ_BLOCK - 1
            self._save_state()      # durable before any seq of the block leaves the device
        seq = self._next_seq
        self._next_seq += 1
        return seq

    # -- public API ------------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        with self._cond:
            return self._state

    @property
    def boot(self) -> int:
        return self._boot

    @property
    def connected(self) -> bool:
        with self._cond:
            return self._connected

    @property
    def prompt_id(self) -> int | None:
        """Id of the prompt open for a press (0 = invite key), None when no press would be a rating."""
        with self._cond:
            return self._prompt_id if self._state == State.PROMPT_OPEN else None

    @property
    def clerk(self) -> str | None:
        with self._cond:
            return self._clerk

    def outbox_depth(self) -> int:
        with self._cond:
            return 0 if self._outbox is None else len(self._outbox)

    def outbox_seqs(self) -> list[int]:
        with self._cond:
            return [] if self._outbox is None else [i.seq for i in self._outbox.items()]

    def acked_seqs(self) -> list[int]:
        with self._cond:
            return list(self._acked)

    def now(self) -> int | None:
        """Unix seconds from the last TimeSync, or None while the clock has never been set."""
        with self._cond:
            return self._unix_s(self.cfg.mono_ms())

    def stats(self) -> dict[str, int | bool]:
        with self._cond:
            out: dict[str, int | bool] = dict(self._stats)
            out["connected"] = self._connected
            out["outbox"] = 0 if self._outbox is None else len(self._outbox)
            return out

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds; it is re-checked on every state change of this device."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def press(self, score: int) -> PressResult:
        """A customer presses key ``score`` (1..scale). Returns only after a rating is on disk."""
        if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= self.cfg.scale:
            raise ValueError(f"key {score!r} does not exist on a {self.cfg.scale}-key keypad")
        with self._cond:
            if not self._running:
                return PressResult(Outcome.OFF)
            self._stats["presses"] += 1
            if self._state == State.RATED:
                self._stats["ignored"] += 1
                self._cond.notify_all()
                return PressResult(Outcome.IGNORED)
            if self._state != State.PROMPT_OPEN:
                self._stats["ignored"] += 1
                self._cond.notify_all()
                return PressResult(Outcome.NO_PROMPT)
            assert self._outbox is not None
            if self._outbox.full:
                self._stats["full"] += 1
                self._cond.notify_all()
                return PressResult(Outcome.FULL)
            now = self.cfg.mono_ms()
            seq = self._take_seq()
            msg = Rating(epoch=self.cfg.epoch, seq=seq, score=score, scale=self.cfg.scale,
                         prompt=self._prompt_id, time=self._unix_s(now), mono=self._mono(now),
                         delay=max(0, now - self._prompt_opened) & U32, boot=self._boot)
            self._outbox_and_send(msg)
            self._stats["ratings"] += 1
            self._state = State.RATED
            self._cond.notify_all()
            return PressResult(Outcome.RATED, seq)

    def invite(self) -> bool:
        """The invite key: opens a prompt (id 0) if a clerk is signed in and no unrated prompt is open."""
        with self._cond:
            if not (self._running and self.cfg.invite_key and self._clerk is not None):
                return False
            if self._state == State.PROMPT_OPEN:
                return False        # a customer is still to rate; a rated prompt may be followed at once
            self._open_prompt(0, self.cfg.invite_timeout_s)
            return True

    # -- prompt state machine (all under the lock) -----------------------------------------------------

    def _open_prompt(self, prompt_id: int, timeout_s: int) -> None:
        if self._state == State.PROMPT_OPEN:
            self._expire_locked()       # the previous customer did not rate
        if self._prompt_timer is not None:
            self._prompt_timer.cancel()
        self._prompt_id = prompt_id
        self._prompt_opened = self.cfg.mono_ms()
        self._state = State.PROMPT_OPEN
        opened = self._prompt_opened
        self._prompt_timer = self._later(timeout_s, lambda: self._window_end(opened))
        self._cond.notify_all()

    def _window_end(self, opened: int) -> None:
        with self._cond:
            if not self._running or self._prompt_opened != opened:
                return      # a newer prompt replaced this one
            if self._state == State.PROMPT_OPEN:
                self._expire_locked()
            elif self._state == State.RATED:
                self._state = State.READY
            self._cond.notify_all()

    def _expire_locked(self) -> None:
        assert self._outbox is not None
        now = self.cfg.mono_ms()
        self._state = State.EXPIRED
        if self._outbox.full:
            # Never overwrite: the no-rating cannot be kept; counted so the heartbeat's outbox_free = 0
            # and this count tell the hall why.
            self._stats["full"] += 1
            return
        seq = self._take_seq()
        msg = NoRating(epoch=self.cfg.epoch, seq=seq, prompt=self._prompt_id, time=self._unix_s(now),
                       mono=self._mono(now), delay=max(0, now - self._prompt_opened) & U32, boot=self._boot)
        self._outbox_and_send(msg)
        self._stats["no_ratings"] += 1

    # -- uplink ----------------------------------------------------------------------------------------

    def _seal(self, msg: Message) -> bytes:
        return bytes(cose.mac0_encode(self.cfg.key, self._kid, msg.encode()))

    def _outbox_and_send(self, msg: Rating | NoRating) -> None:
        assert self._outbox is not None
        data = self._seal(msg)
        self._outbox.append(msg.epoch, msg.seq, data)   # fsynced: survives a power cut from here on
        if self._connected:
            self._publish_item(msg.epoch, msg.seq, data)

    def _publish_item(self, epoch: int, seq: int, data: bytes) -> None:
        if (epoch, seq) in self._sent_at:
            self._stats["resent"] += 1
        self._sent_at[(epoch, seq)] = self.cfg.mono_ms()
        assert self._client is not None
        self._client.publish(self._up, data, qos=1)

    def _resend_all(self) -> None:
        assert self._outbox is not None
        for it in self._outbox.items():
            if (it.epoch, it.seq) not in self._sent_at:
                self._sent_at[(it.epoch, it.seq)] = -1     # sent by an earlier boot: this is a resend
            self._publish_item(it.epoch, it.seq, it.data)

    def _resend_overdue(self) -> None:
        with self._cond:
            if not (self._running and self._connected) or self._outbox is None:
                return
            limit = self.cfg.mono_ms() - int(self.cfg.ack_timeout_s * 1000)
            for it in self._outbox.items():
                if self._sent_at.get((it.epoch, it.seq), -1) <= limit:
                    self._publish_item(it.epoch, it.seq, it.data)

    def _health(self, cls: type[Hello]) -> Hello:
        assert self._outbox is not None
        now = self.cfg.mono_ms()
        self._last_nonce = self.cfg.rng.getrandbits(32)
        return cls(epoch=self.cfg.epoch, boot=self._boot, nonce=self._last_nonce, fw=self.cfg.fw,
                   reset=RESET_POWER_ON, heap=0, outbox=len(self._outbox), outbox_free=self._outbox.free,
                   uptime=(max(0, now - self._t0) // 1000) & U32, rssi=None,
                   ignored=self._stats["ignored"] & U32, stuck=0, time=self._unix_s(now))

    def _heartbeat(self) -> None:
        with self._cond:
            if self._running and self._connected and self._client is not None:
                self._client.publish(self._up, self._seal(self._health(Heartbeat)), qos=1)

    # -- downlink --------------------------------------------------------------------------------------

    def _on_message(self, client: mqtt.Client, userdata: object, m: mqtt.MQTTMessage) -> None:
        with self._cond:
            if not self._running:
                return
            try:
                v = cose.mac0_verify(bytes(m.payload), lambda kid: self.cfg.key if kid == self._kid else None,
                                     expected_kid=self._kid)
                msg = messages.decode_payload(v.payload, messages.DEVICE_DOWN)
            except (ProtocolError, ValueError) as exc:
                self._stats["bad_downlink"] += 1
                log.info("%s: bad downlink ignored: %s", self.cfg.device_id, exc)
                self._cond.notify_all()
                return
            if isinstance(msg, Ack):
                self._handle_ack(msg)
            elif isinstance(msg, TimeSync):
                if self._last_nonce is not None and msg.nonce == self._last_nonce:
                    self._offset_ms = msg.now_ms - self.cfg.mono_ms()
                    self._last_nonce = None     # one use: a replayed TimeSync finds no nonce to match
                else:
                    self._stats["bad_downlink"] += 1
            elif isinstance(msg, Session):
                self._clerk, self._clerk_name = msg.clerk, msg.clerk_name
            elif isinstance(msg, Prompt):
                self._handle_prompt(msg)
            self._cond.notify_all()

    def _handle_ack(self, ack: Ack) -> None:
        assert self._outbox is not None
        if ack.epoch != self.cfg.epoch:
            return
        done = self._outbox.ack(ack.epoch, ack.seqs)
        for s in done:
            self._sent_at.pop((ack.epoch, s), None)
            self._acked.append(s)
        self._stats["acked"] += len(done)
        if self.cfg.on_stored is not None:
            for s in done:
                self.cfg.on_stored(s)

    def _handle_prompt(self, p: Prompt) -> None:
        if p.prompt <= self._last_prompt_seen:
            self._stats["stale_prompts"] += 1      # a replay or a redelivery of an old prompt
            return
        self._last_prompt_seen = p.prompt
        now_s = self._unix_s(self.cfg.mono_ms())
        timeout = p.timeout if p.timeout > 0 else self.cfg.invite_timeout_s
        if now_s is not None and p.time is not None and p.time + timeout < now_s:
            # Queued at the broker while we were offline and its window has long closed: opening it now
            # would attribute a later customer's press to an earlier transaction.
            self._stats["stale_prompts"] += 1
            return
        self._prompt = p
        self._clerk = p.clerk or self._clerk
        self._open_prompt(p.prompt, timeout)

    # -- MQTT plumbing ---------------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        cfg = self.cfg
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cfg.device_id, clean_session=False,
                        protocol=mqtt.MQTTv311)
        c.username_pw_set(cfg.device_id, mqtt_password(cfg.key))
        # The will carries nothing: the broker sends it when the device vanishes, so it cannot be MACed
        # freshly; the topic alone tells the gateway "this device dropped off".
        c.will_set(topics.device_will(cfg.device_id), b"", qos=1)
        # paho backs off exponentially but without jitter; a per-device random min delay spreads the
        # reconnects of hundreds of devices after a broker restart.
        lo = cfg.reconnect_min_s * (1.0 + cfg.rng.random())
        c.reconnect_delay_set(min_delay=lo, max_delay=max(lo, cfg.reconnect_max_s))  # type: ignore[arg-type]
        c.max_inflight_messages_set(20)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_socket_open = tcp_no_delay
        return c

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: Any, rc: Any, props: Any) -> None:
        if self._dead:
            client.loop_stop()      # called from the network thread: ends it without a join
            self._net_gone.set()
            return
        if rc.is_failure:
            log.info("%s: connect refused: %s", self.cfg.device_id, rc)
            return
        client.subscribe(self._down, qos=1)
        with self._cond:
            if not self._running:
                return
            self._connected = True
            self._stats["connects"] += 1
            client.publish(self._up, self._seal(self._health(Hello)), qos=1)
            self._resend_all()
            self._cond.notify_all()

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: Any, rc: Any, props: Any) -> None:
        with self._cond:
            self._connected = False
            self._cond.notify_all()
        if self._dead:
            client.loop_stop()
            self._net_gone.set()

    # -- helpers ---------------------------------------------------------------------------------------

    def _mono(self, now: int) -> int:
        return max(0, now - self._t0) & U32

    def _unix_s(self, now: int) -> int | None:
        if self._offset_ms is None:
            return None
        return ((now + self._offset_ms) // 1000) & U32

    def _later(self, delay_s: float, fn: Callable[[], None]) -> Cancellable:
        assert self._sched is not None
        return self._sched.call_later(delay_s, fn)

    def _every(self, period_s: float, fn: Callable[[], None]) -> None:
        """A repeating timer on the shared scheduler (re-armed after each run while running)."""
        slot = len(self._timers)

        def tick() -> None:
            fn()
            with self._cond:
                if self._running:
                    self._timers[slot] = self._later(period_s, tick)

        self._timers.append(self._later(period_s, tick))
