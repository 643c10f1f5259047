# MQTT 3.1.1 packets: encoders into caller-owned buffers and a bounded incremental parser.
#
# Encoders write a whole packet into a preallocated bytearray and return its length; they raise
# ValueError("mqtt-too-big") rather than grow a buffer. The parser takes bytes as they arrive (one at a
# time or in chunks), keeps at most `max_size` bytes of one packet body in a buffer it allocates once,
# and rejects (ValueError with a short reason) anything a broker must never send us: the caller drops the
# connection. Strings (topics, ids) are bytes; the client converts str once.
from micropython import const

_CONNECT = const(1)
CONNACK = const(2)
PUBLISH = const(3)
PUBACK = const(4)
_SUBSCRIBE = const(8)
SUBACK = const(9)
_UNSUBACK = const(11)
_PINGREQ = const(12)
PINGRESP = const(13)
_DISCONNECT = const(14)

_DUP = const(0x08)
_RLEN_MAX = const(268435455)   # 4 bytes of 7 bits: the spec's limit

PINGREQ_PKT = b"\xc0\x00"
DISCONNECT_PKT = b"\xe0\x00"


def next_pid(pid):
    # Packet ids are 1..65535; 0 is not a valid id (umqtt.simple sends 0 after 65535: we do not).
    return pid % 65535 + 1


def put_rlen(buf, pos, n):
    if n < 0 or n > _RLEN_MAX:
        raise ValueError("mqtt-rlen")
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            buf[pos] = b | 0x80
            pos += 1
        else:
            buf[pos] = b
            return pos + 1


def _rlen_size(n):
    return 1 if n < 128 else 2 if n < 16384 else 3 if n < 2097152 else 4


def _put_u16(buf, pos, v):
    buf[pos] = v >> 8
    buf[pos + 1] = v & 0xFF
    return pos + 2


def _put_str(buf, pos, s):
    n = len(s)
    if n > 65535:
        raise ValueError("mqtt-str")
    pos = _put_u16(buf, pos, n)
    buf[pos:pos + n] = s
    return pos + n


def _head(buf, first, rl):
    # Fixed header; raises before anything is written past the buffer's end.
    if 1 + _rlen_size(rl) + rl > len(buf):
        raise ValueError("mqtt-too-big")
    buf[0] = first
    return put_rlen(buf, 1, rl)


def connect(buf, client_id, keepalive, clean=False, user=None, password=None,
            will_topic=None, will_msg=b"", will_qos=1, will_retain=False):
    flags = 0x02 if clean else 0
    rl = 10 + 2 + len(client_id)
    if will_topic is not None:
        flags |= 0x04 | (will_qos << 3) | (0x20 if will_retain else 0)
        rl += 4 + len(will_topic) + len(will_msg)
    if user is not None:
        flags |= 0x80
        rl += 2 + len(user)
    if password is not None:
        flags |= 0x40
        rl += 2 + len(password)
    pos = _head(buf, _CONNECT << 4, rl)
    pos = _put_str(buf, pos, b"MQTT")
    buf[pos] = 4          # protocol level 4 = 3.1.1
    buf[pos + 1] = flags
    pos = _put_u16(buf, pos + 2, keepalive)
    pos = _put_str(buf, pos, client_id)
    if will_topic is not None:
        pos = _put_str(buf, pos, will_topic)
        pos = _put_str(buf, pos, will_msg)
    if user is not None:
        pos = _put_str(buf, pos, user)
    if password is not None:
        pos = _put_str(buf, pos, password)
    return pos


def publish(buf, topic, payload, pid, qos=1, dup=False, retain=False):
    rl = 2 + len(topic) + len(payload) + (2 if qos else 0)
    pos = _head(buf, (PUBLISH << 4) | (_DUP if dup else 0) | (qos << 1) | (1 if retain else 0), rl)
    pos = _put_str(buf, pos, topic)
    if qos:
        pos = _put_u16(buf, pos, pid)
    n = len(payload)
    buf[pos:pos + n] = payload
    return pos + n


def set_dup(buf):
    # A retransmission is the same bytes with DUP set in the first byte: no re-encoding.
    buf[0] |= _DUP


def puback(buf, pid):
    buf[0] = PUBACK << 4
    buf[1] = 2
    _put_u16(buf, 2, pid)
    return 4


def subscribe(buf, pid, topic, qos=1):
    pos = _head(buf, (_SUBSCRIBE << 4) | 0x02, 2 + 2 + len(topic) + 1)
    pos = _put_u16(buf, pos, pid)
    pos = _put_str(buf, pos, topic)
    buf[pos] = qos
    return pos + 1


class Parser:
    # Feed bytes with feed(); when `ready` is True one packet is complete: `kind`, `flags`, `n` (body
    # length) and the body in `buf[:n]`. The next feed() starts the next packet.

    def __init__(self, max_size=1024):
        self.buf = bytearray(max_size)
        self.mv = memoryview(self.buf)
        self.reset()

    def reset(self):
        self.ready = False
        self._st = 0       # 0: fixed header byte, 1: remaining length, 2: body
        self.kind = 0
        self.flags = 0
        self.n = 0
        self._got = 0
        self._shift = 0
        self.big = False   # the body did not fit: only its first len(buf) bytes are in buf

    def _first(self, b):
        k = b >> 4
        f = b & 15
        if k == PUBLISH:
            if (f >> 1) & 3 > 1:
                raise ValueError("mqtt-qos")   # we subscribe at QoS <= 1: QoS 2 is never granted
        elif k in (CONNACK, PUBACK, SUBACK, _UNSUBACK, PINGRESP):
            if f:
                raise ValueError("mqtt-flags")
        else:
            raise ValueError("mqtt-type")      # client-to-server, QoS 2 flow, or reserved
        self.kind = k
        self.flags = f

    def _sized(self):
        n = self.n
        k = self.kind
        # A PUBLISH larger than the buffer is read through and kept only as far as the buffer goes (its
        # topic and packet id come first), so the client can PUBACK and discard it: refused, the broker
        # would resend it after every reconnect and the link would never come back. Anything else that
        # large is not a packet a broker sends us.
        self.big = n > len(self.buf)
        if self.big and k != PUBLISH:
            raise ValueError("mqtt-too-big")
        if k == PINGRESP:
            ok = n == 0
        elif k == SUBACK:
            ok = n >= 3
        elif k == PUBLISH:
            ok = n >= (4 if self.flags & 6 else 2)
        else:
            ok = n == 2
        if not ok:
            raise ValueError("mqtt-len")

    def feed(self, data, pos=0, end=-1):
        # Consume data[pos:end] up to the end of one packet; return the position reached.
        if end < 0:
            end = len(data)
        if self.ready:
            self.reset()
        while pos < end:
            st = self._st
            if st == 2:
                k = min(end - pos, self.n - self._got)
                c = min(k, len(self.buf) - self._got)
                if c > 0:
                    self.mv[self._got:self._got + c] = data[pos:pos + c]
                self._got += k
                pos += k
                if self._got == self.n:
                    self.ready = True
                    return pos
                continue
            b = data[pos]
            pos += 1
            if st == 0:
                self._first(b)
                self._st = 1
                continue
            if self._shift == 21 and b & 0x80:
                raise ValueError("mqtt-rlen")   # a fifth length byte: malformed
            self.n |= (b & 0x7F) << self._shift
            self._shift += 7
            if b & 0x80:
                continue
            self._sized()
            if self.n == 0:
                self.ready = True
                return pos
            self._st = 2
        return pos

    # Body decoders for the complete packet (valid until the next feed()).

    def pid(self):
        p = (self.buf[0] << 8) | self.buf[1]
        if p == 0:
            raise ValueError("mqtt-pid")
        return p

    def connack(self):
        # -> (session_present, return code); the code is 0 when accepted.
        if self.buf[0] > 1:
            raise ValueError("mqtt-connack")
        return self.buf[0], self.buf[1]

    def suback(self):
        # -> packet id; one topic per SUBSCRIBE, so exactly one return code. 0x80 = refused.
        if self.n != 3:
            raise ValueError("mqtt-len")
        rc = self.buf[2]
        if rc == 0x80:
            raise ValueError("mqtt-suback")
        if rc > 2:
            raise ValueError("mqtt-suback-code")
        return self.pid()

    def publish(self):
        # -> (topic memoryview, pid or 0 for QoS 0, payload memoryview)
        # A body that did not fit (`big`): the topic and packet id are returned if they are within the
        # kept part, the payload is empty; the caller discards the message.
        tl = (self.buf[0] << 8) | self.buf[1]
        pos = 2 + tl
        if pos > self.n or (self.big and pos + 2 > len(self.buf)):
            raise ValueError("mqtt-len")
        topic = self.mv[2:pos]
        pid = 0
        if self.flags & 6:
            if pos + 2 > self.n:
                raise ValueError("mqtt-len")
            pid = (self.buf[pos] << 8) | self.buf[pos + 1]
            if pid == 0:
                raise ValueError("mqtt-pid")
            pos += 2
        return topic, pid, self.mv[pos:pos if self.big else self.n]
