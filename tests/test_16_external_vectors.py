"""Public vectors nobody on the project wrote (protocol/vectors/external/, each file names its source):
RFC 8949 Appendix A and F, and the COSE working group's mac0-tests/ and hmac-examples/. Each case goes
through the CPython and the firmware decoders (one MicroPython process for all) and must get the
verdict the file records for the project's profile (PROTOCOL.md section 17 says why each is refused)."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

from mpy import run_mpy

from countersign.protocol import cbor, cose
from countersign.protocol.errors import ProtocolError

EXTERNAL = Path(__file__).resolve().parent.parent / "protocol" / "vectors" / "external"
LOOSE = {"max_size": 1 << 20, "max_depth": 16, "max_items": 1 << 16}


def _load(name: str) -> dict[str, Any]:
    d: dict[str, Any] = json.loads((EXTERNAL / f"{name}.json").read_text(encoding="utf-8"))
    assert d["source"].startswith("https://")
    return d


def _cbor_reason(data: bytes) -> str | None:
    try:
        v = cbor.loads(data, **LOOSE)
    except ProtocolError as exc:
        return exc.reason
    assert cbor.dumps(v) == data
    return None


def _mac0_reason(data: bytes, key: bytes) -> str | None:
    try:
        cose.mac0_verify(data, lambda _kid: key)
    except ProtocolError as exc:
        return exc.reason
    return None


def test_every_external_case_on_cpython_and_firmware(tmp_path: Path) -> None:
    lines, wants = ["00 00"], []
    for name in ("rfc8949-appendix-a", "rfc8949-appendix-f"):
        for c in _load(name)["cases"]:
            assert _cbor_reason(bytes.fromhex(c["hex"])) == c["reason"], (name, c)
            lines.append(f"c {c['hex']}")
            wants.append((name, c["hex"], c["reason"] or "ok"))
    assert sum(1 for w in wants if w[0].endswith("f")) >= 90
    for name in ("cose-wg-mac0-tests", "cose-wg-hmac-examples"):
        d = _load(name)
        assert len(d["cases"]) == 10
        for c in d["cases"]:
            key, data = bytes.fromhex(c["key_hex"]), bytes.fromhex(c["cbor_hex"])
            assert _mac0_reason(data, key) == c["reason"], (c["file"], c["title"])
            lines.append(f"m {c['key_hex']} {c['cbor_hex']}")
            wants.append((c["file"], c["cbor_hex"], c["reason"] or "ok"))
            if c["alg"] == "HS256" and "ChangeTag" not in c["failures"]:
                # The profile refuses every example's header, but its HMAC is COSE's: same tag over ToMac.
                tag = hmac.new(key, bytes.fromhex(c["to_mac_hex"]), hashlib.sha256).hexdigest()
                assert tag == c["tag_hex"], c["file"]
                lines.append(f"h {c['key_hex']} {c['to_mac_hex']}")
                wants.append((c["file"] + " hmac", c["to_mac_hex"], c["tag_hex"]))
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="ascii")
    r = run_mpy("mp_verdicts.py", env={"CS_VERDICT_IN": str(tmp_path / "in.txt")})
    got = r.stdout.split("\n")
    assert r.returncode == 0 and f"END {len(wants)}" in got, r.stdout[-2000:] + r.stderr
    differ = [(w, fw) for w, fw in zip(wants, got, strict=False) if w[2] != fw]
    assert not differ, differ[:10]
