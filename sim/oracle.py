"""What makes a simulated run a failure, beyond what the reconciliation counts (lost, duplicated, ...).

A run whose keypads made no rating proves nothing (a deaf gateway "loses" none); a prompt the counter
system opened that never showed on its keypad is a failure unless a fault that was under way explains
it; an uncaught exception in any process (a Traceback in the gateway's log or a keypad's console, or a
logged exception in the simulator's own process, where the province runs) is a failure unless it is the
fault a test injected on purpose (``InjectedFault``, the gateway's ``COUNTERSIGN_TEST_KILL`` hook).
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

TRACEBACK = "Traceback (most recent call last):"
INJECTED = "InjectedFault"

# Faults during which a prompt may fail to reach a keypad: the broker or the gateway is down, or the
# keypad is. A keypad reconnects with a backoff, so the window lasts a while past the fault's end.
EXPLAINS_UNDELIVERED = ("hall-broker-down", "gateway-power-cut", "keypad-power-cut")
RECOVERY_S = 20.0


@dataclass(frozen=True)
class Window:
    """When a fault could keep prompts from ``keypad`` (None: every keypad), in seconds from the start."""

    start_s: float
    end_s: float
    keypad: str | None = None


@dataclass(frozen=True)
class Undelivered:
    keypad: str
    start_s: float          # the counter system asked for the prompt
    end_s: float            # the customer gave up waiting to see it


def fault_windows(faults: Iterable[dict[str, Any]]) -> list[Window]:
    out = []
    for f in faults:
        if f["kind"] in EXPLAINS_UNDELIVERED:
            end = float(f.get("end_s", f["at_s"])) + RECOVERY_S
            out.append(Window(float(f["at_s"]), end, f.get("keypad")))
    return out


def unexplained(undelivered: Iterable[Undelivered], windows: list[Window]) -> list[Undelivered]:
    """The undelivered prompts no fault window overlaps."""
    return [u for u in undelivered
            if not any(w.start_s <= u.end_s and u.start_s <= w.end_s and w.keypad in (None, u.keypad)
                       for w in windows)]


def uncaught(text: str) -> list[str]:
    """The closing line (``Type: message``) of each Traceback in ``text`` that is not an injected fault."""
    found = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if TRACEBACK not in line:
            continue
        # The block is the indented frames after the header; its first unindented line names the error.
        end = next((ln for ln in lines[i + 1:] if ln.strip() and not ln.startswith((" ", "\t"))),
                   "(a traceback with no closing line)")
        if INJECTED not in end:
            found.append(end.strip())
    return found


def uncaught_in_files(files: Iterable[Path], root: Path) -> dict[str, list[str]]:
    out = {}
    for f in sorted(files):
        errors = uncaught(f.read_text(encoding="utf-8", errors="replace"))
        if errors:
            out[str(f.relative_to(root))] = errors
    return out


class ExceptionLog(logging.Handler):
    """In this process: every logged exception (``log.exception``, ``exc_info``) and every thread that
    ended with one, while installed."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._previous_hook = threading.excepthook

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self._note(record.exc_info[1], f"{record.name}: {record.getMessage()}")

    def _thread_died(self, args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None:
            self._note(args.exc_value, f"thread {args.thread.name if args.thread else '?'}")
        self._previous_hook(args)

    def _note(self, exc: BaseException, where: str) -> None:
        if INJECTED in type(exc).__name__:
            return
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        with self._lock:
            self.errors.append(f"{where}: {last}")

    def __enter__(self) -> ExceptionLog:
        logging.getLogger().addHandler(self)
        threading.excepthook = self._thread_died
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        logging.getLogger().removeHandler(self)
        threading.excepthook = self._previous_hook


def problems(*, ratings_made: int, undelivered: list[Undelivered], uncaught_by_source: dict[str, list[str]],
             losses: dict[str, int], settled: bool) -> list[str]:
    """Why the run failed, one line per reason; empty: it passed."""
    out = []
    if ratings_made == 0:
        out.append("the keypads made no rating")
    for name, n in losses.items():
        if n:
            out.append(f"{name} {n}")
    if not settled:
        out.append("did not settle (keypads' outboxes or the gateway's backlog not empty)")
    if undelivered:
        first = undelivered[0]
        out.append(f"{len(undelivered)} prompt(s) undelivered with no fault to explain them (first: "
                   f"{first.keypad} at {first.start_s:.1f}-{first.end_s:.1f} s)")
    for source, errors in uncaught_by_source.items():
        out.append(f"{len(errors)} uncaught exception(s) in {source} (first: {errors[0]})")
    return out


__all__ = ["ExceptionLog", "Undelivered", "Window", "fault_windows", "problems", "uncaught",
           "uncaught_in_files", "unexplained"]
