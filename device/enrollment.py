"""The technician's enrollment record, written beside a provisioning (``--enrollment-dir``).

The record (protocol/enrollment.py) holds the keypad's key, so it is created 0600 from its first byte
(``os.open`` with the mode, in a folder made 0700), written new-then-rename so a reader never meets half
a record, and never printed: the tool prints only its path. The technician carries the file to the
platform's administrator by their own channel; the hall gateway never sees it.
"""

from __future__ import annotations

import contextlib
import getpass
import os
from pathlib import Path

from countersign.common.clock import wall_ms
from countersign.protocol.enrollment import EnrollmentRecord, file_name
from countersign.protocol.keystore import DeviceKey

from .errors import DeviceToolError

__all__ = ["default_technician", "write_record"]


def default_technician() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):          # no passwd entry for the uid (a bare container)
        return f"uid-{os.getuid()}"


def write_record(folder: Path, device: str, dk: DeviceKey, hall: str, technician: str | None = None,
                 now_ms: int | None = None) -> Path:
    """Write ``<device>-e<epoch>.enroll.json`` into ``folder``; return its path."""
    rec = EnrollmentRecord(device=device, hall=dk.hall or hall, window=dk.window, epoch=dk.epoch,
                           scale=dk.scale, key=dk.key, technician=technician or default_technician(),
                           made_ms=wall_ms() if now_ms is None else now_ms)
    try:
        # Round-trip through the platform's own parser: a record the platform would refuse is not written.
        EnrollmentRecord.parse(rec.to_json())
    except ValueError as exc:
        raise DeviceToolError(f"cannot write an enrollment record for {device}: {exc}") from exc
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = folder / file_name(device, dk.epoch)
        tmp = folder / f".{path.name}.{os.getpid()}.new"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(rec.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        raise DeviceToolError(f"cannot write the enrollment record into {folder}: {exc}") from exc
    return path
