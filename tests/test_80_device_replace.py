"""`countersign device replace`: a keypad with unsent ratings (made while the hall broker was down, then
its Wi-Fi gone for good) is replaced; its ratings reach the gateway before its key is revoked, and the
new keypad rates at once. The old keypad's outbox is read in service mode (keys 1 and 4 held at
power-up): in normal mode it offers no REPL and the tool says so."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from device_helpers import hall_args, hall_with_gateway_process, host, power_cycle, run, service_mode

from countersign.protocol.keystore import Keystore
from countersign.sim.broker import free_port
from countersign.sim.chain import Chain
from countersign.sim.fwdevice import FirmwareConfig, FirmwareDevice

OLD = "hf01-w01"


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    yield from hall_with_gateway_process(tmp_path)


def _rows(chain: Chain, dev: str) -> list[tuple[int, int, int]]:
    conn = sqlite3.connect(chain.first.db_path)
    try:
        return conn.execute("SELECT epoch, seq, score FROM ratings WHERE device = ? ORDER BY epoch, seq",
                            (dev,)).fetchall()
    finally:
        conn.close()


def _old_keypad_with_pending(chain: Chain, capsys: pytest.CaptureFixture[str]) -> tuple[FirmwareDevice, str]:
    """hf01-w01 makes two ratings while the hall broker is down; then its Wi-Fi dies for good (its config
    is pointed at a dead port: it can never send them itself, a usual reason to replace a keypad). The
    broker comes back; inspect, in service mode, shows the two ratings waiting. Left in normal mode."""
    cfg = chain.firmware_config(OLD)
    cfg.console = "pty"
    fw = chain.fw[OLD] = FirmwareDevice(cfg)
    mark = fw.mark()
    fw.start()
    assert fw.wait_line(r"CS:LINK up", 20, start=mark), fw.lines[mark:]
    chain.sign_in("1", "10001", "张伟")
    assert fw.wait_line(r"CS:TIME", 10, start=mark)
    # The invite key needs the signed-in clerk on the keypad before its broker goes away.
    assert fw.wait_line(r"CS:SESSION clerk=10001", 10, start=mark)
    chain.hall_broker.stop()
    seqs = [fw.invite_and_rate(4), fw.invite_and_rate(2)]
    fw.kill()
    path = fw.cfg.folder / "config.json"
    doc = json.loads(path.read_text())
    doc["broker_port"] = free_port()
    path.write_text(json.dumps(doc))
    chain.hall_broker.start()
    service_mode(fw)
    mark = fw.mark()
    rc, out, err = run(capsys, "inspect", "--port", host(fw), "--json")
    assert rc == 0, err
    r = json.loads(out)
    assert r["mode"] == "service" and r["resumed"]
    assert r["outbox_pending"] == [[1, s] for s in seqs] and r["outbox_depth"] == 2
    assert fw.wait_until(lambda lines: any("SIM RESET cause=2" in ln for ln in lines[mark:]), 10)
    return fw, host(fw)


def _new_keypad(chain: Chain) -> FirmwareDevice:
    cfg = FirmwareConfig("unset", b"\0" * 32, chain.cfg.workdir / "keypads" / "spare", chain.hall_port,
                         chain.port(), console="pty", read_console=False)
    fw = chain.fw["spare"] = FirmwareDevice(cfg)
    fw.cfg.folder.mkdir(parents=True)
    fw.start(write_config=False)             # flashed at the depot, never provisioned: it has a REPL
    return fw


def test_replace_reconciles_pending_ratings_then_revokes(chain: Chain,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    old, old_host = _old_keypad_with_pending(chain, capsys)
    new = _new_keypad(chain)
    port = host(new)
    args = ["replace", "--old", OLD, "--old-port", old_host, "--port", port, "--drain-timeout", "3",
            "--option", f"sim_port={new.cfg.sim_port}"]

    # In normal mode (after inspect's reset) the old keypad offers no REPL: refused, saying what to do.
    rc, out, err = run(capsys, *args, "--timeout", "2", *hall_args(chain))
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"the old keypad on {old_host} runs in normal mode" in err and "hold keys 1 and 4" in err
    assert f"{OLD} is not revoked" in err
    assert not Keystore.load(chain.first.keystore_path).devices[OLD].revoked

    service_mode(old)
    chain.kill_gateway()                     # nobody acks: the ratings cannot be reconciled now
    rc, out, err = run(capsys, *args, *_hall_args_no_gateway(chain))
    assert rc == 2 and "Traceback" not in err
    assert err.strip() == (f"countersign device: 2 ratings of {OLD} are not acked by the gateway (epoch/seq "
                           f"1/1 1/2): {OLD} is not revoked (--force-revoke to do it anyway)")
    ks = Keystore.load(chain.first.keystore_path)
    assert not ks.devices[OLD].revoked and len(ks.devices) == 1

    chain.start_gateway()
    service_mode(old)                        # the refusal left it in its REPL, where its watchdog reset it
    rc, out, err = run(capsys, *args, *hall_args(chain))
    assert rc == 0, err
    assert f"{OLD}: 2 unsent ratings reconciled; {OLD} revoked" in out
    assert _rows(chain, OLD) == [(1, 1, 4), (1, 2, 2)]          # made offline, now at the gateway
    ks = Keystore.load(chain.first.keystore_path)
    new_id = next(d for d in ks.devices if d != OLD)
    assert ks.devices[OLD].revoked and Keystore.load(chain.registry_path).devices[OLD].revoked
    assert ks.devices[new_id].window == "1" and ks.devices[new_id].epoch == 2
    passwd = (chain.first.dir / "hall-broker" / "passwd").read_text()
    assert f"{OLD}:" not in passwd and f"{new_id}:$7$" in passwd
    assert chain.province is not None
    chain.province.reload_registry()

    mark = power_cycle(new)
    assert new.wait_line(rf"CS:PROVISIONED id={new_id} hall=hf01 window=1", 20, start=mark)
    assert new.wait_line(r"CS:LINK up", 20, start=mark), new.lines[mark:]
    chain.sign_in("1", "10001", "张伟")                          # window 1 is the new keypad's now
    assert new.wait_line(r"CS:SESSION clerk=10001", 10, start=mark), new.lines[mark:]
    seq = new.invite_and_rate(3)
    assert new.wait_line(rf"CS:STORED seq={seq}\b", 30, start=mark), new.lines[mark:]
    assert _rows(chain, new_id) == [(2, seq, 3)]
    old.kill()


def _hall_args_no_gateway(chain: Chain) -> list[str]:
    h = chain.first
    assert chain.hall_broker.proc is not None
    return ["--keystore", str(h.keystore_path), "--registry", str(chain.registry_path),
            "--broker-dir", str(h.dir / "hall-broker"), "--broker-pid", str(chain.hall_broker.proc.pid),
            "--broker-host", "127.0.0.1", "--broker-port", str(h.port)]


def test_replace_same_keypad_reflashed_keeps_its_id_with_a_new_epoch(
        chain: Chain, capsys: pytest.CaptureFixture[str]) -> None:
    fw, port = _old_keypad_with_pending(chain, capsys)
    old_key = Keystore.load(chain.first.keystore_path).devices[OLD].key
    service_mode(fw)
    # One session reads its outbox and provisions it again: no reset in between (a reset would boot it
    # in normal mode, without a REPL).
    rc, out, err = run(capsys, "replace", "--old", OLD, "--old-port", port, "--port", port, "--same-id",
                        "--option", f"sim_port={fw.cfg.sim_port}", *hall_args(chain))
    assert rc == 0, err
    assert f"{OLD}: 2 unsent ratings reconciled" in out
    assert f"provisioned {OLD}: hall hf01, window 1, epoch 2" in out
    assert _rows(chain, OLD) == [(1, 1, 4), (1, 2, 2)]
    dk = Keystore.load(chain.first.keystore_path).devices[OLD]
    assert dk.epoch == 2 and dk.key != old_key and not dk.revoked
    assert not (fw.cfg.folder / "outbox.bin").exists()          # reconciled, then wiped
    assert json.loads((fw.cfg.folder / "config.json").read_text())["broker_port"] == chain.first.port
    mark = power_cycle(fw)
    assert fw.wait_line(r"CS:BOOT fw=\S+ boot=1 epoch=2", 20, start=mark), fw.lines[mark:]
    assert fw.wait_line(r"CS:LINK up", 20, start=mark), fw.lines[mark:]
    chain.sign_in("1", "10001", "张伟")
    assert fw.wait_line(r"CS:SESSION clerk=10001", 10, start=mark), fw.lines[mark:]
    seq = fw.invite_and_rate(1)
    assert seq == 1                                             # seqs restart in the new epoch
    assert fw.wait_line(rf"CS:STORED seq={seq}\b", 30, start=mark), fw.lines[mark:]
    assert _rows(chain, OLD) == [(1, 1, 4), (1, 2, 2), (2, 1, 1)]
