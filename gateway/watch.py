"""The gateway watches its own parts: a thread that ends, or a loop that stops beating, is fatal.

A half-alive gateway (answering HTTP while deaf to every keypad) is worse than a dead one: systemd
restarts a dead one (Restart=always, WatchdogSec), and the broker keeps what arrives meanwhile. So every
long-running part registers here: ``spawn`` for our own loops, ``adopt`` for threads another library
starts (paho's network loops). When one ends while the gateway runs, ``on_fatal`` gets the reason and
the daemon exits non-zero.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .errors import GatewayError

log = logging.getLogger("countersign.gateway.watch")


class PartDied(GatewayError, RuntimeError):
    """A part the gateway depends on stopped while the gateway was running."""


class Watch:
    def __init__(self, on_fatal: Callable[[BaseException], None]) -> None:
        self._on_fatal = on_fatal
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}
        self._stopping = threading.Event()

    def spawn(self, name: str, target: Callable[[], None]) -> threading.Thread:
        """Start ``target`` on a daemon thread; its return or exception while running is fatal."""

        def run() -> None:
            try:
                target()
            except BaseException as exc:
                self._died(name, exc)
                raise
            self._died(name, None)

        t = threading.Thread(target=run, name=name, daemon=True)
        with self._lock:
            self._threads[name] = t
        t.start()
        return t

    def adopt(self, name: str, thread: threading.Thread | None) -> None:
        """Watch a thread someone else started (checked by ``check``, which the daemon calls often)."""
        if thread is None:
            raise PartDied(f"{name}: no thread to watch")
        with self._lock:
            self._threads[name] = thread

    def stopping(self) -> None:
        """From here on parts end because we asked them to: not fatal."""
        self._stopping.set()

    def check(self) -> None:
        """Raise ``PartDied`` for the first watched thread that is no longer alive."""
        if self._stopping.is_set():
            return
        with self._lock:
            dead = [n for n, t in self._threads.items() if not t.is_alive()]
        if dead:
            raise PartDied(f"{', '.join(sorted(dead))} stopped")

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._threads)

    def _died(self, name: str, exc: BaseException | None) -> None:
        if self._stopping.is_set():
            return
        why = f"{name} stopped" if exc is None else f"{name} died: {exc!r}"
        log.critical("%s", why)
        self._on_fatal(PartDied(why))
