"""`countersign decode` as a user runs it: the real command from .venv/bin, on vectors and a signed batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from countersign.protocol import batch, cose
from countersign.protocol.context import Context
from countersign.protocol.keystore import DeviceKey, Keystore, public_bytes

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "protocol" / "vectors"
EXE = Path(sys.executable).parent / "countersign"
KEY1 = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"


def vec(name: str) -> dict[str, Any]:
    v: dict[str, Any] = json.loads((VECTORS / f"{name}.json").read_text(encoding="utf-8"))
    return v


def decode(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    if not EXE.exists():
        pytest.skip(f"{EXE} not installed (pip install -e .)")
    p = subprocess.run([str(EXE), "decode", *args], input=stdin, capture_output=True, timeout=60, check=False)
    return subprocess.CompletedProcess(p.args, p.returncode, p.stdout.decode("utf-8"),
                                       p.stderr.decode("utf-8"))


def test_rating_from_hex_argument() -> None:
    v = vec("good-01-rating")
    p = decode(v["output_hex"], "--key", KEY1)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["cose"] == "mac0" and out["kid"] == "hf01-w01" and out["verified"] is True
    assert out["type"] == "rating" and out["direction"] == "up"
    assert out["fields"] == {k: x for k, x in v["message"].items() if k != "type"}
    assert out["score_name"] == "非常满意" and out["satisfied"] is True


@pytest.mark.parametrize("name", sorted(p.stem for p in VECTORS.glob("good-*.json")))
def test_every_good_vector_decodes(name: str, tmp_path: Path) -> None:
    v = vec(name)
    f = tmp_path / "msg.bin"
    f.write_bytes(bytes.fromhex(v["output_hex"]))      # raw bytes in a file
    p = decode("--file", str(f), "--key", v["key_hex"], "--direction", v["direction"])
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["type"] == v["message"]["type"]
    assert out["fields"] == {k: x for k, x in v["message"].items() if k != "type"}


@pytest.mark.parametrize("name", sorted(p.stem for p in VECTORS.glob("fail-*.json")))
def test_every_must_fail_vector_exits_2_with_reason(name: str, tmp_path: Path) -> None:
    v = vec(name)
    ks = Keystore(hall="hf01")
    if v["key_registered"]:
        ks.add_device(bytes.fromhex(v["kid_hex"]).decode(), DeviceKey(bytes.fromhex(v["key_hex"])))
    ks.save(tmp_path / "ks.json")
    f = tmp_path / "msg.hex"
    f.write_text(v["output_hex"] + "\n")                 # hex text in a file
    p = decode("--file", str(f), "--keystore", str(tmp_path / "ks.json"), "--direction", v["direction"])
    if name == "fail-04-wrong-kid":
        # decode has no topic to pin the kid to: it verifies the message under its own kid, which the
        # keystore does not know.
        assert p.returncode == 2 and p.stderr.startswith("rejected: unknown-device: ")
        return
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stderr.startswith(f"rejected: {v['reason']}: "), p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""


def test_stdin_raw_and_hex() -> None:
    v = vec("good-09-prompt")
    raw = bytes.fromhex(v["output_hex"])
    for data in (raw, v["output_hex"].encode() + b"\n"):
        p = decode("-", "--key", KEY1, stdin=data)
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout)
        assert out["type"] == "prompt" and out["fields"]["clerk"] == "10023"


def test_wrong_key_and_no_key() -> None:
    v = vec("good-01-rating")
    p = decode(v["output_hex"], "--key", "11" * 32)
    assert p.returncode == 2 and p.stderr.startswith("rejected: bad-mac: ")
    p = decode(v["output_hex"])
    assert p.returncode == 2 and p.stderr.startswith("rejected: unknown-device: ")


def test_input_errors_exit_1() -> None:
    assert decode("not-hex", "--key", KEY1).returncode == 1
    assert decode(vec("good-01-rating")["output_hex"], "--key", "abcd").returncode == 1
    p = decode("--file", "/nonexistent/x", "--key", KEY1)
    assert p.returncode == 1 and p.stderr.startswith("error: ")


def _signed_batch(tmp_path: Path, forged_entry: bool = False) -> tuple[bytes, Path, Ed25519PrivateKey]:
    gw = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))
    r, p = vec("good-01-rating"), vec("good-05-no-rating")
    entries: list[batch.Entry] = [
        batch.PromptEntry(1001, "hf01-w01", Context("1", "10023", 2, "T-20250101-0001", 1735699996000), 20),
        batch.DeviceEntry(bytes.fromhex(r["output_hex"]), 1735700000250,
                          Context("1", "10023", 2, "T-20250101-0001", 1735699996000)),
        batch.DeviceEntry(bytes.fromhex(p["output_hex"]), 1735700200100, Context("1", None, 0, None, None)),
    ]
    if forged_entry:
        entries.append(batch.DeviceEntry(bytes.fromhex(vec("fail-05-wrong-key")["output_hex"]), 1,
                                         Context("1", None, 0, None, None)))
    b = batch.Batch("hf01", 7, 1735700205000, entries)
    ks = Keystore(hall="hf01", halls={"hf01": public_bytes(gw)})
    ks.add_device("hf01-w01", DeviceKey(bytes.fromhex(KEY1)))
    ks.save(tmp_path / "registry.json")
    return cose.sign1_encode(gw, b"hf01", b.encode()), tmp_path / "registry.json", gw


def test_signed_batch_with_every_entry_verified(tmp_path: Path) -> None:
    data, registry, _gw = _signed_batch(tmp_path)
    (tmp_path / "batch.bin").write_bytes(data)
    p = decode("--file", str(tmp_path / "batch.bin"), "--keystore", str(registry))
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["cose"] == "sign1" and out["type"] == "batch" and out["kid"] == "hf01"
    f = out["fields"]
    assert f["hall"] == "hf01" and f["batch"] == 7 and len(f["entries"]) == 3
    e0, e1, e2 = f["entries"]
    assert e0["kind"] == "prompt" and e0["prompt"] == 1001 and e0["service_name"] == "电费缴纳"
    assert e1["kind"] == "device-message" and e1["message"]["verified"] is True
    assert e1["message"]["type"] == "rating" and e1["message"]["fields"]["seq"] == 42
    assert e2["message"]["type"] == "no_rating" and e2["clerk"] is None


def test_batch_with_a_forged_entry_exits_2_and_names_it(tmp_path: Path) -> None:
    data, registry, _gw = _signed_batch(tmp_path, forged_entry=True)
    p = decode(data.hex(), "--keystore", str(registry))
    assert p.returncode == 2
    out = json.loads(p.stdout)
    bad = out["fields"]["entries"][3]["message"]
    assert bad["verified"] is False and bad["reason"] == "bad-mac"
    assert "rejected: bad-mac: entry 3: " in p.stderr


def test_batch_signed_by_another_key_is_rejected(tmp_path: Path) -> None:
    data, registry, _gw = _signed_batch(tmp_path)
    other = public_bytes(Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))).hex()
    p = decode(data.hex(), "--gateway-key", other)
    assert p.returncode == 2 and p.stderr.startswith("rejected: bad-signature: ")
    tampered = bytearray(data)
    tampered[-1] ^= 1
    p = decode(bytes(tampered).hex(), "--keystore", str(registry))
    assert p.returncode == 2 and p.stderr.startswith("rejected: bad-signature: ")


def test_province_batch_ack(tmp_path: Path) -> None:
    prov = Ed25519PrivateKey.from_private_bytes(bytes(range(200, 232)))
    ack = batch.BatchAck("hf01", 7, 2, 1, [(3, "bad-mac")])
    data = cose.sign1_encode(prov, b"province", ack.encode())
    p = decode(data.hex(), "--province-key", public_bytes(prov).hex())
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["type"] == "batch_ack" and out["kid"] == "province"
    assert out["fields"] == {"hall": "hf01", "batch": 7, "stored": 2, "duplicates": 1,
                             "rejected": [{"index": 3, "reason": "bad-mac"}]}
    p = decode(data.hex())
    assert p.returncode == 2 and p.stderr.startswith("rejected: unknown-signer: ")
