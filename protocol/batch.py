"""Gateway <-> province payloads: signed batches of device messages with the hall's context.

A batch carries each device's COSE_Mac0 unchanged, so the province re-verifies every device MAC and a
gateway cannot invent or alter a rating; the context the gateway adds (window, clerk, service item,
transaction, prompt time) is covered by the gateway's Ed25519 signature over the whole batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from . import cbor, limits
from .errors import SchemaError
from .messages import T, _check
from .topics import check_id


class BK(IntEnum):
    """Keys of the batch map, of its entries and of the batch ack."""

    TYPE = 0
    HALL = 1
    BATCH = 2
    CREATED_MS = 3
    ENTRIES = 4
    # entry keys (an entry is its own map; key 0 is the entry kind)
    MSG = 1             # device entry: the device's COSE_Mac0 bytes, unchanged
    RECEIVED_MS = 2     # device entry: when the gateway received it
    WINDOW = 3
    CLERK = 4           # null: no clerk signed in (window closed)
    SERVICE = 5
    TXN = 6
    PROMPT_MS = 7       # when the prompt was opened, gateway clock; null for invite-key prompts
    DEVICE = 8          # prompt record: the keypad the prompt went to
    PROMPT = 9          # prompt record: prompt id
    TIMEOUT = 10        # prompt record: seconds
    # ack keys
    STORED = 3
    DUPLICATES = 4
    REJECTED = 5        # [[entry index, reason], ...]


class EntryKind(IntEnum):
    DEVICE_MESSAGE = 1
    PROMPT = 2


@dataclass
class DeviceEntry:
    msg: bytes
    received_ms: int
    window: str
    clerk: str | None
    service: int
    txn: str | None
    prompt_ms: int | None

    def to_map(self) -> dict[int, Any]:
        return {0: int(EntryKind.DEVICE_MESSAGE), BK.MSG: self.msg, BK.RECEIVED_MS: self.received_ms,
                BK.WINDOW: self.window, BK.CLERK: self.clerk, BK.SERVICE: self.service, BK.TXN: self.txn,
                BK.PROMPT_MS: self.prompt_ms}


@dataclass
class PromptEntry:
    prompt: int
    device: str
    window: str
    clerk: str | None
    service: int
    txn: str | None
    prompt_ms: int
    timeout: int

    def to_map(self) -> dict[int, Any]:
        return {0: int(EntryKind.PROMPT), BK.PROMPT: self.prompt, BK.DEVICE: self.device,
                BK.WINDOW: self.window, BK.CLERK: self.clerk, BK.SERVICE: self.service, BK.TXN: self.txn,
                BK.PROMPT_MS: self.prompt_ms, BK.TIMEOUT: self.timeout}


Entry = DeviceEntry | PromptEntry


@dataclass
class Batch:
    hall: str
    batch: int
    created_ms: int
    entries: list[Entry] = field(default_factory=list)

    def encode(self) -> bytes:
        return cbor.dumps({0: int(T.BATCH), BK.HALL: self.hall, BK.BATCH: self.batch,
                           BK.CREATED_MS: self.created_ms, BK.ENTRIES: [e.to_map() for e in self.entries]})


@dataclass
class BatchAck:
    hall: str
    batch: int
    stored: int
    duplicates: int
    rejected: list[tuple[int, str]] = field(default_factory=list)

    def encode(self) -> bytes:
        return cbor.dumps({0: int(T.BATCH_ACK), BK.HALL: self.hall, BK.BATCH: self.batch,
                           BK.STORED: self.stored, BK.DUPLICATES: self.duplicates,
                           BK.REJECTED: [[i, r] for i, r in self.rejected]})


def _opt_text(v: Any, name: str) -> str | None:
    return None if v is None else _check("text", v, name)


def _keys(m: Mapping[Any, Any], allowed: set[int], what: str) -> None:
    extra = set(m) - allowed
    if extra:
        raise SchemaError(f"unknown field(s) {sorted(extra, key=repr)} in {what}", "bad-field")


def _entry(m: Any) -> Entry:
    if not isinstance(m, Mapping):
        raise SchemaError("batch entry must be a map", "bad-batch")
    kind = m.get(0)
    if isinstance(kind, bool):   # true == 1 in Python: without this, `true` passed as a device entry
        raise SchemaError("batch entry kind must be an integer", "bad-batch")
    try:
        if kind == EntryKind.DEVICE_MESSAGE:
            _keys(m, {0, 1, 2, 3, 4, 5, 6, 7}, "device entry")
            msg = m[BK.MSG]
            if not isinstance(msg, bytes) or len(msg) > limits.MAX_DEVICE_MESSAGE:
                raise SchemaError("entry message must be a device COSE message", "bad-batch")
            pm = m[BK.PROMPT_MS]
            return DeviceEntry(msg, _check("u64", m[BK.RECEIVED_MS], "received_ms"),
                               _check("text", m[BK.WINDOW], "window"), _opt_text(m[BK.CLERK], "clerk"),
                               _check("u16", m[BK.SERVICE], "service"), _opt_text(m[BK.TXN], "txn"),
                               None if pm is None else _check("u64", pm, "prompt_ms"))
        if kind == EntryKind.PROMPT:
            _keys(m, {0, 3, 4, 5, 6, 7, 8, 9, 10}, "prompt entry")
            return PromptEntry(_check("u32", m[BK.PROMPT], "prompt"), check_id(m[BK.DEVICE]),
                               _check("text", m[BK.WINDOW], "window"), _opt_text(m[BK.CLERK], "clerk"),
                               _check("u16", m[BK.SERVICE], "service"), _opt_text(m[BK.TXN], "txn"),
                               _check("u64", m[BK.PROMPT_MS], "prompt_ms"),
                               _check("u16", m[BK.TIMEOUT], "timeout"))
    except KeyError as exc:
        raise SchemaError(f"batch entry is missing field {exc.args[0]}", "missing-field") from exc
    except ValueError as exc:  # check_id's TopicError
        raise SchemaError(str(exc), "bad-field") from exc
    raise SchemaError(f"unknown batch entry kind {kind!r}", "bad-batch")


def decode_batch(payload: bytes) -> Batch:
    m = cbor.loads(payload, max_size=limits.MAX_BATCH_MESSAGE, max_depth=3,
                   max_items=limits.MAX_BATCH_ENTRIES, max_text=limits.MAX_TEXT)
    if not isinstance(m, Mapping) or m.get(0) != T.BATCH:
        raise SchemaError("not a batch payload", "bad-type")
    _keys(m, {0, 1, 2, 3, 4}, "batch")
    entries = m.get(BK.ENTRIES)
    if not isinstance(entries, Sequence) or isinstance(entries, bytes | str):
        raise SchemaError("batch entries must be an array", "bad-batch")
    try:
        return Batch(check_id(m[BK.HALL], "hall id"), _check("u64", m[BK.BATCH], "batch"),
                     _check("u64", m[BK.CREATED_MS], "created_ms"), [_entry(e) for e in entries])
    except KeyError as exc:
        raise SchemaError(f"batch is missing field {exc.args[0]}", "missing-field") from exc


def decode_batch_ack(payload: bytes) -> BatchAck:
    m = cbor.loads(payload, max_size=64 * 1024, max_depth=3, max_items=limits.MAX_BATCH_ENTRIES,
                   max_text=limits.MAX_TEXT)
    if not isinstance(m, Mapping) or m.get(0) != T.BATCH_ACK:
        raise SchemaError("not a batch ack payload", "bad-type")
    _keys(m, {0, 1, 2, 3, 4, 5}, "batch ack")
    try:
        rej = m[BK.REJECTED]
        if not isinstance(rej, Sequence):
            raise SchemaError("rejected must be an array", "bad-field")
        rejected = []
        for item in rej:
            if not isinstance(item, Sequence) or len(item) != 2:
                raise SchemaError("rejected items are [index, reason]", "bad-field")
            rejected.append((_check("u32", item[0], "index"), _check("text", item[1], "reason")))
        return BatchAck(check_id(m[BK.HALL], "hall id"), _check("u64", m[BK.BATCH], "batch"),
                        _check("u32", m[BK.STORED], "stored"), _check("u32", m[BK.DUPLICATES], "duplicates"),
                        rejected)
    except KeyError as exc:
        raise SchemaError(f"batch ack is missing field {exc.args[0]}", "missing-field") from exc
