"""The hall gateway: store + ingest + local API + forwarder, as one object.

Runs as a daemon (cli.py) or embedded: several ``Gateway`` instances can live in one process, each with
its own broker, database and HTTP port, because nothing here is module-level state.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from typing import Any

from countersign.protocol.keystore import Keystore

from . import tokens
from .alarms import Alarms
from .api import create_app
from .config import GatewayConfig
from .counter import Counter, Limits
from .errors import NotFound
from .forward import Forwarder, ForwarderConfig
from .hours import zone
from .http import HttpLimits, HttpServer, TlsFiles
from .identity import Caller
from .ingest import Ingest
from .notify import Notifier
from .page import hall_page_routes
from .reports import ReportConfig
from .roster import Roster
from .stats import Stats
from .store import Store
from .tokens import Credentials
from .watch import Watch
from .webhook import PART as WEBHOOK_PART
from .webhook import Backoff, WebhookSender

log = logging.getLogger("countersign.gateway")

STORAGE_CHECK_MS = 10_000
HTTP_PART = "http"


class Gateway:
    def __init__(self, config: GatewayConfig,
                 on_fatal: Callable[[BaseException], None] | None = None) -> None:
        """``on_fatal`` is called (from a worker thread) if ingest dies of a bug; the daemon then exits."""
        # First: every part below (and the helpers' threads) spawns or adopts its thread through it.
        self.watch = Watch(self._fatal)
        self.cfg = config
        self.failed = threading.Event()
        self._on_fatal_cb = on_fatal
        self._ks_lock = threading.Lock()
        self._ks = self._load_keystore()
        self.store = Store(config.db_path, config.now_ms)
        self._stats = Stats(self.store)        # counters kept in the database across restarts
        tz = zone(config.timezone)
        self.notifier = Notifier(self.store, config.alarm_notify, config.hall, tz, config.now_ms,
                                 config.notify_retry_s, config.notify_retry_max_s)
        self.alarms = Alarms(config, self.store, self.keystore, self._stats, tz, self._after_alarm_pass)
        # None without an uplink: ratings are still queued (store.py) and wait for one.
        self.forwarder: Forwarder | None = None
        if config.uplink_host is not None and config.signing_key_path is not None:
            self.forwarder = Forwarder(ForwarderConfig(
                db_path=config.db_path, hall=config.hall, signing_key_path=config.signing_key_path,
                province_public_key=bytes.fromhex(config.province_public_key),
                uplink_host=config.uplink_host, uplink_port=config.uplink_port,
                uplink_password=config.uplink_password, batch_size=config.batch_size,
                retry_s=config.retry_s, backlog_threshold=config.backlog_threshold,
                now_ms=config.now_ms, on_alarm=self._on_alarm,
                reports=ReportConfig(self.keystore, config.timezone, config.heartbeat_s,
                                     config.report_every_s)))
        self.ingest = Ingest(config, self.store, self.keystore, self._stats, self._committed, self._fatal,
                             self.watch)
        self.credentials = Credentials(config.tokens_path)
        self.roster = None if config.roster_path is None else Roster(config.roster_path, config.clerk_pattern)
        backoff = Backoff(config.webhook_retry_s, config.webhook_retry_max_s)
        self.webhooks = WebhookSender(self.store, config.now_ms, config.prompt_grace_s, backoff, config.hall,
                                      self._credential_valid)
        self.counter = Counter(
            config.hall, self.store, self.roster,
            Limits(config.prompt_burst, config.prompt_interval_s, config.prompt_grace_s,
                   config.prompt_timeout_default, config.prompt_timeout_min, config.prompt_timeout_max),
            config.now_ms, self.device_for_window, self.ingest.send, self._prompt_opened, self.webhooks.wake)
        tls = None
        if config.http_cert is not None and config.http_key is not None:
            tls = TlsFiles(config.http_cert, config.http_key)
        # One server for the counter API and the hall manager's page (its own log-in, under /).
        page = hall_page_routes(config, self.store, self.keystore, self.backlog)
        app = create_app(self, self.credentials, page)
        self.api = HttpServer(
            app, config.http_bind, config.http_port,
            HttpLimits(max_connections=config.http_max_connections,
                       header_timeout_s=config.http_header_timeout_s, keep_alive_s=config.http_keep_alive_s),
            tls)
        self._last_storage_check = -STORAGE_CHECK_MS
        self._started = False
        self._commits = threading.Condition()

    # --- lifecycle --------------------------------------------------------------------------------------

    def start(self, wait_s: float = 10.0) -> None:
        """Start every part; wait up to ``wait_s`` for the broker subscription (it keeps retrying after).

        ``wait_s=0``: do not wait (the daemon watches ``ingest.ready`` and the parts itself)."""
        if self.forwarder is not None:
            self.forwarder.start(self.watch)
        self.ingest.start()
        self.notifier.start(self.watch)
        self.alarms.start(self.watch.spawn)
        self.webhooks.thread = self.watch.spawn(WEBHOOK_PART, self.webhooks.run)
        self.api.start()
        self.watch.adopt(HTTP_PART, self.api.thread)
        self._started = True
        self._check_storage(force=True)
        if wait_s > 0 and not self.ingest.ready.wait(wait_s):
            log.warning("hall broker %s:%d not reachable yet; retrying", self.cfg.broker_host,
                        self.cfg.broker_port)

    def stop(self) -> None:
        if not self._started:
            self.api.stop()       # closes the listening socket it bound in __init__
            self.store.close()
            return
        self._started = False
        self.watch.stopping()
        self.api.stop()
        self.ingest.stop()
        if self.forwarder is not None:
            self.forwarder.stop()
        self.alarms.stop()
        self.notifier.stop()
        self.webhooks.stop()
        self._stats.flush()
        self.store.close()

    @property
    def http_port(self) -> int:
        return self.api.port

    def stats(self) -> dict[str, int]:
        s = self._stats.snapshot()
        for reason, n in self._stats.rejected().items():
            s[f"rejected:{reason}"] = n
        s["backlog"] = self.backlog()
        return s

    # --- keystore ---------------------------------------------------------------------------------------

    def _load_keystore(self) -> Keystore:
        ks = Keystore.load(self.cfg.keystore_path)
        if ks.hall and ks.hall != self.cfg.hall:
            log.warning("keystore is for hall %s, gateway is %s", ks.hall, self.cfg.hall)
        return ks

    def keystore(self) -> Keystore:
        with self._ks_lock:
            return self._ks

    def reload_keystore(self) -> None:
        """Re-read the keystore file (new, re-keyed or revoked devices); a bad file keeps the old one."""
        ks = self._load_keystore()
        with self._ks_lock:
            self._ks = ks
        log.info("keystore reloaded: %d devices", len(ks.devices))
        if self.forwarder is not None:
            self.forwarder.wake()      # a device added: its enrollment notice goes now

    def device_for_window(self, window: str) -> str:
        for dev, dk in sorted(self.keystore().devices.items()):
            if dk.window == window and not dk.revoked:
                return dev
        raise NotFound(f"unknown window {window!r}")

    # --- after every commit; alarms -----------------------------------------------------------------------

    def _fatal(self, exc: BaseException) -> None:
        self.failed.set()
        if self._on_fatal_cb is not None:
            self._on_fatal_cb(exc)

    def _committed(self) -> None:
        if self.forwarder is not None:
            self.forwarder.wake()
        self.webhooks.wake()          # an outcome stored may have enqueued deliveries
        self._check_storage()
        self.alarms.wake()
        with self._commits:
            self._commits.notify_all()

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until ``predicate()`` holds, re-checked after every ingest commit (tests and tools)."""
        deadline = time.monotonic() + timeout
        with self._commits:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                # The timeout bounds a missed notification (a commit between check and wait is not one:
                # notify happens under this lock), not a polling interval.
                self._commits.wait(min(left, 1.0))
            return True

    def _check_storage(self, force: bool = False) -> None:
        now = self.cfg.now_ms()
        if not force and now - self._last_storage_check < STORAGE_CHECK_MS:
            return
        self._last_storage_check = now
        free = shutil.disk_usage(self.cfg.db_path.parent).free
        with self.store.transaction() as c:
            if free < self.cfg.storage_min_free_bytes:
                # Never drop or refuse a rating: raise the alarm and keep storing while space lasts.
                if Store.raise_alarm(c, now, "storage", None, f"{free} bytes free on the data disk",
                                     once=True):
                    log.error("STORAGE: only %d bytes free under %s", free, self.cfg.db_path.parent)
            elif Store.clear_alarms(c, now, "storage"):
                log.info("storage alarm cleared: %d bytes free", free)

    def _after_alarm_pass(self) -> None:
        self._check_storage()
        self.notifier.wake()

    def _on_alarm(self, kind: str, detail: str) -> None:
        """The forwarder's alarms: 'backlog', 'backlog-cleared', 'province-rejected', ..."""
        now = self.cfg.now_ms()
        with self.store.transaction() as c:
            if kind == "backlog-cleared":
                Store.clear_alarms(c, now, "backlog")
            else:
                Store.raise_alarm(c, now, kind, None, detail, once=(kind == "backlog"))
        log.warning("forwarding alarm %s: %s", kind, detail)

    def backlog(self) -> int:
        if self.forwarder is not None:
            return self.forwarder.backlog()
        return self.store.backlog()   # no uplink: everything queued is backlog

    # --- API operations: the counter system's, in counter.py (each validates before changing anything) --

    def _credential_valid(self, name: str) -> bool:
        """Whether credential ``name`` is issued and not revoked (the file re-read: revoking is at once)."""
        if self.cfg.tokens_path is None:
            return False
        try:
            entries = tokens.read_entries(self.cfg.tokens_path)
        except tokens.CredentialsError:
            return False      # unreadable: send nothing until it is fixed, as the API refuses everyone
        return any(e.name == name and e.revoked is None for e in entries)

    def _prompt_opened(self) -> None:
        self._stats.incr("prompts")
        if self.forwarder is not None:
            self.forwarder.wake()
        self.webhooks.wake()          # its expiry is now the next thing to wait for

    def sign_in(self, caller: Caller, window: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.counter.sign_in(caller, window, body)

    def sign_out(self, caller: Caller, window: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.counter.sign_out(caller, window, body)

    def open_prompt(self, caller: Caller, window: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.counter.open_prompt(caller, window, body)

    def prompt_result(self, caller: Caller, prompt_id: int) -> dict[str, Any]:
        return self.counter.prompt_result(caller, prompt_id)

    def set_webhook(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        return self.counter.set_webhook(caller, body)

    def delete_webhook(self, caller: Caller) -> dict[str, Any]:
        return self.counter.delete_webhook(caller)

    def status(self) -> dict[str, Any]:
        health = self.store.devices()
        devices = {}
        for dev, dk in sorted(self.keystore().devices.items()):
            h = health.get(dev, {})
            last = h.get("last") or {}
            devices[dev] = {"window": dk.window, "revoked": dk.revoked, "online": h.get("online", False),
                            "last_seen_ms": h.get("last_seen_ms"), "outbox": last.get("outbox"),
                            "firmware": last.get("fw"), "stuck_keys": last.get("stuck", 0),
                            "bad_downlinks": last.get("bad_down") or 0}
        return {"hall": self.cfg.hall, "devices": devices, "counts": self._stats.snapshot(),
                "rejected": self._stats.rejected(), "quarantined": self.store.quarantine_counts(),
                "alarms": self.store.open_alarms(), "backlog": self.backlog(),
                "notifications_pending": self.notifier.pending(),
                "forwarding": self.forwarder is not None}

    def metrics(self) -> str:
        hall = self.cfg.hall
        out = []
        for name, n in sorted(self._stats.snapshot().items()):
            out.append(f'countersign_gateway_{name}_total{{hall="{hall}"}} {n}')
        for reason, n in sorted(self._stats.rejected().items()):
            out.append(f'countersign_gateway_rejected_by_reason_total{{hall="{hall}",reason="{reason}"}} {n}')
        st = self.status()
        online = sum(1 for d in st["devices"].values() if d["online"])
        out.append(f'countersign_gateway_devices_online{{hall="{hall}"}} {online}')
        out.append(f'countersign_gateway_devices{{hall="{hall}"}} {len(st["devices"])}')
        out.append(f'countersign_gateway_open_alarms{{hall="{hall}"}} {len(st["alarms"])}')
        unacked = sum(1 for a in st["alarms"] if a["acked_ms"] is None)
        out.append(f'countersign_gateway_unacknowledged_alarms{{hall="{hall}"}} {unacked}')
        pending = st["notifications_pending"]
        out.append(f'countersign_gateway_notifications_pending{{hall="{hall}"}} {pending}')
        out.append(f'countersign_gateway_backlog{{hall="{hall}"}} {st["backlog"]}')
        out.append(f'countersign_gateway_ratings_in_store{{hall="{hall}"}} {self.store.count_ratings()}')
        return "\n".join(out) + "\n"


__all__ = ["Gateway", "GatewayConfig"]
