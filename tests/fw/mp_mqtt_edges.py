# cs.mqtt.client at its edges, on a fake stream writer and a fake clock (no socket):
# a blocked write ends the session within the keepalive, keepalive 0 sends no PINGREQ, a PUBLISH topic
# with a wildcard is refused, nothing is written after DISCONNECT, a downlink too large for the buffer
# or on a topic that is not ours is PUBACKed and discarded (counted), the backoff is reset only by a
# link that lasted.
import mpyboot  # noqa: F401 (sys.path)
from mpyboot import check, raises, done
import asyncio
from cs.mqtt import pkt
from cs.mqtt.client import Client

now = [1000]


def ticks():
    return now[0]


def diff(a, b):
    return a - b


class Writer:
    # What the client writes, as asyncio's StreamWriter would take it; drain() can be made to hang,
    # as it does when the broker stopped reading and the socket's send buffer is full.
    def __init__(self, stuck=False):
        self.out = []
        self.out_buf = b""
        self.stuck = stuck

    def write(self, b):
        self.out.append(bytes(b))
        if self.stuck:
            self.out_buf = b"x"     # the socket refused part of it

    async def drain(self):
        if self.stuck:
            await asyncio.Event().wait()     # never set: a broker that stopped reading
        self.out_buf = b""


def client(keepalive=2, **kw):
    return Client("127.0.0.1", 1, "hf01-w01", "hf01-w01", "pw", "cs/1/d/hf01-w01/will",
                  keepalive=keepalive, ticks_ms=ticks, ticks_diff=diff, tick_ms=10, **kw)


async def keeper_until_dead(c, w, advance, rounds):
    # Run the housekeeping task with the clock moved `advance` ms per round; -> rounds run.
    t = asyncio.create_task(c._keeper(w))
    for i in range(rounds):
        now[0] += advance
        await asyncio.sleep_ms(12)
        if c._dead.is_set():
            t.cancel()
            return i + 1
    t.cancel()
    return -1


# 1. A blocked write: the keeper gives up after the ping interval (keepalive/2) and says why.
c = client(keepalive=2)
w = Writer(stuck=True)
c._w = w
c.up = True
c._r[2] = now[0]
c._send(b"\x30\x03\x00\x01t", 5)      # leaves out_buf non-empty
n = asyncio.run(keeper_until_dead(c, w, 0, 400))
check(n > 0 and c.last_error == "write-stuck", "a write blocked past keepalive/2 ends the session",
      (n, c.last_error))

# 2. keepalive 0: no PINGREQ however long the link is idle (MQTT 3.1.1 3.1.2.10).
c = client(keepalive=0)
w = Writer()
c._w = w
c.up = True
n = asyncio.run(keeper_until_dead(c, w, 60000, 20))
check(n == -1 and pkt.PINGREQ_PKT not in w.out, "keepalive 0 sends no PINGREQ", w.out)
c = client(keepalive=2)
w = Writer()
c._w = w
c.up = True
asyncio.run(keeper_until_dead(c, w, 1100, 3))
check(bytes(pkt.PINGREQ_PKT) in w.out, "keepalive 2 pings after 1 s idle", w.out)

# 3. A wildcard in a PUBLISH topic is refused before anything is written.
c = client()
w = Writer()
c._w = w
c.up = True
check(raises(lambda: c.publish("cs/1/d/hf01-w01/#", b"x"), "mqtt-topic"), "publish to a # topic refused")
check(raises(lambda: c.publish(b"cs/1/+/hf01-w01/up", b"x"), "mqtt-topic"), "publish to a + topic refused")
check(w.out == [], "nothing written for a refused topic", w.out)
check(c.publish("cs/1/d/hf01-w01/up", b"x") == 1, "a plain topic publishes")


# 4. Downlinks: a PUBLISH fed to the client's parser as the reader would.
def feed(c, data):
    p = c._p
    pos = 0
    while pos < len(data):
        pos = p.feed(data, pos)
        if p.ready:
            c._packet(p)


def publish(topic, payload, pid):
    body = bytes([len(topic) >> 8, len(topic) & 255]) + topic + bytes([pid >> 8, pid & 255]) + payload
    n = len(body)
    rl = bytes([n]) if n < 128 else bytes([(n & 127) | 128, n >> 7])
    return b"\x32" + rl + body


got = []
c = client(on_msg=lambda t, p: got.append((bytes(t), bytes(p))))
w = Writer()
c._w = w
c.up = True
down = b"cs/1/d/hf01-w01/down"
feed(c, publish(down, bytes(400), 9))
check(got == [] and w.out == [b"\x40\x02\x00\x09"], "a 400-byte downlink: PUBACKed, not delivered",
      (got, w.out))
for bad in (b"cs/1/d/hf01-w01/do\x00wn", b"cs/1/d/hf01-w01/d\xc3\xa9wn", b"cs/1/d/\xc0\x80/down", b"cs/1/d/#"):
    feed(c, publish(bad, b"hello", 10))
check(got == [] and w.out.count(b"\x40\x02\x00\x0a") == 4,
      "downlinks on topics with U+0000, non-ASCII, overlong UTF-8 or a wildcard: PUBACKed, not delivered",
      (got, w.out))
check(c.dropped() == 5, "every discarded downlink counted", c.dropped())
feed(c, publish(down, b"ok", 11))
check(got == [(down, b"ok")] and w.out[-1] == b"\x40\x02\x00\x0b", "the next good downlink arrives")

# 5. Nothing after DISCONNECT: a PUBLISH the reader still handles gets no PUBACK on the wire.
c = client(on_msg=lambda t, p: None)
w = Writer()
c._w = w
c.up = True
c.stop()
feed(c, publish(down, b"late", 12))
check(w.out == [bytes(pkt.DISCONNECT_PKT)], "DISCONNECT is the last packet written", w.out)

# 6. The backoff: a CONNACK does not reset it; a link that lasted backoff_max_ms does.
c = client(keepalive=60, backoff_max_ms=5000)
w = Writer()
c._w = w
c._r[2] = now[0]          # connection opened
c.tries = 4
feed(c, b"\x20\x02\x00\x00")
check(c.up and c.tries == 4, "CONNACK leaves the failure count", c.tries)
c._dead.clear()
asyncio.run(keeper_until_dead(c, w, 1000, 3))
check(c.tries == 4, "3 s up: still counted", c.tries)
asyncio.run(keeper_until_dead(c, w, 1000, 3))
check(c.tries == 0, "up for backoff_max_ms: the backoff starts afresh", c.tries)
done()
