"""Run by tests/test_73_embedded_console.py as a nested pytest with pytest-embedded's serial service:

    pytest -p pytest_embedded --embedded-services serial --port <host end of the keypad's cable>

exactly as one would drive a USB-attached keypad on a technician's bench.
"""

import json
import re


def test_boot_banner_provisioned_and_status(dut) -> None:  # type: ignore[no-untyped-def]
    print("CONSOLE-OPEN", flush=True)        # the outer test powers the keypad on when it sees this
    banner = dut.expect(re.compile(rb"CS:BOOT fw=(\S+) boot=(\d+)"), timeout=30)
    assert banner.group(1)
    prov = dut.expect(re.compile(rb"CS:PROVISIONED id=(\S+) hall=(\S+) window=(\S+)"), timeout=10)
    assert prov.group(1) == b"hf01-w01" and prov.group(2) == b"hf01"
    dut.expect("CS:LINK up", timeout=20)
    dut.write("status")
    m = dut.expect(re.compile(rb"CS:STATUS (\{.*\})"), timeout=10)
    status = json.loads(m.group(1))
    assert status["id"] == "hf01-w01" and status["provisioned"] is True and status["link"] is True
    assert status["fw"] == banner.group(1).decode()
    dut.write("reboot-please")
    dut.expect("CS:UNKNOWN-COMMAND reboot-please", timeout=10)
