"""The MicroPython image step of `countersign device flash`: which official image, whether it fits the
chip (its name, its ESP image header, the chip's revision), and esptool's commands in order.

esptool itself needs a real ESP32 in its ROM bootloader at the other end of the cable, which no test
machine has, so the `--board auto` tests put a stub ``esptool`` first on PATH (the tool runs the
``esptool`` command the technician's shell would): it records its arguments and answers ``chip-id`` as
esptool 5 does. That is the only stand-in here; the serial port is a real (virtual) cable with nothing
on it, as a board without MicroPython is to the REPL.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from device_helpers import run

from countersign.device import esp, flash, link
from countersign.device import image as img
from countersign.device.errors import DeviceToolError, Refused
from countersign.sim.serialport import VirtualSerial

C3 = "ESP32_GENERIC_C3-20250415-v1.25.0.bin"
S3_OCT = "ESP32_GENERIC_S3-SPIRAM_OCT-20250415-v1.25.0.bin"
S3 = "ESP32_GENERIC_S3-20250415-v1.25.0.bin"
PREVIEW = "ESP32_GENERIC_C3-20250801-v1.26.0-preview.123.gabcdef.bin"


def esp_image(chip_id: int) -> bytes:
    """The first bytes of a merged ESP image: magic 0xE9, then the extended header's chip id at 12-13."""
    return bytes([0xE9, 3, 2, 0x20]) + bytes(8) + chip_id.to_bytes(2, "little") + bytes(50)


def images(folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    for name, cid in ((C3, 5), (S3_OCT, 9), (PREVIEW, 5), ("ESP32_GENERIC_C3-20241129-v1.24.1.bin", 5)):
        (folder / name).write_bytes(esp_image(cid))
    return folder


# -- names, headers, versions ------------------------------------------------------------------------

def test_official_image_names_are_read() -> None:
    n = img.parse_name(C3)
    assert n is not None and (n.board, n.variant, n.date, n.version, n.preview) == \
        ("esp32c3", None, "20250415", (1, 25, 0), False)
    n = img.parse_name(S3_OCT)
    assert n is not None and (n.board, n.variant, n.version) == ("esp32s3", "SPIRAM_OCT", (1, 25, 0))
    n = img.parse_name(PREVIEW)
    assert n is not None and n.preview and n.version == (1, 26, 0) and n.new_enough()
    preview_125 = img.parse_name("ESP32_GENERIC_C3-20250101-v1.25.0-preview.9.g1234567.bin")
    assert preview_125 is not None and not preview_125.new_enough()      # before the 1.25.0 release
    assert img.parse_name("firmware.bin") is None
    assert img.parse_name("ESP32_GENERIC-20250415-v1.25.0.bin") is None        # the plain ESP32


def test_an_image_is_checked_by_name_and_by_header(tmp_path: Path) -> None:
    folder = images(tmp_path / "img")
    assert img.check(folder / C3, "esp32c3") is not None
    assert img.check(folder / S3_OCT, "esp32s3") is not None
    with pytest.raises(Refused, match=r"is an image for the ESP32-S3; this board is an ESP32-C3"):
        img.check(folder / S3_OCT, "esp32c3")
    with pytest.raises(Refused, match=r"MicroPython 1.24.1: the keypads need 1.25.0 or later"):
        img.check(folder / "ESP32_GENERIC_C3-20241129-v1.24.1.bin", "esp32c3")
    renamed = tmp_path / C3                     # an S3 image under a C3 name: the header tells
    renamed.write_bytes(esp_image(9))
    with pytest.raises(Refused, match=r"built for the ESP32-S3 \(its image header says so\)"):
        img.check(renamed, "esp32c3")
    custom = tmp_path / "my-build.bin"          # not an official name: the header alone decides
    custom.write_bytes(esp_image(5))
    assert img.check(custom, "esp32c3") is None
    junk = tmp_path / "ESP32_GENERIC_S3-20250415-v1.25.0.bin"
    junk.write_bytes(b"PK\x03\x04" + bytes(60))
    with pytest.raises(Refused, match="not an ESP32 firmware image"):
        img.check(junk, "esp32s3")


def test_version_finds_the_official_file(tmp_path: Path) -> None:
    folder = images(tmp_path / "img")
    assert img.find(folder, "esp32c3", "1.25.0") == folder / C3
    assert img.find(folder, "esp32c3", "v1.25.0") == folder / C3
    assert img.find(folder, "esp32c3", "1.26.0-preview.123.gabcdef") == folder / PREVIEW
    assert img.find(folder, "esp32s3", "1.25.0") == folder / S3_OCT
    (folder / S3).write_bytes(esp_image(9))
    with pytest.raises(DeviceToolError, match=r"several ESP32_GENERIC_S3 images of version 1\.25\.0"):
        img.find(folder, "esp32s3", "1.25.0")
    with pytest.raises(DeviceToolError, match=r"download it from https://micropython.org/download/"
                                              r"ESP32_GENERIC_C3/"):
        img.find(folder, "esp32c3", "1.27.0")


def test_chip_and_revision_from_esptool_output() -> None:
    c = esp.parse_chip("Connecting....\nDetecting chip type... ESP32-C3\nChip type:          ESP32-C3 "
                       "(QFN32) (revision v0.4)\nFeatures: Wi-Fi\n")
    assert (c.board, c.description, c.revision) == ("esp32c3", "ESP32-C3 (QFN32)", (0, 4))
    c4 = esp.parse_chip("Chip is ESP32-S3 (QFN56) (revision v0.2)\n")          # esptool 4 wording
    assert (c4.board, c4.revision) == ("esp32s3", (0, 2)) and esp.check_chip(c4, None) == "esp32s3"
    assert esp.check_chip(c, "esp32c3") == "esp32c3"
    old = esp.parse_chip("Chip type:          ESP32-C3 (QFN32) (revision v0.2)\n")
    with pytest.raises(Refused, match=r"revision v0.2: MicroPython's stock C3 image needs revision v0.3"):
        esp.check_chip(old, None)
    with pytest.raises(Refused, match="--board esp32s3, but the chip on the port is an ESP32-C3"):
        esp.check_chip(c, "esp32s3")
    other = esp.parse_chip("Chip type:          ESP32-D0WD-V3 (revision v3.1)\n")
    with pytest.raises(Refused, match="Countersign keypads are ESP32-C3 or ESP32-S3"):
        esp.check_chip(other, None)
    with pytest.raises(DeviceToolError, match="did not say which chip"):
        esp.parse_chip("A fatal error occurred: Failed to connect to Espressif device\n")


# -- --board auto on a port where no MicroPython answers -----------------------------------------------

STUB = """#!{python}
import json, os, sys
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
cmd = next(a for a in sys.argv[1:] if not a.startswith("-") and a not in (os.environ.get("STUB_PORT"),
           "esp32c3", "esp32s3", "460800"))
print("esptool v5.6.0")
if cmd == os.environ.get("STUB_FAIL"):
    print("A fatal error occurred: Failed to connect to ESP32-C3: No serial data received.")
    sys.exit(2)
if cmd == "chip-id":
    print("Connected to %s on %s:" % (os.environ["STUB_CHIP"].split(" ")[0], os.environ["STUB_PORT"]))
    print("Chip type:          " + os.environ["STUB_CHIP"])
    print("Chip ID: 0x00000000")
elif cmd == "write-flash":
    print("Wrote 1703936 bytes (1048576 compressed) at 0x00000000 in 20.1 seconds.")
    print("Hash of data verified.")
elif cmd == "erase-flash":
    print("Flash memory erased successfully in 12.3 seconds.")
print("Hard resetting via RTS pin...")
"""


@pytest.fixture
def silent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """A cable with no MicroPython at the other end, and the stub esptool first on PATH."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    stub = bindir / "esptool"
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "esptool-argv.jsonl"
    cable = VirtualSerial(tmp_path / "cable").start()
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("STUB_LOG", str(log))
    monkeypatch.setenv("STUB_PORT", str(cable.host))
    monkeypatch.setenv("STUB_CHIP", "ESP32-C3 (QFN32) (revision v0.4)")
    monkeypatch.setattr(flash, "REPL_AFTER_IMAGE_S", 0.5)     # one look for the REPL after the image
    monkeypatch.setattr(link, "_STATUS_WAIT_S", 0.3)
    yield str(cable.host), log
    cable.stop()


def argv_log(log: Path) -> list[list[str]]:
    return [json.loads(ln) for ln in log.read_text().splitlines()] if log.exists() else []


def test_a_new_board_gets_the_image_for_its_chip(silent: tuple[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    port, log = silent
    folder = images(tmp_path / "img")
    rc, out, err = run(capsys, "flash", "--port", port, "--version", "1.25.0", "--images", str(folder),
                       "--timeout", "1")
    assert argv_log(log) == [["--port", port, "chip-id"],
                             ["--chip", "esp32c3", "--port", port, "--baud", "460800", "write-flash", "0",
                              str(folder / C3)]]
    assert f"no MicroPython answers on {port}: a new board" in out
    assert "chip: ESP32-C3 (QFN32), revision v0.4" in out
    assert f"image {C3}: ESP32-C3, MicroPython 1.25.0" in out
    assert "  Hash of data verified." in out                        # esptool's own output, shown
    # the stub wrote nothing, so no MicroPython comes up: the tool says so (one line, exit 2)
    assert rc == 2 and len(err.splitlines()) == 1
    assert f"MicroPython did not answer on {port} within 0.5 s after the image was written" in err


def test_erase_then_write_and_an_s3(silent: tuple[str, Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    port, log = silent
    folder = images(tmp_path / "img")
    monkeypatch.setenv("STUB_CHIP", "ESP32-S3 (QFN56) (revision v0.2)")
    rc, _out, err = run(capsys, "flash", "--port", port, "--version", "1.25.0", "--images", str(folder),
                        "--erase", "--timeout", "1")
    assert rc == 2 and "did not answer" in err
    assert [a[a.index("--port") + 2:] for a in argv_log(log)] == [
        ["chip-id"], ["erase-flash"], ["--baud", "460800", "write-flash", "0", str(folder / S3_OCT)]]
    assert argv_log(log)[1][:2] == ["--chip", "esp32s3"]


def test_refusals_before_esptool_writes_anything(silent: tuple[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    port, log = silent
    folder = images(tmp_path / "img")
    # No image given: nothing to do with a board that has no MicroPython, and esptool is not run.
    rc, out, err = run(capsys, "flash", "--port", port, "--timeout", "1")
    assert rc == 2 and "a new board needs the MicroPython image first (--image FILE or --version X" in err
    assert argv_log(log) == [] and out == ""
    # A C3 below revision v0.3: refused after chip-id, nothing written.
    monkeypatch.setenv("STUB_CHIP", "ESP32-C3 (QFN32) (revision v0.2)")
    rc, _out, err = run(capsys, "flash", "--port", port, "--image", str(folder / C3), "--timeout", "1")
    assert rc == 2 and "revision v0.2" in err and "needs revision v0.3 or later" in err
    assert [a[-1] for a in argv_log(log)] == ["chip-id"]
    # An S3 image for a C3 chip: refused by its name.
    monkeypatch.setenv("STUB_CHIP", "ESP32-C3 (QFN32) (revision v0.4)")
    rc, _out, err = run(capsys, "flash", "--port", port, "--image", str(folder / S3_OCT), "--timeout", "1")
    assert rc == 2 and "is an image for the ESP32-S3; this board is an ESP32-C3" in err
    # esptool failing: its last line, in one line of ours.
    monkeypatch.setenv("STUB_FAIL", "write-flash")
    rc, _out, err = run(capsys, "flash", "--port", port, "--image", str(folder / C3), "--timeout", "1")
    assert rc == 2 and len(err.splitlines()) == 1
    assert "esptool --chip esp32c3" in err and "write-flash 0" in err and "(exit 2): A fatal error" in err
    assert [a[-1] if a[-1] == "chip-id" else "write" for a in argv_log(log)] == \
        ["chip-id", "chip-id", "chip-id", "write"]
