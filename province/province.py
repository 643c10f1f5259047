"""The provincial receiver as an embeddable object: ``Province(config).start()`` ... ``stop()``.

Everything an instance needs hangs off the instance (config, registry, signing key, workers, counters),
so a simulator or a test can run several provinces in one process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from countersign.protocol.keystore import Keystore, load_signing_key

from . import migrations
from .config import ProvinceConfig
from .db import DatabaseError
from .errors import StartError
from .notify import Notifier
from .receiver import ReceiverStats, Worker
from .registry import import_registry
from .supervision import Supervisor


class Province:
    def __init__(self, config: ProvinceConfig) -> None:
        self.config = config
        self._registry = Keystore.load(config.registry_path)
        self._registry_lock = threading.Lock()
        self._key = load_signing_key(config.signing_key_path)
        self._stats = ReceiverStats()
        self.workers: list[Worker] = []
        # Alerts are pushed as soon as the pass that raised them commits.
        self.notifier = Notifier(config.database, config.notify, config.tz, retry_s=config.notify_retry_s,
                                 retry_max_s=config.notify_retry_max_s)
        self.supervisor = Supervisor(config.database, config.tz, config.now_ms, after_pass=self.notifier.wake)

    def registry(self) -> Keystore:
        with self._registry_lock:
            return self._registry

    def reload_registry(self) -> None:
        """Re-read the registry file (new halls, devices, revocations) and bring its devices into the
        database; batches after this use it."""
        fresh = Keystore.load(self.config.registry_path)
        self._import(fresh)
        with self._registry_lock:
            self._registry = fresh

    def _import(self, registry: Keystore) -> None:
        try:
            with self.config.database.connect() as conn:
                import_registry(conn, registry, self.config.now_ms())
        except DatabaseError as exc:
            raise StartError(f"cannot import the registry into {self.config.database.display()}: {exc}"
                             ) from exc

    def start(self, timeout: float = 10.0) -> Province:
        """Upgrade the schema, import the registry file's devices, start the workers; return once every
        one of them is subscribed."""
        try:
            migrations.upgrade(self.config.database, self.config.tz)
        except DatabaseError as exc:
            raise StartError(f"cannot open {self.config.database.display()}: {exc}") from exc
        self._import(self._registry)
        try:
            self.notifier.start()
        except DatabaseError as exc:
            raise StartError(f"cannot register the notification targets: {exc}") from exc
        self.supervisor.start()
        self.workers = [Worker(n, self.config, self.registry, self._key, self._stats,
                               committed=self.supervisor.wake)
                        for n in range(1, self.config.workers + 1)]
        for w in self.workers:
            w.start()
        for w in self.workers:
            if not w.subscribed.wait(timeout):
                reason = w.failed or "no answer from the broker"
                self.stop()
                raise StartError(f"worker {w.name} did not subscribe within {timeout}s: {reason}")
        return self

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        self.workers = []
        self.supervisor.stop()
        self.notifier.stop()

    def stats(self) -> dict[str, Any]:
        snap = self._stats.snapshot()
        snap["workers"] = {w.name: {"subscribed": w.subscribed.is_set(), "failed": w.failed}
                           for w in self.workers}
        return snap

    def wait_stats(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> bool:
        """Wait until the counters satisfy ``predicate`` (notified on each commit); False on timeout."""
        return self._stats.wait_for(predicate, timeout)

    def __enter__(self) -> Province:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
