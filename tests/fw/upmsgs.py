# The tests' side of cs/msgs.py: the type and field numbers by name (the firmware folds them into its
# bytecode as private consts, so they are not importable from it) and the decoder of the up messages,
# which the keypad never needs. The numbers are those of protocol/messages.py.
from cs import msgs

T_RATING = 1
T_NO_RATING = 2
T_HELLO = 3
T_HEARTBEAT = 4
T_ACK = 16
T_PROMPT = 17
T_TIME = 18
T_SESSION = 19

K_TYPE = 0
K_EPOCH = 1
K_SEQ = 2
K_SCORE = 3
K_SCALE = 4
K_PROMPT = 5
K_TIME = 6
K_MONO = 7
K_DELAY = 8
K_BOOT = 9
K_SEQS = 10
K_NOW_MS = 11
K_NONCE = 12
K_FW = 13
K_RESET = 14
K_HEAP = 15
K_OUTBOX = 16
K_UPTIME = 17
K_RSSI = 18
K_IGNORED = 19
K_CLERK = 20
K_SERVICE = 21
K_TXN = 22
K_TIMEOUT = 23
K_CLERK_NAME = 24
K_STUCK = 25
K_OUTBOX_FREE = 26

# Specs in cs/msgs.py's format: (key, kind) byte pairs; kinds 0 u16, 1 u32, 3 seq, 4 score, 5 scale,
# 6 time, 7 text, 8 small int or null.
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


def decode_up(payload):
    """(type, fields) of a rating, no-rating, hello or heartbeat, or ValueError(reason)."""
    return msgs.decode(payload, _UP.get)
