"""MicroPython images for the keypads' boards: which file, and whether it fits the chip.

The keypads run MicroPython's official images as published at https://micropython.org/download/:
``ESP32_GENERIC_C3`` for the ESP32-C3 board, ``ESP32_GENERIC_S3`` (or its ``SPIRAM_OCT`` variant for a
module with octal PSRAM, N8R8/N16R8) for the ESP32-S3 board. Their file names say board, variant, build
date and version: ``ESP32_GENERIC_C3-20250415-v1.25.0.bin``,
``ESP32_GENERIC_S3-SPIRAM_OCT-20250415-v1.25.0.bin``, previews
``ESP32_GENERIC_C3-20250801-v1.26.0-preview.123.gabcdef.bin``. The application is .mpy v6.3
(mpy-cross 1.24 and later), which MicroPython 1.24 and later import; 1.25 is the oldest release the
tools accept (the first with ROMFS support, ``vfs.rom_ioctl``, for a board built with a ROMFS partition).

A file is checked twice before esptool writes it: by its name (the board and version it claims) and by
its ESP image header (byte 0 is 0xE9; bytes 12-13, little-endian, the chip id the bootloader was built
for: 5 = ESP32-C3, 9 = ESP32-S3), so a renamed or wrong file never reaches a board. Both images go at
flash offset 0 (bootloader, partition table and MicroPython in one file).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import DeviceToolError, Refused

MIN_VERSION = (1, 25, 0)
BOARDS = {"esp32c3": "ESP32_GENERIC_C3", "esp32s3": "ESP32_GENERIC_S3"}
CHIP_NAMES = {"esp32c3": "ESP32-C3", "esp32s3": "ESP32-S3"}
CHIP_IDS = {"esp32c3": 5, "esp32s3": 9}
OFFSET = {"esp32c3": "0", "esp32s3": "0"}
DOWNLOAD = {b: f"https://micropython.org/download/{n}/" for b, n in BOARDS.items()}
ESP_IMAGE_MAGIC = 0xE9

_NAME = re.compile(r"^ESP32_GENERIC_(C3|S3)(?:-([A-Z][A-Z0-9_]*))?-(\d{8})-v(\d+)\.(\d+)\.(\d+)"
                   r"(-preview\.\d+\.g[0-9a-f]+)?\.bin$")


@dataclass(frozen=True)
class ImageName:
    board: str                      # "esp32c3" / "esp32s3"
    variant: str | None             # "SPIRAM_OCT", ...
    date: str
    version: tuple[int, int, int]
    preview: bool

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version)) + ("-preview" if self.preview else "")

    def new_enough(self) -> bool:
        # A preview comes before its release: 1.25.0-preview is older than 1.25.0.
        return self.version > MIN_VERSION or (self.version == MIN_VERSION and not self.preview)


def parse_name(filename: str) -> ImageName | None:
    """An official image file name, or None for any other name."""
    m = _NAME.match(filename)
    if m is None:
        return None
    return ImageName("esp32" + m[1].lower(), m[2], m[3], (int(m[4]), int(m[5]), int(m[6])), bool(m[7]))


def header_chip(data: bytes) -> int | None:
    """The chip id in an ESP image header, or None when ``data`` is not an ESP image."""
    if len(data) < 16 or data[0] != ESP_IMAGE_MAGIC:
        return None
    return int.from_bytes(data[12:14], "little")


def _chip_of(chip_id: int) -> str:
    for board, cid in CHIP_IDS.items():
        if cid == chip_id:
            return CHIP_NAMES[board]
    return f"chip id {chip_id}"


def check(path: Path, board: str) -> ImageName | None:
    """Refuse an image that is not for ``board`` (by name and by header) or older than 1.25; returns
    what its name says (None for a file not named as the official images are)."""
    chip = CHIP_NAMES[board]
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise DeviceToolError(f"cannot read the MicroPython image {path}: {exc.strerror or exc}") from exc
    name = parse_name(path.name)
    if name is not None and name.board != board:
        raise Refused(f"{path.name} is an image for the {CHIP_NAMES[name.board]}; this board is an {chip} "
                      f"(download {BOARDS[board]} from {DOWNLOAD[board]})")
    if name is not None and not name.new_enough():
        raise Refused(f"{path.name} is MicroPython {name.version_text}: the keypads need 1.25.0 or later "
                      f"({DOWNLOAD[board]})")
    cid = header_chip(head)
    if cid is None:
        raise Refused(f"{path} is not an ESP32 firmware image (no 0xE9 image header)")
    if cid != CHIP_IDS[board]:
        raise Refused(f"{path.name} is built for the {_chip_of(cid)} (its image header says so); this "
                      f"board is an {chip}")
    return name


def find(images: Path, board: str, version: str) -> Path:
    """The official image of ``version`` for ``board`` in the folder ``images``."""
    want = version[1:] if version.startswith("v") else version
    found = []
    for p in sorted(images.glob(f"{BOARDS[board]}*.bin")) if images.is_dir() else []:
        n = parse_name(p.name)
        if n is None or n.board != board:
            continue
        text = p.name.rsplit("-v", 1)[-1][:-len(".bin")]       # 1.25.0, 1.26.0-preview.123.gabcdef
        if text == want or (n.preview and text.split("-preview", 1)[0] + "-preview" == want):
            found.append(p)
    if not found:
        raise DeviceToolError(f"no {BOARDS[board]} image of version {want} in {images} (download it from "
                              f"{DOWNLOAD[board]}, or give --image FILE)")
    if len(found) > 1:
        raise DeviceToolError(f"several {BOARDS[board]} images of version {want} in {images}: "
                              + ", ".join(p.name for p in found) + " (give the one to use with --image)")
    return found[0]
