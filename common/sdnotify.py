"""sd_notify(3) without libsystemd: one datagram per state change to ``$NOTIFY_SOCKET``.

systemd (Type=notify) learns from these that a daemon is ready (``READY=1``), still well
(``WATCHDOG=1``, at least once per ``WatchdogSec``) and on its way out (``STOPPING=1``). Without
``NOTIFY_SOCKET`` (not under systemd: a terminal, a test) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("countersign.common.sdnotify")

# Without WatchdogSec systemd sets no WATCHDOG_USEC; this is the period the daemon's checks assume then.
DEFAULT_WATCHDOG_S = 30.0


class Notifier:
    def __init__(self, address: str | None) -> None:
        # A leading '@' names a socket in the abstract namespace, spelt with a NUL byte on the wire.
        self._address = "\0" + address[1:] if address and address.startswith("@") else address
        self._sock: socket.socket | None = None
        if self._address:
            # Never block: a notify socket nobody reads must not stall the daemon's main loop.
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC |
                                       socket.SOCK_NONBLOCK)

    @classmethod
    def from_env(cls) -> Notifier:
        return cls(os.environ.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=value`` lines as one datagram; False if there is no socket or it refused."""
        if self._sock is None or self._address is None:
            return False
        try:
            self._sock.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            # systemd gone or the socket full: the daemon carries on; a missed WATCHDOG=1 is systemd's
            # to judge, not ours.
            log.warning("sd_notify to %s failed: %s", self._address.replace("\0", "@"), exc)
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_s() -> float:
    """The watchdog period systemd gave this process (WatchdogSec), or the default without one."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return DEFAULT_WATCHDOG_S
    try:
        value = int(usec) / 1_000_000
    except ValueError:
        return DEFAULT_WATCHDOG_S
    return value if value > 0 else DEFAULT_WATCHDOG_S
