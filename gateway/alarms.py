"""Keypad alarms judged from the store: offline, silent in business hours, stuck key, outbox nearly full.

What is detected is mostly absence (no heartbeat, no outcome), so a pass runs every ``alarm_check_s`` on
the gateway's own thread as well as after commits (a last will clears or raises at once). Each alarm is
one open row per kind and keypad, raised once and closed with its clear time when the cause goes; the
rows and their events are in the database, so a restarted gateway carries on from them. The storage
check rides along (it otherwise runs only after commits, and a quiet hall has none), and the counters
are flushed here (stats.py).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from zoneinfo import ZoneInfo

from countersign.protocol.keystore import Keystore

from .config import GatewayConfig
from .stats import Stats
from .store import Store

log = logging.getLogger("countersign.gateway.alarms")

OFFLINE, SILENT, STUCK, OUTBOX = "offline", "silent", "stuck-key", "outbox-full"
KINDS = (OFFLINE, SILENT, STUCK, OUTBOX)
MISSED_HEARTBEATS = 3          # a keypad is offline after this many heartbeat periods without a message
SILENT_PROMPTS = 3             # ended prompts with no outcome, in silent_minutes, before a keypad is silent
PROMPT_GRACE_MS = 10_000       # after a prompt's timeout, the keypad's no-rating may still be on its way

Key = tuple[str, str]          # (kind, device)


class Alarms:
    def __init__(self, cfg: GatewayConfig, store: Store, keystore: Callable[[], Keystore], stats: Stats,
                 tz: ZoneInfo, after_pass: Callable[[], None]) -> None:
        """``after_pass`` runs after each pass (the storage check, waking the notifier)."""
        self.cfg, self.store, self.keystore, self.stats, self.tz = cfg, store, keystore, stats, tz
        self._after_pass = after_pass
        # A keypad never seen since this start is judged from here (not from the epoch).
        self._started_ms = cfg.now_ms()
        self._wake = threading.Event()
        self._stop = threading.Event()

    def start(self, spawn: Callable[[str, Callable[[], None]], threading.Thread]) -> None:
        spawn("alarms", self._run)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.cfg.alarm_check_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            self.check()

    def check(self) -> None:
        """One pass: raise what is wrong now and clear what no longer is."""
        now = self.cfg.now_ms()
        want = self._judge(now)
        have = {(a["kind"], a["device"]) for a in self.store.open_alarms() if a["kind"] in KINDS}
        if want.keys() != have:
            with self.store.transaction() as c:
                for kind, device in sorted(want.keys() - have):
                    if Store.raise_alarm(c, now, kind, device, want[(kind, device)], once=True):
                        log.warning("alarm %s %s: %s", kind, device, want[(kind, device)])
                for kind, device in sorted(have - want.keys()):
                    if Store.clear_alarms(c, now, kind, device):
                        log.info("alarm %s %s cleared", kind, device)
        self.stats.flush()
        self._after_pass()

    def _judge(self, now: int) -> dict[Key, str]:
        want: dict[Key, str] = {}
        health = self.store.devices()
        is_open = self.cfg.hours.is_open(dt.datetime.fromtimestamp(now / 1000, self.tz))
        period_ms = self.cfg.heartbeat_s * 1000
        for dev, dk in sorted(self.keystore().devices.items()):
            if dk.revoked:
                continue
            h = health.get(dev)
            seen = h["last_seen_ms"] if h else None
            if h is not None and not h["online"]:
                want[(OFFLINE, dev)] = f"window {dk.window}: keypad disconnected (last will)"
            elif now - (seen if seen is not None else self._started_ms) > MISSED_HEARTBEATS * period_ms:
                ago = "never" if seen is None else f"{(now - seen) // 1000} s ago"
                want[(OFFLINE, dev)] = f"window {dk.window}: no message from the keypad (last {ago})"
            if (OFFLINE, dev) in want:
                continue         # its last health report is old news: judge it again when it is back
            last = (h or {}).get("last") or {}
            stuck = int(last.get("stuck") or 0)
            if stuck:
                keys = ", ".join(str(i + 1) for i in range(16) if stuck >> i & 1)
                want[(STUCK, dev)] = f"window {dk.window}: key(s) {keys} held down"
            depth, free = int(last.get("outbox") or 0), last.get("outbox_free")
            if free is not None and depth + int(free) > 0 and \
                    int(free) * 100 < self.cfg.outbox_free_percent * (depth + int(free)):
                want[(OUTBOX, dev)] = f"window {dk.window}: outbox {depth} queued, {free} free"
            if is_open:
                silent = self._silent(dev, now)
                if silent:
                    want[(SILENT, dev)] = f"window {dk.window}: {silent}"
        return want

    def _silent(self, dev: str, now: int) -> str | None:
        since = now - self.cfg.silent_minutes * 60_000
        with self.store.read() as c:
            (unanswered,) = c.execute(
                "SELECT count(*) FROM prompts p WHERE p.device = ? AND p.opened_ms >= ?"
                " AND p.opened_ms + p.timeout * 1000 + ? < ?"
                " AND NOT EXISTS (SELECT 1 FROM ratings r WHERE r.prompt = p.id)",
                (dev, since, PROMPT_GRACE_MS, now)).fetchone()
            if unanswered < SILENT_PROMPTS:
                return None
            (outcomes,) = c.execute("SELECT count(*) FROM ratings WHERE device = ? AND received_ms >= ?",
                                    (dev, since)).fetchone()
        if outcomes:
            return None
        return (f"{unanswered} prompts in the last {self.cfg.silent_minutes} min ended with no rating"
                " or no-rating from the keypad")
