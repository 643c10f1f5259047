"""Golden vectors (protocol/vectors/*.json): our encoder, MAC_structure and verifier agree with every one,
and the checked-in files are exactly what protocol/make_vectors.py generates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from countersign.protocol import cose, make_vectors, messages
from countersign.protocol.errors import ProtocolError

VECTORS = Path(__file__).resolve().parent.parent / "protocol" / "vectors"
FILES = sorted(VECTORS.glob("*.json"))
REQUIRED = {"title", "fail", "direction", "key_hex", "kid_hex", "payload_hex", "to_mac_hex", "output_hex"}


def _load(p: Path) -> dict[str, Any]:
    vec: dict[str, Any] = json.loads(p.read_text(encoding="utf-8"))
    return vec


def _ids(files: list[Path]) -> list[str]:
    return [p.stem for p in files]


GOOD = [p for p in FILES if not _load(p)["fail"]]
BAD = [p for p in FILES if _load(p)["fail"]]


def test_vector_set_is_complete() -> None:
    names = {p.stem for p in FILES}
    assert len(GOOD) >= 12 and len(BAD) >= 16
    for must in ("good-01-rating", "good-02-rating-5-key", "good-03-rating-time-unknown",
                 "good-04-rating-invite-key", "good-05-no-rating", "good-06-hello", "good-07-heartbeat",
                 "good-08-ack", "good-09-prompt", "good-10-time-sync", "good-11-session-signed-in",
                 "good-12-session-closed", "fail-01-flipped-tag-bit", "fail-02-alg-4-hmac-256-64",
                 "fail-03-alg-unprotected", "fail-04-wrong-kid", "fail-06-truncated",
                 "fail-07-trailing-bytes",
                 "fail-08-indefinite-array", "fail-09-duplicate-key-protected",
                 "fail-10-duplicate-key-payload", "fail-11-unknown-device",
                 "fail-12-non-deterministic-payload", "fail-14-oversized", "fail-15-tag-18",
                 "fail-16-untagged"):
        assert must in names


def test_checked_in_files_equal_generator_output() -> None:
    built = make_vectors.build()
    assert {p.stem for p in FILES} == set(built)
    for p in FILES:
        assert p.read_text(encoding="utf-8") == make_vectors.render(built[p.stem]), p.name


def test_generator_is_deterministic(tmp_path: Path) -> None:
    lines: list[str] = []
    assert make_vectors.main(["--dir", str(tmp_path)], out=lines.append) == 0
    assert make_vectors.main(["--dir", str(VECTORS), "--check"], out=lines.append) == 0
    for p in FILES:
        assert (tmp_path / p.name).read_bytes() == p.read_bytes()


@pytest.mark.parametrize("path", FILES, ids=_ids(FILES))
def test_vector_shape(path: Path) -> None:
    vec = _load(path)
    assert set(vec) >= REQUIRED
    assert vec["direction"] in ("up", "down")
    # Flat: the firmware's JSON reader only needs strings, booleans and (for good cases) one nested object.
    for k, v in vec.items():
        assert isinstance(v, str | bool) or k == "message", k
    for k in vec:
        if k.endswith("_hex"):
            bytes.fromhex(vec[k])
    if vec["fail"]:
        assert isinstance(vec["reason"], str) and isinstance(vec["pycose_accepts"], bool)
    else:
        assert isinstance(vec["message"], dict) and "reason" not in vec


@pytest.mark.parametrize("path", GOOD, ids=_ids(GOOD))
def test_good_vector(path: Path) -> None:
    vec = _load(path)
    key, kid = bytes.fromhex(vec["key_hex"]), bytes.fromhex(vec["kid_hex"])
    payload = bytes.fromhex(vec["payload_hex"])
    protected = cose.protected_header(cose.ALG_HMAC_256_256, kid)
    assert protected.hex() == vec["protected_hex"]
    assert cose.mac_structure(protected, payload).hex() == vec["to_mac_hex"]
    assert cose.mac0_tag(key, protected, payload).hex() == vec["tag_hex"]
    assert cose.mac0_encode(key, kid, payload).hex() == vec["output_hex"]
    msg = make_vectors.verify(vec)
    assert msg.encode() == payload
    decoded = json.loads(json.dumps(msg.as_json()))
    assert decoded == vec["message"]
    assert msg.TYPE.name.lower() == vec["message"]["type"]
    allowed = messages.DEVICE_UP if vec["direction"] == "up" else messages.DEVICE_DOWN
    assert msg.TYPE in allowed
    if msg.TYPE == messages.T.RATING:
        assert len(bytes.fromhex(vec["output_hex"])) < 100   # DESIGN-BRIEF: a signed rating under 100 bytes


@pytest.mark.parametrize("path", BAD, ids=_ids(BAD))
def test_must_fail_vector(path: Path) -> None:
    vec = _load(path)
    with pytest.raises(ProtocolError) as info:
        make_vectors.verify(vec)
    assert info.value.reason == vec["reason"], str(info.value)
    # to_mac_hex is the MAC_structure of the protected header and payload the vector was built from.
    protected, payload = bytes.fromhex(vec["protected_hex"]), bytes.fromhex(vec["payload_hex"])
    assert cose.mac_structure(protected, payload).hex() == vec["to_mac_hex"]


def test_flipped_tag_differs_from_good_only_in_the_tag() -> None:
    good = bytes.fromhex(_load(VECTORS / "good-01-rating.json")["output_hex"])
    bad = bytes.fromhex(_load(VECTORS / "fail-01-flipped-tag-bit.json")["output_hex"])
    assert len(good) == len(bad) and good[:-1] == bad[:-1] and good[-1] ^ bad[-1] == 1
