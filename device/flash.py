"""`countersign device flash`: the MicroPython image (esptool), then the application bundle (mpremote).

A board (ESP32-C3/S3), every step a command the field knows, run in order and printed first:

    esptool.py --chip esp32c3 --port PORT write_flash 0 IMAGE      the MicroPython firmware
    mpremote connect PORT romfs deploy BUNDLE/firmware.romfs        the app: .mpy in the ROMFS partition
    mpremote connect PORT cp BUNDLE/main.py :main.py                the entry point, on the filesystem
    mpremote connect PORT reset

The filesystem is not erased (no erase_flash): the keypad's config, key, outbox and counters survive a
reflash, so no unsent rating is lost by flashing. The image is ``--image FILE`` or ``--version X``
(``<images>/ESP32_GENERIC_C3-vX.bin``; MicroPython >= 1.25 for ROMFS).

A simulator keypad (sys.platform 'linux' over the REPL) has no ROM partition and runs no esptool: the
image step is skipped and the bundle's two files are copied into its folder over the raw REPL
(new-then-rename), which is where its main.py mounts the image from; it runs them after a power cycle.
``--dry-run`` prints the steps and touches nothing (it does not open the port, so ``--board`` says
which kind of keypad it is; default esp32c3).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from countersign.sim import bundle

from .errors import DeviceToolError
from .link import KeypadLink

CHIPS = {"esp32c3": ("esp32c3", "ESP32_GENERIC_C3", "0"), "esp32s3": ("esp32s3", "ESP32_GENERIC_S3", "0")}
DEFAULT_IMAGES = Path.home() / ".cache" / "countersign" / "micropython"


@dataclass
class Step:
    text: str                       # what is printed
    argv: list[str] | None = None   # a command to run (board), or None (done over the raw REPL)


def image_path(board: str, image: Path | None, version: str | None, images: Path) -> Path:
    if image is not None:
        return image
    if version is None:
        raise DeviceToolError("give the MicroPython image (--image FILE) or its version (--version 1.25.0)")
    return images / f"{CHIPS[board][1]}-v{version}.bin"


def board_steps(port: str, board: str, image: Path, built: Path) -> list[Step]:
    chip, _name, offset = CHIPS[board]
    esptool = shutil.which("esptool.py") or shutil.which("esptool") or "esptool.py"
    mpremote = [sys.executable, "-m", "mpremote", "connect", port]
    return [
        Step(f"esptool.py --chip {chip} --port {port} write_flash {offset} {image}",
             [esptool, "--chip", chip, "--port", port, "write_flash", offset, str(image)]),
        Step(f"mpremote connect {port} romfs deploy {built / bundle.IMAGE}",
             [*mpremote, "romfs", "deploy", str(built / bundle.IMAGE)]),
        Step(f"mpremote connect {port} cp {built / bundle.ENTRY} :{bundle.ENTRY}",
             [*mpremote, "cp", str(built / bundle.ENTRY), f":{bundle.ENTRY}"]),
        Step(f"mpremote connect {port} reset", [*mpremote, "reset"]),
    ]


def sim_steps(port: str, built: Path) -> list[Step]:
    return [
        Step("skip the MicroPython image: a virtual keypad (unix port) has no ROM partition"),
        Step(f"raw REPL on {port}: copy {built / bundle.IMAGE} to :{bundle.IMAGE} (new-then-rename)"),
        Step(f"raw REPL on {port}: copy {built / bundle.ENTRY} to :{bundle.ENTRY} (new-then-rename)"),
        Step("power-cycle the keypad: it boots the new application"),
    ]


def flash(port: str, *, board: str = "auto", image: Path | None = None, version: str | None = None,
          images: Path = DEFAULT_IMAGES, bundle_dir: Path = bundle.ROOT / "out" / "firmware-bundle",
          dry_run: bool = False, timeout: float = 5.0, say: Callable[[str], None] = print) -> list[Step]:
    """Flash the keypad on ``port``; every step's text goes to ``say`` before it runs."""
    try:
        built = bundle.build(bundle_dir)
    except bundle.BundleError as exc:
        raise DeviceToolError(str(exc)) from exc
    say(f"bundle {built}: " + ", ".join(f"{k} {v} bytes" for k, v in bundle.size(built).items()))
    if dry_run:
        kind = "esp32c3" if board == "auto" else board
        steps = (sim_steps(port, built) if kind == "sim"
                 else board_steps(port, kind, image_path(kind, image, version, images), built))
        for s in steps:
            say(f"[dry-run] {s.text}")
        return steps
    if board == "auto":
        with KeypadLink(port, timeout) as link:
            board = "sim" if link.virtual else "esp32c3"
    if board == "sim":
        steps = sim_steps(port, built)
        with KeypadLink(port, timeout) as link:
            if not link.virtual:
                raise DeviceToolError(f"the keypad on {port} is not a simulator keypad ({link.platform})")
            say(steps[0].text)
            for step, name in ((steps[1], bundle.IMAGE), (steps[2], bundle.ENTRY)):
                say(step.text)
                link.write_file(name, (built / name).read_bytes())
            say(steps[3].text)
        return steps
    img = image_path(board, image, version, images)
    if not img.exists():
        raise DeviceToolError(f"no MicroPython image {img} (download it for {CHIPS[board][1]}, "
                              "or give --image)")
    steps = board_steps(port, board, img, built)
    for s in steps:
        say(s.text)
        assert s.argv is not None
        try:
            rc = subprocess.run(s.argv, check=False).returncode
        except FileNotFoundError as exc:
            raise DeviceToolError(f"{s.argv[0]} is not installed (pip install esptool)") from exc
        if rc != 0:
            raise DeviceToolError(f"step failed (exit {rc}): {s.text}")
    return steps
