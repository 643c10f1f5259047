"""Property tests and the short seeded fuzz pass of the codecs (`make fuzz` is the long one).

- encode/decode round trips: any value of the profile's types, and every device message type;
- every single-byte change of a valid message is rejected, or decodes to a different message whose
  MAC fails (so never to an accepted message other than the original);
- tools/fuzz.py, seeded: mutated messages judged by the CPython decoder and by the firmware's on
  MicroPython (5000 per interpreter process), no crash, no disagreement, no slow decode.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from countersign.protocol import cbor, cose, limits, messages
from countersign.protocol.errors import ProtocolError, VerifyError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import fuzz

LOOSE = {"max_size": 1 << 20, "max_depth": 16, "max_items": 1 << 16}
SETTINGS = settings(max_examples=300, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

keys = st.one_of(st.integers(-(2**64), 2**64 - 1), st.text(max_size=8))
leaves = st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64 - 1), st.binary(max_size=40),
                   st.text(max_size=20))
values = st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                      st.dictionaries(keys, inner, max_size=5)),
                      max_leaves=20)


@SETTINGS
@given(values)
def test_cbor_round_trip(v: Any) -> None:
    data = cbor.dumps(v)
    assert cbor.dumps(cbor.loads(data, **LOOSE)) == data


@SETTINGS
@given(st.binary(max_size=64))
def test_accepted_bytes_are_the_one_encoding(data: bytes) -> None:
    try:
        v = cbor.loads(data, **LOOSE)
    except ProtocolError:
        return
    assert cbor.dumps(v) == data


u32 = st.integers(0, 2**32 - 1)
time_ = st.one_of(st.none(), st.integers(1, 2**32 - 1))
text64 = st.text(max_size=20).filter(lambda s: len(s.encode()) <= limits.MAX_TEXT)
ratings = st.builds(lambda scale, score, **kw: messages.Rating(score=min(score, scale), scale=scale, **kw),
                    scale=st.sampled_from([4, 5]), score=st.integers(1, 5), epoch=st.integers(0, 65535),
                    seq=st.integers(1, 2**32 - 1), prompt=u32, time=time_, mono=u32, delay=u32, boot=u32)
prompts = st.builds(messages.Prompt, prompt=u32, clerk=text64, service=st.integers(0, 65535), txn=text64,
                    timeout=st.integers(0, 65535), time=time_)
acks = st.builds(messages.Ack, epoch=st.integers(0, 65535),
                 seqs=st.lists(st.integers(1, 2**32 - 1), min_size=1, max_size=32).map(tuple))
sessions = st.builds(messages.Session, clerk=st.one_of(st.none(), text64),
                     clerk_name=st.one_of(st.none(), text64))
device_messages = st.one_of(ratings, prompts, acks, sessions)
KEY, KID = fuzz.KEY, fuzz.KID


def _verify(data: bytes) -> messages.Message:
    v = cose.mac0_verify(data, lambda k: KEY if k == KID else None, expected_kid=KID)
    return messages.decode_payload(v.payload)


@SETTINGS
@given(device_messages)
def test_message_round_trip(msg: messages.Message) -> None:
    wire = cose.mac0_encode(KEY, KID, msg.encode())
    assert _verify(wire) == msg


@settings(max_examples=40, deadline=None, derandomize=True)
@given(device_messages)
def test_every_single_byte_change_is_rejected_or_fails_its_mac(msg: messages.Message) -> None:
    wire = cose.mac0_encode(KEY, KID, msg.encode())
    for i in range(len(wire)):
        for new in {wire[i] ^ 1, wire[i] ^ 0x80, (wire[i] + 1) % 256, 0x00, 0xFF, 0xF5}:
            if new == wire[i]:
                continue
            bad = wire[:i] + bytes([new]) + wire[i + 1:]
            try:
                _verify(bad)
            except VerifyError as exc:
                # decoded to a (different) message whose MAC fails, or a kid that is not ours
                assert exc.reason in ("bad-mac", "kid-mismatch", "unknown-device"), exc.reason
                continue
            except ProtocolError:
                continue
            pytest.fail(f"byte {i} -> {new:02x} was accepted: {bad.hex()}")


def test_short_seeded_fuzz_pass_cpython_and_firmware() -> None:
    lines: list[str] = []
    rep = fuzz.run(20_000, seed=17, batch=5000, save=False, out=lines.append)
    assert rep.total == 20_000
    assert not rep.findings, rep.findings[:5]
    # the corpus reaches past the MAC into the payload decoders, and accepts some
    assert rep.reasons.get("ok", 0) > 100 and rep.reasons.get("bad-field", 0) > 50, rep.reasons
