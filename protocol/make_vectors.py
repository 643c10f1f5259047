"""Generate the golden test vectors in protocol/vectors/ (one flat JSON file per case).

Run ``python -m countersign.protocol.make_vectors`` (add ``--check`` to compare instead of writing).
Everything is fixed (keys, ids, field values), so re-running gives byte-identical files; a test checks
the checked-in files equal what this script generates.

Vector fields (PROTOCOL.md, "Test vectors"):

- ``title``, ``fail`` (bool), ``direction`` ("up": device -> gateway, "down": gateway -> device);
- ``key_hex``: the 32-byte key the receiver has registered for the device ``kid_hex``;
- ``kid_hex``: the device id the receiver expects (the MQTT topic segment), as bytes;
- ``key_registered``: false if the receiver has no usable key for ``kid_hex`` (unknown or revoked);
- ``payload_hex``: the CBOR payload; ``protected_hex``: the protected header bytes;
- ``to_mac_hex``: the MAC_structure the tag was computed over; ``tag_hex``: the tag;
- ``output_hex``: the complete message on the wire (tagged COSE_Mac0 for good cases);
- good cases: ``message`` (the decoded payload with field names);
- fail cases: ``reason`` (the verifier's exact ``reason``) and ``pycose_accepts`` (whether the independent
  pycose 1.1.0 cross-check accepts the envelope: true where our profile is stricter than plain COSE);
- optional: ``sender_key_hex`` (the tag was made with this key, not ``key_hex``), ``message_kid_hex`` (the
  kid inside the message, when it is not ``kid_hex``).

How a receiver checks a vector: ``mac0_verify(output, key_for, expected_kid=kid)`` with ``key_for``
returning ``key`` for ``kid`` (None if not ``key_registered``), then ``decode_payload(payload, DEVICE_UP or
DEVICE_DOWN)``; a fail case must raise with ``reason``.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import batch, cbor, cose, messages
from .errors import ProtocolError
from .kcv import key_check_value
from .messages import Ack, Heartbeat, Hello, Message, NoRating, Prompt, Rating, Session, TimeSync

VECTORS_DIR = Path(__file__).resolve().parent / "vectors"
# Must-fail regressions found by inputs nobody on the project wrote (public vectors, fuzzing),
# kept apart from the 31 golden cases whose count the firmware's vector script pins.
REGRESS = "regress"
# Batch entries of the gateway's reports (kinds 3..6), one entry map per case: another shape of vector.
BATCH = "batch"

# Fixed test identities (never used outside tests and vectors).
KID_1 = b"hf01-w01"
KEY_1 = bytes(range(0x00, 0x20))          # 000102...1f
KID_2 = b"hf01-w02"
KEY_2 = bytes(range(0x20, 0x40))          # 202122...3f
KID_REVOKED = b"hf01-w09"
KEY_REVOKED = bytes(range(0x40, 0x60))

T0 = 1735700000                            # 2025-01-01 02:53:20 UTC, press time of the examples


def verify(vec: dict[str, Any]) -> Message:
    """Check a vector the way a receiver does; returns the decoded message or raises ProtocolError."""
    key = bytes.fromhex(vec["key_hex"])
    kid = bytes.fromhex(vec["kid_hex"])
    registered = vec.get("key_registered", True)

    def key_for(k: bytes) -> bytes | None:
        return key if registered and k == kid else None

    v = cose.mac0_verify(bytes.fromhex(vec["output_hex"]), key_for, expected_kid=kid)
    allowed = messages.DEVICE_UP if vec["direction"] == "up" else messages.DEVICE_DOWN
    return messages.decode_payload(v.payload, allowed)


def _json_message(msg: Message) -> dict[str, Any]:
    d = msg.as_json()
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _good(title: str, msg: Message, direction: str, key: bytes = KEY_1, kid: bytes = KID_1) -> dict[str, Any]:
    payload = msg.encode()
    protected = cose.protected_header(cose.ALG_HMAC_256_256, kid)
    to_mac = cose.mac_structure(protected, payload)
    tag = hmac.new(key, to_mac, hashlib.sha256).digest()
    output = cose.mac0_encode(key, kid, payload)
    return {"title": title, "fail": False, "direction": direction, "key_hex": key.hex(), "kid_hex": kid.hex(),
            "key_registered": True, "payload_hex": payload.hex(), "protected_hex": protected.hex(),
            "to_mac_hex": to_mac.hex(), "tag_hex": tag.hex(), "output_hex": output.hex(),
            "message": _json_message(msg)}


def _mac0(protected: bytes, unprotected: dict[int, Any], payload: bytes, tag: bytes,
          tag_number: int = 17) -> bytes:
    return cbor.dumps(cbor.Tag(tag_number, [protected, unprotected, payload, tag]))


def _fail(title: str, reason: str, pycose_accepts: bool, *, payload: bytes, protected: bytes, output: bytes,
          direction: str = "up", key: bytes = KEY_1, kid: bytes = KID_1, key_registered: bool = True,
          sender_key: bytes | None = None, message_kid: bytes | None = None) -> dict[str, Any]:
    to_mac = cose.mac_structure(protected, payload)
    tag = hmac.new(sender_key or key, to_mac, hashlib.sha256).digest()
    vec: dict[str, Any] = {
        "title": title, "fail": True, "direction": direction, "key_hex": key.hex(), "kid_hex": kid.hex(),
        "key_registered": key_registered, "payload_hex": payload.hex(), "protected_hex": protected.hex(),
        "to_mac_hex": to_mac.hex(), "tag_hex": tag.hex(), "output_hex": output.hex(), "reason": reason,
        "pycose_accepts": pycose_accepts}
    if sender_key is not None:
        vec["sender_key_hex"] = sender_key.hex()
    if message_kid is not None:
        vec["message_kid_hex"] = message_kid.hex()
    return vec


RATING = Rating(epoch=1, seq=42, score=4, scale=4, prompt=1001, time=T0, mono=5_234_567, delay=3_500, boot=7)


def _good_cases() -> dict[str, dict[str, Any]]:
    health: dict[str, Any] = {"epoch": 1, "boot": 7, "fw": "cs-fw 1.0.0", "reset": 1, "heap": 41_216,
                              "outbox": 2, "outbox_free": 8_998, "rssi": -61, "ignored": 3, "stuck": 0}
    return {
        "good-01-rating": _good("rating, 4-key scale, 非常满意 (4)", RATING, "up"),
        "good-02-rating-5-key": _good(
            "rating, 5-key scale, 非常不满意 (1)",
            Rating(epoch=1, seq=43, score=1, scale=5, prompt=1002, time=T0 + 60, mono=5_294_000,
                   delay=12_250, boot=7), "up"),
        "good-03-rating-time-unknown": _good(
            "rating made before the first time sync: time null (clock unknown)",
            Rating(epoch=1, seq=1, score=3, scale=4, prompt=1003, time=None, mono=8_125, delay=2_000, boot=8),
            "up"),
        "good-04-rating-invite-key": _good(
            "rating after the keypad's invite key (prompt 0), 基本满意 (2)",
            Rating(epoch=1, seq=44, score=2, scale=4, prompt=0, time=T0 + 120, mono=5_354_000, delay=4_000,
                   boot=7), "up"),
        "good-05-no-rating": _good(
            "no rating (未评价): prompt 1004 expired after 20 s",
            NoRating(epoch=1, seq=45, prompt=1004, time=T0 + 200, mono=5_434_000, delay=20_000, boot=7),
            "up"),
        "good-06-hello": _good(
            "hello after boot (clock unknown)",
            Hello(nonce=0x1234ABCD, uptime=3, time=None, **health), "up"),
        "good-07-heartbeat": _good(
            "heartbeat",
            Heartbeat(nonce=0x0BADF00D, uptime=3_600, time=T0 + 3_600, **{**health, "rssi": None}), "up"),
        "good-08-ack": _good("ack of seqs 42, 43, 44 of epoch 1", Ack(epoch=1, seqs=(42, 43, 44)), "down"),
        "good-09-prompt": _good(
            "prompt 1001: clerk 10023, service 2 (电费缴纳), txn, 20 s",
            Prompt(prompt=1001, clerk="10023", service=2, txn="T-20250101-0001", timeout=20, time=T0 - 4),
            "down"),
        "good-10-time-sync": _good(
            "time sync echoing the hello nonce",
            TimeSync(now_ms=T0 * 1000 + 250, nonce=0x1234ABCD), "down"),
        "good-11-session-signed-in": _good(
            "session: clerk 10023 张三 signed in", Session(clerk="10023", clerk_name="张三"), "down"),
        "good-12-session-closed": _good("session: window closed (no clerk)", Session(), "down"),
    }


def _fail_cases() -> dict[str, dict[str, Any]]:
    payload = RATING.encode()
    prot = cose.protected_header(cose.ALG_HMAC_256_256, KID_1)
    good = cose.mac0_encode(KEY_1, KID_1, payload)
    tag = hmac.new(KEY_1, cose.mac_structure(prot, payload), hashlib.sha256).digest()
    arr_items = cbor.dumps(prot) + b"\xa0" + cbor.dumps(payload) + cbor.dumps(tag)
    out: dict[str, dict[str, Any]] = {}

    def add(name: str, vec: dict[str, Any]) -> None:
        out[name] = vec

    flipped = bytearray(good)
    flipped[-1] ^= 0x01
    add("fail-01-flipped-tag-bit", _fail("last bit of the tag flipped", "bad-mac", False, payload=payload,
                                         protected=prot, output=bytes(flipped)))

    p4 = cose.protected_header(4, KID_1)
    t4 = hmac.new(KEY_1, cose.mac_structure(p4, payload), hashlib.sha256).digest()[:8]
    add("fail-02-alg-4-hmac-256-64", _fail("alg 4 (HMAC 256/64, 8-byte tag): downgrade", "wrong-alg", True,
                                           payload=payload, protected=p4, output=_mac0(p4, {}, payload, t4)))

    pk = cbor.dumps({4: KID_1})
    tk = hmac.new(KEY_1, cose.mac_structure(pk, payload), hashlib.sha256).digest()
    add("fail-03-alg-unprotected", _fail("alg in the unprotected header, protected holds only the kid",
                                         "unprotected-header", True, payload=payload, protected=pk,
                                         output=_mac0(pk, {1: 5}, payload, tk)))

    p2 = cose.protected_header(cose.ALG_HMAC_256_256, KID_2)
    add("fail-04-wrong-kid", _fail("kid hf01-w02 in a message on hf01-w01's topic (MAC by hf01-w01's key)",
                                   "kid-mismatch", True, payload=payload, protected=p2,
                                   output=cose.mac0_encode(KEY_1, KID_2, payload), message_kid=KID_2))

    add("fail-05-wrong-key", _fail("kid hf01-w01 but MAC made with another device's key", "bad-mac", False,
                                   payload=payload, protected=prot,
                                   output=cose.mac0_encode(KEY_2, KID_1, payload), sender_key=KEY_2))

    add("fail-06-truncated", _fail("last 5 bytes missing", "truncated", False, payload=payload,
                                   protected=prot, output=good[:-5]))
    add("fail-07-trailing-bytes", _fail("one byte after the message", "trailing-bytes", True,
                                        payload=payload, protected=prot, output=good + b"\x00"))
    add("fail-08-indefinite-array", _fail("COSE array of indefinite length (9f ... ff)", "indefinite-length",
                                          True, payload=payload, protected=prot,
                                          output=b"\xd1\x9f" + arr_items + b"\xff"))

    pdup = bytes.fromhex("a2010401 05".replace(" ", ""))   # {1: 4, 1: 5}: first-wins reads 4, last-wins 5
    tdup = hmac.new(KEY_1, cose.mac_structure(pdup, payload), hashlib.sha256).digest()
    add("fail-09-duplicate-key-protected", _fail("protected header {1: 4, 1: 5}: alg label twice",
                                                 "duplicate-key", True, payload=payload, protected=pdup,
                                                 output=_mac0(pdup, {}, payload, tdup)))

    # Rating map with key 3 (score) twice: 4 (非常满意) then 1 (不满意). Count 10 pairs, keys in order.
    m = RATING.to_map()
    body = b"".join(cbor.dumps(k) + cbor.dumps(m[k]) for k in sorted(m) if k != 3)
    pos = body.index(cbor.dumps(4) + cbor.dumps(4))    # the scale entry follows the score entry
    pl_dup = bytes([0xA0 + len(m) + 1]) + body[:pos] + b"\x03\x04\x03\x01" + body[pos:]
    add("fail-10-duplicate-key-payload", _fail("payload map with key 3 (score) twice: 4 then 1",
                                               "duplicate-key", True, payload=pl_dup, protected=prot,
                                               output=cose.mac0_encode(KEY_1, KID_1, pl_dup)))

    pr = cose.protected_header(cose.ALG_HMAC_256_256, KID_REVOKED)
    add("fail-11-unknown-device", _fail("kid of a revoked (or never registered) device", "unknown-device",
                                        True, payload=payload, protected=pr, key=KEY_REVOKED, kid=KID_REVOKED,
                                        key_registered=False,
                                        output=cose.mac0_encode(KEY_REVOKED, KID_REVOKED, payload)))

    pl_unsorted = bytes([0xA0 + len(m)]) + b"".join(cbor.dumps(k) + cbor.dumps(m[k])
                                                     for k in sorted(m, reverse=True))
    add("fail-12-non-deterministic-payload", _fail("payload map keys in descending order",
                                                   "non-deterministic", True, payload=pl_unsorted,
                                                   protected=prot,
                                                   output=cose.mac0_encode(KEY_1, KID_1, pl_unsorted)))

    long_pl = b"\x59" + len(payload).to_bytes(2, "big") + payload   # 2-byte length where 1 byte would do
    add("fail-13-non-shortest-length", _fail("payload byte string with a non-shortest length head",
                                             "non-deterministic", True, payload=payload, protected=prot,
                                             output=b"\xd1\x84" + cbor.dumps(prot) + b"\xa0" + long_pl
                                             + cbor.dumps(tag)))

    big = Hello(epoch=1, boot=7, nonce=1, fw="x" * 230, reset=1, heap=0, outbox=0, outbox_free=0, uptime=0,
                rssi=None, ignored=0, stuck=0, time=None).encode()
    add("fail-14-oversized", _fail("hello of 300+ bytes (limit 256)", "oversized", True, payload=big,
                                   protected=prot, output=cose.mac0_encode(KEY_1, KID_1, big)))
    add("fail-15-tag-18", _fail("tag 18 (COSE_Sign1) instead of 17", "unexpected-tag", False, payload=payload,
                                protected=prot, output=_mac0(prot, {}, payload, tag, 18)))
    add("fail-16-untagged", _fail("COSE_Mac0 array without its tag 17", "bad-cose-structure", False,
                                  payload=payload, protected=prot, output=good[1:]))

    bad_score = Rating(**{**vars(RATING), "score": 4, "scale": 4}).to_map()
    bad_score[3] = 5
    pl_bs = cbor.dumps(bad_score)
    add("fail-17-score-outside-scale", _fail("score 5 on the 4-key scale", "bad-field", True, payload=pl_bs,
                                             protected=prot, output=cose.mac0_encode(KEY_1, KID_1, pl_bs)))
    unknown = {**m, 27: 1}
    pl_uk = cbor.dumps(unknown)
    add("fail-18-unknown-field", _fail("rating with an unknown field 27 (a field of a future version)",
                                       "bad-field", True, payload=pl_uk, protected=prot,
                                       output=cose.mac0_encode(KEY_1, KID_1, pl_uk)))
    pl_ack = Ack(epoch=1, seqs=(1,)).encode()
    add("fail-19-downlink-type-sent-up", _fail("an ack (downlink type) published on the uplink", "bad-type",
                                               True, payload=pl_ack, protected=prot,
                                               output=cose.mac0_encode(KEY_1, KID_1, pl_ack)))
    return out


def _regress_cases() -> dict[str, dict[str, Any]]:
    """The hardening reproducers and siblings, each MACed with the right key so only the defect fails."""
    payload = RATING.encode()
    out: dict[str, dict[str, Any]] = {}

    def mac0(protected: bytes, pl: bytes) -> bytes:
        return _mac0(protected, {}, pl, cose.mac0_tag(KEY_1, protected, pl))

    # {4: kid, true: 5}: read as a dict it is {4: kid, 1: 5} (True == 1): the exact reproducer.
    p_true = bytes.fromhex("a204") + cbor.dumps(KID_1) + bytes.fromhex("f505")
    out["fail-r01-true-as-alg-key"] = _fail(
        "protected header {4: kid, true: 5}: true is not the label 1", "unexpected-type", True,
        payload=payload, protected=p_true, output=mac0(p_true, payload))
    m = RATING.to_map()
    body = b"".join(cbor.dumps(k) + cbor.dumps(m[k]) for k in sorted(m) if k != 1)
    pl_true = bytes([0xA0 + len(m)]) + body + b"\xf5" + cbor.dumps(m[1])   # f5 sorts after 00..09
    prot = cose.protected_header(cose.ALG_HMAC_256_256, KID_1)
    out["fail-r02-true-as-epoch-key"] = _fail(
        "rating with its epoch under key true instead of 1", "unexpected-type", True,
        payload=pl_true, protected=prot, output=mac0(prot, pl_true))
    body = b"".join(cbor.dumps(k) + cbor.dumps(m[k]) for k in sorted(m) if k != 0)
    pl_false = bytes([0xA0 + len(m)]) + body + b"\xf4" + cbor.dumps(m[0])
    out["fail-r03-false-as-type-key"] = _fail(
        "rating with its type under key false instead of 0", "unexpected-type", True,
        payload=pl_false, protected=prot, output=mac0(prot, pl_false))

    # Prompts whose clerk is not UTF-8: MicroPython's str() would let each through.
    prompt = Prompt(prompt=1001, clerk="10023", service=2, txn="T-20250101-0001", timeout=20, time=T0 - 4)
    for name, title, raw in (
            ("fail-r04-overlong-utf8", "prompt whose clerk is 31 30 c0 80 33 (an overlong NUL)",
             b"10\xc0\x803"),
            ("fail-r05-surrogate-utf8", "prompt whose clerk holds a UTF-16 surrogate (ed a0 80)",
             b"10\xed\xa0\x803"),
            ("fail-r06-above-10ffff-utf8", "prompt whose clerk holds a code point above U+10FFFF",
             b"10\xf4\x90\x80\x80")):
        pm = prompt.to_map()
        enc = cbor.dumps(pm)
        good_clerk = cbor.dumps("10023")
        pl = enc.replace(good_clerk, bytes([0x60 + len(raw)]) + raw)
        out[name] = _fail(title, "malformed-cbor", True, payload=pl, protected=prot, output=mac0(prot, pl),
                          direction="down")

    # Tag 17/18 over a map: no protected header to read the kid from (peek_kid raised KeyError).
    for name, title, raw, reason in (
            ("fail-r07-tag-18-over-a-map", "d2 a0: tag 18 over an empty map", b"\xd2\xa0", "unexpected-tag"),
            ("fail-r08-tag-17-over-a-map", "d1 a1 01 40: tag 17 over a map without key 0",
             b"\xd1\xa1\x01\x40", "bad-cose-structure")):
        out[name] = _fail(title, reason, False, payload=payload, protected=prot, output=raw)
        out[name]["kid_reason"] = "bad-cose-structure"

    # Keys in bytewise order (RFC 8949 4.2.1) where it differs from the profile's length-first order.
    pl_bw = (bytes([0xA0 + len(m) + 2]) + b"".join(cbor.dumps(k) + cbor.dumps(m[k]) for k in sorted(m))
             + cbor.dumps(24) + b"\x00" + cbor.dumps(-1) + b"\x00")
    out["fail-r09-bytewise-key-order"] = _fail(
        "rating plus keys 24 and -1 in bytewise order (18 18 before 20): not length-first",
        "non-deterministic", True, payload=pl_bw, protected=prot, output=mac0(prot, pl_bw))
    return out


def _entry_json(e: batch.Entry) -> dict[str, Any]:
    return {"kind": type(e).__name__, **vars(e)}


def _batch_cases() -> dict[str, dict[str, Any]]:
    """Good and must-fail report entries. Fields: ``title``, ``fail``, ``entry_hex`` (the entry's CBOR
    map as it stands in a batch's entries), good: ``entry`` (decoded, field names as in PROTOCOL.md 9.4),
    fail: ``reason``. Check: ``batch.decode_entry(entry_hex)``."""
    at = T0 * 1000 + 60_000
    good: dict[str, tuple[str, batch.ReportEntry]] = {
        "good-b01-keypad-status": ("keypad status, online, key 2 stuck", batch.KeypadStatusEntry(
            "hf01-w01", at, T0 * 1000, True, "1.25.0", 1, 41_000, 3, -61, 0b10)),
        "good-b02-keypad-status-never-reported": ("keypad status, offline, no health report heard yet",
                                                  batch.KeypadStatusEntry("hf01-w02", at, T0 * 1000, False)),
        "good-b03-gateway-status": ("gateway status with a backlog", batch.GatewayStatusEntry(
            at, 12, T0 * 1000 - 3_600_000)),
        "good-b04-gateway-status-empty": ("gateway status, nothing unacked",
                                          batch.GatewayStatusEntry(at, 0, None)),
        "good-b05-day-count": ("day count: 9 ratings and 1 no-rating, seqs 31..40", batch.DayCountEntry(
            "hf01-w01", 1, "2025-01-01", 9, 1, 31, 40, at)),
        "good-b06-enroll": ("enrollment notice with the key check value of key 000102..1f", batch.EnrollEntry(
            "hf01-w01", "1", 1, 4, key_check_value(KEY_1), at)),
    }
    out: dict[str, dict[str, Any]] = {}
    for name, (title, e) in good.items():
        out[name] = {"title": title, "fail": False, "entry_hex": cbor.dumps(e.to_map()).hex(),
                     "entry": _entry_json(e)}
    status = good["good-b01-keypad-status"][1].to_map()
    day = good["good-b05-day-count"][1].to_map()
    enroll = good["good-b06-enroll"][1].to_map()
    fails: dict[str, tuple[str, dict[int, Any], str]] = {
        "fail-b01-unknown-field": ("keypad status with an unknown field 29", {**status, 29: "x"},
                                   "bad-field"),
        "fail-b02-online-as-integer": ("online given as 1, not true", {**status, 13: 1}, "bad-field"),
        "fail-b03-missing-field": ("keypad status without seen_ms",
                                   {k: v for k, v in status.items() if k != 12}, "missing-field"),
        "fail-b04-day-not-a-date": ("day count for 2025-02-30", {**day, 23: "2025-02-30"}, "bad-field"),
        "fail-b05-more-outcomes-than-seqs": ("day count of 11 outcomes over 10 seqs", {**day, 24: 10},
                                             "bad-field"),
        "fail-b06-kcv-uppercase": ("kcv in uppercase hex", {**enroll, 29: str(enroll[29]).upper()},
                                   "bad-field"),
        "fail-b07-enroll-with-key": ("enrollment notice carrying a key field", {**enroll, 30: KEY_1},
                                     "bad-field"),
        "fail-b08-unknown-kind": ("entry kind 7", {0: 7, 11: at}, "bad-batch"),
    }
    for name, (title, m, reason) in fails.items():
        out[name] = {"title": title, "fail": True, "entry_hex": cbor.dumps(m).hex(), "reason": reason}
    for name, vec in out.items():
        try:
            got = batch.decode_entry(bytes.fromhex(vec["entry_hex"]))
        except ProtocolError as exc:
            if not vec["fail"] or exc.reason != vec["reason"]:
                raise RuntimeError(f"{name}: decoder says {exc.reason}: {exc}") from exc
            continue
        if vec["fail"] or _entry_json(got) != vec["entry"]:
            raise RuntimeError(f"{name}: decoded to {got!r}")
    return out


def build_batch() -> dict[str, dict[str, Any]]:
    """The vectors of vectors/batch/ by file stem (report entries, checked by the batch decoder)."""
    return _batch_cases()


def build_regress() -> dict[str, dict[str, Any]]:
    """The vectors of vectors/regress/ by file stem, checked like ``build``'s."""
    return _checked(_regress_cases())


def build() -> dict[str, dict[str, Any]]:
    """All vectors by file stem. Raises RuntimeError if our own verifier disagrees with a vector."""
    return _checked({**_good_cases(), **_fail_cases()})


def _checked(vecs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    for name, vec in vecs.items():
        try:
            verify(vec)
        except ProtocolError as exc:
            if not vec["fail"] or exc.reason != vec["reason"]:
                raise RuntimeError(f"{name}: verifier says {exc.reason}: {exc}") from exc
            continue
        if vec["fail"]:
            raise RuntimeError(f"{name}: expected {vec['reason']} but the verifier accepted it")
    return vecs


def render(vec: dict[str, Any]) -> str:
    return json.dumps(vec, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--dir", type=Path, default=VECTORS_DIR)
    ap.add_argument("--check", action="store_true", help="compare with the files instead of writing")
    args = ap.parse_args(argv)
    rc = _write(args.dir, build(), args.check, out)
    rc = _write(args.dir / REGRESS, build_regress(), args.check, out) or rc
    return _write(args.dir / BATCH, build_batch(), args.check, out) or rc


def _write(directory: Path, vecs: dict[str, dict[str, Any]], check: bool,
           out: Callable[[str], None]) -> int:
    """Write (or with ``check`` compare) one folder of vectors; 1 if ``check`` found a difference."""
    wanted = {f"{name}.json": render(vec) for name, vec in vecs.items()}
    existing = {p.name for p in directory.glob("*.json")}
    if check:
        bad = sorted(n for n, text in wanted.items()
                     if not (directory / n).exists() or (directory / n).read_text(encoding="utf-8") != text)
        bad += sorted(existing - set(wanted))
        for n in bad:
            out(f"differs: {directory.name}/{n}" if directory.name in (REGRESS, BATCH) else f"differs: {n}")
        return 1 if bad else 0
    directory.mkdir(parents=True, exist_ok=True)
    for n, text in wanted.items():
        (directory / n).write_text(text, encoding="utf-8")
    for n in existing - set(wanted):
        (directory / n).unlink()
    out(f"wrote {len(wanted)} vectors to {directory}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
