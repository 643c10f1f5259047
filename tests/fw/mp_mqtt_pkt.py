# cs.mqtt.pkt against bytes computed by hand from the MQTT 3.1.1 spec (OASIS, sections 2 and 3).
import mpyboot
from mpyboot import check, raises, done
from cs.mqtt import pkt

buf = bytearray(256)


def enc(fn, *a, **kw):
    n = fn(buf, *a, **kw)
    return bytes(buf[:n])


# Remaining length (2.2.3): the spec's table of boundaries.
for n, want in ((0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (321, b"\xc1\x02"),
                (16383, b"\xff\x7f"), (16384, b"\x80\x80\x01"), (2097151, b"\xff\xff\x7f"),
                (2097152, b"\x80\x80\x80\x01"), (268435455, b"\xff\xff\xff\x7f")):
    b = bytearray(4)
    k = pkt.put_rlen(b, 0, n)
    check(bytes(b[:k]) == want, "rlen %d" % n, bytes(b[:k]))
check(raises(lambda: pkt.put_rlen(bytearray(5), 0, 268435456), "mqtt-rlen"), "rlen over 4 bytes refused")

# CONNECT (3.1): will QoS1 not retained, user, password, keepalive 30, clean session 0.
pw = b"0123456789abcdef0123456789abcdef"
got = enc(pkt.connect, b"hf01-w01", 30, False, b"hf01-w01", pw, b"cs/1/d/hf01-w01/will", b"", 1)
# flags: user 0x80 | password 0x40 | will QoS 1 (0x08) | will 0x04; clean session bit 0x02 clear = 0xCC
body = (b"\x00\x04MQTT" + b"\x04" + b"\xcc" + b"\x00\x1e"
        + b"\x00\x08hf01-w01"
        + b"\x00\x14cs/1/d/hf01-w01/will" + b"\x00\x00"
        + b"\x00\x08hf01-w01"
        + b"\x00\x20" + pw)
check(len(body) == 88, "connect body length", len(body))
check(got == b"\x10\x58" + body, "CONNECT with will, user, password, keepalive, clean 0", got)
got = enc(pkt.connect, b"c", 60, True)
check(got == b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01c", "CONNECT clean, no will/user", got)
check(raises(lambda: pkt.connect(bytearray(20), b"hf01-w01", 30, False, b"u", pw), "mqtt-too-big"),
      "CONNECT larger than its buffer refused")

# PUBLISH (3.3): QoS 1, pid 10, then the same with DUP (0x3a) as a resend sets it.
got = enc(pkt.publish, b"a/b", b"hi", 10, 1)
check(got == b"\x32\x09\x00\x03a/b\x00\x0ahi", "PUBLISH qos1", got)
got = enc(pkt.publish, b"a/b", b"hi", 10, 1, True)
check(got == b"\x3a\x09\x00\x03a/b\x00\x0ahi", "PUBLISH qos1 dup", got)
n = pkt.publish(buf, b"a/b", b"hi", 10, 1)
pkt.set_dup(buf)
check(bytes(buf[:n]) == b"\x3a\x09\x00\x03a/b\x00\x0ahi", "set_dup on an encoded PUBLISH")
got = enc(pkt.publish, b"t", b"x", 0, 0)
check(got == b"\x30\x04\x00\x01tx", "PUBLISH qos0 (no pid)", got)
big = bytes(200)
got = enc(pkt.publish, b"t", big, 258, 1)
check(got[:7] == b"\x32\xcd\x01\x00\x01t\x01" and got[7] == 2 and len(got) == 3 + 205,  # 205 = 0x4d | 0x80, 1
      "PUBLISH with a 2-byte remaining length", got[:8])
check(raises(lambda: pkt.publish(bytearray(50), b"t", big, 1, 1), "mqtt-too-big"), "PUBLISH over its buffer")

# PUBACK (3.4), SUBSCRIBE (3.8: fixed flags 0010), PINGREQ (3.12), DISCONNECT (3.14).
check(enc(pkt.puback, 0x1234) == b"\x40\x02\x12\x34", "PUBACK")
got = enc(pkt.subscribe, 1, b"cs/1/d/hf01-w01/down", 1)
check(got == b"\x82\x19\x00\x01\x00\x14cs/1/d/hf01-w01/down\x01", "SUBSCRIBE", got)
check(pkt.PINGREQ_PKT == b"\xc0\x00", "PINGREQ")
check(pkt.DISCONNECT_PKT == b"\xe0\x00", "DISCONNECT")

# Packet ids: 1..65535, wrap to 1, never 0.
check(pkt.next_pid(0) == 1 and pkt.next_pid(1) == 2 and pkt.next_pid(65534) == 65535, "pid steps")
check(pkt.next_pid(65535) == 1, "pid wraps 65535 -> 1")
p = 65530
seen0 = False
for _ in range(20):
    p = pkt.next_pid(p)
    seen0 = seen0 or p == 0
check(not seen0, "pid never 0 across the wrap")

# Parser: a stream of broker packets, fed byte by byte and in chunks of every size.
stream = (b"\x20\x02\x01\x00"                      # CONNACK session present, accepted
          + b"\x90\x03\x00\x01\x01"                # SUBACK pid 1 granted QoS 1
          + b"\x40\x02\xff\xff"                    # PUBACK pid 65535
          + b"\xd0\x00"                            # PINGRESP
          + b"\x32\x0e\x00\x03a/b\x00\x07payload"  # PUBLISH qos1 pid 7
          + b"\x30\x05\x00\x01tzz"                 # PUBLISH qos0
          + b"\x32" + b"\x85\x01" + b"\x00\x01t\x00\x09" + bytes(128))   # 2-byte rlen (133)


def parse_all(data, chunk):
    p = pkt.Parser(1024)
    out = []
    mv = memoryview(data)
    for s in range(0, len(data), chunk):
        piece = bytes(mv[s:s + chunk])      # a fresh buffer per read, as from a socket
        pos = 0
        while pos < len(piece):
            pos = p.feed(piece, pos)
            if p.ready:
                k = p.kind
                if k == pkt.CONNACK:
                    out.append(("connack",) + p.connack())
                elif k == pkt.SUBACK:
                    out.append(("suback", p.suback()))
                elif k == pkt.PUBACK:
                    out.append(("puback", p.pid()))
                elif k == pkt.PINGRESP:
                    out.append(("pingresp",))
                elif k == pkt.PUBLISH:
                    t, pid, pl = p.publish()
                    out.append(("publish", bytes(t), pid, (p.flags >> 1) & 3, bytes(pl)))
    return out


want = [("connack", 1, 0), ("suback", 1), ("puback", 65535), ("pingresp",),
        ("publish", b"a/b", 7, 1, b"payload"), ("publish", b"t", 0, 0, b"zz"),
        ("publish", b"t", 9, 1, bytes(128))]
for chunk in (1, 2, 3, 5, 7, 64, len(stream)):
    got = parse_all(stream, chunk)
    check(got == want, "parser, chunks of %d" % chunk, got)


def rejects(data, reason, max_size=1024):
    p = pkt.Parser(max_size)

    def go():
        pos = 0
        while pos < len(data):
            pos = p.feed(data, pos)
            if p.ready:
                if p.kind == pkt.SUBACK:
                    p.suback()
                elif p.kind == pkt.PUBLISH:
                    p.publish()
                elif p.kind == pkt.CONNACK:
                    p.connack()
                elif p.kind == pkt.PUBACK:
                    p.pid()
    return raises(go, reason)


check(rejects(b"\x30\xff\xff\xff\xff\x01", "mqtt-rlen"), "5-byte remaining length rejected")
check(rejects(b"\x90\x81\x08", "mqtt-too-big"), "oversize SUBACK (1025 > 1 KB) rejected before its body")
check(rejects(b"\x20\x80\x08", "mqtt-too-big", 512), "oversize CONNACK for a smaller parser")


_ZEROS = bytes(512)


def oversize(total, chunk, max_size=300):
    # A QoS 1 PUBLISH of `total` body bytes on topic cs/1/d/x/down, pid 0x1234, fed in chunks: read
    # through without growing the buffer, kept up to the buffer, marked big, topic and pid readable.
    topic = b"cs/1/d/x/down"
    head = bytes([0x32]) + bytes(_rl(total)) + bytes([0, len(topic)]) + topic + b"\x12\x34"
    p = pkt.Parser(max_size)
    fed = 0
    pos = 0
    while pos < len(head) and not p.ready:
        end = min(pos + chunk, len(head))
        fed += end - pos
        pos = p.feed(head, pos, end)
    while not p.ready:
        n = min(chunk, len(_ZEROS))
        fed += p.feed(_ZEROS, 0, n)
    t, pid, pl = p.publish()
    return p.big, bytes(t), pid, len(pl), len(p.buf), fed


def _rl(n):
    out = []
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return out


for total, chunk in ((301, 7), (1025, 64), (2 * 1024 * 1024, 4096)):
    got = oversize(total, chunk)
    check(got == (True, b"cs/1/d/x/down", 0x1234, 0, 300, total + len(_rl(total)) + 1),
          "oversize PUBLISH of %d read through, kept to the buffer, pid readable" % total, got)
got = oversize(300, 300)
check(got[0] is False and got[3] == 300 - 17, "a PUBLISH that just fits is whole", got)
p = pkt.Parser(20)
check(raises(lambda: (p.feed(b"\x32\x20\x00\x1e" + bytes(30) + b"\x00\x01"), p.publish()), "mqtt-len"),
      "oversize PUBLISH whose topic runs past the buffer: no pid to ack, rejected")
for first in (0x00, 0x10, 0x50, 0x62, 0x70, 0x82, 0xa2, 0xc0, 0xe0, 0xf0):
    check(rejects(bytes([first, 0]), "mqtt-type"), "packet type %d rejected" % (first >> 4))
check(rejects(b"\x34\x05\x00\x01t\x00\x01", "mqtt-qos"), "PUBLISH QoS 2 rejected")
check(rejects(b"\x36\x05\x00\x01t\x00\x01", "mqtt-qos"), "PUBLISH QoS 3 rejected")
check(rejects(b"\x41\x02\x00\x01", "mqtt-flags"), "PUBACK with reserved flags rejected")
check(rejects(b"\x90\x03\x00\x01\x80", "mqtt-suback"), "SUBACK failure 0x80 rejected")
check(rejects(b"\x90\x03\x00\x01\x03", "mqtt-suback-code"), "SUBACK code 3 rejected")
check(rejects(b"\x20\x03\x00\x00\x00", "mqtt-len"), "CONNACK of 3 bytes rejected")
check(rejects(b"\xd0\x01\x00", "mqtt-len"), "PINGRESP with a body rejected")
check(rejects(b"\x40\x02\x00\x00", "mqtt-pid"), "PUBACK pid 0 rejected")
check(rejects(b"\x32\x04\x00\x09ab", "mqtt-len"), "PUBLISH topic length past the packet rejected")
check(rejects(b"\x32\x05\x00\x01t\x00\x00", "mqtt-pid"), "PUBLISH qos1 pid 0 rejected")
check(rejects(b"\x20\x02\x02\x00", "mqtt-connack"), "CONNACK reserved flag bits rejected")

done()
