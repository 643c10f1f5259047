"""Cross-check the golden vectors with an independent COSE implementation (pycose 1.1.0).

pycose cannot run with the project's cbor2 6 (FIELD-NOTES), so tests/xcheck_pycose.py runs under its own
venv (.venv-xcheck, built by `make xcheck` / `make test`) as a subprocess and prints JSON results.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
XPY = ROOT / ".venv-xcheck" / "bin" / "python"
VECTORS = ROOT / "protocol" / "vectors"


@pytest.fixture(scope="module")
def results() -> dict[str, dict[str, Any]]:
    if not XPY.exists():
        pytest.skip(f"pycose cross-check venv missing: {XPY} (run `make xcheck` to build it)")
    proc = subprocess.run([str(XPY), str(ROOT / "tests" / "xcheck_pycose.py"), str(VECTORS)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    assert out["pycose"] == "1.1.0"
    res: dict[str, dict[str, Any]] = out["results"]
    return res


def _vectors() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(VECTORS.glob("*.json"))}


def test_every_vector_was_checked(results: dict[str, dict[str, Any]]) -> None:
    assert set(results) == set(_vectors())


def test_good_vectors_verify_under_pycose(results: dict[str, dict[str, Any]]) -> None:
    for name, vec in _vectors().items():
        if vec["fail"]:
            continue
        r = results[name]
        assert r["accepts"] is True, (name, r.get("error"))
        assert r["payload_matches"] is True, name
        # pycose building the message from payload + key + kid gives our bytes exactly.
        assert r["built_matches"] is True, (name, r["built_hex"], vec["output_hex"])


def test_tampered_and_wrong_key_fail_under_pycose(results: dict[str, dict[str, Any]]) -> None:
    for name in ("fail-01-flipped-tag-bit", "fail-05-wrong-key", "fail-06-truncated", "fail-15-tag-18",
                 "fail-16-untagged"):
        assert results[name]["accepts"] is False, name


def test_pycose_accepts_field_is_true_to_pycose(results: dict[str, dict[str, Any]]) -> None:
    """Where pycose accepts a must-fail vector, our profile is stricter (PROTOCOL.md, "Stricter than
    COSE"); the vector records it and this keeps the record honest."""
    stricter = []
    for name, vec in _vectors().items():
        if vec["fail"]:
            assert results[name]["accepts"] is vec["pycose_accepts"], (name, results[name].get("error"))
            if vec["pycose_accepts"]:
                stricter.append(name)
    # The documented differences: alg 4, alg unprotected, duplicate keys, indefinite lengths...
    for must in ("fail-02-alg-4-hmac-256-64", "fail-03-alg-unprotected", "fail-09-duplicate-key-protected",
                 "fail-08-indefinite-array"):
        assert must in stricter
