"""The MicroPython test harness itself runs (a broken harness must not look like passing tests)."""

from __future__ import annotations

from mpy import assert_mpy_ok, run_mpy


def test_micropython_runs_the_harness() -> None:
    out = assert_mpy_ok("mp_smoke.py")
    assert "passed 2 checks" in out


def test_a_failing_check_fails() -> None:
    r = run_mpy("mp_smoke.py", env={"CS_FIRMWARE": ""})
    assert r.returncode != 0 and "FAIL firmware path given" in r.stdout
