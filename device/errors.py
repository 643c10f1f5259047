"""Errors a technician sees: one line each, exit code 2 (``countersign device ...``)."""

from __future__ import annotations


class DeviceToolError(RuntimeError):
    """A refusal or failure with a message meant for the technician (no traceback)."""


class NoAnswer(DeviceToolError):
    """The serial port opened but no keypad answered (REPL not reached, or it stopped answering)."""


class Refused(DeviceToolError):
    """The tool refuses on purpose: already provisioned, unsent ratings, a window already served."""
