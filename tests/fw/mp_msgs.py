# Unit checks of cs.msgs on MicroPython: field validation of the up encoders, the down decoder's types
# and reasons, and that encoding a rating does not allocate.
# Optional: env CS_CODEC_CASES names a JSON file of differential cases made by the CPython reference
# (test_61): [[hex, reason or null], ...]; each must get the same verdict from open + decode_down.
# env CS_CODEC_UP: [[kind, key, kid, args, hex], ...] up messages that must seal to CPython's bytes.
import mpyboot
from mpyboot import check, raises, done, h, x, reason_of
import gc
import os
import micropython
from binascii import unhexlify

from cs import cbor, cose, msgs
import upmsgs as M

buf = bytearray(300)
out = bytearray(256)
KEY = bytes(range(32))
KID = b"hf01-w01"


# ---- message encoders: validation
def msg_encoders():
    def rt(**kw):
        a = dict(epoch=1, seq=1, score=3, scale=4, prompt=0, time=None, mono=0, delay=0, boot=0)
        a.update(kw)
        return lambda: msgs.rating(buf, a["epoch"], a["seq"], a["score"], a["scale"], a["prompt"], a["time"],
                                   a["mono"], a["delay"], a["boot"])

    check(not raises(rt()), "rating: defaults encode")
    check(not raises(rt(score=5, scale=5, seq=2**32 - 1, epoch=65535, time=2**32 - 1)), "rating: maxima")
    for kw, name in (({"score": 5}, "score over a 4-key scale"), ({"score": 0}, "score 0"),
                     ({"scale": 3}, "scale 3"), ({"seq": 0}, "seq 0"), ({"seq": 2**32}, "seq 2^32"),
                     ({"epoch": 65536}, "epoch 65536"), ({"time": 0}, "time 0"), ({"mono": -1}, "mono -1"),
                     ({"boot": True}, "bool boot"), ({"delay": 1.5}, "float delay")):
        check(raises(rt(**kw), "bad-field"), "rating refuses " + name)
    n = msgs.no_rating(buf, 1, 45, 1004, None, 5434000, 20000, 7)
    check(cbor.decode(buf[:n]) == {0: 2, 1: 1, 2: 45, 5: 1004, 6: None, 7: 5434000, 8: 20000, 9: 7},
          "no_rating with unknown time")
    def hl(typ=M.T_HEARTBEAT, fw=b"cs-fw 1.0.0", rssi=None, stuck=0):
        return lambda: msgs.health(buf, typ, 1, 7, 1, fw, 1, 0, 0, 9000, 3, rssi, 0, stuck, None)
    check(not raises(hl(rssi=-200)) and not raises(hl(fw="x" * 64)), "health: rssi -200, 64-byte fw")
    check(raises(hl(typ=M.T_RATING), "bad-type"), "health refuses a rating type")
    check(raises(hl(fw="张" * 22), "bad-field"), "health refuses a 66-byte fw (22 characters)")
    check(raises(hl(rssi=201), "bad-field"), "health refuses rssi 201")
    check(raises(hl(stuck=65536), "bad-field"), "health refuses stuck 65536")


# ---- decode_down: the down types validated like messages.decode_payload(.., DEVICE_DOWN)
def enc(m):
    p = cbor.put_head(buf, 0, 5, len(m))
    for k in sorted(m):
        p = cbor.put_uint(buf, p, k)
        p = _val(p, m[k])
    return bytes(buf[:p])


def _val(p, v):
    if v is None:
        return cbor.put_null(buf, p)
    if isinstance(v, int):
        return cbor.put_int(buf, p, v)
    if isinstance(v, str):
        return cbor.put_text(buf, p, v)
    if isinstance(v, bytes):
        return cbor.put_bytes(buf, p, v)
    q = cbor.put_head(buf, p, 4, len(v))
    for y in v:
        q = _val(q, y)
    return q


PROMPT = {0: 17, 5: 1, 20: "10023", 21: 2, 22: "T1", 23: 20, 6: None}


def down_accepts():
    DOWN_OK = (({0: 16, 1: 0, 10: [1]}, "ack of one"), ({0: 16, 1: 65535, 10: [2**32 - 1] * 32}, "ack of 32"),
               (PROMPT, "prompt, time unknown"), ({0: 18, 11: 2**64 - 1, 12: 0}, "time sync u64"),
               ({0: 19}, "session closed"), ({0: 19, 24: "张三"}, "session with a name only"))
    for m, name in DOWN_OK:
        r = reason_of(lambda: msgs.decode_down(enc(m)))
        check(r is None, "decode_down accepts " + name, "got %r" % r)
    t, f = msgs.decode_down(enc(PROMPT))
    check(t == M.T_PROMPT and f[M.K_CLERK] == "10023" and f[M.K_TIME] is None, "prompt fields")
    t, f = msgs.decode_down(enc({0: 19}))
    check(t == M.T_SESSION and f.get(M.K_CLERK) is None, "closed session: no clerk")


# Apart from down_accepts: in a 64 KB heap the accepted 32-seq ack's garbage beside these cases
# fragmented the heap enough for a 264-byte allocation to fail (CI, 2026-12-02).
def down_refuses():
    def with_(base, **kw):
        m = dict(base)
        for k, v in kw.items():
            if v == "DEL":
                del m[int(k[1:])]
            else:
                m[int(k[1:])] = v
        return m

    DOWN_BAD = (
        ({0: 16, 1: 1, 10: []}, "bad-field", "ack of no seqs"),
        ({0: 16, 1: 1, 10: [1] * 33}, "bad-field", "ack of 33 seqs"),
        ({0: 16, 1: 1, 10: [0]}, "bad-field", "ack of seq 0"),
        ({0: 16, 1: 1, 10: [2**32]}, "bad-field", "ack of seq 2^32"),
        ({0: 16, 1: 65536, 10: [1]}, "bad-field", "ack epoch 65536"),
        ({0: 16, 1: 1, 10: 5}, "bad-field", "ack seqs not an array"),
        ({0: 16, 1: 1}, "missing-field", "ack without seqs"),
        ({0: 16, 1: 1, 10: [1], 2: 1}, "bad-field", "ack with a seq field"),
        (with_(PROMPT, k20=5), "bad-field", "prompt clerk not text"),
        (with_(PROMPT, k20="x" * 65), "over-limit", "prompt clerk of 65 bytes"),
        (with_(PROMPT, k21=65536), "bad-field", "prompt service 65536"),
        (with_(PROMPT, k6=0), "bad-field", "prompt time 0"),
        (with_(PROMPT, k22="DEL"), "missing-field", "prompt without txn"),
        (with_(PROMPT, k26=1), "bad-field", "prompt with an unknown key"),
        (with_(PROMPT, k5=-1), "bad-field", "prompt id -1"),
        ({0: 18, 11: -1, 12: 1}, "bad-field", "time sync now_ms -1"),
        ({0: 18, 11: 1, 12: 2**32}, "bad-field", "time sync nonce 2^32"),
        ({0: 19, 20: None}, "bad-field", "session clerk null (absent, never null)"),
        ({0: 19, 24: b"x"}, "bad-field", "session name as bytes"),
        ({0: 1, 1: 1}, "bad-type", "a rating type"),
        ({0: 32}, "bad-type", "a batch type"),
        ({1: 1}, "bad-type", "no type"),
        ({0: "ack"}, "bad-type", "text type"),
        ({0: 16, 1: 1, 10: [[1]]}, "too-deep", "nested array in an ack"),
    )
    for m, want, name in DOWN_BAD:
        r = reason_of(lambda: msgs.decode_down(enc(m)))
        check(r == want, "decode_down refuses %s: %s" % (name, want), "got %r" % r)
    check(raises(lambda: msgs.decode_down(x("83 01 02 03")), "bad-payload"), "array payload: bad-payload")
    check(raises(lambda: msgs.decode_down(x("a2 00 13 81 00 00")), "bad-field"), "array key: bad-field")
    check(raises(lambda: msgs.decode_down(x("a2 00 13 f6 00")), "bad-field"), "null key: bad-field")
    check(raises(lambda: msgs.decode_down(x("a2 00 13 61 61 00")), "bad-field"), "text key: bad-field")
    check(raises(lambda: msgs.decode_down(x("a2 00 13 14 78 c9") + b"a" * 201), "oversized"),
          "payload over 200 bytes: oversized")


# ---- no allocation: encoding a rating 1000 times into the same buffer
def no_allocation():
    def enc_ratings(count, t):
        for i in range(count):
            msgs.rating(buf, 1, i + 1, 4, 4, 1001, t, 5234567, 3500, 7)

    def enc_health(count):
        for i in range(count):
            msgs.health(buf, M.T_HEARTBEAT, 1, 7, i, b"cs-fw 1.0.0", 1, 41216, 2, 8998, 3, -61, 3, 0, None)

    def locked(fn):
        # heap_lock makes any allocation raise MemoryError: a strict proof of "no allocation". fn takes
        # no arguments (a call with *args would itself allocate).
        micropython.heap_lock()
        try:
            fn()
            ok = True
        except MemoryError:
            ok = False
        micropython.heap_unlock()
        return ok

    enc_ratings(1, 1735700000)
    run1 = lambda: enc_ratings(1000, 1735700000)
    run2 = lambda: enc_ratings(1000, None)
    run3 = lambda: enc_health(100)
    check(locked(run1), "1000 ratings encoded with the heap locked")
    check(locked(run2), "1000 ratings (time unknown) encoded with the heap locked")
    check(locked(run3), "100 heartbeats (fw as bytes) encoded with the heap locked")
    check(not locked(lambda: bytearray(8)), "heap_lock does catch an allocation (the check can fail)")
    gc.collect()
    gc.disable()
    before = micropython.mem_current()
    enc_ratings(1000, 1735700000)
    grown = micropython.mem_current() - before
    gc.enable()
    print("heap growth over 1000 rating encodes: %d bytes" % grown)
    # Bound 0: the loop writes small ints into the caller's bytearray only (63-bit small ints here; on a
    # 32-bit port the u32 fields go through struct.pack_into, which reads a long int in place).
    check(grown == 0, "rating encode loop: heap growth 0", str(grown))

    # What sealing and opening cost per message (hash objects, digests, decoded values): reported, bounded.
    n = msgs.rating(buf, 1, 1, 4, 4, 1001, 1735700000, 5234567, 3500, 7)
    mv = memoryview(buf)[:n]
    ack = bytearray(256)
    an = cose.seal(KEY, KID, x("a3 00 10 01 01 0a 83 18 2a 18 2b 18 2c"), ack)
    ack = bytes(ack[:an])

    def cost(fn):
        # bytes one call leaves on the heap (gc off during the call), the most of 3 calls
        most = 0
        for i in range(3):
            gc.collect()
            gc.disable()
            b = micropython.mem_current()
            fn()
            most = max(most, micropython.mem_current() - b)
            gc.enable()
        return most

    seal_b = cost(lambda: cose.seal(KEY, KID, mv, out))
    open_b = cost(lambda: msgs.decode_down(cose.open(KEY, KID, ack)))
    print("heap per seal: %d bytes, per open+decode_down of an ack: %d bytes" % (seal_b, open_b))
    check(seal_b <= 1024, "seal allocates at most 1 KB (garbage, collected)", str(seal_b))
    check(open_b <= 2048, "open + decode_down allocates at most 2 KB (garbage, collected)", str(open_b))


# ---- differential cases from the CPython reference (env CS_CODEC_CASES, CS_CODEC_UP)
def differential():
    CASES = os.getenv("CS_CODEC_CASES")
    if CASES:
        import json
        with open(CASES) as fh:
            cases = json.load(fh)
        bad = 0
        for s, want in cases:
            got = reason_of(lambda: msgs.decode_down(cose.open(KEY, KID, unhexlify(s))))
            if got != want:
                bad += 1
                if bad <= 5:
                    print("differs:", s, "cpython", want, "firmware", got)
        print("differential cases:", len(cases))
        check(bad == 0, "same verdict as CPython on %d mutated messages" % len(cases), "%d differ" % bad)
    # env CS_CODEC_UP: [[kind, key hex, kid, [args], message hex from CPython mac0_encode], ...]
    UPS = os.getenv("CS_CODEC_UP")
    if UPS:
        import json
        with open(UPS) as fh:
            ups = json.load(fh)
        bad = 0
        for kind, key, kid, a, want in ups:
            if kind == "rating":
                n = msgs.rating(buf, *a)
            elif kind == "no_rating":
                n = msgs.no_rating(buf, *a)
            else:
                n = msgs.health(buf, *a)
            m = cose.seal(unhexlify(key), kid.encode(), memoryview(buf)[:n], out)
            if h(out[:m]) != want:
                bad += 1
                if bad <= 5:
                    print("differs:", kind, kid, a, h(out[:m]), want)
        print("up messages:", len(ups))
        check(bad == 0, "%d up messages byte-identical to CPython mac0_encode" % len(ups), "%d differ" % bad)


# Each section in its own function: its data is garbage once it returns.
for section in (msg_encoders, down_accepts, down_refuses, no_allocation, differential):
    section()
    gc.collect()
done()
