"""`countersign device flash | provision | inspect` against virtual keypads: the real firmware on the
MicroPython unix port behind a socat serial cable, booted as an esp32 boots (sim/port/esp32boot.py:
watchdog, reset line), driven over mpremote's raw REPL, with the real hall broker and gateway process
(reloaded by SIGHUP). A provisioned keypad offers its REPL only in service mode (keys 1 and 4 held at
power-up); the tests put it there as a technician would."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from device_helpers import (
    blank_keypad,
    hall_args,
    hall_with_gateway_process,
    host,
    power_cycle,
    run,
    service_mode,
    wait_reset,
)

from countersign.common import bundle
from countersign.device import provision as prov
from countersign.device.errors import DeviceToolError
from countersign.device.hall import HallFiles
from countersign.device.inspect import text
from countersign.protocol.keystore import Keystore
from countersign.sim.chain import Chain
from countersign.sim.fwdevice import FirmwareDevice
from countersign.sim.serialport import VirtualSerial


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    yield from hall_with_gateway_process(tmp_path)


def _blank(chain: Chain, name: str = "new") -> FirmwareDevice:
    fw = blank_keypad(chain.cfg.workdir / "keypads" / name, chain.hall_port, chain.port())
    chain.fw[name] = fw                   # stopped with the chain
    return fw


def _gateway_rows(chain: Chain, dev: str) -> list[tuple[int, int, int]]:
    conn = sqlite3.connect(chain.first.db_path)
    try:
        return conn.execute("SELECT epoch, seq, score FROM ratings WHERE device = ? ORDER BY seq",
                            (dev,)).fetchall()
    finally:
        conn.close()


def test_flash_provision_and_a_rating_reaches_the_gateway(chain: Chain, capsys: pytest.CaptureFixture[str],
                                                           tmp_path: Path) -> None:
    fw = _blank(chain)
    port = host(fw)
    mark = fw.mark()
    rc, out, err = run(capsys, "flash", "--port", port)
    assert rc == 0, err
    b = bundle.build("sim")
    assert "no usable ROMFS partition" in out and f"app {b.app_id} (mpy) on a sim keypad" in out
    assert (fw.cfg.folder / "app.txt").read_text() == f"{b.app_dir}\n"
    assert wait_reset(fw, mark)                        # flash ends with machine.reset()
    mark = fw.mark()

    svg = tmp_path / "label.svg"
    rc, out, err = run(capsys, "provision", "--port", port, "--window", "5",
                        "--option", f"sim_port={fw.cfg.sim_port}", "--label-svg", str(svg),
                        *hall_args(chain))
    assert rc == 0, err                                # unprovisioned: its REPL needs no service mode
    m = re.search(r"provisioned (hf01-[0-9a-f]{6}): hall hf01, window 5, epoch 1", out)
    assert m, out
    dev = m.group(1)
    assert "the keypad was reset" in out and dev in out and "█" in out and svg.read_text().startswith("<?xml")
    assert wait_reset(fw, mark)
    # Registered everywhere, key and all, and nothing secret on the label.
    ks = Keystore.load(chain.first.keystore_path)
    key = (fw.cfg.folder / "device.key").read_bytes()
    assert ks.devices[dev].key == key and ks.devices[dev].window == "5" and not ks.devices[dev].revoked
    assert Keystore.load(chain.registry_path).devices[dev].key == key
    assert (chain.first.dir / "hall-broker" / "passwd").read_text().count(f"{dev}:$7$") == 1
    assert key.hex() not in out
    assert chain.province is not None
    chain.province.reload_registry()                  # the province's own step for a new key

    mark = power_cycle(fw)
    assert fw.wait_line(rf"CS:PROVISIONED id={dev} hall=hf01 window=5", 20, start=mark), fw.lines[mark:]
    assert fw.wait_line(r"CS:LINK up", 20, start=mark), fw.lines[mark:]
    # The gateway re-reads its keystore on the SIGHUP the tool sent; that is asynchronous.
    gw = chain.gateway
    assert gw is not None and gw.wait_until(lambda: dev in gw.status()["devices"], 15)
    chain.sign_in("5", "10005", "陈静")      # as the roster has them (sim.chain.roster_rows)
    assert fw.wait_line(r"CS:SESSION clerk=10005", 10, start=mark), fw.lines[mark:]
    seq = fw.invite_and_rate(3)
    assert fw.wait_line(rf"CS:STORED seq={seq}\b", 30, start=mark), fw.lines[mark:]
    assert _gateway_rows(chain, dev) == [(1, seq, 3)]

    # inspect in normal mode: the live status only, and how to get the rest.
    fw.detach_console()
    rc, out, err = run(capsys, "inspect", "--port", port, "--json", "--timeout", "2")
    assert rc == 0, err
    r = json.loads(out)
    assert r["mode"] == "normal" and not r["repl"] and r["live"]["id"] == dev and r["live"]["outbox"] == 0
    assert "service mode" in r["note"] and "keys 1 and 4" in r["note"]
    assert r["config"] is None and fw.resets == [2, 2]   # nothing was stopped or reset
    shown = text(r)
    assert "mode          normal" in shown and f"id            {dev}" in shown and "keys 1 and 4" in shown

    # inspect in service mode: read over serial, secrets left out, and the keypad reset afterwards.
    service_mode(fw)
    mark = fw.mark()
    rc, out, err = run(capsys, "inspect", "--port", port, "--json")
    assert rc == 0, err
    r = json.loads(out)
    assert r["mode"] == "service" and r["repl"] and r["app"] == b.app_dir
    assert r["fw"] and r["provisioned"] and r["config"]["device_id"] == dev and r["outbox_depth"] == 0
    # (the boot into service mode may have compacted the log: the ack record can be gone with the item)
    assert r["last_ack"] in (None, {"epoch": 1, "seqs": [seq]}) and r["reset_cause"] == 1
    assert r["state"]["epoch"] == 1 and r["state"]["boot"] >= 2
    assert r["running"] and r["link"] is True and r["heap_free"] > 0 and r["resumed"]
    assert r["heap_free_at_rest"] > 4096
    assert "wifi_password" not in r["config"] and key.hex() not in out
    shown = text(r)
    assert "mode          service" in shown and "outbox        0 unsent" in shown
    assert "the keypad was reset: it boots in normal mode" in shown
    assert wait_reset(fw, mark)
    mark = power_cycle(fw)
    assert fw.wait_line(r"CS:LINK up", 20, start=mark), fw.lines[mark:]
    seq2 = fw.invite_and_rate(4)
    assert fw.wait_line(rf"CS:STORED seq={seq2}\b", 10, start=mark), fw.lines[mark:]


def test_wrong_port_a_silent_port_and_a_host_name_for_the_broker(capsys: pytest.CaptureFixture[str],
                                                                  tmp_path: Path) -> None:
    ks = tmp_path / "keystore.json"
    Keystore(hall="hf01").save(ks)
    rc, _out, err = run(capsys, "provision", "--port", "/dev/ttyX", "--window", "1", "--keystore", str(ks),
                        "--broker-host", "127.0.0.1")
    assert rc == 2 and err.strip() == "countersign device: no such serial port /dev/ttyX"
    rc, _out, err = run(capsys, "inspect", "--port", "/dev/ttyX")
    assert rc == 2 and "no such serial port /dev/ttyX" in err and "Traceback" not in err
    rc, _out, err = run(capsys, "provision", "--port", "/dev/ttyX", "--window", "1", "--keystore", str(ks),
                        "--broker-host", "gateway.hall.local")
    assert rc == 2 and len(err.splitlines()) == 1
    assert "--broker-host 'gateway.hall.local' is not an IPv4 address" in err
    cable = VirtualSerial(tmp_path / "silent").start()   # a cable with nothing on the other end
    try:
        rc, out, err = run(capsys, "provision", "--port", str(cable.host), "--window", "1", "--keystore",
                           str(ks), "--broker-host", "127.0.0.1", "--timeout", "1")
    finally:
        cable.stop()
    assert rc == 2 and f"no keypad answers on {cable.host}" in err and len(err.splitlines()) == 1
    assert out == ""                                     # mpremote's own printout does not leak
    assert Keystore.load(ks).devices == {}


def test_interrupted_provisioning_leaves_it_unprovisioned_then_refusal_service_mode_and_force(
        chain: Chain, capsys: pytest.CaptureFixture[str]) -> None:
    fw = _blank(chain)
    fw.install()                                       # flashed, never provisioned
    fw.kill()
    fw.start(write_config=False, install=False)
    port = host(fw)
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
        prov.provision(port, hall, req, timeout=2, hook=cut)
    assert (fw.cfg.folder / "device.key").exists() and not (fw.cfg.folder / "config.json").exists()
    after = (h.keystore_path.read_text(), chain.registry_path.read_text(),
             (h.dir / "hall-broker" / "passwd").read_text())
    assert after == before                             # no file lists the half-provisioned keypad
    mark = power_cycle(fw)
    assert fw.wait_line(r"CS:UNPROVISIONED", 20, start=mark), fw.lines[mark:]
    fw.detach_console()

    rc, out, err = run(capsys, "provision", "--port", port, "--window", "6", "--device-id", "hf01-k6",
                        "--option", f"sim_port={fw.cfg.sim_port}", *hall_args(chain))
    assert rc == 0, err                               # no --force needed: it was never provisioned
    assert "provisioned hf01-k6: hall hf01, window 6, epoch 1" in out
    first_key = (fw.cfg.folder / "device.key").read_bytes()

    # Provisioned, in normal mode (after the tool's reset): no REPL, and the refusal says what to do.
    rc, out, err = run(capsys, "provision", "--port", port, "--window", "6", "--device-id", "hf01-k6",
                        "--force", "--timeout", "2", "--option", f"sim_port={fw.cfg.sim_port}",
                        *hall_args(chain))
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "runs in normal mode (no REPL)" in err and "service mode: hold keys 1 and 4" in err
    assert Keystore.load(h.keystore_path).devices["hf01-k6"].epoch == 1

    service_mode(fw)
    rc, out, err = run(capsys, "provision", "--port", port, "--window", "6", "--device-id", "hf01-k6",
                        "--option", f"sim_port={fw.cfg.sim_port}", *hall_args(chain))
    assert rc == 2 and "Traceback" not in err
    assert err.strip() == ("countersign device: keypad on " + port + " is already provisioned as hf01-k6 "
                           "(hall hf01, window 6, epoch 1); use --force to provision it again")
    assert Keystore.load(h.keystore_path).devices["hf01-k6"].epoch == 1
    assert chain.province is not None
    chain.province.reload_registry()

    service_mode(fw)          # the refusal left it in the REPL, where its watchdog resets it
    rc, out, err = run(capsys, "provision", "--port", port, "--window", "6", "--device-id", "hf01-k6",
                        "--force", "--option", f"sim_port={fw.cfg.sim_port}", *hall_args(chain))
    assert rc == 0, err
    assert "provisioned hf01-k6: hall hf01, window 6, epoch 2" in out   # re-keyed with a new epoch
    ks = Keystore.load(h.keystore_path)
    new_key = (fw.cfg.folder / "device.key").read_bytes()
    assert ks.devices["hf01-k6"].epoch == 2 and ks.devices["hf01-k6"].key == new_key != first_key
    mark = power_cycle(fw)
    assert fw.wait_line(r"CS:BOOT fw=\S+ boot=\d+ epoch=2", 20, start=mark), fw.lines[mark:]
    assert fw.wait_line(r"CS:LINK up", 20, start=mark), fw.lines[mark:]
    chain.sign_in("6", "10006", "杨磊")
    assert fw.wait_line(r"CS:SESSION clerk=10006", 10, start=mark), fw.lines[mark:]
    seq = fw.invite_and_rate(2)
    assert fw.wait_line(rf"CS:STORED seq={seq}\b", 30, start=mark), fw.lines[mark:]
    assert _gateway_rows(chain, "hf01-k6") == [(2, seq, 2)]


def test_reprovisioning_removes_the_old_key_with_the_old_config_first(
        chain: Chain, capsys: pytest.CaptureFixture[str]) -> None:
    """--force on a provisioned keypad, cut right after the first step: the keypad is unprovisioned
    (it offers a REPL to anyone) and holds no key at all, neither the registered one nor a new one."""
    cfg = chain.firmware_config("hf01-w01")
    cfg.console = "pty"
    cfg.read_console = False
    fw = chain.fw["hf01-w01"] = FirmwareDevice(cfg)
    fw.start()                                         # provisioned and flashed at the depot
    registered = (fw.cfg.folder / "device.key").read_bytes()
    assert Keystore.load(chain.first.keystore_path).devices["hf01-w01"].key == registered
    h = chain.first
    hall = HallFiles(h.keystore_path, chain.registry_path, h.dir / "hall-broker")
    req = prov.ProvisionRequest(window="1", broker_host="127.0.0.1", broker_port=h.port,
                                device_id="hf01-w01", options={"sim_port": fw.cfg.sim_port})
    steps: list[str] = []

    def cut(step: str) -> None:
        steps.append(step)
        if step == "unprovisioned":
            assert not (fw.cfg.folder / "config.json").exists()
            assert not (fw.cfg.folder / "device.key").exists()
            fw.kill()

    service_mode(fw)
    with pytest.raises(DeviceToolError, match="stopped answering"):
        prov.provision(host(fw), hall, req, force=True, timeout=2, hook=cut)
    assert steps == ["unprovisioned"]
    assert not (fw.cfg.folder / "device.key").exists() and not (fw.cfg.folder / "config.json").exists()
    mark = power_cycle(fw)
    assert fw.wait_line(r"CS:UNPROVISIONED", 20, start=mark), fw.lines[mark:]
