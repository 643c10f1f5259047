"""`countersign device flash` installing the app on simulated keypads as on a stock board.

A simulated keypad boots as an esp32 does (sim/port/esp32boot.py) from its folder, its flash: main.py,
app.txt and the app's .mpy tree under apps/<id>/ (a stock image has no ROMFS partition), or a ROMFS
partition when the simulated image has one. What a technician checks: the keypad boots the app that
was flashed, a second flash says it is already there, a cable cut at any step leaves a keypad that boots
a whole app (the old one or the new one) with its identity and unsent ratings untouched, and --erase
never runs on a keypad that holds them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from device_helpers import SERVICE, blank_keypad, host, power_cycle, run, wait_reset

from countersign.common import bundle
from countersign.common.outbox import Outbox
from countersign.device.errors import NoAnswer
from countersign.device.flash import flash
from countersign.sim.fwdevice import FirmwareConfig, FirmwareDevice

FIRMWARE = Path(__file__).resolve().parent.parent / "firmware"
KEEP = ("config.json", "device.key", "outbox.bin")      # what flashing must never touch


@pytest.fixture(scope="module")
def old_app(tmp_path_factory: pytest.TempPathFactory) -> bundle.Bundle:
    """The app as an older release: the same firmware with another version string (another app id)."""
    src = tmp_path_factory.mktemp("old-src") / "firmware"
    shutil.copytree(FIRMWARE, src, ignore=shutil.ignore_patterns("__pycache__"))
    init = src / "cs" / "__init__.py"
    init.write_text(init.read_text().replace('VERSION = "', 'VERSION = "0.0.9-old+'))
    return bundle.build("sim", tmp_path_factory.mktemp("old-bundle"), src=src)


@pytest.fixture(scope="module")
def new_app() -> bundle.Bundle:
    return bundle.build("sim")


def _boot(fw: FirmwareDevice, hold: str = "") -> tuple[str, int]:
    """Power on (watched) and wait for the app's boot line: (its firmware version, the console mark).
    Service mode needs the keys held 2 s (cs/start.py): held 2.3 s here."""
    mark = power_cycle(fw, hold, hold_s=2.3)
    m = fw.wait_line(r"CS:BOOT fw=(\S+)", 20, start=mark)
    assert m is not None, fw.lines[mark:]
    return m.group(1), mark


def _provisioned(folder: Path, app: bundle.Bundle, mode: str = "mpy", **kw: object) -> FirmwareDevice:
    """A keypad in the field: provisioned, two ratings waiting in its outbox, ``app`` installed."""
    cfg = FirmwareConfig("hf01-w07", bytes(range(32)), folder, 1, 0, hall="hf01", window="7",
                         console="pty", read_console=False, **kw)   # type: ignore[arg-type]
    from countersign.sim.broker import free_port
    cfg.broker_port, cfg.sim_port = free_port(), free_port()
    cfg.write()
    ob = Outbox(folder / "outbox.bin")
    ob.append(1, 1, b"\xd2\x84" + bytes(80))
    ob.append(1, 2, b"\xd2\x84" + bytes(81))
    ob.close()
    bundle.install_into(folder, app, mode)
    return FirmwareDevice(cfg)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in KEEP}


def _files_on(folder: Path, b: bundle.Bundle) -> bool:
    return all(hashlib.sha256((folder / b.app_dir / rel).read_bytes()).hexdigest() == digest
               for rel, (_n, digest) in b.files.items())


def test_flash_a_blank_keypad_as_a_mpy_tree_then_again(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       new_app: bundle.Bundle) -> None:
    fw = blank_keypad(tmp_path / "kp")
    try:
        (fw.cfg.folder / "boot.py").write_text("# This file is executed on every boot\n#import webrepl\n")
        mark = fw.mark()
        rc, out, err = run(capsys, "flash", "--port", host(fw))
        assert rc == 0, err
        assert "no usable ROMFS partition" in out and f"verified {len(new_app.files)} files" in out
        assert "remove boot.py" in out and not (fw.cfg.folder / "boot.py").exists()
        assert (fw.cfg.folder / "app.txt").read_text() == new_app.app_dir + "\n"
        assert _files_on(fw.cfg.folder, new_app)
        assert (fw.cfg.folder / "main.py").read_bytes() == new_app.entry.read_bytes()
        assert not list(fw.cfg.folder.rglob("*.new"))                  # every write was renamed in
        assert wait_reset(fw, mark)
        version, mark = _boot(fw)
        assert version == json.loads((new_app.path / "manifest.json").read_text())["fw"]
        assert fw.wait_line(r"CS:UNPROVISIONED", 10, start=mark), fw.lines[mark:]
        fw.detach_console()

        before = {p: p.stat().st_mtime_ns for p in (fw.cfg.folder / new_app.app_dir).rglob("*")}
        rc, out, err = run(capsys, "flash", "--port", host(fw))
        assert rc == 0, err
        assert f"app {new_app.app_id} is already installed ({new_app.app_dir}): nothing rewritten" in out
        assert "it was already installed" in out
        assert before == {p: p.stat().st_mtime_ns for p in (fw.cfg.folder / new_app.app_dir).rglob("*")}
    finally:
        fw.stop()


def test_flash_a_keypad_whose_image_has_a_romfs_partition(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str],
                                                         new_app: bundle.Bundle) -> None:
    fw = blank_keypad(tmp_path / "kp", romfs=True)
    try:
        rc, out, err = run(capsys, "flash", "--port", host(fw))
        assert rc == 0, err
        assert "the image goes there" in out and "ROMFS image verified" in out
        assert f"app {new_app.app_id} (romfs)" in out
        assert (fw.cfg.folder / "app.txt").read_text() == "/rom\n"
        image = new_app.image.read_bytes()
        assert (fw.cfg.folder / "romfs.partition").read_bytes()[:len(image)] == image
        assert not (fw.cfg.folder / "apps").exists()                   # nothing on the filesystem
        _version, mark = _boot(fw)
        assert fw.wait_line(r"CS:UNPROVISIONED", 10, start=mark), fw.lines[mark:]
        fw.detach_console()
        rc, out, err = run(capsys, "flash", "--port", host(fw))
        assert rc == 0 and "is already installed (/rom)" in out, err
        rc, out, err = run(capsys, "flash", "--port", host(fw), "--install", "mpy")
        assert rc == 0 and (fw.cfg.folder / "app.txt").read_text() == new_app.app_dir + "\n", err
    finally:
        fw.stop()


def test_install_romfs_refused_without_a_partition_and_old_trees_go(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], old_app: bundle.Bundle,
        new_app: bundle.Bundle) -> None:
    fw = blank_keypad(tmp_path / "kp")
    try:
        rc, _out, err = run(capsys, "flash", "--port", host(fw), "--install", "romfs")
        assert rc == 2 and "no ROMFS partition (stock images have none)" in err
        older = fw.cfg.folder / "apps" / "0123456789ab"
        (older / "cs").mkdir(parents=True)
        (older / "cs" / "app.mpy").write_bytes(b"M\x06")
        bundle.install_into(fw.cfg.folder, old_app)                    # the app running now
        (fw.cfg.folder / "boot.py").write_text("import esp\nesp.osdebug(None)\n")
        rc, out, err = run(capsys, "flash", "--port", host(fw))
        assert rc == 0, err
        apps = sorted(p.name for p in (fw.cfg.folder / "apps").iterdir())
        assert apps == sorted([old_app.app_id, new_app.app_id])        # the previous one kept
        assert "warning: boot.py holds code" in out and (fw.cfg.folder / "boot.py").exists()
    finally:
        fw.stop()


def _cut_run(tmp_path: Path, old_app: bundle.Bundle, mode: str, old_mode: str, n: int | None
             ) -> tuple[list[str], FirmwareDevice, dict[str, bytes], str | None]:
    """Flash a provisioned keypad in service mode, cutting its power at the n-th step (None: no cut)."""
    folder = tmp_path / f"kp-{mode}-{n}"
    fw = _provisioned(folder, old_app, old_mode, romfs=(mode == "romfs"))
    _boot(fw, SERVICE)
    assert fw.wait_line(r"CS:PROVISIONED", 20) is not None
    fw.detach_console()
    keep = _snapshot(folder)
    steps: list[str] = []
    pointer: list[str | None] = [None]

    def hook(step: str) -> None:
        steps.append(step)
        if n is not None and len(steps) == n:
            pointer[0] = (folder / "app.txt").read_text().strip()
            fw.kill()                                                  # the cable is pulled here

    try:
        flash(host(fw), timeout=1, install=mode, say=lambda _s: None, hook=hook)
    except NoAnswer:
        assert n is not None
    return steps, fw, keep, pointer[0]


@pytest.mark.parametrize(("mode", "old_mode"), [("mpy", "mpy"), ("romfs", "romfs")])
def test_a_cut_at_any_step_leaves_a_whole_app_and_the_keypad_data_untouched(
        tmp_path: Path, old_app: bundle.Bundle, new_app: bundle.Bundle, mode: str, old_mode: str) -> None:
    """Every step of the install, cut in turn: the keypad then boots the old app (cut before the
    switch) or the new one (after it), provisioned as before, its config, key and outbox as they were.
    romfs over romfs: the partition the running app lives in is rewritten only once the new tree is
    switched to, so a cut while the partition is half written boots the new app from its tree."""
    steps, fw, _keep, _p = _cut_run(tmp_path, old_app, mode, old_mode, None)
    fw.stop()
    old_fw = json.loads((old_app.path / "manifest.json").read_text())["fw"]
    new_fw = json.loads((new_app.path / "manifest.json").read_text())["fw"]
    assert steps[-1] == "reset" and "switched" in steps and steps.index("verified") < steps.index("switched")
    if mode == "romfs":
        assert steps.count("switched") == 2 and "rom-verified" in steps
    # every named step, and the first file of the tree (cutting after each of twenty adds nothing); the
    # romfs run's tree steps are the mpy run's, so there only the steps from the first switch on
    first_file = next(i for i, s in enumerate(steps) if s.startswith("file "))
    cuts = [i + 1 for i, s in enumerate(steps) if not s.startswith("file ") or i == first_file]
    if mode == "romfs":
        cuts = [n for n in cuts if n > steps.index("main")]
    seen = []
    for n in cuts:
        done, fw, keep, pointer = _cut_run(tmp_path, old_app, mode, old_mode, n)
        try:
            # (a step that needs no command, e.g. main.py already right, may still be passed after the cut)
            assert done[:n] == steps[:n]
            done = done[:n]
            assert _snapshot(fw.cfg.folder) == keep, f"cut after {done[-1]}: keypad data changed"
            version, mark = _boot(fw)
            assert fw.wait_line(r"CS:PROVISIONED id=hf01-w07 hall=hf01 window=7 outbox=2", 20,
                                start=mark), (done[-1], fw.lines[mark:])
            switched = "switched" in done
            assert version == (new_fw if switched else old_fw), (done[-1], pointer)
            seen.append((done[-1], version))
        finally:
            fw.stop()
    assert {v for _s, v in seen} == {old_fw, new_fw}


def test_erase_is_refused_on_a_keypad_with_a_config_or_unsent_ratings(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], old_app: bundle.Bundle) -> None:
    image = tmp_path / "ESP32_GENERIC_C3-20250415-v1.25.0.bin"
    image.write_bytes(b"\xe9\x03\x02\x20" + bytes(8) + b"\x05\x00" + bytes(50))
    fw = _provisioned(tmp_path / "kp", old_app)
    try:
        _boot(fw, SERVICE)
        fw.detach_console()
        keep = _snapshot(fw.cfg.folder)
        rc, out, err = run(capsys, "flash", "--port", host(fw), "--erase", "--image", str(image))
        assert rc == 2 and len(err.splitlines()) == 1
        assert "--erase refused" in err and "config.json" in err and "outbox.bin" in err
        assert _snapshot(fw.cfg.folder) == keep and (fw.cfg.folder / "app.txt").read_text().strip() == \
            old_app.app_dir
    finally:
        fw.stop()
    blank = blank_keypad(tmp_path / "blank")
    try:
        (blank.cfg.folder / "outbox.bin").write_bytes(b"\x01\x00\x02ab\x00\x00\x00\x00")
        rc, _out, err = run(capsys, "flash", "--port", host(blank), "--erase", "--image", str(image))
        assert rc == 2 and "an outbox.bin" in err and "config.json" not in err
        (blank.cfg.folder / "outbox.bin").unlink()
        rc, out, err = run(capsys, "flash", "--port", host(blank), "--erase", "--image", str(image))
        assert rc == 0, err                 # nothing to lose: a simulated keypad skips esptool itself
        assert "skip the MicroPython image and erase-flash" in out
    finally:
        blank.stop()


def test_dry_run_prints_every_step_and_touches_nothing(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "ESP32_GENERIC_C3-20250415-v1.25.0.bin"
    image.write_bytes(b"\xe9\x03\x02\x20" + bytes(8) + b"\x05\x00" + bytes(50))
    rc, out, err = run(capsys, "flash", "--port", "/dev/ttyUSB7", "--dry-run", "--image", str(image),
                       "--erase")
    assert rc == 0, err
    steps = [ln[len("[dry-run] "):] for ln in out.splitlines() if ln.startswith("[dry-run]")]
    assert steps[0].startswith("raw REPL on /dev/ttyUSB7: identify the board")
    assert steps[1].startswith("esptool --port /dev/ttyUSB7 chip-id")
    assert "chip id 5" in steps[2]
    assert steps[3].startswith("esptool --chip esp32c3 --port /dev/ttyUSB7 erase-flash")
    assert steps[4] == f"esptool --chip esp32c3 --port /dev/ttyUSB7 --baud 460800 write-flash 0 {image}"
    assert any("ROMFS partition" in s for s in steps) and any("apps/" in s for s in steps)
    assert steps[-2:] == ["raw REPL: remove boot.py if it holds only comments", "raw REPL: machine.reset()"]
    assert "rename app.txt.new over app.txt" in " ".join(steps)
    s3 = tmp_path / "ESP32_GENERIC_S3-20250415-v1.25.0.bin"
    s3.write_bytes(image.read_bytes())
    rc, _out, err = run(capsys, "flash", "--port", "/dev/ttyUSB7", "--dry-run", "--image", str(s3))
    assert rc == 2 and "is an image for the ESP32-S3; this board is an ESP32-C3" in err
