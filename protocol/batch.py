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
from .context import Context
from .errors import SchemaError
from .messages import T, _check
from .topics import check_id


class BatchKey(IntEnum):
    """Keys of the batch map."""

    TYPE = 0
    HALL = 1
    BATCH = 2
    CREATED_MS = 3
    ENTRIES = 4


class EntryKey(IntEnum):
    """Keys of an entry's map (an entry is its own map; key 0 is the entry kind)."""

    KIND = 0
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


class AckKey(IntEnum):
    """Keys of the batch ack map."""

    TYPE = 0
    HALL = 1
    BATCH = 2
    STORED = 3
    DUPLICATES = 4
    REJECTED = 5        # [[entry index, reason], ...]


class EntryKind(IntEnum):
    DEVICE_MESSAGE = 1
    PROMPT = 2


def _ctx_map(ctx: Context) -> dict[int, Any]:
    return {EntryKey.WINDOW: ctx.window, EntryKey.CLERK: ctx.clerk, EntryKey.SERVICE: ctx.service,
            EntryKey.TXN: ctx.txn, EntryKey.PROMPT_MS: ctx.prompt_ms}


@dataclass(frozen=True)
class DeviceEntry:
    msg: bytes
    received_ms: int
    ctx: Context

    def to_map(self) -> dict[int, Any]:
        return {EntryKey.KIND: int(EntryKind.DEVICE_MESSAGE), EntryKey.MSG: self.msg,
                EntryKey.RECEIVED_MS: self.received_ms, **_ctx_map(self.ctx)}


@dataclass(frozen=True)
class PromptEntry:
    prompt: int
    device: str
    ctx: Context                # prompt_ms is always set: the record is of an opened prompt
    timeout: int

    def __post_init__(self) -> None:
        if self.ctx.prompt_ms is None:
            raise SchemaError("a prompt record needs the time its prompt was opened", "missing-field")

    @property
    def opened_ms(self) -> int:
        ms = self.ctx.prompt_ms
        if ms is None:   # refused by __post_init__
            raise SchemaError("a prompt record needs the time its prompt was opened", "missing-field")
        return ms

    def to_map(self) -> dict[int, Any]:
        return {EntryKey.KIND: int(EntryKind.PROMPT), EntryKey.PROMPT: self.prompt,
                EntryKey.DEVICE: self.device, **_ctx_map(self.ctx), EntryKey.TIMEOUT: self.timeout}


Entry = DeviceEntry | PromptEntry


@dataclass
class Batch:
    hall: str
    batch: int
    created_ms: int
    entries: list[Entry] = field(default_factory=list)

    def encode(self) -> bytes:
        return cbor.dumps({BatchKey.TYPE: int(T.BATCH), BatchKey.HALL: self.hall,
                           BatchKey.BATCH: self.batch, BatchKey.CREATED_MS: self.created_ms,
                           BatchKey.ENTRIES: [e.to_map() for e in self.entries]})


@dataclass
class BatchAck:
    hall: str
    batch: int
    stored: int
    duplicates: int
    rejected: list[tuple[int, str]] = field(default_factory=list)

    def encode(self) -> bytes:
        return cbor.dumps({AckKey.TYPE: int(T.BATCH_ACK), AckKey.HALL: self.hall, AckKey.BATCH: self.batch,
                           AckKey.STORED: self.stored, AckKey.DUPLICATES: self.duplicates,
                           AckKey.REJECTED: [[i, r] for i, r in self.rejected]})


def _opt_text(v: Any, name: str) -> str | None:
    return None if v is None else _check("text", v, name)


def _keys(m: Mapping[Any, Any], allowed: set[int], what: str) -> None:
    extra = set(m) - allowed
    if extra:
        raise SchemaError(f"unknown field(s) {sorted(extra, key=repr)} in {what}", "bad-field")


def _ctx(m: Mapping[Any, Any], *, optional_time: bool) -> Context:
    """An entry's context, its fields checked in key order; a prompt record always has its time."""
    window = _check("text", m[EntryKey.WINDOW], "window")
    clerk = _opt_text(m[EntryKey.CLERK], "clerk")
    service = _check("u16", m[EntryKey.SERVICE], "service")
    txn = _opt_text(m[EntryKey.TXN], "txn")
    pm = m[EntryKey.PROMPT_MS]
    prompt_ms = None if pm is None and optional_time else _check("u64", pm, "prompt_ms")
    return Context(window, clerk, service, txn, prompt_ms)


def _entry(m: Any) -> Entry:
    if not isinstance(m, Mapping):
        raise SchemaError("batch entry must be a map", "bad-batch")
    kind = m.get(0)
    if isinstance(kind, bool):   # true == 1 in Python: without this, `true` passed as a device entry
        raise SchemaError("batch entry kind must be an integer", "bad-batch")
    try:
        if kind == EntryKind.DEVICE_MESSAGE:
            _keys(m, {0, 1, 2, 3, 4, 5, 6, 7}, "device entry")
            msg = m[EntryKey.MSG]
            if not isinstance(msg, bytes) or len(msg) > limits.MAX_DEVICE_MESSAGE:
                raise SchemaError("entry message must be a device COSE message", "bad-batch")
            if EntryKey.PROMPT_MS not in m:   # reported before a bad received_ms, as it always was
                raise KeyError(EntryKey.PROMPT_MS)
            return DeviceEntry(msg, _check("u64", m[EntryKey.RECEIVED_MS], "received_ms"),
                               _ctx(m, optional_time=True))
        if kind == EntryKind.PROMPT:
            _keys(m, {0, 3, 4, 5, 6, 7, 8, 9, 10}, "prompt entry")
            return PromptEntry(_check("u32", m[EntryKey.PROMPT], "prompt"), check_id(m[EntryKey.DEVICE]),
                               _ctx(m, optional_time=False),
                               _check("u16", m[EntryKey.TIMEOUT], "timeout"))
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
    entries = m.get(BatchKey.ENTRIES)
    if not isinstance(entries, Sequence) or isinstance(entries, bytes | str):
        raise SchemaError("batch entries must be an array", "bad-batch")
    try:
        return Batch(check_id(m[BatchKey.HALL], "hall id"), _check("u64", m[BatchKey.BATCH], "batch"),
                     _check("u64", m[BatchKey.CREATED_MS], "created_ms"), [_entry(e) for e in entries])
    except KeyError as exc:
        raise SchemaError(f"batch is missing field {exc.args[0]}", "missing-field") from exc


def decode_batch_ack(payload: bytes) -> BatchAck:
    m = cbor.loads(payload, max_size=64 * 1024, max_depth=3, max_items=limits.MAX_BATCH_ENTRIES,
                   max_text=limits.MAX_TEXT)
    if not isinstance(m, Mapping) or m.get(0) != T.BATCH_ACK:
        raise SchemaError("not a batch ack payload", "bad-type")
    _keys(m, {0, 1, 2, 3, 4, 5}, "batch ack")
    try:
        rej = m[AckKey.REJECTED]
        if not isinstance(rej, Sequence):
            raise SchemaError("rejected must be an array", "bad-field")
        rejected = []
        for item in rej:
            if not isinstance(item, Sequence) or len(item) != 2:
                raise SchemaError("rejected items are [index, reason]", "bad-field")
            rejected.append((_check("u32", item[0], "index"), _check("text", item[1], "reason")))
        return BatchAck(check_id(m[AckKey.HALL], "hall id"), _check("u64", m[AckKey.BATCH], "batch"),
                        _check("u32", m[AckKey.STORED], "stored"),
                        _check("u32", m[AckKey.DUPLICATES], "duplicates"),
                        rejected)
    except KeyError as exc:
        raise SchemaError(f"batch ack is missing field {exc.args[0]}", "missing-field") from exc
