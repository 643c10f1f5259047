# The device messages of PROTOCOL.md section 6: encoders of the up messages into a caller's buffer and
# the validating decoder of the down messages. Payloads are maps with keys in ascending order
# (deterministic).
#
# RAM: the type and field numbers are private const()s (the same numbers as protocol/messages.py):
# they are folded into the bytecode, which stays in flash, and cost no module-dict entry. A module
# that needs them keeps its own private copy (cs/app.py); the tests' copy, with the up-message
# decoder the keypad never needs, is tests/fw/upmsgs.py.
from micropython import const
from cs import cbor

# message types (key 0)
_T_RATING = const(1)
_T_NO_RATING = const(2)
_T_HELLO = const(3)
_T_HEARTBEAT = const(4)
_T_ACK = const(16)
_T_PROMPT = const(17)
_T_TIME = const(18)
_T_SESSION = const(19)

# field keys (global: one number means one thing in every message)
_K_TYPE = const(0)
_K_EPOCH = const(1)
_K_SEQ = const(2)
_K_SCORE = const(3)
_K_SCALE = const(4)
_K_PROMPT = const(5)
_K_TIME = const(6)
_K_MONO = const(7)
_K_DELAY = const(8)
_K_BOOT = const(9)
_K_NONCE = const(12)
_K_FW = const(13)
_K_RESET = const(14)
_K_HEAP = const(15)
_K_OUTBOX = const(16)
_K_UPTIME = const(17)
_K_RSSI = const(18)
_K_IGNORED = const(19)
_K_STUCK = const(25)
_K_OUTBOX_FREE = const(26)
_K_BAD_DOWN = const(27)

_U16 = const(0xFFFF)
_U32 = const(0xFFFFFFFF)
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
        buf[p] = _K_TIME
        return cbor.put_null(buf, p + 1)
    return _u(buf, p, _K_TIME, v, 1, _U32)


def rating(buf, epoch, seq, score, scale, prompt, time, mono, delay, boot):
    """time None = clock unknown. Returns the payload length."""
    if scale != 4 and scale != 5:
        raise ValueError("bad-field")
    buf[0] = 0xAA           # map(10)
    p = _u(buf, 1, _K_TYPE, _T_RATING, 0, 255)
    p = _u(buf, p, _K_EPOCH, epoch, 0, _U16)
    p = _u(buf, p, _K_SEQ, seq, 1, _U32)
    p = _u(buf, p, _K_SCORE, score, 1, scale)
    p = _u(buf, p, _K_SCALE, scale, 4, 5)
    return _tail(buf, p, prompt, time, mono, delay, boot)


def no_rating(buf, epoch, seq, prompt, time, mono, delay, boot):
    buf[0] = 0xA8           # map(8)
    p = _u(buf, 1, _K_TYPE, _T_NO_RATING, 0, 255)
    p = _u(buf, p, _K_EPOCH, epoch, 0, _U16)
    p = _u(buf, p, _K_SEQ, seq, 1, _U32)
    return _tail(buf, p, prompt, time, mono, delay, boot)


def _tail(buf, p, prompt, time, mono, delay, boot):
    # prompt, time, mono, delay, boot: the fields a rating and a no-rating share, in key order
    p = _u(buf, p, _K_PROMPT, prompt, 0, _U32)
    p = _time(buf, p, time)
    p = _u(buf, p, _K_MONO, mono, 0, _U32)
    p = _u(buf, p, _K_DELAY, delay, 0, _U32)
    return _u(buf, p, _K_BOOT, boot, 0, _U32)


def health(buf, typ, epoch, boot, nonce, fw, reset, heap, outbox, outbox_free, uptime, rssi, ignored,
           stuck, time, bad_down=0):
    """Hello (typ 3) or heartbeat (typ 4). fw: str or UTF-8 bytes (bytes: no allocation). bad_down:
    downlinks discarded since boot, sent only when not 0 (key 27 sorts last: appended)."""
    if typ != _T_HELLO and typ != _T_HEARTBEAT:
        raise ValueError("bad-type")
    buf[0] = 0xAF if bad_down else 0xAE     # map(15) / map(14)
    p = _u(buf, 1, _K_TYPE, typ, 0, 255)
    p = _u(buf, p, _K_EPOCH, epoch, 0, _U16)
    p = _time(buf, p, time)
    p = _u(buf, p, _K_BOOT, boot, 0, _U32)
    p = _u(buf, p, _K_NONCE, nonce, 0, _U32)
    if isinstance(fw, str):
        fw = fw.encode()
    if not isinstance(fw, bytes) or len(fw) > _MAX_TEXT:
        raise ValueError("bad-field")
    buf[p] = _K_FW
    p = cbor.put_text(buf, p + 1, fw)
    p = _u(buf, p, _K_RESET, reset, 0, _U16)
    p = _u(buf, p, _K_HEAP, heap, 0, _U32)
    p = _u(buf, p, _K_OUTBOX, outbox, 0, _U32)
    p = _u(buf, p, _K_UPTIME, uptime, 0, _U32)
    buf[p] = _K_RSSI
    if rssi is None:
        p = cbor.put_null(buf, p + 1)
    elif type(rssi) is not int or rssi < -200 or rssi > 200:
        raise ValueError("bad-field")
    else:
        p = cbor.put_int(buf, p + 1, rssi)
    p = _u(buf, p, _K_IGNORED, ignored, 0, _U32)
    p = _u(buf, p, _K_STUCK, stuck, 0, _U16)
    p = _u(buf, p, _K_OUTBOX_FREE, outbox_free, 0, _U32)
    if bad_down:
        p = _u(buf, p, _K_BAD_DOWN, bad_down, 0, _U32)
    return p


# ---- decoder, checked like messages.from_map: the type, then unknown keys, then each field in spec
# order (missing-field / bad-field), then score <= scale. A spec is a bytes literal (2 per field: key,
# kind | _OPT): it lives in the bytecode, in flash; no table is built in RAM.

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


def _down(t):
    if t == _T_ACK:
        return b"\x01\x00\x0a\x09"                            # epoch u16, seqs
    if t == _T_PROMPT:
        return b"\x05\x01\x14\x07\x15\x00\x16\x07\x17\x00\x06\x06"  # prompt clerk service txn timeout time
    if t == _T_TIME:
        return b"\x0b\x02\x0c\x01"                            # now_ms u64, nonce u32
    if t == _T_SESSION:
        return b"\x14\x17\x18\x17"                            # clerk, clerk_name: optional text
    return None


def _uint(v, lo, hi):
    if type(v) is not int or v < lo or v > hi:
        raise ValueError("bad-field")


def _check(kind, v):
    if kind == _KU16:
        _uint(v, 0, _U16)
    elif kind == _KU32:
        _uint(v, 0, _U32)
    elif kind == _KU64:
        _uint(v, 0, 0xFFFFFFFFFFFFFFFF)
    elif kind == _KSEQ:
        _uint(v, 1, _U32)
    elif kind == _KSCORE:
        _uint(v, 1, 5)
    elif kind == _KSCALE:
        _uint(v, 4, 5)
    elif kind == _KTIME:
        if v is not None:
            _uint(v, 1, _U32)
    elif kind == _KTEXT:
        # its byte length was bounded by the decoder (max_text): over-limit, as on the CPython side
        if not isinstance(v, str):
            raise ValueError("bad-field")
    elif kind == _KINT:
        if v is not None:
            _uint(v, -200, 200)
    else:   # _KSEQS
        if not isinstance(v, list) or not 1 <= len(v) <= _MAX_SEQS:
            raise ValueError("bad-field")
        for x in v:
            _uint(x, 1, _U32)


def decode(payload, specs):
    """(type, fields) of a payload whose type `specs(type)` knows (a spec, or None), or
    ValueError(reason). decode_down is this with the down types; tests/fw/upmsgs.py passes the up
    types."""
    m = cbor.decode(payload, 2, _MAX_ITEMS, _MAX_PAYLOAD, _MAX_TEXT)
    if not isinstance(m, dict):
        raise ValueError("bad-payload")
    t = m.get(_K_TYPE)
    spec = specs(t) if type(t) is int else None
    if spec is None:
        raise ValueError("bad-type")
    for k in m:
        if k != _K_TYPE:
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
    if t == _T_RATING and m[_K_SCORE] > m[_K_SCALE]:
        raise ValueError("bad-field")
    return t, m


def decode_down(payload):
    """(type, fields) of an ack, prompt, time sync or session, or ValueError(reason).

    fields is the decoded map itself, keyed by the field numbers (no copy): every key is one the type
    defines, every value checked; an absent optional field (session) is absent: use fields.get(20).
    """
    return decode(payload, _down)
