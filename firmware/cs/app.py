# The keypad application: wires keys, flow, outbox, clock and the MQTT client as asyncio tasks.
#
# Order that keeps invariant 1 (no rating lost): a press becomes a signed message, the message is
# appended to the outbox (durable when append returns), only then the customer gets "pressed" feedback
# and the message is offered to the MQTT client. It leaves the outbox only when an ack whose MAC
# verifies names its (epoch, seq).
import asyncio
import gc
import json

from micropython import const

from . import VERSION, cose, msgs
from .clock import Clock
from .flow import Flow
from .keys import Keys
from .mqtt.client import Client
from .outbox import Outbox, OutboxFull
from .state import State

_SCAN_MS = const(10)             # key scan and board service period
_ACK_TIMEOUT_MS = const(10000)   # no ack progress for this long while up: offer the whole outbox again
_ERR_FULL = const(2)             # red blinks when the outbox is full
_SLOT = const(300)               # one in-flight PUBLISH: topic + a rating (~90 B) or a heartbeat (~110 B)
_MAX_DOWN = const(300)           # largest packet from the broker: topic + a Mac0 of at most 256 bytes
_INFLIGHT = const(4)             # PUBLISH slots: enough to keep the link busy while acks come back
# The message numbers used here (PROTOCOL.md 6, the same as cs/msgs.py): private consts are folded
# into the bytecode, no module attribute is looked up per message.
_T_HELLO = const(3)
_T_HEARTBEAT = const(4)
_T_ACK = const(16)
_T_PROMPT = const(17)
_T_TIME = const(18)
_T_SESSION = const(19)
_K_EPOCH = const(1)
_K_PROMPT = const(5)
_K_TIME = const(6)
_K_SEQS = const(10)
_K_NOW_MS = const(11)
_K_NONCE = const(12)
_K_CLERK = const(20)
_K_SERVICE = const(21)
_K_TXN = const(22)
_K_TIMEOUT = const(23)
_K_CLERK_NAME = const(24)


def _hex16(b):
    return "".join("%02x" % x for x in b[:16])


class App:
    def __init__(self, board, cfg, folder=""):
        # The heap is small and MicroPython's collector does not move objects: collect the garbage of
        # the imports first, then make the largest buffers (the client's, the outbox bitmap) while
        # the free heap is still in one piece, and the small objects after them.
        gc.collect()
        password = _hex16(cose.hmac_sha256(cfg.key, b"countersign mqtt password"))
        self.client = Client(cfg.broker_host, cfg.broker_port, cfg.device_id, cfg.device_id, password,
                             "cs/1/d/%s/will" % cfg.device_id, keepalive=30, on_msg=self._on_msg,
                             on_link=self._on_link, on_puback=self._on_puback,
                             # Sized to the protocol, not to MQTT's maxima: an up message is at most
                             # 256 bytes (limits.py) and a keypad's downlinks are smaller still.
                             inflight=_INFLIGHT, slot=_SLOT, max_size=_MAX_DOWN,
                             ticks_ms=board.ticks_ms, ticks_diff=board.ticks_diff,
                             net_up=board.network_up)
        self.outbox = Outbox(folder + "outbox.bin", cfg.capacity)
        self.board = board
        self.cfg = cfg
        self.kid = cfg.device_id.encode()
        self.key = cfg.key
        # Counters continue after the reservation on flash AND after the highest seq still in the outbox.
        self.state = State(folder + "state.json", epoch=cfg.epoch, max_seq=self.outbox.max_seq(cfg.epoch))
        # Every ticks value is the board's and compared with the board's ticks_diff (cs/clock.py).
        self.clock = Clock(board.ticks_ms, board.ticks_diff)
        self.flow = Flow(cfg.scale, cfg.invite_key, board.ticks_ms, cfg.invite_timeout, board.ticks_diff)
        self.keys = Keys(board.keys(cfg.scale, cfg.invite_key), board.ticks_ms, diff=board.ticks_diff)
        self.fb = board.feedback
        self.bad_downlink = 0
        # Preallocated: a payload, and the sealed message, which is copied (into the outbox file or a
        # client slot) before any await; the sender reads records into a buffer of its own.
        self._payload = bytearray(160)
        self._rec = bytearray(272)
        self._up = b"cs/1/d/%s/up" % cfg.device_id.encode()   # bytes: not re-encoded per publish
        self._kick = asyncio.Event()      # something to send: a new record, a free slot, a reconnect
        self._sent_upto = 0               # highest seq offered since the last (re)connect or timeout
        self._progress_at = 0             # board ticks of the last ack (or of the last full resend)
        self.client.subscribe("cs/1/d/%s/down" % cfg.device_id, 1)

    # -- making records --------------------------------------------------------------------------
    def _seal(self, n):
        m = cose.seal(self.key, self.kid, memoryview(self._payload)[:n], self._rec)
        return memoryview(self._rec)[:m]

    def _record(self, rating, score, prompt, delay):
        """Rating or no-rating: seal, append to the outbox (durable), then let the sender offer it."""
        if self.outbox.full:
            self.fb.error(_ERR_FULL)
            print("CS:FULL")
            return False
        seq = self.state.next_seq()
        mono = self.clock.mono32()
        t = self.clock.unix_s()
        if rating:
            n = msgs.rating(self._payload, self.state.epoch, seq, score, self.cfg.scale, prompt, t,
                            mono, delay, self.state.boot)
        else:
            n = msgs.no_rating(self._payload, self.state.epoch, seq, prompt, t, mono, delay,
                               self.state.boot)
        try:
            self.outbox.append(self.state.epoch, seq, self._seal(n))
        except OutboxFull:
            self.fb.error(_ERR_FULL)
            print("CS:FULL")
            return False
        print("CS:%s seq=%d%s" % ("RATED" if rating else "NORATING", seq,
                                  " score=%d" % score if rating else ""))
        self._kick.set()
        return True

    def _health(self, typ):
        n = msgs.health(self._payload, typ, self.state.epoch, self.state.boot, self.clock.new_nonce(),
                        VERSION, self.board.reset_cause(), gc.mem_free(), self.outbox.depth,
                        self.outbox.free, self.clock.uptime_s(), self.board.rssi(), self.flow.ignored,
                        self.keys.stuck, self.clock.unix_s(), self.bad_downlink + self.client.dropped())
        self.client.publish(self._up, self._seal(n), 1)

    # -- MQTT events -----------------------------------------------------------------------------
    def _on_link(self, up):
        print("CS:LINK", "up" if up else "down " + str(self.client.last_error))
        if up:
            self._sent_upto = 0
            self._progress_at = self.board.ticks_ms()
            self.outbox.rewind()        # from the oldest unacked: what was in flight may be lost
            self._health(_T_HELLO)
            self._kick.set()

    def _on_puback(self, _pid):
        self._kick.set()

    def _on_msg(self, _topic, data):
        try:
            typ, f = msgs.decode_down(cose.open(self.key, self.kid, data))
        except ValueError as e:
            self.bad_downlink += 1
            print("CS:BADDOWN", e.args[0] if e.args else "?")
            return
        except MemoryError:
            # No room to decode it this time. Raised into the client it would end the session, and the
            # broker would redeliver the same message into the same failure for ever; dropped here it
            # is PUBACKed, and what it said comes again: an ack by the resend after the ack timeout (the
            # gateway dedups), a time sync at the next heartbeat, a prompt or session not at all (a
            # prompt must count in its own moment only).
            print("CS:LOWMEM downlink")
            gc.collect()
            return
        if typ == _T_ACK:
            seqs = f[_K_SEQS]
            if f[_K_EPOCH] == self.state.epoch and self.outbox.ack(self.state.epoch, seqs):
                self._progress_at = self.board.ticks_ms()
                for seq in seqs:
                    print("CS:STORED seq=%d" % seq)
                self.fb.stored()
        elif typ == _T_PROMPT:
            r = self.flow.on_prompt(f[_K_PROMPT], f[_K_CLERK], f[_K_SERVICE], f[_K_TXN],
                                    f[_K_TIMEOUT], f.get(_K_TIME), self.clock.unix_s())
            if r[0] == "replaced":
                self._record(False, 0, r[1], self.flow.delay)
            if r[0] != "stale":
                print("CS:PROMPT id=%d" % f[_K_PROMPT])
                self.fb.show(self.flow.screen())
        elif typ == _T_TIME:
            if self.clock.sync(f[_K_NOW_MS], f[_K_NONCE]):
                print("CS:TIME %d" % (f[_K_NOW_MS] // 1000))
        elif typ == _T_SESSION:
            clerk = f.get(_K_CLERK)
            self.flow.on_session(clerk, f.get(_K_CLERK_NAME))
            print("CS:SESSION clerk=%s" % (clerk or "-"))    # "-": window closed
            self.fb.show(self.flow.screen())

    def _command(self, line):
        # The console's commands, for a technician or a test on the serial port.
        if line == "status":
            c = self.cfg
            print("CS:STATUS " + json.dumps({
                "id": c.device_id, "fw": VERSION, "hall": c.hall, "window": c.window,
                "provisioned": True, "boot": self.state.boot, "epoch": self.state.epoch,
                "link": self.client.up, "outbox": self.outbox.depth, "outbox_free": self.outbox.free,
                "heap_free": gc.mem_free(), "ignored": self.flow.ignored, "stuck": self.keys.stuck,
                "bad_downlink": self.bad_downlink, "dropped_downlink": self.client.dropped(),
                "time_known": self.clock.known}))
        elif line:
            print("CS:UNKNOWN-COMMAND " + line[:32])

    # -- tasks -----------------------------------------------------------------------------------
    async def _keys(self):
        board, flow, keys = self.board, self.flow, self.keys
        wifi = False            # the station's state as last reported (a local: no instance attribute)
        while True:
            board.poll()
            if board.network_up() != wifi:
                wifi = not wifi
                print("CS:WIFI", "up" if wifi else "down")
                if wifi:
                    self.client.kick()            # connect now, not at the end of a backoff
            line = board.console_line()
            if line is not None:
                self._command(line.strip())
            r = flow.tick()
            if r is not None:
                self._record(False, 0, r[1], flow.delay)
                self.fb.show(flow.screen())
            k = keys.scan()
            if k >= 0:
                r = flow.press(k)
                if r[0] == "rated":
                    if self._record(True, r[1], flow.prompt, flow.delay):
                        self.fb.pressed(r[1])
                elif r[0] == "opened":
                    print("CS:INVITE")
                    self.fb.show(flow.screen())
            board.watchdog_feed()
            await asyncio.sleep_ms(_SCAN_MS)

    async def _sender(self):
        # Offers the outbox's unacked records to the client in (epoch, seq) order as slots free up,
        # from the outbox's cursor, which goes on from where it stopped: each record is read once per
        # pass, not once per free slot. It starts over when the link comes up (_on_link) and when no
        # ack came for a while. A message read while every slot is taken is held here, not read again.
        ob, client, board = self.outbox, self.client, self.board
        buf = bytearray(256)        # PROTOCOL.md: an up message is at most 256 bytes
        mv = memoryview(buf)
        m = mv[:0]
        held = seq = 0              # length and seq of the message in buf not yet taken by the client
        while True:
            await self._kick.wait()
            self._kick.clear()
            if not client.up:
                continue
            if ob.depth and board.ticks_diff(board.ticks_ms(), self._progress_at) > _ACK_TIMEOUT_MS:
                ob.rewind()                               # no ack for a while: offer everything again
                self._sent_upto = 0
                self._progress_at = board.ticks_ms()
            while True:
                if not held:
                    held, seq = ob.next_pending(buf), ob.cur_seq
                    if not held:
                        break
                if len(m) != held:
                    m = mv[:held]                         # a new view only when the length changes
                if client.publish(self._up, m, 1) is None:
                    break                                 # no free slot (or link down): the next kick
                held = 0
                self._sent_upto = seq
                await asyncio.sleep_ms(0)

    async def _compactor(self):
        # Drops acked records from the outbox file off the key path: in steps of a few records with
        # the loop running in between, so key scanning and the watchdog feed never wait long for it.
        ob = self.outbox
        while True:
            await asyncio.sleep_ms(1000)
            if not ob.compact_due():
                continue
            try:
                while not ob.compact_step():
                    await asyncio.sleep_ms(0)
            except OSError as e:
                # No room for the copy (the old log is whole and in use): try again in a minute.
                print("CS:COMPACT-FAILED", e.args[0] if e.args else "?")
                await asyncio.sleep_ms(60000)

    async def _timer(self):
        # Heartbeats on the uptime in seconds (a long interval: never ticks arithmetic, cs/clock.py).
        hb = self.cfg.heartbeat_s
        last_hb = self.clock.uptime_s()
        while True:
            await asyncio.sleep_ms(1000)
            now = self.clock.uptime_s()
            if self.outbox.depth:
                self._kick.set()                          # lets the sender notice an ack timeout
            if self.client.up and now - last_hb >= hb:
                last_hb = now
                self._health(_T_HEARTBEAT)

    async def run(self):
        print("CS:BOOT fw=%s boot=%d epoch=%d" % (VERSION, self.state.boot, self.state.epoch))
        print("CS:PROVISIONED id=%s hall=%s window=%s outbox=%d" % (
            self.cfg.device_id, self.cfg.hall, self.cfg.window, self.outbox.depth))
        try:
            self.board.connect_network(self.cfg)     # joins in the background; the keys work meanwhile
        except ValueError as e:
            print("CS:WIFI unconfigured", e.args[0] if e.args else "")
        await asyncio.gather(self.client.run(), self._keys(), self._sender(), self._timer(),
                             self._compactor())
