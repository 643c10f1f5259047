"""Regression vectors (protocol/vectors/regress/): the inputs that found a defect, each refused
with its reason. The codec/CDDL agreement of every vector, on CPython and on the firmware, is
tests/test_12_cddl.py; here what is particular to each defect class."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from countersign.protocol import cose, make_vectors
from countersign.protocol.errors import ProtocolError

REGRESS = Path(__file__).resolve().parent.parent / "protocol" / "vectors" / "regress"
FILES = sorted(REGRESS.glob("*.json"))


def _load(p: Path) -> dict[str, Any]:
    vec: dict[str, Any] = json.loads(p.read_text(encoding="utf-8"))
    return vec


def test_checked_in_files_equal_generator_output() -> None:
    built = make_vectors.build_regress()
    assert {p.stem for p in FILES} == set(built) and len(built) >= 9
    for p in FILES:
        assert p.read_text(encoding="utf-8") == make_vectors.render(built[p.stem]), p.name


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_refused_with_its_reason(path: Path) -> None:
    vec = _load(path)
    assert vec["fail"] is True
    with pytest.raises(ProtocolError) as info:
        make_vectors.verify(vec)
    assert info.value.reason == vec["reason"], str(info.value)
    if "kid_reason" in vec:
        # peek_kid gives None, never an exception; read_kid the verdict
        out = bytes.fromhex(vec["output_hex"])
        assert cose.peek_kid(out) is None
        with pytest.raises(ProtocolError) as kinfo:
            cose.read_kid(out)
        assert kinfo.value.reason == vec["kid_reason"]


def test_the_issue_reproducer_is_pinned() -> None:
    vec = _load(REGRESS / "fail-r01-true-as-alg-key.json")
    assert vec["output_hex"] == (
        "d1844da20448686630312d773031f505a05822aa0001010102182a03040404051903e9061a6774ae20071a004fdf870819"
        "0dac090758209816dbcc5374c9f0e727863d69e7eacb540f670f6fe9b1f99f71401c0e444202")
    clerk = _load(REGRESS / "fail-r04-overlong-utf8.json")["payload_hex"]
    assert "6531 30c0 8033".replace(" ", "") in clerk


@pytest.mark.parametrize("hexed", ["d2a0", "d1a0", "d2a10040", "d280", "d28100"])
def test_decode_cli_gives_a_verdict_not_a_traceback(hexed: str) -> None:
    r = subprocess.run([sys.executable, "-m", "countersign.cli", "decode", hexed, "--key", "00" * 32],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("rejected: ") and "Traceback" not in r.stderr


@pytest.mark.parametrize("hexed", ["d2a0", "d1a0", "d1a10040", "d18100", "d1814100", "d181410a",
                                   "d18143a10440", "d2844ca201270448686630312d7730314140"])
def test_peek_kid_never_raises(hexed: str) -> None:
    data = bytes.fromhex(hexed)
    kid = cose.peek_kid(data)
    assert kid is None or isinstance(kid, bytes)
