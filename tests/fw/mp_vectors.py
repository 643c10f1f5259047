# Every golden vector (protocol/vectors/*.json, PROTOCOL.md section 16) against the firmware codec:
# good cases are rebuilt byte for byte by the firmware's encoders and accepted by its verifier; must-fail
# cases are refused with the vector's reason.
import mpyboot
from mpyboot import check, done, h, reason_of
import json
import os
from binascii import unhexlify

from cs import cbor, cose, msgs
import upmsgs as M

# vector field names -> field numbers (PROTOCOL.md section 6)
NAMES = {"epoch": M.K_EPOCH, "seq": M.K_SEQ, "score": M.K_SCORE, "scale": M.K_SCALE,
         "prompt": M.K_PROMPT, "time": M.K_TIME, "mono": M.K_MONO, "delay": M.K_DELAY,
         "boot": M.K_BOOT, "seqs": M.K_SEQS, "now_ms": M.K_NOW_MS, "nonce": M.K_NONCE,
         "fw": M.K_FW, "reset": M.K_RESET, "heap": M.K_HEAP, "outbox": M.K_OUTBOX,
         "uptime": M.K_UPTIME, "rssi": M.K_RSSI, "ignored": M.K_IGNORED, "clerk": M.K_CLERK,
         "service": M.K_SERVICE, "txn": M.K_TXN, "timeout": M.K_TIMEOUT,
         "clerk_name": M.K_CLERK_NAME, "stuck": M.K_STUCK, "outbox_free": M.K_OUTBOX_FREE,
         "bad_down": 27}   # optional health field (cs/msgs.py _K_BAD_DOWN)
TYPES = {"rating": M.T_RATING, "no_rating": M.T_NO_RATING, "hello": M.T_HELLO,
         "heartbeat": M.T_HEARTBEAT, "ack": M.T_ACK, "prompt": M.T_PROMPT,
         "time": M.T_TIME,
         "session": M.T_SESSION}
UP = (M.T_RATING, M.T_NO_RATING, M.T_HELLO, M.T_HEARTBEAT)

# Must-fail vectors whose reason differs on the device's own receive path (cose.open + decode_down):
# an up-type payload is not a downlink at all, so the keypad says bad-type where the gateway (which
# decodes up types, as decode_up does here) says bad-field. fail-19 (a down type sent up) is a valid
# downlink for a keypad: it does not apply to a device and is checked with decode_up only.
DEVICE_REASON = {"fail-17-score-outside-scale.json": "bad-type",
                 "fail-18-unknown-field.json": "bad-type",
                 "fail-19-downlink-type-sent-up.json": None}


def encode_fields(buf, typ, fields):
    """A payload map from the vector's named fields with the firmware's CBOR primitives (ascending
    keys; absent optional fields left out, as the CPython encoder does)."""
    items = [(M.K_TYPE, typ)]
    for name in fields:
        if name != "type" and not (typ == M.T_SESSION and fields[name] is None):
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
    if typ == M.T_RATING:
        return msgs.rating(buf, m["epoch"], m["seq"], m["score"], m["scale"], m["prompt"], m["time"],
                           m["mono"], m["delay"], m["boot"])
    if typ == M.T_NO_RATING:
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
        if k != M.K_TYPE and k not in [NAMES[n] for n in m if n != "type"]:
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
        t, fields = (M.decode_up if typ in UP else msgs.decode_down)(got)
        check(t == typ, name + " decoded type", str(t))
        diff = same_fields(fields, m)
        check(diff is None, name + " decoded fields", diff)
        # the other direction's decoder refuses it
        other = msgs.decode_down if typ in UP else M.decode_up
        check(reason_of(lambda: other(got)) == "bad-type", name + " refused by the other direction")
    else:
        n_fail += 1
        want = v["reason"]
        check(v["direction"] == "up", name + " is an up case")

        def gateway_path():
            M.decode_up(cose.open(key, kid, output))

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
