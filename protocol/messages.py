"""Message types of the device <-> gateway exchange: CBOR maps with small integer keys.

Every message is a map whose key 0 is the message type. Field numbers are global (one number means
one thing in every message), which keeps the firmware's encoder to a table and the CDDL short. The
tables here, PROTOCOL.md and countersign.cddl are the same contract; tests check they agree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import IntEnum
from typing import Any, ClassVar

from . import cbor, limits
from .errors import SchemaError


class T(IntEnum):
    """Message types (key 0). 1-15 go up from a device, 16-31 down to it, 32+ gateway <-> province."""

    RATING = 1
    NO_RATING = 2
    HELLO = 3
    HEARTBEAT = 4
    ACK = 16
    PROMPT = 17
    TIME = 18
    SESSION = 19
    BATCH = 32
    BATCH_ACK = 33


class K(IntEnum):
    """Field keys, shared by all device messages."""

    TYPE = 0
    EPOCH = 1
    SEQ = 2
    SCORE = 3
    SCALE = 4
    PROMPT = 5          # prompt id from the gateway; 0 = opened on the keypad by the invite key
    TIME = 6            # unix seconds of the event, or null = device clock not yet set
    MONO = 7            # device monotonic milliseconds (ticks since boot) of the event
    DELAY = 8           # milliseconds from prompt to press (rating) or to expiry (no-rating)
    BOOT = 9            # boot count
    SEQS = 10           # ack: the seqs acknowledged
    NOW_MS = 11         # time sync: gateway unix milliseconds
    NONCE = 12          # hello/heartbeat: fresh value the time sync must echo
    FW = 13
    RESET = 14
    HEAP = 15
    OUTBOX = 16
    UPTIME = 17
    RSSI = 18
    IGNORED = 19
    CLERK = 20
    SERVICE = 21
    TXN = 22
    TIMEOUT = 23
    CLERK_NAME = 24
    STUCK = 25          # bit mask of keys held down past the stuck-key limit
    OUTBOX_FREE = 26    # free outbox slots
    BAD_DOWN = 27       # hello/heartbeat: downlinks discarded since boot (failed MAC, too large, bad topic)


class Service(IntEnum):
    """Service items (服务项目). 0 = unknown (a prompt opened by the invite key)."""

    UNKNOWN = 0
    NEW_CONNECTION = 1      # 业扩报装
    BILL_PAYMENT = 2        # 电费缴纳
    ENQUIRY = 3             # 咨询查询
    COMPLAINT = 4           # 投诉举报
    METER = 5               # 计量业务 (meter check, relocation)
    CHANGE = 6              # 变更用电 (change of name, capacity, tariff)
    OTHER = 7               # 其他


SERVICE_NAMES_ZH = {
    Service.UNKNOWN: "未知", Service.NEW_CONNECTION: "业扩报装", Service.BILL_PAYMENT: "电费缴纳",
    Service.ENQUIRY: "咨询查询", Service.COMPLAINT: "投诉举报", Service.METER: "计量业务",
    Service.CHANGE: "变更用电", Service.OTHER: "其他",
}

SCALES = (4, 5)
SCORE_NAMES_ZH = {
    4: {4: "非常满意", 3: "满意", 2: "基本满意", 1: "不满意"},
    5: {5: "非常满意", 4: "满意", 3: "基本满意", 2: "不满意", 1: "非常不满意"},
}


def is_satisfied(score: int, scale: int) -> bool:
    """基本满意 and better count as satisfied (the 满意率 numerator); 不满意 and 非常不满意 do not."""
    return score >= scale - 2


U32 = 0xFFFFFFFF
U64 = 0xFFFFFFFFFFFFFFFF


def _uint(v: Any, name: str, lo: int = 0, hi: int = U32) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise SchemaError(f"{name} must be an integer in {lo}..{hi}, got {v!r}", "bad-field")
    return v


def _text(v: Any, name: str) -> str:
    if not isinstance(v, str) or len(v.encode()) > limits.MAX_TEXT:
        raise SchemaError(f"{name} must be text of at most {limits.MAX_TEXT} bytes", "bad-field")
    return v


# Field spec: key -> (attribute, checker, required). Checkers take (value, name).
_OPT_TIME = "opt_time"


@dataclass
class Message:
    TYPE: ClassVar[T]
    SPEC: ClassVar[tuple[tuple[K, str, str, bool], ...]]  # (key, attr, kind, required)

    def to_map(self) -> dict[int, Any]:
        out: dict[int, Any] = {int(K.TYPE): int(self.TYPE)}
        for key, attr, _kind, required in self.SPEC:
            v = getattr(self, attr)
            if v is None and not required:
                continue
            out[int(key)] = list(v) if isinstance(v, tuple) else v
        return out

    def encode(self) -> bytes:
        return cbor.dumps(self.to_map())

    def as_json(self) -> dict[str, Any]:
        d = {"type": self.TYPE.name.lower()}
        d.update(asdict(self))
        return d


def _check(kind: str, v: Any, name: str) -> Any:
    if kind == "u32":
        return _uint(v, name)
    if kind == "u16":
        return _uint(v, name, 0, 0xFFFF)
    if kind == "u64":
        return _uint(v, name, 0, U64)
    if kind == "seq":
        return _uint(v, name, 1, U32)
    if kind == "score":
        return _uint(v, name, 1, 5)
    if kind == "scale":
        if v not in SCALES or isinstance(v, bool):
            raise SchemaError(f"{name} must be 4 or 5, got {v!r}", "bad-field")
        return v
    if kind == "time":   # unix seconds or null (clock unknown)
        return None if v is None else _uint(v, name, 1, U32)
    if kind == "text":
        return _text(v, name)
    if kind == "int":
        if v is None:
            return None
        if not isinstance(v, int) or isinstance(v, bool) or not -200 <= v <= 200:
            raise SchemaError(f"{name} must be a small integer or null", "bad-field")
        return v
    if kind == "seqs":
        if not isinstance(v, list | tuple) or not 1 <= len(v) <= limits.MAX_ACK_SEQS:
            raise SchemaError(f"{name} must be a list of 1..{limits.MAX_ACK_SEQS} seqs", "bad-field")
        return tuple(_uint(x, name, 1, U32) for x in v)
    raise AssertionError(kind)  # a programming error in SPEC, not input


@dataclass
class Rating(Message):
    TYPE = T.RATING
    SPEC = ((K.EPOCH, "epoch", "u16", True), (K.SEQ, "seq", "seq", True), (K.SCORE, "score", "score", True),
            (K.SCALE, "scale", "scale", True), (K.PROMPT, "prompt", "u32", True),
            (K.TIME, "time", "time", True), (K.MONO, "mono", "u32", True), (K.DELAY, "delay", "u32", True),
            (K.BOOT, "boot", "u32", True))
    epoch: int
    seq: int
    score: int
    scale: int
    prompt: int
    time: int | None
    mono: int
    delay: int
    boot: int


@dataclass
class NoRating(Message):
    TYPE = T.NO_RATING
    SPEC = ((K.EPOCH, "epoch", "u16", True), (K.SEQ, "seq", "seq", True), (K.PROMPT, "prompt", "u32", True),
            (K.TIME, "time", "time", True), (K.MONO, "mono", "u32", True), (K.DELAY, "delay", "u32", True),
            (K.BOOT, "boot", "u32", True))
    epoch: int
    seq: int
    prompt: int
    time: int | None
    mono: int
    delay: int
    boot: int


_HEALTH = ((K.EPOCH, "epoch", "u16", True), (K.BOOT, "boot", "u32", True), (K.NONCE, "nonce", "u32", True),
           (K.FW, "fw", "text", True), (K.RESET, "reset", "u16", True), (K.HEAP, "heap", "u32", True),
           (K.OUTBOX, "outbox", "u32", True), (K.OUTBOX_FREE, "outbox_free", "u32", True),
           (K.UPTIME, "uptime", "u32", True), (K.RSSI, "rssi", "int", True),
           (K.IGNORED, "ignored", "u32", True), (K.STUCK, "stuck", "u16", True),
           (K.TIME, "time", "time", True), (K.BAD_DOWN, "bad_down", "u32", False))


@dataclass
class Hello(Message):
    TYPE = T.HELLO
    SPEC = _HEALTH
    epoch: int
    boot: int
    nonce: int
    fw: str
    reset: int
    heap: int
    outbox: int
    outbox_free: int
    uptime: int
    rssi: int | None
    ignored: int
    stuck: int
    time: int | None
    bad_down: int | None = None     # absent while 0 (a keypad that discarded nothing sends no field)


@dataclass
class Heartbeat(Hello):
    TYPE = T.HEARTBEAT


@dataclass
class Ack(Message):
    TYPE = T.ACK
    SPEC = ((K.EPOCH, "epoch", "u16", True), (K.SEQS, "seqs", "seqs", True))
    epoch: int
    seqs: tuple[int, ...]


@dataclass
class Prompt(Message):
    TYPE = T.PROMPT
    SPEC = ((K.PROMPT, "prompt", "u32", True), (K.CLERK, "clerk", "text", True),
            (K.SERVICE, "service", "u16", True), (K.TXN, "txn", "text", True),
            (K.TIMEOUT, "timeout", "u16", True), (K.TIME, "time", "time", True))
    prompt: int
    clerk: str
    service: int
    txn: str
    timeout: int
    time: int | None


@dataclass
class TimeSync(Message):
    TYPE = T.TIME
    SPEC = ((K.NOW_MS, "now_ms", "u64", True), (K.NONCE, "nonce", "u32", True))
    now_ms: int
    nonce: int


@dataclass
class Session(Message):
    """What the keypad shows while idle: the signed-in clerk, or clerk null = window closed."""

    TYPE = T.SESSION
    SPEC = ((K.CLERK, "clerk", "text", False), (K.CLERK_NAME, "clerk_name", "text", False))
    clerk: str | None = None
    clerk_name: str | None = None


DEVICE_UP = {T.RATING: Rating, T.NO_RATING: NoRating, T.HELLO: Hello, T.HEARTBEAT: Heartbeat}
DEVICE_DOWN = {T.ACK: Ack, T.PROMPT: Prompt, T.TIME: TimeSync, T.SESSION: Session}
ALL_DEVICE = {**DEVICE_UP, **DEVICE_DOWN}


def from_map(m: Any, allowed: dict[T, type[Message]] = ALL_DEVICE) -> Message:
    """Validate a decoded payload map against its type's field table; no unknown keys are allowed."""
    if not isinstance(m, dict):
        raise SchemaError("payload must be a map", "bad-payload")
    t = m.get(int(K.TYPE))
    if isinstance(t, bool) or not isinstance(t, int) or t not in {int(x) for x in allowed}:
        raise SchemaError(f"unknown or unexpected message type {t!r}", "bad-type")
    cls = allowed[T(t)]
    known = {int(k) for k, *_ in cls.SPEC} | {int(K.TYPE)}
    extra = set(m) - known
    if extra:
        raise SchemaError(f"unknown field(s) {sorted(extra, key=repr)} in {cls.__name__}", "bad-field")
    kw: dict[str, Any] = {}
    for key, attr, kind, required in cls.SPEC:
        if int(key) not in m:
            if required:
                raise SchemaError(f"{cls.__name__} is missing field {int(key)} ({attr})", "missing-field")
            kw[attr] = None
            continue
        kw[attr] = _check(kind, m[int(key)], attr)
    if cls is Rating and kw["score"] > kw["scale"]:
        raise SchemaError(f"score {kw['score']} is outside the {kw['scale']}-key scale", "bad-field")
    return cls(**kw)


def decode_payload(payload: bytes, allowed: dict[T, type[Message]] = ALL_DEVICE) -> Message:
    m = cbor.loads(payload, max_size=limits.MAX_DEVICE_PAYLOAD, max_depth=2, max_items=limits.MAX_ITEMS,
                   max_text=limits.MAX_TEXT)
    return from_map(m, allowed)
