"""Gateway <-> province payloads: signed batches of device messages with the hall's context.

A batch carries each device's COSE_Mac0 unchanged, so the province re-verifies every device MAC and a
gateway cannot invent or alter a rating; the context the gateway adds (window, clerk, service item,
transaction, prompt time) is covered by the gateway's Ed25519 signature over the whole batch.

Besides device messages and prompt records, a batch carries the gateway's own reports (kinds 3..6):
a keypad's latest health figures, the gateway's backlog, per keypad and day what the gateway stored,
and a notice that its keystore gained a device. These are the gateway's word only (PROTOCOL.md 9.5 says
who vouches for what): they feed the fleet page and the reconciliation, never a rating's count.
"""

from __future__ import annotations

import datetime as dt
import re
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
    # The gateway's reports (kinds 3..6); one number means one thing in every entry kind.
    AT_MS = 11          # when the gateway took the report (its clock): the province keeps the latest
    SEEN_MS = 12        # keypad status: the gateway's last authenticated message from the keypad
    ONLINE = 13         # keypad status: true / false
    FW = 14             # keypad status: firmware version, null before the first hello / heartbeat
    RESET = 15          # keypad status: reset cause code
    HEAP = 16           # keypad status: free heap bytes
    OUTBOX = 17         # keypad status: unacked records in the keypad's outbox
    RSSI = 18           # keypad status: Wi-Fi dBm
    STUCK = 19          # keypad status: bit mask of keys held down (bit 0 = key 1)
    BACKLOG = 20        # gateway status: entries not yet acked by the province
    OLDEST_MS = 21      # gateway status: when the oldest of them was queued; null with no backlog
    EPOCH = 22          # day count, enroll notice: key epoch
    DAY = 23            # day count: 'YYYY-MM-DD' in the hall's zone
    RATINGS = 24        # day count: ratings stored at the gateway
    NO_RATINGS = 25     # day count: no-ratings stored at the gateway
    FIRST_SEQ = 26      # day count: lowest seq among them
    LAST_SEQ = 27       # day count: highest seq among them
    SCALE = 28          # enroll notice: 4 or 5 keys
    KCV = 29            # enroll notice: key check value (kcv.py), never the key


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
    KEYPAD_STATUS = 3
    GATEWAY_STATUS = 4
    DAY_COUNT = 5
    ENROLL = 6


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


def _stuck_ok(v: int | None) -> int | None:
    return None if v is None else _check("u16", v, "stuck")


@dataclass(frozen=True)
class KeypadStatusEntry:
    """A keypad's latest figures as the gateway has them (null: no hello / heartbeat heard yet)."""

    device: str
    at_ms: int
    seen_ms: int
    online: bool
    fw: str | None = None
    reset: int | None = None
    heap: int | None = None
    outbox: int | None = None
    rssi: int | None = None
    stuck: int | None = None

    @property
    def stuck_keys(self) -> list[int]:
        """The keys held down, numbered from 1."""
        return [i + 1 for i in range(16) if (self.stuck or 0) >> i & 1]

    def to_map(self) -> dict[int, Any]:
        return {EntryKey.KIND: int(EntryKind.KEYPAD_STATUS), EntryKey.DEVICE: self.device,
                EntryKey.AT_MS: self.at_ms, EntryKey.SEEN_MS: self.seen_ms, EntryKey.ONLINE: self.online,
                EntryKey.FW: self.fw, EntryKey.RESET: self.reset, EntryKey.HEAP: self.heap,
                EntryKey.OUTBOX: self.outbox, EntryKey.RSSI: self.rssi, EntryKey.STUCK: self.stuck}


@dataclass(frozen=True)
class GatewayStatusEntry:
    """The gateway's uplink backlog when it took the report."""

    at_ms: int
    backlog: int
    oldest_ms: int | None

    def __post_init__(self) -> None:
        if (self.backlog == 0) != (self.oldest_ms is None):
            raise SchemaError("oldest_ms is null exactly when the backlog is 0", "bad-field")

    def to_map(self) -> dict[int, Any]:
        return {EntryKey.KIND: int(EntryKind.GATEWAY_STATUS), EntryKey.AT_MS: self.at_ms,
                EntryKey.BACKLOG: self.backlog, EntryKey.OLDEST_MS: self.oldest_ms}


_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def check_day(v: Any, name: str = "day") -> str:
    """'YYYY-MM-DD', a real calendar day."""
    if not isinstance(v, str) or not _DAY.fullmatch(v):
        raise SchemaError(f"{name} must be a day 'YYYY-MM-DD', got {v!r}", "bad-field")
    try:
        dt.date.fromisoformat(v)
    except ValueError as exc:
        raise SchemaError(f"{name} {v!r} is not a calendar day", "bad-field") from exc
    return v


@dataclass(frozen=True)
class DayCountEntry:
    """What the gateway stored of one keypad's key epoch on one day (the hall's zone): the day of a
    rating is its press time's, or, with the keypad's clock unknown, the day the gateway received it."""

    device: str
    epoch: int
    day: str
    ratings: int
    no_ratings: int
    first_seq: int
    last_seq: int
    at_ms: int

    def __post_init__(self) -> None:
        check_day(self.day)
        n = self.ratings + self.no_ratings
        if n < 1 or self.first_seq > self.last_seq or n > self.last_seq - self.first_seq + 1:
            raise SchemaError(f"day count of {n} outcomes cannot have seqs {self.first_seq}..{self.last_seq}",
                              "bad-field")

    def to_map(self) -> dict[int, Any]:
        return {EntryKey.KIND: int(EntryKind.DAY_COUNT), EntryKey.DEVICE: self.device,
                EntryKey.AT_MS: self.at_ms, EntryKey.EPOCH: self.epoch, EntryKey.DAY: self.day,
                EntryKey.RATINGS: self.ratings, EntryKey.NO_RATINGS: self.no_ratings,
                EntryKey.FIRST_SEQ: self.first_seq, EntryKey.LAST_SEQ: self.last_seq}


_KCV = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True)
class EnrollEntry:
    """The gateway's keystore holds this device's key (epoch): the gateway's half of an enrollment."""

    device: str
    window: str
    epoch: int
    scale: int
    kcv: str
    at_ms: int

    def __post_init__(self) -> None:
        if not isinstance(self.kcv, str) or not _KCV.fullmatch(self.kcv):
            raise SchemaError("kcv must be 16 lowercase hex digits", "bad-field")

    def to_map(self) -> dict[int, Any]:
        return {EntryKey.KIND: int(EntryKind.ENROLL), EntryKey.WINDOW: self.window,
                EntryKey.DEVICE: self.device, EntryKey.AT_MS: self.at_ms, EntryKey.EPOCH: self.epoch,
                EntryKey.SCALE: self.scale, EntryKey.KCV: self.kcv}


ReportEntry = KeypadStatusEntry | GatewayStatusEntry | DayCountEntry | EnrollEntry
# For isinstance: the gateway's report entries (kinds 3..6).
REPORT_ENTRIES = (KeypadStatusEntry, GatewayStatusEntry, DayCountEntry, EnrollEntry)
Entry = DeviceEntry | PromptEntry | ReportEntry


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


def _bool(v: Any, name: str) -> bool:
    if not isinstance(v, bool):
        raise SchemaError(f"{name} must be true or false, got {v!r}", "bad-field")
    return v


def _opt(kind: str, v: Any, name: str) -> Any:
    return None if v is None else _check(kind, v, name)


def _report(kind: int, m: Mapping[Any, Any]) -> ReportEntry | None:
    """A report entry's fields, checked in key order; None for a kind that is not a report."""
    if kind == EntryKind.KEYPAD_STATUS:
        _keys(m, {0, 8, 11, 12, 13, 14, 15, 16, 17, 18, 19}, "keypad status entry")
        return KeypadStatusEntry(
            check_id(m[EntryKey.DEVICE]), _check("u64", m[EntryKey.AT_MS], "at_ms"),
            _check("u64", m[EntryKey.SEEN_MS], "seen_ms"), _bool(m[EntryKey.ONLINE], "online"),
            _opt_text(m[EntryKey.FW], "fw"), _opt("u16", m[EntryKey.RESET], "reset"),
            _opt("u32", m[EntryKey.HEAP], "heap"), _opt("u32", m[EntryKey.OUTBOX], "outbox"),
            _check("int", m[EntryKey.RSSI], "rssi"), _stuck_ok(m[EntryKey.STUCK]))
    if kind == EntryKind.GATEWAY_STATUS:
        _keys(m, {0, 11, 20, 21}, "gateway status entry")
        return GatewayStatusEntry(_check("u64", m[EntryKey.AT_MS], "at_ms"),
                                  _check("u32", m[EntryKey.BACKLOG], "backlog"),
                                  _opt("u64", m[EntryKey.OLDEST_MS], "oldest_ms"))
    if kind == EntryKind.DAY_COUNT:
        _keys(m, {0, 8, 11, 22, 23, 24, 25, 26, 27}, "day count entry")
        return DayCountEntry(
            check_id(m[EntryKey.DEVICE]), _check("u16", m[EntryKey.EPOCH], "epoch"),
            check_day(m[EntryKey.DAY]), _check("u32", m[EntryKey.RATINGS], "ratings"),
            _check("u32", m[EntryKey.NO_RATINGS], "no_ratings"),
            _check("seq", m[EntryKey.FIRST_SEQ], "first_seq"),
            _check("seq", m[EntryKey.LAST_SEQ], "last_seq"), _check("u64", m[EntryKey.AT_MS], "at_ms"))
    if kind == EntryKind.ENROLL:
        _keys(m, {0, 3, 8, 11, 22, 28, 29}, "enroll entry")
        return EnrollEntry(
            check_id(m[EntryKey.DEVICE]), _check("text", m[EntryKey.WINDOW], "window"),
            _check("u16", m[EntryKey.EPOCH], "epoch"), _check("scale", m[EntryKey.SCALE], "scale"),
            _check("text", m[EntryKey.KCV], "kcv"), _check("u64", m[EntryKey.AT_MS], "at_ms"))
    return None


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
        if isinstance(kind, int):
            report = _report(kind, m)
            if report is not None:
                return report
    except KeyError as exc:
        raise SchemaError(f"batch entry is missing field {exc.args[0]}", "missing-field") from exc
    except ValueError as exc:  # check_id's TopicError
        raise SchemaError(str(exc), "bad-field") from exc
    raise SchemaError(f"unknown batch entry kind {kind!r}", "bad-batch")


def decode_entry(data: bytes) -> Entry:
    """One entry map on its own (as the gateway keeps it queued), checked as in a batch."""
    return _entry(cbor.loads(data, max_size=4096, max_depth=2, max_items=16, max_text=limits.MAX_TEXT))


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
