"""The clerk roster: who may sign in, under which name, at which windows.

Imported from the CSV the business system exports (工号, 姓名, 窗口). Excel in a Chinese locale saves
GB18030 without a BOM, other tools UTF-8 with or without one, so the encoding is found, not configured.
The file is re-read when it changes (mtime, size or inode), so HR can re-export without a restart; a
file that does not parse keeps the roster already loaded and says why in the log.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from countersign.protocol import topics

from .errors import GatewayError
from .textcheck import DEFAULT_CLERK_PATTERN, TextError, check_clerk, check_name, clerk_pattern

log = logging.getLogger("countersign.gateway.roster")

MAX_BYTES = 4 * 1024 * 1024      # a hall has tens of clerks; a province-wide export is still far below
_HEADERS = {
    "clerk": {"工号", "clerk", "clerk_id", "员工编号"},
    "name": {"姓名", "name"},
    "windows": {"窗口", "windows", "window"},
}
_WINDOW_SEP = re.compile(r"[;,、，；]")
ALL_WINDOWS = "*"


class RosterError(GatewayError, ValueError):
    """The roster file cannot be used (the message names the line)."""


@dataclass(frozen=True)
class Clerk:
    clerk: str                          # 工号
    name: str                           # 姓名, as the keypad shows it
    windows: frozenset[str] | None      # None = every window of the hall

    def may_use(self, window: str) -> bool:
        return self.windows is None or window in self.windows


def write_roster(path: Path, rows: Iterable[tuple[str, str, Iterable[str] | None]], *,
                 encoding: str = "utf-8", chinese_header: bool = True) -> None:
    """Write a roster CSV as the business system would: rows of (工号, 姓名, windows or None for all).

    For test halls and the simulators; ``encoding="gb18030"`` writes what a Chinese Excel saves."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(["工号", "姓名", "窗口"] if chinese_header else ["clerk", "name", "windows"])
    for clerk, name, windows in rows:
        w.writerow([clerk, name, ALL_WINDOWS if windows is None else ";".join(windows)])
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue().encode(encoding))
    os.replace(tmp, path)   # a reader never sees half a file


def _decode(raw: bytes) -> str:
    if raw.startswith(b"\xef\xbb\xbf"):
        return raw[3:].decode("utf-8")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # GB18030 decodes nearly any byte string, so it is only the fallback, never the first guess.
        return raw.decode("gb18030")


def _columns(header: list[str]) -> dict[str, int]:
    cols: dict[str, int] = {}
    for i, h in enumerate(header):
        key = h.strip().lower()
        for col, names in _HEADERS.items():
            if key in names:
                if col in cols:
                    raise RosterError(f"line 1: two {col} columns")
                cols[col] = i
    missing = [c for c in _HEADERS if c not in cols]
    if missing:
        raise RosterError(f"line 1: no {'/'.join(missing)} column (header {header!r}; "
                          "expected 工号/clerk, 姓名/name, 窗口/windows)")
    return cols


def parse_roster(raw: bytes, pattern: re.Pattern[str]) -> dict[str, Clerk]:
    """The clerks in a roster file, by 工号; a bad row raises RosterError naming its line."""
    try:
        text = _decode(raw)
    except UnicodeDecodeError as exc:
        raise RosterError(f"neither UTF-8 nor GB18030: {exc}") from exc
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise RosterError("the file is empty")
        cols = _columns(header)
        clerks: dict[str, Clerk] = {}
        lines: dict[str, int] = {}
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) <= max(cols.values()):
                raise RosterError(f"line {line}: {len(row)} fields, the header has {len(header)}")
            try:
                c = _clerk(row[cols["clerk"]].strip(), row[cols["name"]], row[cols["windows"]], pattern)
            except (TextError, topics.TopicError) as exc:
                raise RosterError(f"line {line}: {exc}") from exc
            if c.clerk in clerks:
                raise RosterError(f"line {line}: 工号 {c.clerk} already on line {lines[c.clerk]}")
            clerks[c.clerk] = c
            lines[c.clerk] = line
    except csv.Error as exc:
        raise RosterError(f"line {reader.line_num}: {exc}") from exc
    return clerks


def _clerk(clerk: str, name: str, windows: str, pattern: re.Pattern[str]) -> Clerk:
    check_clerk(clerk, pattern)
    shown = check_name(name)
    w = windows.strip()
    if w == ALL_WINDOWS:
        return Clerk(clerk, shown, None)
    ids = [x.strip() for x in _WINDOW_SEP.split(w) if x.strip()]
    if not ids:
        raise TextError(f"clerk {clerk} has no windows (use {ALL_WINDOWS} for every window)")
    return Clerk(clerk, shown, frozenset(topics.check_id(x, "window") for x in ids))


class Roster:
    """The roster file, re-read when it changes; thread-safe (API requests run on worker threads)."""

    def __init__(self, path: Path, pattern: str = DEFAULT_CLERK_PATTERN) -> None:
        self.path = path
        self.pattern = clerk_pattern(pattern)
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._clerks: dict[str, Clerk] | None = None
        self._error: str | None = None
        self._refresh()

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            self._failed(f"cannot read {self.path}: {exc.strerror}", None)
            return
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if key == self._seen:
            return
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_BYTES + 1)
            if len(raw) > MAX_BYTES:
                raise RosterError(f"larger than {MAX_BYTES} bytes")
            clerks = parse_roster(raw, self.pattern)
        except OSError as exc:
            self._failed(f"cannot read {self.path}: {exc.strerror}", key)
            return
        except RosterError as exc:
            self._failed(f"{self.path}: {exc}", key)
            return
        self._seen, self._clerks, self._error = key, clerks, None
        log.info("clerk roster %s loaded: %d clerks", self.path, len(clerks))

    def _failed(self, why: str, key: tuple[int, int, int] | None) -> None:
        if why != self._error:
            kept = "keeping the previous roster" if self._clerks is not None else "no roster loaded"
            log.error("clerk roster unusable (%s): %s", kept, why)
        # Remembered so a bad file is reported once, not on every sign-in; a fixed file changes the key.
        self._seen, self._error = key, why

    def lookup(self, clerk: str) -> Clerk | None:
        """The clerk with this 工号 in the current file; RosterError when no roster was ever loaded."""
        with self._lock:
            self._refresh()
            if self._clerks is None:
                raise RosterError(f"no clerk roster ({self._error})")
            return self._clerks.get(clerk)

    def clerks(self) -> dict[str, Clerk]:
        with self._lock:
            self._refresh()
            return dict(self._clerks or {})

    @property
    def error(self) -> str | None:
        """Why the file on disk is not the roster in use, if it is not."""
        with self._lock:
            return self._error


__all__ = ["ALL_WINDOWS", "Clerk", "Roster", "RosterError", "parse_roster", "write_roster"]
