"""esptool, run as the field runs it: the ``esptool`` command (esptool 5, kebab-case commands).

Three commands, each printed before it runs:

    esptool --port PORT chip-id                                          which chip, which revision
    esptool --chip esp32c3 --port PORT erase-flash                       only with --erase
    esptool --chip esp32c3 --port PORT --baud 460800 write-flash 0 IMAGE  MicroPython

The command is the first ``esptool`` on PATH (what the technician's shell runs), else the one installed
beside this Python (the project depends on esptool). ``chip-id`` prints the chip's description, e.g.
``Chip type:          ESP32-C3 (QFN32) (revision v0.4)`` (esptool 4: ``Chip is ...``); the stock C3
image is built with CONFIG_ESP32C3_REV_MIN_3 (ports/esp32/boards/ESP32_GENERIC_C3/sdkconfig.c3usb), so
a C3 below revision v0.3 would not boot it and is refused here with a message, not by its bootloader.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import DeviceToolError, Refused
from .image import CHIP_NAMES, OFFSET

C3_MIN_REVISION = (0, 3)
_CHIP = re.compile(r"Chip (?:type:|is)\s+(.+?)\s*\(revision v(\d+)\.(\d+)\)")
_DETECTED = re.compile(r"Detecting chip type\.*\s*(ESP32-?[A-Z0-9]+)")


@dataclass(frozen=True)
class Chip:
    board: str | None               # "esp32c3", "esp32s3", or None for another chip
    description: str                # "ESP32-C3 (QFN32)"
    revision: tuple[int, int] | None

    @property
    def revision_text(self) -> str:
        return "unknown" if self.revision is None else f"v{self.revision[0]}.{self.revision[1]}"


def command() -> list[str]:
    found = shutil.which("esptool")
    if found:
        return [found]
    beside = Path(sys.executable).parent / "esptool"
    if beside.exists():
        return [str(beside)]
    return [sys.executable, "-m", "esptool"]


def chip_id_argv(port: str) -> list[str]:
    return [*command(), "--port", port, "chip-id"]


def erase_argv(port: str, board: str) -> list[str]:
    return [*command(), "--chip", board, "--port", port, "erase-flash"]


def write_argv(port: str, board: str, image: Path) -> list[str]:
    return [*command(), "--chip", board, "--port", port, "--baud", "460800", "write-flash", OFFSET[board],
            str(image)]


def show(argv: list[str]) -> str:
    """A command as the technician would type it (``esptool ...``)."""
    return " ".join(["esptool", *argv[len(command()):]])


def run(argv: list[str], say: Callable[[str], None]) -> str:
    """Run esptool, its output shown indented as it comes; its whole output, or one-line failure."""
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace")
    except OSError as exc:
        raise DeviceToolError(f"cannot run esptool ({argv[0]}): {exc.strerror or exc}") from exc
    lines = []
    for line in proc.stdout or ():
        line = line.rstrip()
        if line:
            lines.append(line)
            say(f"  {line}")
    rc = proc.wait()
    if rc != 0:
        last = next((ln for ln in reversed(lines) if ln.strip()), "no output")
        raise DeviceToolError(f"{show(argv)} failed (exit {rc}): {last.strip()}")
    return "\n".join(lines)


def parse_chip(output: str) -> Chip:
    m = _CHIP.search(output)
    if m is not None:
        desc = m[1].strip()
        rev: tuple[int, int] | None = (int(m[2]), int(m[3]))
    else:
        d = _DETECTED.search(output)
        if d is None:
            raise DeviceToolError("esptool chip-id did not say which chip this is: " +
                                  (output.strip().splitlines() or ["no output"])[-1])
        desc, rev = d[1], None
    flat = desc.upper().replace("-", "")
    board = ("esp32c3" if "ESP32C3" in flat or "ESP868" in flat
             else "esp32s3" if "ESP32S3" in flat else None)
    return Chip(board, desc, rev)


def check_chip(chip: Chip, want: str | None) -> str:
    """The board to flash for ``chip``; refuses another chip, one other than ``--board``, an old C3."""
    if chip.board is None:
        raise Refused(f"the chip is an {chip.description}: Countersign keypads are ESP32-C3 or ESP32-S3 "
                      "boards")
    if want is not None and want != chip.board:
        raise Refused(f"--board {want}, but the chip on the port is an {CHIP_NAMES[chip.board]} "
                      f"({chip.description})")
    if chip.board == "esp32c3":
        if chip.revision is None:
            raise Refused("esptool did not report the ESP32-C3's revision: the stock image needs v0.3 or "
                          "later (run `esptool chip-id` and read its 'Chip type' line)")
        if chip.revision < C3_MIN_REVISION:
            raise Refused(f"this ESP32-C3 is revision {chip.revision_text}: MicroPython's stock C3 image "
                          "needs revision v0.3 or later (CONFIG_ESP32C3_REV_MIN_3) and would not boot; "
                          "use a newer board")
    return chip.board
