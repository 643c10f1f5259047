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
#
# RAM (the keypad's heap is 64 KB): every attribute is an entry in the instance's dict, so the state is
# kept in few of them: the CONNECT packet is encoded once (the id, user, password and will strings are
# not kept), the timings and sizes are one tuple, the read buffer and every slot are one bytearray (offsets, not
# a memoryview per slot), and the slot table and the clock readings are two int arrays.
import asyncio
import random
import time
from array import array
from micropython import const

from . import pkt

_CONNACK = const(2)
_PUBLISH = const(3)
_PUBACK = const(4)
_SUBACK = const(9)
_PINGRESP = const(13)
_IPPROTO_TCP = const(6)
_TCP_NODELAY = const(1)

# self._k: the timings (ms) and the buffer sizes
_RETRY = const(0)
_BMIN = const(1)
_BMAX = const(2)
_CONN = const(3)
_TICK = const(4)
_PING = const(5)
_RSIZE = const(6)
_SLOT = const(7)
# self._r: clock readings (ticks) and packet ids
_RX = const(0)          # last byte received
_TX = const(1)          # last packet sent
_T0 = const(2)          # connection opened
_PING_AT = const(3)     # PINGREQ sent, no PINGRESP yet (-1: not pinging)
_PID = const(4)         # last packet id given
_SUB_PID = const(5)     # packet id of the last SUBSCRIBE
_DROP = const(6)        # downlinks PUBACKed and discarded: too large for the buffer, or not on our topics
# self._sl: per slot, 3 ints: packet id (0 = free), packet length, ticks of the last send
_S = const(3)


class Client:
    def __init__(self, host, port, client_id, user, password, will_topic, keepalive=30,
                 on_msg=None, on_link=None, will_msg=b"", on_puback=None, ticks_ms=time.ticks_ms,
                 retry_ms=5000, backoff_min_ms=500, backoff_max_ms=30000, conn_ms=10000,
                 inflight=4, slot=300, max_size=300, tick_ms=100, rand=None, rsize=128,
                 ticks_diff=time.ticks_diff, net_up=None):
        self._addr = (host, port)
        cid, user, pw, will = _b(client_id), _b(user), _b(password), _b(will_topic)
        b = bytearray(26 + len(cid) + len(user or b"") + len(pw or b"") + len(will or b"") + len(will_msg))
        self._conn = b[:pkt.connect(b, cid, keepalive, False, user, pw, will, _b(will_msg), 1)]
        self.on_msg = on_msg
        self.on_link = on_link
        self.on_puback = on_puback
        self._ticks = ticks_ms
        self._dif = ticks_diff
        self._rand = rand or random.getrandbits
        # Keepalive: ping after half the keepalive without traffic; no PINGRESP within the other half
        # drops the link (the broker itself would drop us at 1.5 x keepalive).
        self._k = (retry_ms, backoff_min_ms, backoff_max_ms, conn_ms, tick_ms, keepalive * 500, rsize, slot)
        self.up = False
        self.last_error = None
        # Failed attempts since a link last stayed up for backoff_max_ms (drives the backoff): reset by
        # a link that lasted, not by a CONNACK, so a broker that accepts us and drops us at once (a
        # refused SUBACK, a packet we cannot take) is retried ever more slowly, not 2-4 times a second.
        self.tries = 0
        self._subs = []         # encoded SUBSCRIBE packets, re-sent (new pid) on every connect
        self._p = pkt.Parser(max_size)
        # Preallocated, one buffer: the read buffer (rsize), then the slots (`slot` bytes each).
        self._mv = memoryview(bytearray(rsize + inflight * slot))
        # "l": a ticks value is a small int of the port (30 bits on the C3, 62 on the 64-bit unix port).
        self._sl = array("l", (0,) * (_S * inflight))
        self._r = array("l", (0, 0, 0, -1, 0, 0, 0))
        self._w = None
        self._dead = asyncio.Event()
        self._wake = asyncio.Event()    # kick(): end a backoff wait now (the network just came up)
        self._net = net_up              # None, or a callable: False while the station has no IP
        self._stop = False

    # ---- application API ----

    def dropped(self):
        # Downlinks acknowledged and discarded since boot (the app reports them).
        return self._r[_DROP]

    def publish(self, topic, msg, qos=1):
        # -> packet id (QoS 1), 0 (QoS 0 sent), or None: not connected / no free slot. Never blocks.
        t = _b(topic)
        if b"+" in t or b"#" in t:
            raise ValueError("mqtt-topic")  # a wildcard in a PUBLISH topic: the broker would drop us
        if not self.up:
            return None
        i = self._free()
        if i < 0:
            return None
        mv = self._slot(i)
        if qos == 0:    # a free slot is scratch: the stream copies what the socket does not take
            self._send(mv, pkt.publish(mv, t, msg, 0, 0))
            return 0
        pid = self._new_pid()
        n = pkt.publish(mv, t, msg, pid, 1)
        sl = self._sl
        sl[i] = pid
        sl[i + 1] = n
        sl[i + 2] = self._ticks()
        self._send(mv, n)
        return pid

    def subscribe(self, topic, qos=1):
        # Remembered and sent on every connect (and now, if up). A refused SUBACK drops the link.
        t = _b(topic)
        b = bytearray(8 + len(t))      # fixed header (<= 3), packet id, topic length, topic, qos
        self._subs.append(b[:pkt.subscribe(b, 0, t, qos)])
        if self.up:
            self._sub(self._subs[-1])

    async def run(self):
        k = self._k
        while not self._stop:
            if self._net is not None and not self._net():
                await self._pause(k[_BMAX])     # no network: a connect would only fail; kick() ends it
                continue
            try:
                await self._session()
            except (OSError, ValueError, asyncio.TimeoutError) as e:
                self._fail(_reason(e))
            if self._stop:
                break
            d = min(k[_BMAX], k[_BMIN] << min(self.tries, 16))
            self.tries += 1
            # Jitter: a random delay in [d/2, d], so a hall's keypads do not reconnect in step.
            await self._pause(d // 2 + self._rand(16) * (d - d // 2) // 65535)

    async def _pause(self, ms):
        try:
            await asyncio.wait_for_ms(self._wake.wait(), ms)
        except asyncio.TimeoutError:
            pass
        self._wake.clear()

    def kick(self):
        # The network came back: try now rather than at the end of the backoff.
        self.tries = 0
        self._wake.set()

    def stop(self):
        # Clean end: DISCONNECT (the broker then discards the will), run() returns.
        self._stop = True
        if self.up:
            self._send(pkt.DISCONNECT_PKT, 2)
        # Nothing after DISCONNECT (MQTT 3.1.1 3.14.4): a PUBACK the reader would still write goes nowhere.
        self._w = None
        self._fail("stopped")

    # ---- session ----

    async def _session(self):
        self._dead.clear()
        # The stubs' wait_for_ms returns an unparameterised awaitable: the streams' types are lost there.
        r, w = await asyncio.wait_for_ms(asyncio.open_connection(*self._addr), self._k[_CONN])  # type: ignore[var-annotated]
        self._w = w
        try:
            # Nagle would hold a small PUBLISH up to ~40 ms behind an unacked one. Best effort: not every
            # port exposes the option (the constants are the same on Linux and lwIP).
            w.s.setsockopt(_IPPROTO_TCP, _TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        self._p.reset()
        rr = self._r
        rr[_T0] = rr[_RX] = rr[_TX] = self._ticks()
        rr[_PING_AT] = -1
        rx = kp = None
        try:
            self._send(self._conn, len(self._conn))
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
            self._r[_TX] = self._ticks()
        except OSError as e:
            self._fail(_reason(e))

    def _slot(self, i):
        # Slot i (an index into _sl, a multiple of _S) as a view into the one buffer.
        k = self._k
        o = k[_RSIZE] + i // _S * k[_SLOT]
        return self._mv[o:o + k[_SLOT]]

    def _free(self):
        sl = self._sl
        for i in range(0, len(sl), _S):
            if not sl[i]:
                return i
        return -1

    def _new_pid(self):
        rr, sl = self._r, self._sl
        pid = rr[_PID]
        while True:     # the next id that is neither in flight nor the pending SUBSCRIBE's
            pid = pkt.next_pid(pid)
            if pid == rr[_SUB_PID]:
                continue
            for i in range(0, len(sl), _S):
                if sl[i] == pid:
                    break
            else:
                break
        rr[_PID] = pid
        return pid

    def _sub(self, b):
        pid = self._new_pid()
        self._r[_SUB_PID] = pid
        o = 3 if b[1] & 0x80 else 2     # the packet id follows the fixed header (1 or 2 length bytes)
        b[o] = pid >> 8
        b[o + 1] = pid & 0xFF
        self._send(b, len(b))

    async def _reader(self, r):
        p = self._p
        buf = self._mv[:self._k[_RSIZE]]
        try:
            while True:
                n = await r.readinto(buf)
                if not n:
                    raise OSError("eof")
                self._r[_RX] = self._ticks()
                pos = 0
                while pos < n:
                    pos = p.feed(buf, pos, n)
                    if p.ready:
                        self._packet(p)
        except Exception as e:   # noqa: any failure (broker, parser, callback) ends this session
            self._fail(_reason(e))

    def _packet(self, p):
        k = p.kind
        sl = self._sl
        if k == _PUBLISH:
            topic, pid, payload = p.publish()
            if p.big or not _our_topic(topic):
                # Acknowledged and discarded: left unacknowledged, the broker would redeliver it after
                # every reconnect, and the acks and prompts queued behind it would never arrive.
                self._r[_DROP] += 1
            elif self.on_msg:
                self.on_msg(topic, payload)     # views into the parser buffer: valid until it returns
            if pid:   # PUBACK only once the application has taken the message
                # Written over the packet just handled (the parser starts the next one afresh).
                self._send(p.mv, pkt.puback(p.mv, pid))
        elif k == _PUBACK:
            pid = p.pid()
            for i in range(0, len(sl), _S):
                if sl[i] == pid:
                    sl[i] = 0
                    if self.on_puback:
                        self.on_puback(pid)
                    break
        elif k == _PINGRESP:
            self._r[_PING_AT] = -1
        elif k == _SUBACK:
            p.suback()   # raises on a refusal
        elif k == _CONNACK:
            if self.up:
                raise ValueError("mqtt-connack-twice")
            sp, rc = p.connack()
            if rc:
                raise ValueError("mqtt-refused-%d" % rc)
            self.up = True
            self.last_error = None
            for b in self._subs:
                self._sub(b)
            now = self._ticks()
            for i in range(0, len(sl), _S):
                if sl[i]:
                    self._resend(i, now)
            if self.on_link:
                self.on_link(True)

    def _resend(self, i, now):
        mv = self._slot(i)
        pkt.set_dup(mv)
        self._sl[i + 2] = now
        self._send(mv, self._sl[i + 1])

    async def _keeper(self, w):
        dif = self._dif
        k, rr, sl = self._k, self._r, self._sl
        try:
            while True:
                await asyncio.sleep_ms(k[_TICK])
                if w.out_buf:   # only when the socket refused part of a write (drain() allocates)
                    # Bounded: a broker that stopped reading would otherwise hold this task, and with
                    # it the keepalive, for as long as TCP keeps the connection open.
                    try:
                        await asyncio.wait_for_ms(w.drain(), k[_PING] or k[_CONN])
                    except asyncio.TimeoutError:
                        raise OSError("write-stuck")
                now = self._ticks()
                if self._net is not None and not self._net():
                    # Wi-Fi lost: the socket is dead even if lwIP has not noticed yet.
                    raise OSError("wifi-down")
                if not self.up:
                    if dif(now, rr[_T0]) >= k[_CONN]:
                        raise OSError("connack-timeout")
                    continue
                if self.tries and dif(now, rr[_T0]) >= k[_BMAX]:
                    self.tries = 0      # this link lasted: the next failure starts the backoff afresh
                for i in range(0, len(sl), _S):
                    if sl[i] and dif(now, sl[i + 2]) >= k[_RETRY]:
                        self._resend(i, now)
                if not k[_PING]:
                    continue            # keepalive 0: the broker expects no PINGREQ (MQTT 3.1.1 3.1.2.10)
                if rr[_PING_AT] >= 0:
                    if dif(now, rr[_PING_AT]) >= k[_PING]:
                        raise OSError("no-pingresp")
                elif dif(now, rr[_TX]) >= k[_PING] or dif(now, rr[_RX]) >= k[_PING]:
                    self._send(pkt.PINGREQ_PKT, 2)
                    rr[_PING_AT] = now
        except Exception as e:   # noqa
            self._fail(_reason(e))


def _b(s):
    return s.encode() if isinstance(s, str) else s


def _our_topic(t):
    # The protocol's topics are printable ASCII without spaces or wildcards (cs/1/d/<id>/...): anything
    # else (U+0000, invalid or any non-ASCII UTF-8, a wildcard) is not a downlink of ours.
    n = len(t)
    for i in range(n):      # an index loop: iterating the memoryview would allocate an iterator
        c = t[i]
        if c < 0x21 or c > 0x7E or c == 0x23 or c == 0x2B:
            return False
    return n > 0


def _reason(e):
    if isinstance(e, asyncio.TimeoutError):
        return "timeout"
    a = e.args
    return a[0] if a else type(e).__name__
