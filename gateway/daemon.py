"""The daemon's main thread: start the gateway, watch its parts, tell systemd, stop on a signal or a fault.

A part that dies ends the process (exit 1, the reason on stderr): systemd's Restart=always brings up a
whole gateway, and the hall broker keeps the keypads' messages for our persistent session meanwhile. A
part that is alive but stuck (a group commit that does not return) stops the ``WATCHDOG=1`` pings, so
systemd's WatchdogSec kills and restarts us: we do not try to judge from inside whether it will recover.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import sys
import tempfile
import time
from pathlib import Path

from countersign.common.sdnotify import Notifier, watchdog_s

from .errors import GatewayError
from .gateway import Gateway
from .watch import PartDied

log = logging.getLogger("countersign.gateway.daemon")

START_WAIT_S = 10.0


def write_pid_file(path: Path) -> None:
    """Our pid, replacing the file in one rename (a reader never sees it half written), mode 0644."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError:
        os.unlink(tmp)
        raise


def remove_pid_file(path: Path) -> None:
    """Remove it if it is still ours (a newer gateway may already have written its own)."""
    try:
        if path.read_text(encoding="ascii").strip() == str(os.getpid()):
            path.unlink()
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("could not remove the pid file %s: %s", path, exc)


class Daemon:
    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.fatal: list[BaseException] = []
        self._stop = False
        # The main thread sleeps in select() on this pipe, and a stop request is one byte written to it:
        # a signal handler runs on the main thread, so setting a threading.Event from it deadlocks when
        # the signal lands while that thread holds the Event's own lock (inside Event.wait).
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        period = watchdog_s()
        # systemd wants a ping at least every period; twice as often leaves room for a slow cycle.
        self.interval_s = min(2.0, period / 4)
        self.stuck_after_s = period / 2

    def on_fatal(self, exc: BaseException) -> None:
        """From any thread: a part died."""
        self.fatal.append(exc)
        self.request_stop()

    def request_stop(self) -> None:
        """From any thread or a signal handler: takes no lock."""
        self._stop = True
        # A full pipe holds wake-ups already: the loop sees _stop after any of them.
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    def _sleep(self, seconds: float) -> None:
        readable, _, _ = select.select([self._wake_r], [], [], seconds)
        if readable:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 512)

    def run(self, gw: Gateway) -> int:
        """Until ``request_stop`` (a signal) or a part dies. 0 on a clean stop, 1 on a fatal part."""
        ready = announced = stuck_logged = False
        try:
            try:
                gw.start(wait_s=0)
            except (GatewayError, OSError) as exc:   # the HTTP port taken, the data disk unwritable
                self.on_fatal(exc)
            started = time.monotonic()
            while not self._stop:
                try:
                    gw.watch.check()
                except PartDied as exc:
                    self.on_fatal(exc)
                    break
                if not ready and gw.ingest.ready.is_set():
                    ready = True
                    self.notifier.notify("READY=1", f"STATUS=hall {gw.cfg.hall}: subscribed, "
                                                    f"http on port {gw.http_port}")
                if not announced and (ready or time.monotonic() - started > START_WAIT_S):
                    # Tools wait for this line. Past START_WAIT_S the broker is late, not we: the API
                    # serves and paho keeps reconnecting, but systemd hears READY=1 only once subscribed.
                    if not ready:
                        log.warning("hall broker %s:%d not reachable yet; retrying", gw.cfg.broker_host,
                                    gw.cfg.broker_port)
                    print(f"gateway {gw.cfg.hall} ready http={gw.http_port}", file=sys.stderr, flush=True)
                    announced = True
                stuck = gw.watch.stuck(self.stuck_after_s)
                if stuck:
                    if not stuck_logged:
                        log.error("stuck for over %.0f s: %s; no watchdog pings from now on",
                                  self.stuck_after_s, ", ".join(stuck))
                        self.notifier.notify(f"STATUS=stuck: {', '.join(stuck)}")
                        stuck_logged = True
                elif ready:
                    if stuck_logged:
                        log.warning("no longer stuck")
                        self.notifier.notify(f"STATUS=hall {gw.cfg.hall}: running again")
                        stuck_logged = False
                    self.notifier.notify("WATCHDOG=1")
                # Until announced, a tenth of a second: the tools wait for the line, and an adopted
                # thread that dies at start has no event to wake us.
                self._sleep(self.interval_s if announced else 0.1)
        finally:
            why = f"fatal: {self.fatal[0]}" if self.fatal else "stopping"
            log.info("%s", why)
            self.notifier.notify("STOPPING=1", f"STATUS={why}")
            gw.stop()
            self.notifier.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
        if self.fatal:
            log.critical("exiting for a restart: %s", self.fatal[0])
            print(f"countersign gateway: {self.fatal[0]}; exiting for a restart", file=sys.stderr,
                  flush=True)
            return 1
        return 0
