"""The technician's enrollment record: what ``countersign device provision --enrollment-dir`` writes and
the provincial platform's administrator uploads (PROTOCOL.md, "Enrollment").

It is the technician's word for a keypad: its id, key, epoch, hall, window and scale. It travels by the
technician's own channel (e-mail, a USB stick, the utility's ticket system), never through the hall
gateway, so a gateway, which knows every key of its hall, still cannot make the province accept a device
of its own invention: the province needs this record and an administrator's approval. The file holds the
key: it is created 0600 and is never printed.

A JSON object, UTF-8, at most ``MAX_RECORD`` bytes, with exactly these members::

    {"format": "countersign-enrollment", "version": 1, "device": "hf01-3a9f2c", "hall": "hf01",
     "window": "3", "epoch": 1, "scale": 4, "key": "<64 hex digits>", "kcv": "<16 hex digits>",
     "technician": "wang", "made_ms": 1764662400000}

``kcv`` is ``protocol.kcv.key_check_value(key)``, the value the gateway's enroll notice carries: the
province recomputes it from the key and compares, so a damaged key (a digit changed in a copy) is
refused, and the gateway's notice and the technician's record can be matched without the key ever
crossing the gateway's uplink.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from . import topics
from .errors import ProtocolError
from .kcv import key_check_value
from .messages import SCALES

__all__ = ["FORMAT", "MAX_RECORD", "VERSION", "EnrollmentRecord", "RecordError", "file_name"]

FORMAT = "countersign-enrollment"
VERSION = 1
MAX_RECORD = 4096
KEY_LEN = 32
_FIELDS = frozenset({"format", "version", "device", "hall", "window", "epoch", "scale", "key", "kcv",
                     "technician", "made_ms"})
_HEX = re.compile(r"^[0-9a-f]*$")
# A window is a label on the counter ("3", "A2"), as the gateway's counter API takes it (gateway/api.py).
_MAX_WINDOW = 32
_MAX_TECHNICIAN = 64


class RecordError(ProtocolError, ValueError):
    """The file is not a valid enrollment record; the message says which member and why."""

    reason = "bad-enrollment-record"


def file_name(device: str, epoch: int) -> str:
    return f"{topics.check_id(device)}-e{epoch}.enroll.json"


@dataclass(frozen=True)
class EnrollmentRecord:
    device: str
    hall: str
    window: str
    epoch: int
    scale: int
    key: bytes
    technician: str
    made_ms: int

    @property
    def kcv(self) -> str:
        return key_check_value(self.key)

    def to_json(self) -> bytes:
        doc = {"format": FORMAT, "version": VERSION, "device": self.device, "hall": self.hall,
               "window": self.window, "epoch": self.epoch, "scale": self.scale, "key": self.key.hex(),
               "kcv": self.kcv, "technician": self.technician, "made_ms": self.made_ms}
        return (json.dumps(doc, ensure_ascii=False, indent=1) + "\n").encode("utf-8")

    @classmethod
    def parse(cls, data: bytes) -> EnrollmentRecord:
        """Strict: exactly the members above, each of its type and range, the kcv recomputed."""
        if len(data) > MAX_RECORD:
            raise RecordError(f"an enrollment record is at most {MAX_RECORD} bytes, this file has"
                              f" {len(data)}")
        try:
            doc = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
        except (UnicodeDecodeError, ValueError) as exc:
            raise RecordError(f"not an enrollment record (JSON in UTF-8): {exc}") from exc
        if not isinstance(doc, dict):
            raise RecordError("not an enrollment record: the file must hold one JSON object")
        if doc.get("format") != FORMAT:
            raise RecordError(f"not an enrollment record: 'format' must be {FORMAT!r}")
        if doc.get("version") != VERSION or isinstance(doc.get("version"), bool):
            raise RecordError(f"enrollment record version {doc.get('version')!r} is not supported"
                              f" (this platform reads version {VERSION})")
        missing, extra = sorted(_FIELDS - set(doc)), sorted(set(doc) - _FIELDS)
        if missing or extra:
            raise RecordError("enrollment record members: " + "; ".join(
                ([f"missing {', '.join(missing)}"] if missing else [])
                + ([f"unknown {', '.join(extra)}"] if extra else [])))
        try:
            device = topics.check_id(_text(doc, "device"))
            hall = topics.check_id(_text(doc, "hall"), "hall id")
        except ValueError as exc:
            raise RecordError(f"enrollment record: {exc}") from exc
        window = _text(doc, "window")
        if not 1 <= len(window) <= _MAX_WINDOW or not window.isprintable() or " " in window:
            raise RecordError(f"enrollment record: window {window!r} must be 1-{_MAX_WINDOW} printable"
                              " characters without spaces")
        epoch = _int(doc, "epoch", 0, 0xFFFF)
        scale = _int(doc, "scale", min(SCALES), max(SCALES))
        if scale not in SCALES:
            raise RecordError(f"enrollment record: scale {scale} is not one of {SCALES}")
        key_hex = _text(doc, "key")
        if len(key_hex) != 2 * KEY_LEN or not _HEX.match(key_hex):
            raise RecordError(f"enrollment record: key must be {2 * KEY_LEN} lowercase hex digits"
                              f" ({KEY_LEN} bytes)")
        key = bytes.fromhex(key_hex)
        kcv = _text(doc, "kcv")
        if kcv != key_check_value(key):
            raise RecordError("enrollment record: kcv does not match the key (the key was changed or damaged"
                              " on its way: ask the technician for the file as the tool wrote it)")
        technician = _text(doc, "technician")
        if not 1 <= len(technician) <= _MAX_TECHNICIAN or not technician.isprintable():
            raise RecordError(f"enrollment record: technician must be 1-{_MAX_TECHNICIAN} printable"
                              " characters")
        made_ms = _int(doc, "made_ms", 0, 2**53)
        return cls(device, hall, window, epoch, scale, key, technician, made_ms)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise RecordError(f"enrollment record: member {k!r} appears twice")
        out[k] = v
    return out


def _text(doc: dict[str, Any], name: str) -> str:
    v = doc[name]
    if not isinstance(v, str):
        raise RecordError(f"enrollment record: {name} must be a string")
    return v


def _int(doc: dict[str, Any], name: str, lo: int, hi: int) -> int:
    v = doc[name]
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise RecordError(f"enrollment record: {name} must be an integer {lo}..{hi}")
    return v
