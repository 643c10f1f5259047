# Every golden vector (protocol/vectors/*.json, PROTOCOL.md section 16) against the firmware codec:
# good cases are rebuilt byte for byte by the firmware's encoders and accepted by its verifier; must-fail
# cases are refused with the vector's reason.
import mpyboot
from mpyboot import check, done
import json
import os
from binascii import hexlify, unhexlify

from cs import cbor, cose, msgs

# vector field names -> field numbers (PROTOCOL.md section 6)
NAMES = {"epoch": msgs.K_EPOCH, "seq": msgs.K_SEQ, "score": msgs.K_SCORE, "scale": msgs.K_SCALE,
         "prompt": msgs.K_PROMPT, "time": msgs.K_TIME, "mono": msgs.K_MONO, "delay": msgs.K_DELAY,
         "boot": msgs.K_BOOT, "seqs": msgs.K_SEQS, "now_ms": msgs.K_NOW_MS, "nonce": msgs.K_NONCE,
         "fw": msgs.K_FW, "reset": msgs.K_RESET, "heap": msgs.K_HEAP, "outbox": msgs.K_OUTBOX,
         "uptime": msgs.K_UPTIME, "rssi": msgs.K_RSSI, "ignored": msgs.K_IGNORED, "clerk": msgs.K_CLERK,
         "service": msgs.K_SERVICE, "txn": msgs.K_TXN, "timeout": msgs.K_TIMEOUT,
         "clerk_name": msgs.K_CLERK_NAME, "stuck": msgs.K_STUCK, "outbox_free": msgs.K_OUTBOX_FREE}
TYPES = {"rating": msgs.T_RATING, "no_rating": msgs.T_NO_RATING, "hello": msgs.T_HELLO,
         "heartbeat": msgs.T_HEARTBEAT, "ack": msgs.T_ACK, "prompt": msgs.T_PROMPT,
         "time": msgs.T_TIME,
         "session": msgs.T_SESSION}
UP = (msgs.T_RATING, msgs.T_NO_RATING, msgs.T_HELLO, msgs.T_HEARTBEAT)

# Must-fail vectors whose reason differs on the device's own receive path (cose.open + decode_down):
# an up-type payload is not a downlink at all, so the keypad says bad-type where the gateway (which
# decodes up types, as decode_up does here) says bad-field. fail-19 (a down type sent up) is a valid
# downlink for a keypad: it does not apply to a device and is checked with decode_up only.
DEVICE_REASON = {"fail-17-score-outside-scale.json": "bad-type",
                 "fail-18-unknown-field.json": "bad-type",
                 "fail-19-downlink-type-sent-up.json": None}


def h(b):
    return hexlify(b).decode()


def reason_of(fn):
    try:
        fn()
    except ValueError as e:
        return e.args[0] if e.args else "?"
    return None


def encode_fields(buf, typ, fields):
    """A payload map from the vector's named fields with the firmware's CBOR primitives (ascending
    keys; absent optional fields left out, as the CPython encoder does)."""
    items = [(msgs.K_TYPE, typ)]
    for name in fields:
        if name != "type" and not (typ == msgs.T_SESSION and fields[name] is None):
            items.append((NAMES[name], fields[name]))
    items.sort(key=lambda kv: kv[0])
    p = cbor.put_head(buf, 0, 5, len(items))
    for k, v in items:
        p = cbor.put_uint(buf, p, k)
        p = put_value(buf, p, v)
    return p


def put_value(buf, p, v):
    if v is None:
        return cbor.put_null(buf, p)
    if isinstance(v, bool):
        return cbor.put_bool(buf, p, v)
    if isinstance(v, int):
        return cbor.put_int(buf, p, v)
    if isinstance(v, str):
        return cbor.put_text(buf, p, v)
    p = cbor.put_head(buf, p, 4, len(v))
    for x in v:
        p = put_value(buf, p, x)
    return p


def encode_up(buf, typ, m):
    """The firmware's own message encoders, fed from the vector's fields."""
    if typ == msgs.T_RATING:
        return msgs.rating(buf, m["epoch"], m["seq"], m["score"], m["scale"], m["prompt"], m["time"],
                           m["mono"], m["delay"], m["boot"])
    if typ == msgs.T_NO_RATING:
        return msgs.no_rating(buf, m["epoch"], m["seq"], m["prompt"], m["time"], m["mono"], m["delay"],
                              m["boot"])
    return msgs.health(buf, typ, m["epoch"], m["boot"], m["nonce"], m["fw"], m["reset"], m["heap"],
                       m["outbox"], m["outbox_free"], m["uptime"], m["rssi"], m["ignored"], m["stuck"],
                       m["time"])


def same_fields(got, m):
    for name in m:
        if name == "type":
            continue
        want = m[name]
        have = got.get(NAMES[name])
        if have != want:
            return "%s: %r != %r" % (name, have, want)
    for k in got:
        if k != msgs.K_TYPE and k not in [NAMES[n] for n in m if n != "type"]:
            return "extra key %r" % k
    return None


buf = bytearray(256)
out = bytearray(300)
names = sorted(f for f in os.listdir(mpyboot.VECTORS) if f.endswith(".json"))
check(len(names) >= 31, "vectors found", str(len(names)))
n_good = n_fail = 0
for name in names:
    with open(mpyboot.VECTORS + "/" + name) as f:
        v = json.load(f)
    key = unhexlify(v["key_hex"]) if v.get("key_registered", True) else None
    kid = unhexlify(v["kid_hex"])
    output = unhexlify(v["output_hex"])
    if not v["fail"]:
        n_good += 1
        m = v["message"]
        typ = TYPES[m["type"]]
        if typ in UP:
            check(v["direction"] == "up", name + " direction")
            n = encode_up(buf, typ, m)
        else:
            check(v["direction"] == "down", name + " direction")
            n = encode_fields(buf, typ, m)
        payload = bytes(buf[:n])
        check(h(payload) == v["payload_hex"], name + " payload", h(payload))
        n = cose.to_mac(kid, payload, out)
        check(h(out[:n]) == v["to_mac_hex"], name + " to_mac", h(out[:n]))
        check(h(cose.hmac_sha256(key, out[:n])) == v["tag_hex"], name + " tag")
        n = cose.seal(key, kid, memoryview(buf)[:len(payload)], out)
        check(h(out[:n]) == v["output_hex"], name + " output", h(out[:n]))
        got = cose.open(key, kid, output)
        check(got == payload, name + " open gives the payload")
        t, fields = (msgs.decode_up if typ in UP else msgs.decode_down)(got)
        check(t == typ, name + " decoded type", str(t))
        diff = same_fields(fields, m)
        check(diff is None, name + " decoded fields", diff)
        # the other direction's decoder refuses it
        other = msgs.decode_down if typ in UP else msgs.decode_up
        check(reason_of(lambda: other(got)) == "bad-type", name + " refused by the other direction")
    else:
        n_fail += 1
        want = v["reason"]
        check(v["direction"] == "up", name + " is an up case")

        def gateway_path():
            msgs.decode_up(cose.open(key, kid, output))

        def device_path():
            msgs.decode_down(cose.open(key, kid, output))

        r = reason_of(gateway_path)
        check(r == want, name + " refused: " + str(want), "got %r" % r)
        dev_want = DEVICE_REASON.get(name, want)
        if dev_want is not None:
            r = reason_of(device_path)
            check(r == dev_want, name + " device path refuses: " + dev_want, "got %r" % r)
check(n_good == 12 and n_fail == 19, "all vectors seen", "%d good, %d fail" % (n_good, n_fail))
done()
