"""What the hall page and the provincial platform both need to let a person log in: the session
cookies' signing key (a file, created 0600 on first use, so sessions outlive a restart) and the per-account
limit on log-in failures."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

from countersign.protocol.keystore import write_atomic

__all__ = ["LoginLimiter", "SessionSecretError", "session_secret"]

SECRET_BYTES = 32


class SessionSecretError(ValueError):
    """The secret file cannot be read or does not hold a secret (each role re-raises it as its own)."""


def session_secret(path: Path, what: str = "session secret") -> bytes:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        text = secrets.token_hex(SECRET_BYTES)
        write_atomic(path, text + "\n", 0o600)
    except OSError as exc:
        raise SessionSecretError(f"cannot read the {what} {path}: {exc}") from exc
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise SessionSecretError(f"{path} does not hold a session secret (delete it: a new one is made)")
    return key


class LoginLimiter:
    """Per account: after ``free`` failures in a row, each further try waits ``base_s`` doubling, up to
    ``max_s``; a success resets it. Kept in memory per server process (a restart forgives, which costs a
    restart)."""

    def __init__(self, free: int = 5, base_s: float = 30.0, max_s: float = 900.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.free, self.base_s, self.max_s, self.clock = free, base_s, max_s, clock
        self._lock = threading.Lock()
        self._fails: dict[str, tuple[int, float]] = {}       # name -> (failures, clock of the last)

    def wait_s(self, name: str) -> float:
        """Seconds until ``name`` may try again (0: now)."""
        with self._lock:
            n, last = self._fails.get(name, (0, 0.0))
        if n < self.free:
            return 0.0
        delay = min(self.max_s, self.base_s * 2.0 ** (n - self.free))
        return max(0.0, last + delay - self.clock())

    def failed(self, name: str) -> None:
        with self._lock:
            n, _ = self._fails.get(name, (0, 0.0))
            if len(self._fails) > 10_000 and name not in self._fails:
                return           # invented names cannot grow this without bound
            self._fails[name] = (n + 1, self.clock())

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._fails.pop(name, None)
