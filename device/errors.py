"""Errors a technician sees: one line each, exit code 2 (``countersign device ...``)."""

from __future__ import annotations

# How a technician gets a provisioned keypad's REPL (firmware/cs/start.py): said wherever a tool needs it.
SERVICE_MODE = ("restart it in service mode: hold keys 1 and 4 down while you press RESET (or plug the "
                "cable in) and keep them down for 2 s")


class DeviceToolError(RuntimeError):
    """A refusal or failure with a message meant for the technician (no traceback)."""


class NoAnswer(DeviceToolError):
    """The serial port opened but no keypad answered (REPL not reached, or it stopped answering)."""


class NormalMode(NoAnswer):
    """A provisioned keypad running its app in normal mode: it prints ``CS:`` lines but offers no REPL
    (firmware/cs/start.py), so the files on it cannot be read or written until it restarts in service
    mode."""


class Refused(DeviceToolError):
    """The tool refuses on purpose: already provisioned, unsent ratings, a window already served."""
