# The device messages of PROTOCOL.md section 6: field and type numbers (the same as
# protocol/messages.py), encoders of the up messages into a caller's buffer, and the validating
# decoder of the down messages. Payloads are maps with keys in ascending order (deterministic).
from micropython import const
from cs import cbor

# message types (key 0)
T_RATING = const(1)
T_NO_RATING = const(2)
T_HELLO = const(3)
T_HEARTBEAT = const(4)
T_ACK = const(16)
T_PROMPT = const(17)
T_TIME = const(18)
T_SESSION = const(19)

# field keys (global: one number means one thing in every message)
K_TYPE = const(0)
K_EPOCH = const(1)
K_SEQ = const(2)
K_SCORE = const(3)
K_SCALE = const(4)
K_PROMPT = const(5)
K_TIME = const(6)
K_MONO = const(7)
K_DELAY = const(8)
K_BOOT = const(9)
K_SEQS = const(10)
K_NOW_MS = const(11)
K_NONCE = const(12)
K_FW = const(13)
K_RESET = const(14)
K_HEAP = const(15)
K_OUTBOX = const(16)
K_UPTIME = const(17)
K_RSSI = const(18)
K_IGNORED = const(19)
K_CLERK = const(20)
K_SERVICE = const(21)
K_TXN = const(22)
K_TIMEOUT = const(23)
K_CLERK_NAME = const(24)
K_STUCK = const(25)
K_OUTBOX_FREE = const(26)

_U16 = const(0xFFFF)
_U32 = const(0xFFFFFFFF)
_U64 = 0xFFFFFFFFFFFFFFFF
_MAX_PAYLOAD = const(200)
_MAX_ITEMS = const(64)
_MAX_TEXT = const(64)
_MAX_SEQS = const(32)


# ---- encoders. Each field is range-checked (no allocation: comparisons only) so the keypad never
# sends what the gateway would refuse; `type(v) is int` refuses bools and floats like the CPython side.

def _u(buf, p, key, v, lo, hi):
    if type(v) is not int or v < lo or v > hi:
        raise ValueError("bad-field")
    p = cbor.put_head(buf, p, 0, key)
    return cbor.put_head(buf, p, 0, v)


def _time(buf, p, v):
    if v is None:
        buf[p] = K_TIME
        return cbor.put_null(buf, p + 1)
    return _u(buf, p, K_TIME, v, 1, _U32)


def rating(buf, epoch, seq, score, scale, prompt, time, mono, delay, boot):
    """time None = clock unknown. Returns the payload length."""
    if scale != 4 and scale != 5:
        raise ValueError("bad-field")
    buf[0] = 0xAA           # map(10)
    p = _u(buf, 1, K_TYPE, T_RATING, 0, 255)
    p = _u(buf, p, K_EPOCH, epoch, 0, _U16)
    p = _u(buf, p, K_SEQ, seq, 1, _U32)
    p = _u(buf, p, K_SCORE, score, 1, scale)
    p = _u(buf, p, K_SCALE, scale, 4, 5)
    p = _u(buf, p, K_PROMPT, prompt, 0, _U32)
    p = _time(buf, p, time)
    p = _u(buf, p, K_MONO, mono, 0, _U32)
    p = _u(buf, p, K_DELAY, delay, 0, _U32)
    return _u(buf, p, K_BOOT, boot, 0, _U32)


def no_rating(buf, epoch, seq, prompt, time, mono, delay, boot):
    buf[0] = 0xA8           # map(8)
    p = _u(buf, 1, K_TYPE, T_NO_RATING, 0, 255)
    p = _u(buf, p, K_EPOCH, epoch, 0, _U16)
    p = _u(buf, p, K_SEQ, seq, 1, _U32)
    p = _u(buf, p, K_PROMPT, prompt, 0, _U32)
    p = _time(buf, p, time)
    p = _u(buf, p, K_MONO, mono, 0, _U32)
    p = _u(buf, p, K_DELAY, delay, 0, _U32)
    return _u(buf, p, K_BOOT, boot, 0, _U32)


def health(buf, typ, epoch, boot, nonce, fw, reset, heap, outbox, outbox_free, uptime, rssi, ignored,
           stuck, time):
    """Hello (typ T_HELLO) or heartbeat (T_HEARTBEAT). fw: str or UTF-8 bytes (bytes: no allocation)."""
    if typ != T_HELLO and typ != T_HEARTBEAT:
        raise ValueError("bad-type")
    buf[0] = 0xAE           # map(14)
    p = _u(buf, 1, K_TYPE, typ, 0, 255)
    p = _u(buf, p, K_EPOCH, epoch, 0, _U16)
    p = _time(buf, p, time)
    p = _u(buf, p, K_BOOT, boot, 0, _U32)
    p = _u(buf, p, K_NONCE, nonce, 0, _U32)
    if isinstance(fw, str):
        fw = fw.encode()
    if not isinstance(fw, bytes) or len(fw) > _MAX_TEXT:
        raise ValueError("bad-field")
    buf[p] = K_FW
    p = cbor.put_text(buf, p + 1, fw)
    p = _u(buf, p, K_RESET, reset, 0, _U16)
    p = _u(buf, p, K_HEAP, heap, 0, _U32)
    p = _u(buf, p, K_OUTBOX, outbox, 0, _U32)
    p = _u(buf, p, K_UPTIME, uptime, 0, _U32)
    if rssi is None:
        buf[p] = K_RSSI
        p = cbor.put_null(buf, p + 1)
    elif type(rssi) is not int or rssi < -200 or rssi > 200:
        raise ValueError("bad-field")
    else:
        buf[p] = K_RSSI
        p = cbor.put_int(buf, p + 1, rssi)
    p = _u(buf, p, K_IGNORED, ignored, 0, _U32)
    p = _u(buf, p, K_STUCK, stuck, 0, _U16)
    return _u(buf, p, K_OUTBOX_FREE, outbox_free, 0, _U32)


# ---- decoder. A field table per type, checked like messages.from_map: the type, then unknown keys,
# then each field in table order (missing-field / bad-field), then score <= scale. A table is bytes
# (2 per field: key, kind | _OPT): a few bytes of RAM instead of a tuple per field.

_KU16 = const(0)
_KU32 = const(1)
_KU64 = const(2)
_KSEQ = const(3)
_KSCORE = const(4)
_KSCALE = const(5)
_KTIME = const(6)
_KTEXT = const(7)
_KINT = const(8)
_KSEQS = const(9)
_OPT = const(0x10)

_HEALTH = (b"\x01\x00"      # epoch u16
           b"\x09\x01"      # boot u32
           b"\x0c\x01"      # nonce u32
           b"\x0d\x07"      # fw text
           b"\x0e\x00"      # reset u16
           b"\x0f\x01"      # heap u32
           b"\x10\x01"      # outbox u32
           b"\x1a\x01"      # outbox_free u32
           b"\x11\x01"      # uptime u32
           b"\x12\x08"      # rssi int / null
           b"\x13\x01"      # ignored u32
           b"\x19\x00"      # stuck u16
           b"\x06\x06")     # time

_UP = {
    # epoch u16, seq, score, scale, prompt u32, time, mono u32, delay u32, boot u32
    T_RATING: b"\x01\x00\x02\x03\x03\x04\x04\x05\x05\x01\x06\x06\x07\x01\x08\x01\x09\x01",
    # epoch u16, seq, prompt u32, time, mono u32, delay u32, boot u32
    T_NO_RATING: b"\x01\x00\x02\x03\x05\x01\x06\x06\x07\x01\x08\x01\x09\x01",
    T_HELLO: _HEALTH,
    T_HEARTBEAT: _HEALTH,
}

_DOWN = {
    T_ACK: b"\x01\x00\x0a\x09",                            # epoch u16, seqs
    T_PROMPT: b"\x05\x01\x14\x07\x15\x00\x16\x07\x17\x00\x06\x06",  # prompt clerk service txn timeout time
    T_TIME: b"\x0b\x02\x0c\x01",                           # now_ms u64, nonce u32
    T_SESSION: b"\x14\x17\x18\x17",                        # clerk, clerk_name: optional text
}


def _uint(v, lo, hi):
    if type(v) is not int or v < lo or v > hi:
        raise ValueError("bad-field")
    return v


def _check(kind, v):
    if kind == _KU16:
        return _uint(v, 0, _U16)
    if kind == _KU32:
        return _uint(v, 0, _U32)
    if kind == _KU64:
        return _uint(v, 0, _U64)
    if kind == _KSEQ:
        return _uint(v, 1, _U32)
    if kind == _KSCORE:
        return _uint(v, 1, 5)
    if kind == _KSCALE:
        return _uint(v, 4, 5)
    if kind == _KTIME:
        return None if v is None else _uint(v, 1, _U32)
    if kind == _KTEXT:
        # its byte length was bounded by the decoder (max_text): over-limit, as on the CPython side
        if not isinstance(v, str):
            raise ValueError("bad-field")
        return v
    if kind == _KINT:
        return None if v is None else _uint(v, -200, 200)
    # _KSEQS
    if not isinstance(v, list) or not 1 <= len(v) <= _MAX_SEQS:
        raise ValueError("bad-field")
    for x in v:
        _uint(x, 1, _U32)
    return v


def _decode(payload, table):
    m = cbor.decode(payload, 2, _MAX_ITEMS, _MAX_PAYLOAD, _MAX_TEXT)
    if not isinstance(m, dict):
        raise ValueError("bad-payload")
    t = m.get(K_TYPE)
    if type(t) is not int or t not in table:
        raise ValueError("bad-type")
    spec = table[t]
    for k in m:
        if k != K_TYPE:
            for i in range(0, len(spec), 2):
                if spec[i] == k:
                    break
            else:
                raise ValueError("bad-field")
    for i in range(0, len(spec), 2):
        key = spec[i]
        kind = spec[i + 1]
        if key in m:
            _check(kind & 0x0F, m[key])
        elif not kind & _OPT:
            raise ValueError("missing-field")
    if t == T_RATING and m[K_SCORE] > m[K_SCALE]:
        raise ValueError("bad-field")
    return t, m


def decode_down(payload):
    """(type, fields) of an ack, prompt, time sync or session, or ValueError(reason).

    fields is the decoded map itself, keyed by the K_* numbers (no copy): every key is one the type
    defines, every value checked; an absent optional field (session) is absent: use fields.get(K_CLERK).
    """
    return _decode(payload, _DOWN)


def decode_up(payload):
    """The same for the up types (not used on the keypad; for tests and tools)."""
    return _decode(payload, _UP)
