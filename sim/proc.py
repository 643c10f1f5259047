"""Ending the simulator's child processes (brokers, gateway processes, serial cables) the same way."""

from __future__ import annotations

import signal
import subprocess
from typing import Any


def end(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
    """Send ``sig`` if the process still runs, wait ``grace`` seconds, then SIGKILL; always reaped."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
