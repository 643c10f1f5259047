"""Technician sessions against a keypad whose watchdog keeps running, as an ESP32's does.

A keypad's app arms an 8 s hardware watchdog; on an esp32 it keeps running when Ctrl-C stops the app
(service mode) and the raw REPL takes over, so a tool session longer than 8 s would be cut off by a
reset. The simulator's chip does the same (sim/fwdevice.py kills and restarts the keypad process). The
tool's session extends the watchdog first and gives the keypad its own back at the end: a long session
is not cut off, and a keypad the tool leaves in the REPL resets 8 s later as it would unattended. The
same session with the extension disabled is cut off: the negative that shows the test can fail.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from device_helpers import SERVICE, host, power_cycle, run, wait_reset

from countersign.common import bundle
from countersign.common.outbox import Outbox
from countersign.device.errors import NoAnswer, NormalMode
from countersign.device.link import KeypadLink
from countersign.sim.broker import free_port
from countersign.sim.fwdevice import FirmwareConfig, FirmwareDevice

WDT_S = 8.0


def _keypad(folder: Path, pending: int = 0) -> FirmwareDevice:
    """A provisioned keypad with ``pending`` unsent ratings (its hall broker out of reach)."""
    cfg = FirmwareConfig("hf01-w09", bytes(range(1, 33)), folder, free_port(), free_port(), hall="hf01",
                         window="9", console="pty", read_console=False)
    cfg.write()
    if pending:
        ob = Outbox(folder / "outbox.bin", compact_min=1 << 30)
        for seq in range(1, pending + 1):
            ob.append(1, seq, b"\xd2\x84\x43\xa1\x01\x05" + seq.to_bytes(4, "big") + bytes(74))
        ob.close()
    return FirmwareDevice(cfg)


def _service(fw: FirmwareDevice, timeout: float = 30.0) -> None:
    mark = power_cycle(fw, SERVICE, hold_s=2.3)
    assert fw.wait_line(r"CS:PROVISIONED", timeout, start=mark), fw.lines[mark:]
    assert fw.count(r"CS:SERVICE") > 0
    fw.detach_console()


@pytest.fixture
def keypad(tmp_path: Path) -> Iterator[FirmwareDevice]:
    fw = _keypad(tmp_path / "kp")
    fw.install()
    yield fw
    fw.stop()


def _hold_open(link: KeypadLink, seconds: float) -> str:
    """Keep the session busy on the keypad for ``seconds`` (nobody feeds the watchdog meanwhile)."""
    return link.exec(f"import time\ntime.sleep({seconds})\nprint('still here')", timeout=seconds + 2)


def test_a_session_longer_than_the_watchdog_is_not_cut_off(keypad: FirmwareDevice) -> None:
    _service(keypad)
    mark = keypad.mark()
    with KeypadLink(host(keypad), 3) as link:
        assert link.extended and link.board.app_ran and link.board.wdt_ms == 8000
        assert _hold_open(link, WDT_S + 1.5).strip() == "still here"
        assert link.exec("print(6*7)").strip() == "42"
        left = time.monotonic()
    assert keypad.resets == []                              # 9.5 s in the REPL, no watchdog reset
    # Its own watchdog is back: left in the REPL, the keypad resets about 8 s after the tool let go.
    assert wait_reset(keypad, mark, cause=3, timeout=WDT_S + 4)
    assert time.monotonic() - left >= WDT_S - 0.5
    assert keypad.resets == [3]


def test_without_the_extension_the_same_session_is_cut_off(keypad: FirmwareDevice,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(KeypadLink, "_enter_code", staticmethod(lambda: "print(0)"))
    _service(keypad)
    mark = keypad.mark()
    with KeypadLink(host(keypad), 3) as link, pytest.raises(NoAnswer, match="stopped answering"):
        _hold_open(link, WDT_S + 1.5)
    assert wait_reset(keypad, mark, cause=3, timeout=1)      # the watchdog reset the keypad mid-session
    assert keypad.resets == [3]


def test_inspect_reads_an_outbox_of_2100_pending_ratings_then_leaves_the_keypad_to_its_watchdog(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fw = _keypad(tmp_path / "kp", pending=2100)
    fw.install()
    try:
        size = (fw.cfg.folder / "outbox.bin").stat().st_size
        assert size > 2100 * 90
        _service(fw, timeout=60)
        mark = fw.mark()
        t0 = time.monotonic()
        rc, out, err = run(capsys, "inspect", "--port", host(fw), "--json", "--no-resume")
        took = time.monotonic() - t0
        assert rc == 0, err
        r = json.loads(out)
        assert r["outbox_depth"] == 2100 and r["outbox_pending"] == [[1, s] for s in range(1, 2101)]
        assert r["mode"] == "service" and not r["resumed"] and r["wdt_ms"] == 8000
        assert r["live"]["outbox"] == 2100                 # the running app said the same
        assert fw.resets == []
        # In bulk: the old link's 256 bytes per round trip took minutes for this file.
        assert took < 20, took
        assert wait_reset(fw, mark, cause=3, timeout=WDT_S + 4)   # --no-resume: its watchdog, 8 s later
        assert time.monotonic() - t0 - took >= WDT_S - 0.5
    finally:
        fw.stop()


def test_a_keypad_in_normal_mode_offers_no_repl_and_the_tools_say_how_to_get_one(
        keypad: FirmwareDevice, capsys: pytest.CaptureFixture[str]) -> None:
    mark = power_cycle(keypad)
    assert keypad.wait_line(r"CS:PROVISIONED", 20, start=mark), keypad.lines[mark:]
    keypad.detach_console()
    with pytest.raises(NormalMode, match=r"\(hf01-w09\) runs in normal mode, which offers no REPL: "
                                         r"restart it in service mode: hold keys 1 and 4"):
        KeypadLink(host(keypad), 2).open()
    rc, out, err = run(capsys, "flash", "--port", host(keypad), "--timeout", "2")
    assert rc == 2 and len(err.splitlines()) == 1 and "service mode: hold keys 1 and 4" in err
    assert out == ""                      # what mpremote read while refused is not printed
    assert keypad.resets == []            # the app was never stopped
    assert (keypad.cfg.folder / "app.txt").read_text().strip() == bundle.build("sim").app_dir


def test_an_unprovisioned_keypad_gets_no_watchdog_from_the_tool(tmp_path: Path) -> None:
    """Its app never ran, so no watchdog is armed, and the tool must not arm one (WDT() starts it)."""
    cfg = FirmwareConfig("unset", b"\0" * 32, tmp_path / "kp", free_port(), free_port(), console="pty",
                         read_console=False)
    fw = FirmwareDevice(cfg)
    fw.start(write_config=False)
    try:
        with KeypadLink(host(fw), 3) as link:
            assert not link.extended and not link.board.app_ran
        with KeypadLink(host(fw), 3) as link:      # still the same boot: nothing reset it
            assert link.exec("print(1)").strip() == "1"
        assert fw.resets == []
    finally:
        fw.stop()
