"""The provincial receiver against a real mosquitto started from its own generated config."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from province_helpers import (
    HallClient,
    World,
    entry,
    hall_password,
    make_registry,
    make_world,
    no_rating,
    rating,
    signed_batch,
)

from countersign.protocol import batch, cose
from countersign.protocol.context import Context
from countersign.protocol.keystore import load_signing_key, new_signing_key, public_bytes
from countersign.province.db import Database
from countersign.sim.broker import Mosquitto, free_port, run_as_clause


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = make_world(tmp_path)
    yield w
    w.close()


def rows(db: Database | Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    """What a person querying the province's database sees (SQLite file or PostgreSQL alike)."""
    with Database.of(db if isinstance(db, Database) else str(db)).connect() as conn:
        return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in conn.all(sql, args)]


def test_valid_batch_is_stored_and_acked_with_a_province_signature(
        world: World, province_db: Database) -> None:
    p = world.province(province_db)
    hall = world.hall_client("hf01")
    k1, k2 = world.device_key("hf01-w01"), world.device_key("hf01-w02")
    entries: list[batch.Entry] = [
        entry(rating(k1, "hf01-w01", 1, 4), clerk="c001", service=2, txn="t1"),
        entry(no_rating(k1, "hf01-w01", 2), clerk="c001", service=3, txn="t2"),
        entry(rating(k2, "hf01-w02", 1, 1, time_s=None), window="2", clerk="c002", service=1, txn="t3"),
        batch.PromptEntry(7, "hf01-w01", Context("1", "c001", 2, "t1", 1_700_000_000_000), 20),
    ]
    hall.publish("hf01", signed_batch(world.gateway_keys["hf01"], "hf01", 1, entries))
    [(raw, ack)] = hall.wait_acks(1)
    # The ack verifies with the province's public key (the hall client checked it) and says what was stored.
    v = cose.sign1_verify(raw, lambda kid: world.province_key.public_key(), expected_kid=b"province")
    assert batch.decode_batch_ack(v.payload) == ack
    assert (ack.hall, ack.batch, ack.stored, ack.duplicates, ack.rejected) == ("hf01", 1, 4, 0, [])
    stored = rows(p.config.database, 'SELECT device, epoch, seq, kind, score, scale, press_s, hall, "window",'
                  " clerk, service, txn, cose FROM ratings ORDER BY device, seq")
    assert stored == [
        ("hf01-w01", 1, 1, "rating", 4, 4, 1_700_000_000, "hf01", "1", "c001", 2, "t1", entries[0].msg),
        ("hf01-w01", 1, 2, "no-rating", None, None, 1_700_000_000, "hf01", "1", "c001", 3, "t2",
         entries[1].msg),
        ("hf01-w02", 1, 1, "rating", 1, 4, None, "hf01", "2", "c002", 1, "t3", entries[2].msg),
    ]
    assert rows(p.config.database, "SELECT hall, prompt, device, clerk, service FROM prompts") == [
        ("hf01", 7, "hf01-w01", "c001", 2)]


def test_same_batch_twice_is_stored_once_and_acked_twice_with_the_same_ack(
        world: World, province_db: Database) -> None:
    p = world.province(province_db)
    hall = world.hall_client("hf01")
    k = world.device_key("hf01-w01")
    data = signed_batch(world.gateway_keys["hf01"], "hf01", 5,
                        [entry(rating(k, "hf01-w01", s, 3)) for s in range(1, 4)])
    hall.publish("hf01", data)
    hall.wait_acks(1)
    hall.publish("hf01", data)
    acks = hall.wait_acks(2)
    assert acks[0][0] == acks[1][0]
    assert acks[0][1].stored == 3 and acks[0][1].duplicates == 0
    assert rows(p.config.database, "SELECT COUNT(*) FROM ratings") == [(3,)]
    assert p.stats()["batches_seen_again"] == 1
    # The same ratings in a new batch (a gateway re-queued them): acked as duplicates, not stored twice.
    hall.publish("hf01", signed_batch(world.gateway_keys["hf01"], "hf01", 6,
                                      [entry(rating(k, "hf01-w01", s, 3)) for s in range(1, 4)]))
    ack3 = hall.wait_acks(3)[2][1]
    assert (ack3.batch, ack3.stored, ack3.duplicates) == (6, 0, 3)
    assert rows(p.config.database, "SELECT COUNT(*) FROM ratings") == [(3,)]


def test_invented_or_foreign_entries_are_rejected_and_the_rest_stored(
        world: World, province_db: Database) -> None:
    p = world.province(province_db)
    hall = world.hall_client("hf01")
    k = world.device_key("hf01-w01")
    good = rating(k, "hf01-w01", 1, 4)
    forged = rating(b"\x99" * 32, "hf01-w01", 2, 4)           # the gateway made this one up
    foreign = rating(world.device_key("hf02-w01"), "hf02-w01", 1, 4)   # a valid rating of another hall
    # Altering a signed rating: score 1 -> 4 inside the payload ({3: 1, 4: 4, ...}), the tag kept.
    real = rating(k, "hf01-w01", 3, 1)
    assert real.count(bytes([0x03, 0x01, 0x04, 0x04])) == 1
    tampered = real.replace(bytes([0x03, 0x01, 0x04, 0x04]), bytes([0x03, 0x04, 0x04, 0x04]))
    future = rating(k, "hf01-w01", 4, 4, epoch=2)                    # epoch newer than registered
    unknown = rating(b"\x55" * 32, "hf01-w99", 1, 4)                 # not enrolled (yet): held
    entries: list[batch.Entry] = [entry(m) for m in (good, forged, foreign, tampered, future, unknown)]
    entries.append(entry(rating(k, "hf01-w01", 5, 2)))
    # A prompt record for another hall's keypad would inflate that denominator: rejected too.
    entries.append(batch.PromptEntry(3, "hf02-w01", Context("1", "c001", 2, "t9", 1_700_000_000_000), 20))
    hall.publish("hf01", signed_batch(world.gateway_keys["hf01"], "hf01", 1, entries))
    [(_, ack)] = hall.wait_acks(1)
    # The unknown keypad's rating is kept (held), so the ack counts it stored: the gateway may forget it.
    assert ack.stored == 3 and ack.duplicates == 0
    assert ack.rejected == [(1, "bad-mac"), (2, "wrong-hall"), (3, "bad-mac"), (4, "future-epoch"),
                            (7, "wrong-hall")]
    assert rows(p.config.database, "SELECT device, seq, score FROM ratings ORDER BY seq") == [
        ("hf01-w01", 1, 4), ("hf01-w01", 5, 2)]
    assert rows(p.config.database, "SELECT device, epoch, seq, kind, score, reason, state, cose"
                " FROM held") == [
        ("hf01-w99", 1, 1, "rating", 4, "unknown-device", "held", unknown)]
    assert p.stats()["rejected_by_reason"] == {"bad-mac": 2, "wrong-hall": 2, "future-epoch": 1}
    assert p.stats()["held_by_reason"] == {"unknown-device": 1}
    alarms = rows(p.config.database, "SELECT kind, batch_id FROM alarms")
    assert alarms.count(("rejected-entry", 1)) == 3    # forged, foreign, tampered: security events
    assert alarms.count(("held-entries", 1)) == 1      # one for what the batch held


def test_batch_signed_by_the_wrong_key_is_quarantined_not_stored_not_acked(
        world: World, province_db: Database) -> None:
    p = world.province(province_db)
    hall = world.hall_client("hf01")
    k = world.device_key("hf01-w01")
    forged = signed_batch(new_signing_key(), "hf01", 1, [entry(rating(k, "hf01-w01", 1, 4))])
    other_kid = signed_batch(world.gateway_keys["hf02"], "hf01", 2, [entry(rating(k, "hf01-w01", 1, 4))],
                             kid="hf02")
    # Signed by hf01 but claiming to be hf02's batch inside; and bytes that are not COSE at all.
    mismatch = signed_batch(world.gateway_keys["hf01"], "hf01", 4, [entry(rating(k, "hf01-w01", 1, 4))],
                            body_hall="hf02")
    for data in (forged, other_kid, mismatch, b"\xff\x00 not cbor"):
        hall.publish("hf01", data)
    assert p.wait_stats(lambda s: sum(s["quarantined_by_reason"].values()) == 4)
    quarantined = p.stats()["quarantined_by_reason"]
    assert quarantined.pop("bad-signature") == 1 and quarantined.pop("kid-mismatch") == 1
    assert quarantined.pop("hall-mismatch") == 1 and len(quarantined) == 1   # + the CBOR error's reason
    # A good batch after them is acked; the forged ones were not (the only ack is batch 3's).
    hall.publish("hf01", signed_batch(world.gateway_keys["hf01"], "hf01", 3,
                                      [entry(rating(k, "hf01-w01", 2, 4))]))
    acks = hall.wait_acks(1)
    assert [a.batch for _, a in acks] == [3]
    assert rows(p.config.database, "SELECT seq FROM ratings") == [(2,)]
    assert rows(p.config.database, "SELECT batch FROM batches") == [(3,)]
    reasons = rows(p.config.database, "SELECT reason FROM quarantine ORDER BY id")
    assert reasons[:3] == [("bad-signature",), ("kid-mismatch",), ("hall-mismatch",)]
    assert p.stats()["stored"] == 1


def test_hall_gateway_cannot_publish_on_another_halls_topic(
        world: World, province_db: Database) -> None:
    p = world.province(province_db)
    intruder = world.hall_client("hf01")
    hf02 = world.hall_client("hf02")
    k2 = world.device_key("hf02-w01")
    # hf01 pushes a batch on hf02's topic (even one with hf02's valid signature, which would be stored
    # if it got through): the broker's ACL stops it (mosquitto 2.0 drops the message or the connection).
    intruder.try_publish("hf02", signed_batch(world.gateway_keys["hf02"], "hf02", 1,
                                              [entry(rating(k2, "hf02-w01", 1, 1))]))
    # Barrier: hf02's own next batch is processed after the intruder's would have been.
    hf02.publish("hf02", signed_batch(world.gateway_keys["hf02"], "hf02", 2,
                                      [entry(rating(k2, "hf02-w01", 2, 4))]))
    [(_, ack)] = hf02.wait_acks(1)
    assert ack.batch == 2
    assert p.stats()["batches"] == 1
    assert rows(p.config.database, "SELECT device, seq FROM ratings") == [("hf02-w01", 2)]
    assert rows(p.config.database, "SELECT batch FROM batches") == [(2,)]


def test_hall_user_needs_its_own_password(
        world: World, province_db: Database) -> None:
    hf02 = HallClient.__new__(HallClient)
    with pytest.raises(RuntimeError, match="could not connect"):
        HallClient.__init__(hf02, world, "hf02", "hf02", password=hall_password("hf01"))


def test_two_workers_split_200_batches_and_store_every_rating_once(
        world: World, province_db: Database) -> None:
    p = world.province(province_db, workers=2)
    clients = {h: world.hall_client(h) for h in ("hf01", "hf02")}
    expected: set[tuple[str, int]] = set()
    for h, c in clients.items():
        for b in range(1, 101):
            msgs = []
            for i in range(5):
                dev = f"{h}-w{(i % 3) + 1:02d}"
                seq = b * 10 + i
                msgs.append(entry(rating(world.device_key(dev), dev, seq, 1 + (seq % 4))))
                expected.add((dev, seq))
            # Every 10th batch is sent twice: a gateway resend that may land on the other worker.
            data = signed_batch(world.gateway_keys[h], h, b, list(msgs))
            c.publish(h, data)
            if b % 10 == 0:
                c.publish(h, data)
    for c in clients.values():
        acks = c.wait_acks(110, timeout=30)
        assert {a.batch for _, a in acks} == set(range(1, 101))
        # A resent batch gets the same ack again (stored 5), so count per batch id.
        assert sum({a.batch: a.stored for _, a in acks}.values()) == 500
        assert all(a.duplicates == 0 and not a.rejected for _, a in acks)
    got = rows(p.config.database, "SELECT device, seq FROM ratings")
    assert len(got) == 1000 and set(got) == expected
    by_worker = p.stats()["batches_by_worker"]
    assert set(by_worker) == {"province-1", "province-2"} and all(n > 0 for n in by_worker.values())
    assert sum(by_worker.values()) == 220


def test_same_key_different_bytes_raises_a_security_alarm_and_keeps_the_original(
        world: World, province_db: Database) -> None:
    p = world.province(province_db)
    hall = world.hall_client("hf01")
    k = world.device_key("hf01-w01")
    original = rating(k, "hf01-w01", 9, 4)
    other = rating(k, "hf01-w01", 9, 1)      # validly MACed, same (device, epoch, seq): a replayed counter
    hall.publish("hf01", signed_batch(world.gateway_keys["hf01"], "hf01", 1, [entry(original)]))
    hall.wait_acks(1)
    hall.publish("hf01", signed_batch(world.gateway_keys["hf01"], "hf01", 2, [entry(other)]))
    ack = hall.wait_acks(2)[1][1]
    assert (ack.stored, ack.duplicates, ack.rejected) == (0, 0, [(0, "conflicting-duplicate")])
    assert rows(p.config.database, "SELECT score, cose FROM ratings") == [(4, original)]
    alarms = rows(p.config.database,
                  "SELECT kind, hall, device FROM alarms WHERE kind = 'conflicting-rating'")
    assert alarms == [("conflicting-rating", "hf01", "hf01-w01")]


def test_cli_broker_config_keygen_and_run(tmp_path: Path) -> None:
    """The operator's path: `broker-config`, `keygen`, a TOML config, `run` prints `province ready`."""
    registry, gateway_keys, _ = make_registry(tmp_path)
    exe = [sys.executable, "-m", "countersign.cli", "province"]
    pub_hex = subprocess.run([*exe, "keygen", "--out", str(tmp_path / "p.key")], check=True,
                             capture_output=True, text=True).stdout.strip()
    port = free_port()
    cmd = [*exe, "broker-config", "--registry", str(tmp_path / "registry.json"), "--out",
           str(tmp_path / "broker"), "--port", str(port), "--bind", "127.0.0.1", "--workers", "2",
           "--province-password-file", str(tmp_path / "province.pass"),
           "--hall-passwords", str(tmp_path / "halls.json")]
    if run_as_clause():
        cmd += ["--run-as", str(run_as_clause())]
    subprocess.run(cmd, check=True, capture_output=True)
    hall_pw = json.loads((tmp_path / "halls.json").read_text())
    assert set(hall_pw) == {"hf01", "hf02"}
    acl = (tmp_path / "broker" / "acl").read_text()
    assert "pattern write cs/1/h/%u/batch" in acl and "user province-2" in acl
    (tmp_path / "province.toml").write_text(
        'db = "p.db"\nregistry = "registry.json"\nsigning_key = "p.key"\nworkers = 2\n'
        f'[broker]\nhost = "127.0.0.1"\nport = {port}\npassword_file = "province.pass"\n')
    with Mosquitto(tmp_path / "broker" / "mosquitto.conf", port):
        proc = subprocess.Popen([*exe, "run", "--config", str(tmp_path / "province.toml")],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout or []], daemon=True).start()
        try:
            assert lines.get(timeout=20).strip() == "province ready"
            world = World(tmp_path, registry, gateway_keys, load_signing_key(tmp_path / "p.key"),
                          Mosquitto(tmp_path / "broker" / "mosquitto.conf", port), port,
                          tmp_path / "registry.json", tmp_path / "p.key")
            hall = HallClient(world, "hf01", "hf01", password=hall_pw["hf01"])
            k = registry.devices["hf01-w01"].key
            hall.publish("hf01", signed_batch(gateway_keys["hf01"], "hf01", 1,
                                              [entry(rating(k, "hf01-w01", 1, 4))]))
            [(_, ack)] = hall.wait_acks(1)
            assert public_bytes(world.province_key) == bytes.fromhex(pub_hex)
            assert ack.stored == 1
            hall.close()
        finally:
            proc.terminate()
            proc.wait(20)
    assert proc.returncode == 0
    assert rows(tmp_path / "p.db", "SELECT device, seq FROM ratings") == [("hf01-w01", 1)]


def test_a_processing_fault_costs_one_entry_or_one_batch_never_the_worker(
        world: World, province_db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug met by one entry rejects that entry; one met by a whole message holds that batch back
    (quarantined, no batch ack, so the gateway resends it) while the worker goes on serving."""
    from countersign.province import receiver

    real_row, real_process = receiver._device_row, receiver.process_message

    def row(registry: Any, hall: str, b: batch.Batch, e: batch.DeviceEntry) -> Any:
        if e.ctx.txn == "boom":
            raise TypeError("a decoder gap")
        return real_row(registry, hall, b, e)

    def process(s: Any, registry: Any, key: Any, topic: str, payload: bytes) -> Any:
        if b"crash-me" in payload:
            raise AttributeError("a bug in processing")
        return real_process(s, registry, key, topic, payload)

    monkeypatch.setattr(receiver, "_device_row", row)
    monkeypatch.setattr(receiver, "process_message", process)
    p = world.province(province_db, workers=1)
    hall = world.hall_client("hf01")
    k1 = world.device_key("hf01-w01")
    gk = world.gateway_keys["hf01"]
    hall.publish("hf01", signed_batch(gk, "hf01", 1, [entry(rating(k1, "hf01-w01", 1)),
                                                     entry(rating(k1, "hf01-w01", 2), txn="boom"),
                                                     entry(rating(k1, "hf01-w01", 3))]))
    [(_raw, ack)] = hall.wait_acks(1)
    assert (ack.stored, ack.rejected) == (2, [(1, "bad-entry")])
    held = signed_batch(gk, "hf01", 2, [entry(rating(k1, "hf01-w01", 4), txn="crash-me")])
    hall.publish("hf01", held)
    hall.publish("hf01", signed_batch(gk, "hf01", 3, [entry(rating(k1, "hf01-w01", 5))]))
    acks = hall.wait_acks(2)
    assert [a.batch for _r, a in acks] == [1, 3], "batch 2 held back, batch 3 served after it"
    assert rows(p.config.database, "SELECT reason FROM quarantine") == [("processing-error",)]
    monkeypatch.setattr(receiver, "process_message", real_process)    # the fix is deployed
    hall.publish("hf01", held)                                          # the gateway's resend
    acks = hall.wait_acks(3)
    assert acks[2][1].batch == 2 and acks[2][1].stored == 1
    assert rows(p.config.database, "SELECT seq FROM ratings ORDER BY seq") == [(1,), (3,), (4,), (5,)]


def test_a_gateways_own_reports_are_stored_beside_its_ratings_and_each_entry_is_accounted_for(
        world: World, province_db: Database) -> None:
    p = world.province(province_db)
    hall = world.hall_client("hf01")
    k = world.device_key("hf01-w01")
    at = 1_700_000_060_000
    entries: list[batch.Entry] = [
        entry(rating(k, "hf01-w01", 1, 4)),
        batch.KeypadStatusEntry("hf01-w01", at, at - 5000, True, "1.25.0", 1, 41_000, 0, -61, 0),
        batch.KeypadStatusEntry("hf02-w01", at, at - 5000, True),       # another hall's keypad: refused
        batch.GatewayStatusEntry(at, 3, at - 60_000),
        batch.DayCountEntry("hf01-w01", 1, "2023-11-15", 1, 0, 1, 1, at),
    ]
    hall.publish("hf01", signed_batch(world.gateway_keys["hf01"], "hf01", 1, entries))
    [(_, ack)] = hall.wait_acks(1)
    # Every entry is in exactly one of the ack's counts (the gateway checks that they add up).
    assert (ack.stored, ack.duplicates, ack.rejected) == (4, 0, [(2, "wrong-hall")])
    assert rows(p.config.database, "SELECT device, online, fw FROM keypad_status") == [
        ("hf01-w01", 1, "1.25.0")]
    assert rows(p.config.database, "SELECT hall, backlog FROM gateway_status") == [("hf01", 3)]
    assert rows(p.config.database, "SELECT device, day, ratings FROM day_counts") == [
        ("hf01-w01", "2023-11-15", 1)]
    assert rows(p.config.database, "SELECT COUNT(*) FROM ratings") == [(1,)]
