# Non-blocking MQTT 3.1.1 session on asyncio streams (in the spirit of peterhinch's mqtt_as, smaller).
#
# run() loops forever: connect, keep the session (reader task + housekeeping task), and after any
# failure close the socket and reconnect after an exponential backoff with random jitter. publish() never
# waits: it writes the packet (the socket almost always takes it at once; asyncio's stream buffers the
# rest and the housekeeping task drains it) and returns the packet id, or None when the link is down or
# every in-flight slot is taken: the caller keeps the message in its outbox and offers it again later.
#
# In-flight QoS 1 publishes live in preallocated slots (the whole encoded packet, so a resend is the same
# bytes with DUP set). They are resent with DUP after `retry_ms` without PUBACK and, because the session
# is persistent (clean_session 0, MQTT 3.1.1 section 4.4), right after every reconnect with the same
# packet ids. The application also resends its outbox after a reconnect, so a message may reach the
# gateway twice; the gateway drops duplicates by (epoch, seq). Keeping the slots across a reconnect
# means a message the caller was told is in flight (a pid) is never silently forgotten by the client.
import asyncio
import random
import time
from micropython import const

from . import pkt

_TX = const(192)      # CONNECT / SUBSCRIBE / QoS 0 scratch buffer
_IPPROTO_TCP = const(6)
_TCP_NODELAY = const(1)


class Client:
    def __init__(self, host, port, client_id, user, password, will_topic, keepalive=30,
                 on_msg=None, on_link=None, will_msg=b"", on_puback=None, ticks_ms=time.ticks_ms,
                 retry_ms=5000, backoff_min_ms=500, backoff_max_ms=30000, conn_ms=10000,
                 inflight=4, slot=384, max_size=1024, tick_ms=100, rand=None):
        self.host = host
        self.port = port
        self._id = _b(client_id)
        self._user = None if user is None else _b(user)
        self._pw = None if password is None else _b(password)
        self._will = None if will_topic is None else _b(will_topic)
        self._will_msg = _b(will_msg)
        self.keepalive = keepalive
        self.on_msg = on_msg
        self.on_link = on_link
        self.on_puback = on_puback
        self._ticks = ticks_ms
        self._rand = rand or random.getrandbits
        self.retry_ms = retry_ms
        self.backoff_min_ms = backoff_min_ms
        self.backoff_max_ms = backoff_max_ms
        self.conn_ms = conn_ms
        self._tick_ms = tick_ms
        # Keepalive: ping after half the keepalive without traffic; no PINGRESP within the other half
        # drops the link (the broker itself would drop us at 1.5 x keepalive).
        self._ping_ms = keepalive * 500
        self.up = False
        self.last_error = None
        self.tries = 0          # failed attempts since the last accepted CONNACK (drives the backoff)
        self._pid = 0
        self._subs = []         # [(topic bytes, qos)], resubscribed on every connect
        self._sub_pid = 0
        # Preallocated: the parser's body buffer, a read buffer, a scratch tx buffer, PUBACK bytes.
        self._p = pkt.Parser(max_size)
        self._rbuf = bytearray(256)
        self._rmv = memoryview(self._rbuf)
        self._tx = bytearray(_TX)
        self._txmv = memoryview(self._tx)
        self._ack = bytearray(4)
        self._slot = [bytearray(slot) for _ in range(inflight)]
        self._smv = [memoryview(b) for b in self._slot]
        self._spid = [0] * inflight     # 0 = free
        self._slen = [0] * inflight
        self._sat = [0] * inflight      # ticks of the last send
        self._w = None
        self._dead = asyncio.Event()
        self._stop = False
        self._pinging = False
        self._ping_at = 0
        self._rx_at = 0
        self._tx_at = 0
        self._t0 = 0

    # ---- application API ----

    @property
    def inflight(self):
        return sum(1 for p in self._spid if p)

    def publish(self, topic, msg, qos=1):
        # -> packet id (QoS 1), 0 (QoS 0 sent), or None: not connected / no free slot. Never blocks.
        if not self.up:
            return None
        if qos == 0:
            n = pkt.publish(self._tx, _b(topic), msg, 0, 0)
            self._send(self._txmv, n)
            return 0
        try:
            i = self._spid.index(0)
        except ValueError:
            return None
        pid = self._new_pid()
        n = pkt.publish(self._slot[i], _b(topic), msg, pid, 1)
        self._spid[i] = pid
        self._slen[i] = n
        self._sat[i] = self._ticks()
        self._send(self._smv[i], n)
        return pid

    def subscribe(self, topic, qos=1):
        # Remembered and sent on every connect (and now, if up). A refused SUBACK drops the link.
        t = (_b(topic), qos)
        self._subs.append(t)
        if self.up:
            self._sub(t)

    async def run(self):
        while not self._stop:
            try:
                await self._session()
            except (OSError, ValueError, asyncio.TimeoutError) as e:
                self._fail(_reason(e))
            if self._stop:
                break
            d = min(self.backoff_max_ms, self.backoff_min_ms << min(self.tries, 16))
            self.tries += 1
            # Jitter: a random delay in [d/2, d], so a hall's keypads do not reconnect in step.
            await asyncio.sleep_ms(d // 2 + self._rand(16) * (d - d // 2) // 65535)

    def stop(self):
        # Clean end: DISCONNECT (the broker then discards the will), run() returns.
        self._stop = True
        if self.up:
            self._send(pkt.DISCONNECT_PKT, 2)
        self._fail("stopped")

    # ---- session ----

    async def _session(self):
        self._dead.clear()
        r, w = await asyncio.wait_for_ms(asyncio.open_connection(self.host, self.port), self.conn_ms)
        self._w = w
        try:
            # Nagle would hold a small PUBLISH up to ~40 ms behind an unacked one. Best effort: not every
            # port exposes the option (the constants are the same on Linux and lwIP).
            w.s.setsockopt(_IPPROTO_TCP, _TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        self._p.reset()
        self._t0 = self._rx_at = self._tx_at = self._ticks()
        self._pinging = False
        rx = kp = None
        try:
            n = pkt.connect(self._tx, self._id, self.keepalive, False, self._user, self._pw,
                            self._will, self._will_msg, 1)
            self._send(self._txmv, n)
            rx = asyncio.create_task(self._reader(r))
            kp = asyncio.create_task(self._keeper(w))
            await self._dead.wait()
        finally:
            was_up = self.up
            self.up = False
            self._w = None
            for t in (rx, kp):
                if t is not None:
                    t.cancel()
            try:
                w.close()
                await w.wait_closed()
            except OSError:
                pass
            if was_up and self.on_link:
                self.on_link(False)

    def _fail(self, reason):
        if not self._dead.is_set():
            self.last_error = reason
            self._dead.set()

    def _send(self, mv, n):
        w = self._w
        if w is None:
            return
        try:
            w.write(mv[:n] if n < len(mv) else mv)
            self._tx_at = self._ticks()
        except OSError as e:
            self._fail(_reason(e))

    def _new_pid(self):
        pid = pkt.next_pid(self._pid)
        while pid in self._spid or pid == self._sub_pid:
            pid = pkt.next_pid(pid)
        self._pid = pid
        return pid

    def _sub(self, t):
        self._sub_pid = self._new_pid()
        n = pkt.subscribe(self._tx, self._sub_pid, t[0], t[1])
        self._send(self._txmv, n)

    async def _reader(self, r):
        p = self._p
        try:
            while True:
                n = await r.readinto(self._rbuf)
                if not n:
                    raise OSError("eof")
                self._rx_at = self._ticks()
                pos = 0
                while pos < n:
                    pos = p.feed(self._rmv, pos, n)
                    if p.ready:
                        self._packet(p)
        except Exception as e:   # noqa: any failure (broker, parser, callback) ends this session
            self._fail(_reason(e))

    def _packet(self, p):
        k = p.kind
        if k == pkt.PUBLISH:
            topic, pid, payload = p.publish()
            if self.on_msg:
                self.on_msg(bytes(topic), payload)
            if pid:   # PUBACK only once the application has taken the message
                self._send(self._ack, pkt.puback(self._ack, pid))
        elif k == pkt.PUBACK:
            pid = p.pid()
            for i in range(len(self._spid)):
                if self._spid[i] == pid:
                    self._spid[i] = 0
                    if self.on_puback:
                        self.on_puback(pid)
                    break
        elif k == pkt.PINGRESP:
            self._pinging = False
        elif k == pkt.SUBACK:
            p.suback()   # raises on a refusal
        elif k == pkt.CONNACK:
            if self.up:
                raise ValueError("mqtt-connack-twice")
            sp, rc = p.connack()
            if rc:
                raise ValueError("mqtt-refused-%d" % rc)
            self.up = True
            self.tries = 0
            self.last_error = None
            for t in self._subs:
                self._sub(t)
            for i in range(len(self._spid)):
                if self._spid[i]:
                    self._resend(i, self._ticks())
            if self.on_link:
                self.on_link(True)

    def _resend(self, i, now):
        pkt.set_dup(self._slot[i])
        self._sat[i] = now
        self._send(self._smv[i], self._slen[i])

    async def _keeper(self, w):
        dif = time.ticks_diff
        try:
            while True:
                await asyncio.sleep_ms(self._tick_ms)
                if w.out_buf:   # only when the socket refused part of a write (drain() allocates)
                    await w.drain()
                now = self._ticks()
                if not self.up:
                    if dif(now, self._t0) >= self.conn_ms:
                        raise OSError("connack-timeout")
                    continue
                for i in range(len(self._spid)):
                    if self._spid[i] and dif(now, self._sat[i]) >= self.retry_ms:
                        self._resend(i, now)
                if self._pinging:
                    if dif(now, self._ping_at) >= self._ping_ms:
                        raise OSError("no-pingresp")
                elif dif(now, self._tx_at) >= self._ping_ms or dif(now, self._rx_at) >= self._ping_ms:
                    self._send(pkt.PINGREQ_PKT, 2)
                    self._pinging = True
                    self._ping_at = now
        except Exception as e:   # noqa
            self._fail(_reason(e))


def _b(s):
    return s.encode() if isinstance(s, str) else s


def _reason(e):
    if isinstance(e, asyncio.TimeoutError):
        return "timeout"
    a = e.args
    return a[0] if a else type(e).__name__
