"""The gateway watches its own parts: a thread that ends, or a loop that stops beating, is fatal.

A half-alive gateway (answering HTTP while deaf to every keypad) is worse than a dead one: systemd
restarts a dead one (Restart=always, WatchdogSec), and the broker keeps what arrives meanwhile. So every
long-running part registers here: ``spawn`` for our own loops, ``adopt`` for threads another library
starts (paho's network loops, the HTTP server's). When one ends while the gateway runs, ``on_fatal`` gets
the reason and the daemon exits non-zero. A part that is alive but stuck (a group commit that never
returns) is not a dead thread: ``busy`` marks the work a loop is doing, and ``stuck`` names the work that
has taken too long, so the daemon stops its watchdog pings and systemd kills and restarts it.

Test hook: env ``COUNTERSIGN_TEST_KILL`` = a part's name (``ingest-worker``, ``hall-mqtt``,
``uplink-mqtt``, ``forwarder``, ``http``, ...) makes that part's thread raise ``InjectedFault`` a moment
after the gateway started, as a bug in it would; ``NAME@SECONDS`` waits that long first (a simulated
hall whose gateway dies once it runs). Unset, it has no effect.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .errors import ConfigError, GatewayError

log = logging.getLogger("countersign.gateway.watch")

KILL_ENV = "COUNTERSIGN_TEST_KILL"
KILL_AFTER_S = 0.5


class PartDied(GatewayError, RuntimeError):
    """A part the gateway depends on stopped while the gateway was running."""


class InjectedFault(BaseException):
    """Raised inside a part's thread by the ``COUNTERSIGN_TEST_KILL`` hook (tests only).

    A BaseException, like SystemExit: the fault must end the thread, and libraries' loops (paho's) catch
    and carry on from any ``Exception``."""


class Watch:
    def __init__(self, on_fatal: Callable[[BaseException], None]) -> None:
        self._on_fatal = on_fatal
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}
        self._busy: dict[str, float] = {}          # part -> monotonic start of the work in hand
        self._stopping = threading.Event()
        self._kill, self._kill_after_s = _kill_hook(os.environ.get(KILL_ENV) or "")

    def spawn(self, name: str, target: Callable[[], None]) -> threading.Thread:
        """Start ``target`` on a daemon thread; its return or exception while running is fatal."""

        def run() -> None:
            try:
                if self._kill == name:
                    self._stopping.wait(self._kill_after_s)
                    raise InjectedFault(f"{KILL_ENV}={name}")
                target()
            except BaseException as exc:
                self._died(name, t, exc)
                raise
            self._died(name, t, None)

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
        if self._kill == name:
            threading.Timer(self._kill_after_s, _raise_in, (thread, name)).start()

    def retire(self, name: str) -> None:
        """This part is being stopped on purpose (its own ``stop()``): its end is not news."""
        with self._lock:
            self._threads.pop(name, None)
            self._busy.pop(name, None)

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

    @contextmanager
    def busy(self, name: str) -> Iterator[None]:
        """Around one unit of a loop's work: ``stuck`` reports it while it lasts too long."""
        with self._lock:
            self._busy[name] = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self._busy.pop(name, None)

    def stuck(self, limit_s: float) -> list[str]:
        """Parts whose work in hand started more than ``limit_s`` ago (idle parts are never stuck)."""
        now = time.monotonic()
        with self._lock:
            return sorted(n for n, since in self._busy.items() if now - since > limit_s)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._threads)

    def _died(self, name: str, thread: threading.Thread, exc: BaseException | None) -> None:
        with self._lock:
            retired = self._threads.get(name) is not thread
        if self._stopping.is_set() or retired:
            return
        why = f"{name} stopped" if exc is None else f"{name} died: {exc!r}"
        log.critical("%s", why)
        self._on_fatal(PartDied(why))


def _kill_hook(value: str) -> tuple[str | None, float]:
    name, _, after = value.partition("@")
    try:
        return (name or None), (float(after) if after else KILL_AFTER_S)
    except ValueError as exc:
        raise ConfigError(f"{KILL_ENV}={value!r}: expected NAME or NAME@SECONDS") from exc


def _raise_in(thread: threading.Thread, name: str) -> None:
    """The kill hook for a thread we did not start: raise in it at its next Python instruction."""
    if thread.ident is None or not thread.is_alive():
        return
    exc = ctypes.py_object(InjectedFault)
    if ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), exc) != 1:
        log.error("%s=%s: could not raise in thread %s", KILL_ENV, name, thread.name)
