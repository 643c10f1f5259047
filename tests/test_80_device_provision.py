"""`countersign device flash | provision | inspect` against virtual keypads: the real firmware on the
MicroPython unix port behind a socat serial cable, driven over mpremote's raw REPL, with the real hall
broker and gateway process (reloaded by SIGHUP)."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from device_helpers import hall_args, hall_with_gateway_process, run

from countersign.device import provision as prov
from countersign.device.errors import DeviceToolError
from countersign.device.hall import HallFiles
from countersign.protocol.keystore import Keystore
from countersign.sim.chain import Chain
from countersign.sim.fwdevice import FirmwareConfig, FirmwareDevice
from countersign.sim.serialport import VirtualSerial


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    yield from hall_with_gateway_process(tmp_path)


def _blank_keypad(chain: Chain, name: str = "new") -> FirmwareDevice:
    """A keypad fresh from the box: MicroPython and its REPL only (no app, no identity)."""
    cfg = FirmwareConfig("unset", b"\0" * 32, chain.cfg.workdir / "keypads" / name, chain.hall_port,
                         chain.port(), console="pty", read_console=False)
    fw = FirmwareDevice(cfg)
    chain.fw[name] = fw                   # stopped with the chain
    fw.start(write_config=False, install=False)
    return fw






def _power_cycle(fw: FirmwareDevice) -> int:
    fw.kill()
    mark = fw.mark()
    fw.attach_console()
    fw.start(write_config=False, install=False)
    return mark




def _gateway_rows(chain: Chain, dev: str) -> list[tuple[int, int, int]]:
    conn = sqlite3.connect(chain.first.db_path)
    try:
        return conn.execute("SELECT epoch, seq, score FROM ratings WHERE device = ? ORDER BY seq",
                            (dev,)).fetchall()
    finally:
        conn.close()


def test_flash_provision_and_a_rating_reaches_the_gateway(chain: Chain, capsys: pytest.CaptureFixture[str],
                                                           tmp_path: Path) -> None:
    fw = _blank_keypad(chain)
    host = str(fw.serial.host) if fw.serial else ""
    rc, out, err = run(capsys, "flash", "--port", host)
    assert rc == 0, err
    assert "skip the MicroPython image" in out and "firmware.romfs" in out
    assert (fw.cfg.folder / "firmware.romfs").exists() and (fw.cfg.folder / "main.py").exists()

    svg = tmp_path / "label.svg"
    rc, out, err = run(capsys, "provision", "--port", host, "--window", "5",
                        "--option", f"sim_port={fw.cfg.sim_port}", "--label-svg", str(svg),
                        *hall_args(chain))
    assert rc == 0, err
    m = re.search(r"provisioned (hf01-[0-9a-f]{6}): hall hf01, window 5, epoch 1", out)
    assert m, out
    dev = m.group(1)
    assert "power-cycle" in out and dev in out and "█" in out and svg.read_text().startswith("<?xml")
    # Registered everywhere, key and all, and nothing secret on the label.
    ks = Keystore.load(chain.first.keystore_path)
    key = (fw.cfg.folder / "device.key").read_bytes()
    assert ks.devices[dev].key == key and ks.devices[dev].window == "5" and not ks.devices[dev].revoked
    assert Keystore.load(chain.registry_path).devices[dev].key == key
    assert (chain.first.dir / "hall-broker" / "passwd").read_text().count(f"{dev}:$7$") == 1
    assert key.hex() not in out
    assert chain.province is not None
    chain.province.reload_registry()                  # the province's own step for a new key

    mark = _power_cycle(fw)
    assert fw.wait_line(rf"CS:PROVISIONED id={dev} hall=hf01 window=5", 20, start=mark), fw.lines[mark:]
    assert fw.wait_line(r"CS:LINK up", 20, start=mark), fw.lines[mark:]
    # The gateway re-reads its keystore on the SIGHUP the tool sent; that is asynchronous.
    gw = chain.gateway
    assert gw is not None and gw.wait_until(lambda: dev in gw.status()["devices"], 15)
    chain.sign_in("5", "10005", "李娜")
    assert fw.wait_line(r"CS:SESSION clerk=10005", 10, start=mark), fw.lines[mark:]
    seq = fw.invite_and_rate(3)
    assert fw.wait_line(rf"CS:STORED seq={seq}\b", 30, start=mark), fw.lines[mark:]
    assert _gateway_rows(chain, dev) == [(1, seq, 3)]

    # inspect: read over serial, secrets left out, and the keypad keeps working afterwards.
    fw.detach_console()
    rc, out, err = run(capsys, "inspect", "--port", host, "--json")
    assert rc == 0, err
    r = json.loads(out)
    assert r["fw"] and r["provisioned"] and r["config"]["device_id"] == dev and r["outbox_depth"] == 0
    assert r["last_ack"] == {"epoch": 1, "seqs": [seq]} and r["reset_cause"] == 1
    assert r["running"] and r["link"] is True and r["heap_free"] > 0 and r["resumed"]
    assert r["heap_free_at_rest"] > 4096
    assert "wifi_password" not in r["config"] and key.hex() not in out
    mark = fw.mark()
    fw.attach_console()
    assert fw.wait_line(r"SIM LISTEN", 20, start=mark), fw.lines[mark:]
    assert fw.wait_line(r"CS:LINK up", 20, start=mark), fw.lines[mark:]
    fw.release_keys()                                  # the restarted app listens afresh
    seq2 = fw.invite_and_rate(4)
    assert fw.wait_line(rf"CS:STORED seq={seq2}\b", 10, start=mark), fw.lines[mark:]


def test_flash_dry_run_prints_every_step(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _err = run(capsys, "flash", "--port", "/dev/ttyUSB7", "--dry-run", "--image", "/tmp/mp.bin")
    assert rc == 0
    steps = [ln for ln in out.splitlines() if ln.startswith("[dry-run]")]
    assert steps == ["[dry-run] esptool.py --chip esp32c3 --port /dev/ttyUSB7 write_flash 0 /tmp/mp.bin",
                     f"[dry-run] mpremote connect /dev/ttyUSB7 romfs deploy {steps[1].split()[-1]}",
                     f"[dry-run] mpremote connect /dev/ttyUSB7 cp {steps[2].split()[-2]} :main.py",
                     "[dry-run] mpremote connect /dev/ttyUSB7 reset"]
    assert steps[1].endswith("firmware.romfs")


def test_wrong_port_and_a_keypad_that_does_not_answer(capsys: pytest.CaptureFixture[str],
                                                      tmp_path: Path) -> None:
    ks = tmp_path / "keystore.json"
    Keystore(hall="hf01").save(ks)
    rc, _out, err = run(capsys, "provision", "--port", "/dev/ttyX", "--window", "1", "--keystore", str(ks),
                        "--broker-host", "127.0.0.1")
    assert rc == 2 and err.strip() == "countersign device: no such serial port /dev/ttyX"
    rc, _out, err = run(capsys, "inspect", "--port", "/dev/ttyX")
    assert rc == 2 and "no such serial port /dev/ttyX" in err and "Traceback" not in err
    cable = VirtualSerial(tmp_path / "silent").start()   # a cable with nothing on the other end
    try:
        rc, _out, err = run(capsys, "provision", "--port", str(cable.host), "--window", "1", "--keystore",
                            str(ks), "--broker-host", "127.0.0.1", "--timeout", "1")
    finally:
        cable.stop()
    assert rc == 2 and f"no keypad answers on {cable.host}" in err and len(err.splitlines()) == 1
    assert Keystore.load(ks).devices == {}


def test_interrupted_provisioning_leaves_it_unprovisioned_then_refusal_and_force(
        chain: Chain, capsys: pytest.CaptureFixture[str]) -> None:
    fw = _blank_keypad(chain)
    fw.install()                                       # flashed, never provisioned
    fw.kill()
    fw.start(write_config=False, install=False)
    host = str(fw.serial.host) if fw.serial else ""
    h = chain.first
    hall = HallFiles(h.keystore_path, chain.registry_path, h.dir / "hall-broker")
    before = (h.keystore_path.read_text(), chain.registry_path.read_text(),
              (h.dir / "hall-broker" / "passwd").read_text())
    req = prov.ProvisionRequest(window="6", broker_host="127.0.0.1", broker_port=h.port,
                                options={"sim_port": fw.cfg.sim_port})

    def cut(step: str) -> None:
        if step == "key-written":
            fw.kill()                                  # power cut between the key and the config

    with pytest.raises(DeviceToolError, match="stopped answering"):
        prov.provision(host, hall, req, timeout=2, hook=cut)
    assert (fw.cfg.folder / "device.key").exists() and not (fw.cfg.folder / "config.json").exists()
    after = (h.keystore_path.read_text(), chain.registry_path.read_text(),
             (h.dir / "hall-broker" / "passwd").read_text())
    assert after == before                             # no file lists the half-provisioned keypad
    mark = _power_cycle(fw)
    assert fw.wait_line(r"CS:UNPROVISIONED", 20, start=mark), fw.lines[mark:]
    fw.detach_console()

    rc, out, err = run(capsys, "provision", "--port", host, "--window", "6", "--device-id", "hf01-k6",
                        "--option", f"sim_port={fw.cfg.sim_port}", *hall_args(chain))
    assert rc == 0, err                               # no --force needed: it was never provisioned
    assert "provisioned hf01-k6: hall hf01, window 6, epoch 1" in out

    rc, out, err = run(capsys, "provision", "--port", host, "--window", "6", "--device-id", "hf01-k6",
                        "--option", f"sim_port={fw.cfg.sim_port}", *hall_args(chain))
    assert rc == 2 and "Traceback" not in err
    assert err.strip() == ("countersign device: keypad on " + host + " is already provisioned as hf01-k6 "
                           "(hall hf01, window 6, epoch 1); use --force to provision it again")
    assert Keystore.load(h.keystore_path).devices["hf01-k6"].epoch == 1
    assert chain.province is not None
    chain.province.reload_registry()

    rc, out, err = run(capsys, "provision", "--port", host, "--window", "6", "--device-id", "hf01-k6",
                        "--force", "--option", f"sim_port={fw.cfg.sim_port}", *hall_args(chain))
    assert rc == 0, err
    assert "provisioned hf01-k6: hall hf01, window 6, epoch 2" in out   # re-keyed with a new epoch
    ks = Keystore.load(h.keystore_path)
    assert ks.devices["hf01-k6"].epoch == 2 and ks.devices["hf01-k6"].key == (
        fw.cfg.folder / "device.key").read_bytes()
    mark = _power_cycle(fw)
    assert fw.wait_line(r"CS:BOOT fw=\S+ boot=\d+ epoch=2", 20, start=mark), fw.lines[mark:]
    assert fw.wait_line(r"CS:LINK up", 20, start=mark), fw.lines[mark:]
    chain.sign_in("6", "10006", "赵敏")
    assert fw.wait_line(r"CS:SESSION clerk=10006", 10, start=mark), fw.lines[mark:]
    seq = fw.invite_and_rate(2)
    assert fw.wait_line(rf"CS:STORED seq={seq}\b", 30, start=mark), fw.lines[mark:]
    assert _gateway_rows(chain, "hf01-k6") == [(2, seq, 2)]
