"""The CPython reference keypad: speaks the device protocol exactly as the MicroPython firmware will.

Used by tests now and as the simulator's light-weight device (hundreds in one process): per device
there is one paho network thread and nothing else; timers (prompt expiry, heartbeat, ack-timeout
resend) run on a ``devclock.Scheduler`` that many devices share.

Durable state in ``state_dir``:
- ``outbox.log`` (see ``outbox.py``): every rating / no-rating, fsynced before ``press()`` returns;
- ``state.json``: epoch, boot count and the seq reservation (``refseq.py``: a power cut can skip seqs,
  never reuse one).

This module is the keypad's protocol behaviour (the prompt state machine, what goes up, what comes
down) and the ``keypad.Keypad`` interface. Its parts each have a module: its vocabulary and config
``reftypes``, its durable counters ``refseq``, the records' uplink (outbox, resends, acks)
``refsender``, its MQTT link ``reflink``, its timers ``reftimers``.

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

import logging
import threading
from collections.abc import Callable

from countersign.common.mqtt import Message as MqttMessage
from countersign.common.outbox import Outbox
from countersign.protocol import cose, messages, topics
from countersign.protocol.errors import ProtocolError

from .devclock import Cancellable
from .keypad import Rated
from .reflink import Link
from .refsender import Sender
from .refseq import U32, SeqStore
from .reftimers import Timers
from .reftypes import DeviceConfig, PressOutcome, PressResult, State

log = logging.getLogger(__name__)

RESET_POWER_ON = 1
Event = int | str | Rated | None    # what an entry of the keypad's history names (a prompt id, a clerk...)


class RefDevice:
    """One reference keypad; ``start()`` boots it on its ``state_dir``, ``power_cut()`` ends it for good."""

    def __init__(self, cfg: DeviceConfig) -> None:
        topics.check_id(cfg.device_id)
        if len(cfg.key) != cose.KEY_LEN:
            raise ValueError(f"device key must be {cose.KEY_LEN} bytes")
        if cfg.scale not in messages.SCALES:
            raise ValueError(f"scale must be one of {messages.SCALES}")
        if not 0 <= cfg.epoch <= 0xFFFF:
            raise ValueError("epoch must be 0..65535")
        self.cfg = cfg
        self.device_id, self.epoch = cfg.device_id, cfg.epoch      # as the Keypad interface names them
        self._kid = cfg.device_id.encode()
        self._cond = threading.Condition(threading.RLock())
        self._state = State.READY
        self._clerk: str | None = None
        self._clerk_name: str | None = None
        self._prompt: messages.Prompt | None = None          # the open (or just rated) prompt
        self._prompt_id = 0                         # of the open prompt (0 = invite key)
        self._prompt_opened = 0                     # mono ms
        self._prompt_timer: Cancellable | None = None
        self._last_prompt_seen = 0
        self._offset_ms: int | None = None          # unix ms = mono ms + offset, once time-synced
        self._last_nonce: int | None = None
        self._acked: list[int] = []                 # seqs acked during this run, in ack order
        self._stats = dict.fromkeys(("presses", "ratings", "no_ratings", "ignored", "acked", "bad_downlink",
                                     "resent", "full", "stale_prompts", "connects"), 0)
        # What happened, in order, for the Keypad interface's waits: ("prompt", id), ("rated", seq),
        # ("no-rating", seq or None when the outbox was full), ("clerk", id), ("link", 1).
        self._history: list[tuple[str, Event]] = []
        self._connected = False
        self._running = False
        self._dead = False
        self._timers = Timers(f"devclock-{cfg.device_id}", cfg.scheduler, self._cond)
        self._link: Link | None = None
        self._outbox: Outbox | None = None
        self._sender: Sender | None = None
        self._seqs = SeqStore(cfg.state_dir, cfg.epoch)
        self._boot = 0
        self._t0 = 0

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> RefDevice:
        with self._cond:
            if self._running or self._dead:
                raise RuntimeError("device is running or was power-cut; make a new one on the same state_dir")
            cfg = self.cfg
            cfg.state_dir.mkdir(parents=True, exist_ok=True)
            self._outbox = Outbox(cfg.state_dir / "outbox.log", capacity=cfg.outbox_capacity)
            self._sender = Sender(self._outbox, cfg.key, self._kid, cfg.mono_ms, cfg.ack_timeout_s,
                                  self._publish, self._count_resend)
            self._boot = self._seqs.boot_up(self._outbox.max_seq(cfg.epoch))
            self._t0 = cfg.mono_ms()
            self._timers.open()
            self._running = True
            self._timers.every(cfg.heartbeat_s, self._heartbeat, lambda: self._running)
            self._timers.every(max(0.05, cfg.ack_timeout_s / 2), self._resend_overdue, lambda: self._running)
            self._link = Link(cfg.device_id, cfg.key, reconnect_min_s=cfg.reconnect_min_s,
                              reconnect_max_s=cfg.reconnect_max_s, rng=cfg.rng, on_up=self._on_up,
                              on_down=self._on_down, on_message=self._on_message)
            self._link.open(cfg.host, cfg.port, cfg.keepalive_s)
            self._cond.notify_all()
        return self

    def stop(self) -> None:
        """Clean stop: timers cancelled, DISCONNECT sent (no last will), files closed."""
        with self._cond:
            if not self._running:
                return
            self._running = False
            self._shutdown_locked()
        if self._link is not None:
            self._link.close()
        self._timers.close()

    def power_cut(self) -> None:
        """Everything stops at once: no further write to disk, no DISCONNECT (the broker's will fires)."""
        with self._cond:
            if not self._running:
                return
            self._running = False
            self._dead = True       # every callback from here on is a no-op
            self._shutdown_locked()
        if self._link is not None:
            self._link.cut()
        self._timers.close()

    def _shutdown_locked(self) -> None:
        self._timers.cancel_repeating()
        if self._prompt_timer is not None:
            self._prompt_timer.cancel()
        if self._outbox is not None:
            self._outbox.close()
        self._connected = False
        self._cond.notify_all()

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
                return PressResult(PressOutcome.OFF)
            self._stats["presses"] += 1
            if self._state == State.RATED:
                self._stats["ignored"] += 1
                self._cond.notify_all()
                return PressResult(PressOutcome.IGNORED)
            if self._state != State.PROMPT_OPEN:
                self._stats["ignored"] += 1
                self._cond.notify_all()
                return PressResult(PressOutcome.NO_PROMPT)
            if self._uplink().outbox.full:
                self._stats["full"] += 1
                self._cond.notify_all()
                return PressResult(PressOutcome.FULL)
            now = self.cfg.mono_ms()
            seq = self._seqs.take()
            msg = messages.Rating(epoch=self.cfg.epoch, seq=seq, score=score, scale=self.cfg.scale,
                         prompt=self._prompt_id, time=self._unix_s(now), mono=self._mono(now),
                         delay=max(0, now - self._prompt_opened) & U32, boot=self._boot)
            self._uplink().keep_and_send(msg, self._connected)
            self._stats["ratings"] += 1
            self._state = State.RATED
            self._history.append(("rated", Rated(seq, score)))
            self._cond.notify_all()
            return PressResult(PressOutcome.RATED, seq)

    def invite(self, timeout: float = 0.0) -> bool:
        """The invite key: opens a prompt (id 0) if a clerk is signed in and no unrated prompt is open.

        The answer is immediate here (``timeout`` is the Keypad interface's, for keypads that answer late).
        """
        with self._cond:
            if not (self._running and self.cfg.invite_key and self._clerk is not None):
                return False
            if self._state == State.PROMPT_OPEN:
                return False        # a customer is still to rate; a rated prompt may be followed at once
            self._open_prompt(0, self.cfg.invite_timeout_s)
            return True

    # -- the Keypad interface (keypad.py) ----------------------------------------------------------------

    @property
    def running(self) -> bool:
        with self._cond:
            return self._running

    def mark(self) -> int:
        with self._cond:
            return len(self._history)

    def _wait_event(self, kind: str, timeout: float, since: int,
                    value: Callable[[Event], bool] = lambda _v: True) -> tuple[bool, Event]:
        found: list[Event] = []

        def seen() -> bool:
            for k, v in self._history[since:]:
                if k == kind and value(v):
                    found.append(v)
                    return True
            return not self._running

        with self._cond:
            self._cond.wait_for(seen, timeout)
        return (True, found[0]) if found else (False, None)

    def wait_connected(self, timeout: float, since: int = 0) -> bool:
        return self.wait_for(lambda: self._connected or not self._running, timeout) and self.connected

    def wait_clerk(self, clerk: str, timeout: float, since: int = 0) -> bool:
        shown = self.wait_for(lambda: self._clerk == clerk or not self._running, timeout)
        return shown and self.clerk == clerk

    def wait_prompt(self, prompt_id: int, timeout: float, since: int = 0) -> bool:
        return self._wait_event("prompt", timeout, since, lambda v: v == prompt_id)[0]

    def wait_rated(self, timeout: float, since: int = 0) -> Rated | None:
        ok, rated = self._wait_event("rated", timeout, since)
        return rated if ok and isinstance(rated, Rated) else None

    def wait_no_rating(self, timeout: float, since: int = 0) -> bool:
        return self._wait_event("no-rating", timeout, since)[0]

    def tap(self, key: int | str) -> bool:
        if key == "i":
            return self.invite()
        if not isinstance(key, int):
            raise ValueError(f"no key {key!r} on a keypad")
        return self.press(key).outcome != PressOutcome.OFF

    def settled(self) -> bool:
        return self.outbox_depth() == 0

    def wait_settled(self, timeout: float) -> bool:
        return self.wait_for(self.settled, timeout)

    # -- prompt state machine (all under the lock) -----------------------------------------------------

    def _open_prompt(self, prompt_id: int, timeout_s: int) -> None:
        if self._state == State.PROMPT_OPEN:
            self._expire_locked()       # the previous customer did not rate
        if self._prompt_timer is not None:
            self._prompt_timer.cancel()
        self._prompt_id = prompt_id
        self._prompt_opened = self.cfg.mono_ms()
        self._state = State.PROMPT_OPEN
        self._history.append(("prompt", prompt_id))
        opened = self._prompt_opened
        self._prompt_timer = self._timers.later(timeout_s, lambda: self._window_end(opened))
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
        now = self.cfg.mono_ms()
        self._state = State.EXPIRED
        if self._uplink().outbox.full:
            # Never overwrite: the no-rating cannot be kept; counted so the heartbeat's outbox_free = 0
            # and this count tell the hall why.
            self._stats["full"] += 1
            self._history.append(("no-rating", None))
            return
        seq = self._seqs.take()
        msg = messages.NoRating(epoch=self.cfg.epoch, seq=seq, prompt=self._prompt_id, time=self._unix_s(now),
                       mono=self._mono(now), delay=max(0, now - self._prompt_opened) & U32, boot=self._boot)
        self._uplink().keep_and_send(msg, self._connected)
        self._stats["no_ratings"] += 1
        self._history.append(("no-rating", seq))

    # -- uplink ----------------------------------------------------------------------------------------

    def _uplink(self) -> Sender:
        if self._sender is None:
            raise RuntimeError(f"{self.cfg.device_id}: not started")
        return self._sender

    def _publish(self, data: bytes) -> None:
        if self._link is not None:
            self._link.publish(data)

    def _count_resend(self) -> None:
        self._stats["resent"] += 1

    def _resend_overdue(self) -> None:
        with self._cond:
            if self._running and self._connected and self._sender is not None:
                self._sender.resend_overdue()

    def _health(self, cls: type[messages.Hello]) -> messages.Hello:
        box = self._uplink().outbox
        now = self.cfg.mono_ms()
        self._last_nonce = self.cfg.rng.getrandbits(32)
        return cls(epoch=self.cfg.epoch, boot=self._boot, nonce=self._last_nonce, fw=self.cfg.fw,
                   reset=RESET_POWER_ON, heap=0, outbox=len(box), outbox_free=box.free,
                   uptime=(max(0, now - self._t0) // 1000) & U32, rssi=None,
                   ignored=self._stats["ignored"] & U32, stuck=0, time=self._unix_s(now))

    def _heartbeat(self) -> None:
        with self._cond:
            if self._running and self._connected and self._link is not None:
                self._link.publish(self._uplink().seal(self._health(messages.Heartbeat)))

    # -- downlink --------------------------------------------------------------------------------------

    def _on_message(self, m: MqttMessage) -> None:
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
            if isinstance(msg, messages.Ack):
                self._handle_ack(msg)
            elif isinstance(msg, messages.TimeSync):
                if self._last_nonce is not None and msg.nonce == self._last_nonce:
                    self._offset_ms = msg.now_ms - self.cfg.mono_ms()
                    self._last_nonce = None     # one use: a replayed TimeSync finds no nonce to match
                else:
                    self._stats["bad_downlink"] += 1
            elif isinstance(msg, messages.Session):
                self._clerk, self._clerk_name = msg.clerk, msg.clerk_name
                self._history.append(("clerk", msg.clerk))
            elif isinstance(msg, messages.Prompt):
                self._handle_prompt(msg)
            self._cond.notify_all()

    def _handle_ack(self, ack: messages.Ack) -> None:
        if ack.epoch != self.cfg.epoch:
            return
        done = self._uplink().acked(ack.epoch, ack.seqs)
        self._acked.extend(done)
        self._stats["acked"] += len(done)
        if self.cfg.on_stored is not None:
            for s in done:
                self.cfg.on_stored(s)

    def _handle_prompt(self, p: messages.Prompt) -> None:
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

    def _on_up(self) -> None:
        with self._cond:
            if not self._running or self._link is None:
                return
            self._connected = True
            self._stats["connects"] += 1
            self._history.append(("link", 1))
            self._link.publish(self._uplink().seal(self._health(messages.Hello)))
            self._uplink().resend_all()
            self._cond.notify_all()

    def _on_down(self) -> None:
        with self._cond:
            self._connected = False
            self._cond.notify_all()

    # -- helpers ---------------------------------------------------------------------------------------

    def _mono(self, now: int) -> int:
        return max(0, now - self._t0) & U32

    def _unix_s(self, now: int) -> int | None:
        if self._offset_ms is None:
            return None
        return ((now + self._offset_ms) // 1000) & U32


__all__ = ["DeviceConfig", "PressOutcome", "PressResult", "RefDevice", "State"]
