"""The whole app on the ESP32-C3 board module, on the MicroPython unix port, against fake `machine`,
`network` and `neopixel` modules that behave like the stock esp32 image (tests/fw/fake_esp32.py: the pin
table, the Wi-Fi driver's status sequence and its own reconnects, the watchdog), with the real hall
broker and gateway. The keypad runs from the esp32c3 bundle installed as on a keypad (a .mpy tree behind
app.txt), booted by the simulator's esp32 port in its heap budget.

A user would check: Wi-Fi is joined at boot with one connect(), MQTT waits for it, a press is rated and
acked, the LED lights, a Wi-Fi drop is survived with the rating kept and sent after the driver's own
rejoin (never a disconnect()), the watchdog is fed throughout, and the console answers `status` while
a Ctrl-C does not stop the app.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from mpy import FW_TESTS

from countersign.common import bundle
from countersign.sim.chain import Chain, ChainConfig
from countersign.sim.fwdevice import port_boot

STOCK_PINS = Path(__file__).resolve().parent.parent / "hardware" / "micropython-pins.json"
DRIVER_HEAP = 32768     # the test's driver and fakes, on top of the keypad's budget


def test_the_app_on_the_esp32c3_board_joins_wifi_rates_survives_a_drop(tmp_path: Path) -> None:
    c = Chain(ChainConfig(workdir=tmp_path / "chain", devices=1, firmware=1, retry_s=1.0))
    c.start(devices=False)
    try:
        c.sign_in("1", "10001", "张伟")
        fc = c.firmware_config(c.device_ids[0])
        fc.extra = {"board": "esp32c3", "wifi_ssid": "hall-wifi", "wifi_password": "secret", "oled": False}
        fc.write()
        built = bundle.build("esp32c3", fc.bundle)
        bundle.install_into(fc.folder, built, "mpy")
        for name in ("fake_esp32", "mp_esp32_app"):
            subprocess.run([bundle.mpy_cross_exe(), "-o", str(fc.folder / f"{name}.mpy"),
                            str(FW_TESTS / f"{name}.py")], check=True)
        cmd, env = port_boot(bundle.device_heap("mpy") + DRIVER_HEAP, main="mp_esp32_app",
                             env={"CS_STOCK_PINS": str(STOCK_PINS)})
        r = subprocess.run(cmd, cwd=fc.folder, input="\x03status\n", capture_output=True, text=True,
                           timeout=180, env=env, check=False)
    finally:
        c.stop()
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "passed" in out, out[-4000:]
    for name in ("Wi-Fi started at boot: one connect()", "no access point: no Wi-Fi, no MQTT attempt",
                 "the rating acked by the gateway", "the LED showed green for the press",
                 "MQTT session dropped with the Wi-Fi", "the offline rating acked after the rejoin",
                 "one connect() in all, disconnect() never", "the watchdog fed all along"):
        assert f"ok {name}" in out, out[-4000:]
    assert "CS:WIFI up" in out and "CS:WIFI down" in out
    status = [line for line in out.splitlines() if line.startswith("CS:STATUS ")]
    assert status, "the console did not answer status (a Ctrl-C before it must not stop the app)"
    assert json.loads(status[0][len("CS:STATUS "):])["id"] == c.device_ids[0]
    assert "KeyboardInterrupt" not in out
