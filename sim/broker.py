"""Start and stop a real mosquitto for tests, the simulator and benchmarks."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path
from types import TracebackType

from .proc import end


class BrokerError(RuntimeError):
    pass


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free TCP port on loopback, below the ephemeral range.

    A port from the ephemeral range (what binding to port 0 gives) can be taken, while a broker is down
    for a fault test, by a client's own outgoing socket: a reconnecting client may even connect to itself
    (TCP simultaneous open on loopback), and the broker then cannot listen there again.
    """
    lo, _hi = _ephemeral_range()
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(10000, max(lo, 10001))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise BrokerError("no free port below the ephemeral range")


def run_as_clause() -> str | None:
    """mosquitto started as root drops to user 'mosquitto' unless told to stay; our temp files are root's."""
    return "root" if os.geteuid() == 0 else None


class Mosquitto:
    """A mosquitto process on its own config; ``start()`` returns once it listens."""

    def __init__(self, conf: Path, port: int, log_path: Path | None = None) -> None:
        self.conf, self.port = conf, port
        self.log_path = log_path or conf.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None
        self._ready = threading.Event()
        self._failed: str | None = None

    def start(self, timeout: float = 10.0) -> Mosquitto:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            raise BrokerError("mosquitto is not installed (make test / make demo install it)")
        self._ready.clear()
        self._failed = None
        self.proc = subprocess.Popen([exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True).start()
        if not self._ready.wait(timeout):
            self.stop()
            raise BrokerError(f"mosquitto did not start within {timeout}s; log: {self.log_path}")
        if self._failed:
            raise BrokerError(f"mosquitto failed: {self._failed}; log: {self.log_path}")
        return self

    def _pump(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        with open(self.log_path, "ab") as log:
            for line in proc.stderr:
                log.write(line)
                log.flush()
                if b" running" in line:
                    self._ready.set()
                if b"Error" in line and not self._ready.is_set():
                    self._failed = line.decode(errors="replace").strip()
                    self._ready.set()
        self._ready.set()   # process ended: wake anyone waiting

    def stop(self, sig: int = signal.SIGTERM) -> None:
        end(self.proc, sig)
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
