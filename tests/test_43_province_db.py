"""The province's database: a release-1 SQLite file upgraded without losing a row; two receiver processes
on one PostgreSQL; the registry file's devices in the database, and a device added there used at once."""

from __future__ import annotations

import argparse
import json
import queue
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from province_helpers import (
    PROVINCE_PASSWORD,
    World,
    entry,
    make_world,
    no_rating,
    rating,
    signed_batch,
)

from countersign.cli import main as countersign_main
from countersign.protocol import batch, cose
from countersign.protocol.context import Context
from countersign.protocol.keystore import DeviceKey, Keystore
from countersign.protocol.outcome import Outcome
from countersign.province.db import Database, IntegrityError
from countersign.province.halls import add_parser
from countersign.province.migrations import MIGRATIONS, SchemaError, current_version, upgrade
from countersign.province.registry import import_registry
from countersign.province.store import RatingRow, Store
from countersign.sim.postgres import PgServer

# province/store.py's SCHEMA as released before migrations existed (commit e9e6d29), unchanged.
RELEASE_1 = """
CREATE TABLE IF NOT EXISTS ratings (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('rating', 'no-rating')),
    score INTEGER, scale INTEGER,            -- NULL for a no-rating
    prompt INTEGER NOT NULL,                 -- prompt id; 0 = opened by the invite key
    press_s INTEGER,                         -- unix seconds of the press/expiry; NULL = device clock unknown
    delay_ms INTEGER, boot INTEGER,
    hall TEXT NOT NULL, window TEXT NOT NULL, clerk TEXT, service INTEGER NOT NULL, txn TEXT,
    prompt_ms INTEGER,                       -- gateway clock
    received_ms INTEGER NOT NULL,            -- when the gateway received it
    stored_ms INTEGER NOT NULL,              -- when the province stored it
    batch_hall TEXT NOT NULL, batch_id INTEGER NOT NULL,
    cose BLOB NOT NULL,                      -- the device's COSE_Mac0, unchanged: re-verifiable at any time
    digest BLOB NOT NULL,
    UNIQUE (device, epoch, seq)
);
CREATE INDEX IF NOT EXISTS ratings_hall ON ratings (hall, clerk);
CREATE TABLE IF NOT EXISTS prompts (
    id INTEGER PRIMARY KEY,
    hall TEXT NOT NULL, prompt INTEGER NOT NULL, device TEXT NOT NULL, window TEXT NOT NULL,
    clerk TEXT, service INTEGER NOT NULL, txn TEXT, opened_ms INTEGER NOT NULL, timeout INTEGER NOT NULL,
    batch_id INTEGER NOT NULL,
    UNIQUE (hall, prompt)
);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    hall TEXT NOT NULL, batch INTEGER NOT NULL, created_ms INTEGER NOT NULL, received_ms INTEGER NOT NULL,
    entries INTEGER NOT NULL, stored INTEGER NOT NULL, duplicates INTEGER NOT NULL,
    rejected TEXT NOT NULL,                  -- JSON [[index, reason], ...]
    ack BLOB NOT NULL,                       -- the signed ack, re-published as is when the batch comes again
    UNIQUE (hall, batch)
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    received_ms INTEGER NOT NULL, topic TEXT NOT NULL, hall TEXT, reason TEXT NOT NULL, detail TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS alarms (
    id INTEGER PRIMARY KEY,
    ms INTEGER NOT NULL, kind TEXT NOT NULL, hall TEXT, device TEXT, detail TEXT NOT NULL
);
"""

CST = timezone(timedelta(hours=8))


def ms(y: int, mo: int, d: int, h: int, mi: int = 0) -> int:
    return int(datetime(y, mo, d, h, mi, tzinfo=CST).timestamp() * 1000)


# Ratings of release 1: (device, seq, kind, score, press_s, received_ms) and the day a person in the
# province (UTC+8) says each counts on: the press time's, or, with the keypad's clock unknown, the receipt's.
OLD_RATINGS = [
    ("hf01-w01", 1, "rating", 4, ms(2024, 3, 1, 23, 59) // 1000, ms(2024, 3, 2, 0, 1), "2024-03-01"),
    ("hf01-w01", 2, "no-rating", None, ms(2024, 3, 2, 0, 30) // 1000, ms(2024, 3, 2, 0, 31), "2024-03-02"),
    # 07:30 in the province is 23:30 UTC the day before: the province's day, not UTC's.
    ("hf01-w02", 7, "rating", 1, None, ms(2024, 3, 2, 7, 30), "2024-03-02"),
]
OLD_PROMPTS = [("hf01", 11, "hf01-w01", ms(2024, 3, 1, 23, 58), "2024-03-01"),
               ("hf01", 12, "hf01-w02", ms(2024, 3, 2, 7, 29), "2024-03-02")]


def release_1_file(path: Path, ack: bytes = b"\xa0\xb1") -> None:
    conn = sqlite3.connect(path)
    conn.executescript(RELEASE_1)
    for n, (dev, seq, kind, score, press, recv, _day) in enumerate(OLD_RATINGS):
        conn.execute("INSERT INTO ratings (device, epoch, seq, kind, score, scale, prompt, press_s,"
                     " delay_ms, boot, hall, window, clerk, service, txn, prompt_ms, received_ms, stored_ms,"
                     " batch_hall, batch_id, cose, digest)"
                     " VALUES (?,1,?,?,?,?,?,?,1500,1,'hf01','1','c001',2,'t',?,?,?,'hf01',?,?,?)",
                     (dev, seq, kind, score, 4 if score else None, 11 + n, press, recv - 5000, recv, recv + 9,
                      100 + n, bytes([n]) * 40, bytes([n]) * 32))
    for hall, prompt, dev, opened, _day in OLD_PROMPTS:
        conn.execute("INSERT INTO prompts (hall, prompt, device, window, clerk, service, txn, opened_ms,"
                     " timeout, batch_id) VALUES (?,?,?,'1','c001',2,'t',?,20,100)",
                     (hall, prompt, dev, opened))
    conn.execute("INSERT INTO batches (hall, batch, created_ms, received_ms, entries, stored, duplicates,"
                 " rejected, ack) VALUES ('hf01', 100, 1, 2, 3, 3, 0, '[]', ?)", (ack,))
    conn.execute("INSERT INTO quarantine (received_ms, topic, hall, reason, detail, payload)"
                 " VALUES (5, 'cs/1/h/hf01/batch', 'hf01', 'bad-signature', 'x', x'00ff')")
    conn.execute("INSERT INTO alarms (ms, kind, hall, device, detail)"
                 " VALUES (6, 'forged-batch', 'hf01', NULL, 'bad-signature: x')")
    conn.commit()
    conn.close()


OLD_TABLES = ("ratings", "prompts", "batches", "quarantine", "alarms")


def dump(path: Path, tables: tuple[str, ...] = OLD_TABLES, cols: str = "*") -> dict[str, list[Any]]:
    conn = sqlite3.connect(path)
    try:
        return {t: conn.execute(f"SELECT {cols} FROM {t} ORDER BY 1").fetchall() for t in tables}
    finally:
        conn.close()


def test_a_release_1_database_is_upgraded_without_losing_a_row(tmp_path: Path) -> None:
    path = tmp_path / "province.db"
    release_1_file(path)
    before = dump(path)
    assert [len(before[t]) for t in OLD_TABLES] == [3, 2, 1, 1, 1]
    db = Database(str(path))
    assert upgrade(db) == [m.version for m in MIGRATIONS]
    conn = sqlite3.connect(path)
    # Every old row is there with every old value (the new columns come after the old ones).
    for t in OLD_TABLES:
        width = len(before[t][0])
        assert [r[:width] for r in conn.execute(f"SELECT * FROM {t} ORDER BY id")] == before[t], t
    days = conn.execute("SELECT device, seq, day FROM ratings ORDER BY id").fetchall()
    assert days == [(d, s, day) for d, s, *_x, day in OLD_RATINGS]
    assert conn.execute("SELECT prompt, day FROM prompts ORDER BY id").fetchall() == [
        (p, day) for _h, p, _d, _o, day in OLD_PROMPTS]
    conn.close()
    # Again: nothing to do, nothing changed (every table's rows, and the schema itself).
    everything = tuple(t for (t,) in sqlite3.connect(path).execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"))
    assert {"held", "devices", "schema_migrations"} <= set(everything)
    after = dump(path, ("sqlite_master", *everything))
    assert upgrade(db) == []
    assert dump(path, ("sqlite_master", *everything)) == after
    # A database a newer program wrote is refused, not written to.
    with db.connect() as c:
        c.execute("INSERT INTO schema_migrations (version, name, applied_ms) VALUES (99, 'future', 0)")
    with pytest.raises(SchemaError, match="newer than this program"):
        upgrade(db)
    with db.connect() as c:
        assert current_version(c) == 99


def test_a_second_outcome_for_a_prompt_from_release_1_is_moved_to_held_not_dropped(tmp_path: Path) -> None:
    path = tmp_path / "province.db"
    release_1_file(path)
    conn = sqlite3.connect(path)
    # Release 1 let a gateway store a second outcome for prompt 11 (another keypad's, other bytes).
    cols = ("kind, scale, prompt, press_s, delay_ms, boot, hall, window, clerk, service, txn, prompt_ms,"
            " received_ms, stored_ms, batch_hall, batch_id")
    conn.execute(f"INSERT INTO ratings (device, epoch, seq, score, cose, digest, {cols})"
                 f" SELECT 'hf01-w03', 1, 1, 1, x'99', x'98', {cols} FROM ratings WHERE prompt = 11")
    conn.commit()
    conn.close()
    upgrade(Database(str(path)))
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT device FROM ratings WHERE prompt = 11").fetchall() == [("hf01-w01",)]
    assert conn.execute("SELECT device, seq, prompt, reason, state, day, cose FROM held").fetchall() == [
        ("hf01-w03", 1, 11, "prompt-reused", "held", "2024-03-01", b"\x99")]
    assert conn.execute("SELECT COUNT(*) FROM ratings").fetchone()[0] == len(OLD_RATINGS)
    conn.close()


def test_one_outcome_per_prompt_is_a_constraint_of_the_database(province_db: Database) -> None:
    """Two receivers racing with two outcomes for one prompt: the database keeps one (the other
    transaction fails and, retried, finds the prompt taken and holds its outcome)."""
    upgrade(province_db)
    with province_db.connect() as conn:
        s = Store(conn, 1)
        base = RatingRow("hf01-w01", 1, 1, "rating", 4, 4, 5, None, 0, 1, "hf01",
                         Context("1", "c001", 2, "t5", 1), 2, "hf01", 1, b"\x01")
        assert s.insert_rating(base) is Outcome.STORED
        with pytest.raises(IntegrityError):
            s.insert_rating(replace(base, device="hf01-w02", cose=b"\x02"))
        # Invite-key outcomes (prompt 0) each opened their own prompt: any number of them.
        for n in (2, 3):
            assert s.insert_rating(replace(base, seq=n, prompt=0, cose=bytes([n]))) is Outcome.STORED


def test_the_report_refuses_a_database_the_receiver_has_not_upgraded_yet(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "province.db"
    release_1_file(path)
    before = dump(path)
    assert countersign_main(["province", "report", "--db", str(path)]) == 1
    assert "is at schema 0, older than this program's" in capsys.readouterr().err
    assert dump(path) == before
    upgrade(Database(str(path)))
    assert countersign_main(["province", "report", "--db", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"]["ratings"] == 2


def test_a_release_1_file_is_upgraded_by_the_receiver_and_goes_on_storing(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    try:
        old_ack = cose.sign1_encode(w.province_key, b"province",
                                    batch.BatchAck("hf01", 100, 3, 0, []).encode())
        release_1_file(tmp_path / "province.db", old_ack)
        p = w.province()
        hall = w.hall_client("hf01")
        k = w.device_key("hf01-w01")
        hall.publish("hf01", signed_batch(w.gateway_keys["hf01"], "hf01", 200,
                                          [entry(rating(k, "hf01-w01", 3, 4))]))
        [(_, ack)] = hall.wait_acks(1)
        assert ack.stored == 1
        # A resend of the batch release 1 stored gets release 1's ack, the bytes it recorded.
        hall.publish("hf01", signed_batch(w.gateway_keys["hf01"], "hf01", 100, []))
        assert hall.wait_acks(2)[1][0] == old_ack
        rows = dump(p.config.db_path, ("ratings",), "id, device, seq, day")["ratings"]
        assert [r[1:] for r in rows] == [*[(d, s, day) for d, s, *_x, day in OLD_RATINGS],
                                         ("hf01-w01", 3, "2023-11-15")]
    finally:
        w.close()


# -- two receiver processes on one PostgreSQL -----------------------------------------------------------

class Receiver:
    """``countersign province run --config ...`` as a process; its stdout lines in a queue."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "countersign.cli", "province", "run", "--config",
                                      str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.err: list[str] = []
        threading.Thread(target=lambda: [self.lines.put(x) for x in self.proc.stdout or []],
                         daemon=True).start()
        threading.Thread(target=lambda: self.err.extend(self.proc.stderr or []), daemon=True).start()

    def ready(self) -> None:
        try:
            line = self.lines.get(timeout=30)
        except queue.Empty:
            raise AssertionError(f"receiver not ready: {''.join(self.err)[-2000:]}") from None
        assert line.strip() == "province ready", line

    def stop(self) -> dict[str, Any]:
        self.proc.terminate()
        assert self.proc.wait(30) == 0, "".join(self.err)[-2000:]
        stats: dict[str, Any] = json.loads(self.lines.get(timeout=5))
        return stats


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = make_world(tmp_path, workers=4)
    yield w
    w.close()


def _config(w: World, path: Path, url: str, first_worker: int) -> Path:
    path.write_text(f'database = "{url}"\nregistry = "{w.registry_path}"\nsigning_key = "{w.key_path}"\n'
                    f'workers = 2\nfirst_worker = {first_worker}\n'
                    f'[broker]\nhost = "127.0.0.1"\nport = {w.port}\nusername = "province"\n'
                    f'password = "{PROVINCE_PASSWORD}"\n', encoding="utf-8")
    return path


def test_two_receiver_processes_on_one_postgresql_store_each_rating_once(
        world: World, pg_server: PgServer, tmp_path: Path) -> None:
    url = pg_server.create_db("two_receivers")
    a = Receiver(_config(world, tmp_path / "a.toml", url, 1))     # province-1, province-2
    b = Receiver(_config(world, tmp_path / "b.toml", url, 3))     # province-3, province-4
    stats: list[dict[str, Any]] = []
    try:
        a.ready()
        b.ready()
        clients = {h: world.hall_client(h) for h in ("hf01", "hf02")}
        want: set[tuple[str, int]] = set()
        sent: dict[str, int] = {}
        for h, c in clients.items():
            for n in range(1, 61):
                entries: list[batch.Entry] = []
                for i in range(4):
                    dev = f"{h}-w{i % 3 + 1:02d}"
                    seq = n * 10 + i
                    k = world.device_key(dev)
                    msg = rating(k, dev, seq, 1 + seq % 4) if i < 3 else no_rating(k, dev, seq)
                    entries.append(entry(msg))
                    want.add((dev, seq))
                entries.append(batch.PromptEntry(n, f"{h}-w01", Context("1", "c001", 2, f"t{n}",
                                                                        1_700_000_000_000), 20))
                data = signed_batch(world.gateway_keys[h], h, n, entries)
                # Every batch twice at once (a resend that the shared subscription hands to the next
                # worker, often in the other process): the two race for the same rows.
                c.publish(h, data)
                c.publish(h, data)
                sent[h] = sent.get(h, 0) + 2
        for h, c in clients.items():
            acks = c.wait_acks(sent[h], timeout=60)
            by_batch: dict[int, set[bytes]] = {}
            for raw, ack in acks:
                by_batch.setdefault(ack.batch, set()).add(raw)
            assert set(by_batch) == set(range(1, 61)), "every batch acked"
            assert all(len(raws) == 1 for raws in by_batch.values()), "a resent batch gets the same ack"
            # Each batch stored its 4 outcomes and its prompt record once, in whichever process won.
            assert {a.batch: (a.stored, a.duplicates, a.rejected) for _r, a in acks} == {
                n: (5, 0, []) for n in range(1, 61)}
    finally:
        for r in (a, b):
            if r.proc.poll() is None:
                stats.append(r.stop())
    db = Database(url)
    with db.connect() as conn:
        got = conn.all("SELECT device, seq FROM ratings")
        assert len(got) == len(want) and set(got) == want
        assert conn.scalar("SELECT COUNT(*) FROM prompts") == 120
        assert conn.scalar("SELECT COUNT(*) FROM batches") == 120
        assert conn.scalar("SELECT COUNT(*) FROM held") == 0
    # Both processes served batches; of each batch's two copies one was recorded and the other found it
    # recorded (at once, or after its transaction lost the race on batches (hall, batch) and was retried).
    assert len(stats) == 2 and all(sum(s["batches_by_worker"].values()) > 0 for s in stats)
    assert sum(sum(s["batches_by_worker"].values()) for s in stats) == 240
    assert sum(s.get("batches_seen_again", 0) for s in stats) == 120


# -- the registry in the database -----------------------------------------------------------------------

def test_registry_file_devices_are_imported_and_an_enrolled_device_is_never_overwritten(
        province_db: Database) -> None:
    upgrade(province_db)
    ks = Keystore()
    ks.add_device("hf01-w01", DeviceKey(b"\x01" * 32, epoch=1, window="1", hall="hf01"))
    ks.add_device("hf01-w02", DeviceKey(b"\x02" * 32, epoch=1, window="2", hall="hf01"))
    with province_db.connect() as conn:
        assert import_registry(conn, ks, 1000) == 2
        assert import_registry(conn, ks, 1001) == 0                    # the same file again: no change
        # hf01-w03 was approved in the platform (an enrollment): the file's copy must not replace it.
        conn.execute('INSERT INTO devices (device, hall, key, epoch, "window", scale, revoked, source,'
                     " changed_ms, changed_by) VALUES ('hf01-w03', 'hf01', ?, 2, '3', 4, 0, 'enrollment',"
                     " 1002, 'admin')", (b"\x33" * 32,))
        ks.add_device("hf01-w03", DeviceKey(b"\x03" * 32, epoch=5, window="9", hall="hf02"))
        ks.devices["hf01-w01"] = DeviceKey(b"\x11" * 32, epoch=2, window="1", hall="hf01")   # re-keyed
        ks.devices["hf01-w02"].revoked = True
        assert import_registry(conn, ks, 1003) == 2
        # A file that forgets the revocation does not bring the key back.
        ks.devices["hf01-w02"].revoked = False
        assert import_registry(conn, ks, 1004) == 0
        rows = conn.all('SELECT device, hall, key, epoch, "window", revoked, source FROM devices'
                        " ORDER BY device")
    assert [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in rows] == [
        ("hf01-w01", "hf01", b"\x11" * 32, 2, "1", 0, "registry"),
        ("hf01-w02", "hf01", b"\x02" * 32, 1, "2", 1, "registry"),
        ("hf01-w03", "hf01", b"\x33" * 32, 2, "3", 0, "enrollment"),
    ]


def test_a_device_added_to_the_database_is_used_by_the_next_batch_without_sighup(
        world: World, province_db: Database) -> None:
    p = world.province(province_db, workers=2)
    hall = world.hall_client("hf01")
    key = b"\x77" * 32
    gk = world.gateway_keys["hf01"]
    hall.publish("hf01", signed_batch(gk, "hf01", 1, [entry(rating(key, "hf01-w09", 1, 4))]))
    [(_, ack)] = hall.wait_acks(1)
    assert (ack.stored, ack.rejected) == (1, [])          # held: not in the registry yet
    # Another process (the platform approving an enrollment) adds the device to the table.
    with province_db.connect() as conn:
        conn.execute('INSERT INTO devices (device, hall, key, epoch, "window", scale, revoked, source,'
                     " changed_ms, changed_by) VALUES ('hf01-w09', 'hf01', ?, 1, '9', 4, 0, 'enrollment', ?,"
                     " 'admin')", (key, int(datetime.now(UTC).timestamp() * 1000)))
    # Two batches, so each of the two workers has had one after the change.
    for n in (2, 3):
        hall.publish("hf01", signed_batch(gk, "hf01", n, [entry(rating(key, "hf01-w09", n, 3))]))
    acks = hall.wait_acks(3)
    assert sorted((a.batch, a.stored, a.rejected) for _r, a in acks[1:]) == [(2, 1, []), (3, 1, [])]
    with province_db.connect() as conn:
        assert conn.all("SELECT seq FROM ratings WHERE device = 'hf01-w09' ORDER BY seq") == [(2,), (3,)]
        assert conn.all("SELECT seq, reason FROM held") == [(1, "unknown-device")]
    assert p.stats()["held_by_reason"] == {"unknown-device": 1}


# -- hall metadata ------------------------------------------------------------------------------------

HALLS_CSV = ("hall,name,city,county\r\n"
             "hf01,合肥市政务中心营业厅,合肥市,蜀山区\r\n"
             "hf02,芜湖市镜湖营业厅,芜湖市,\r\n")


def halls_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    rc: int = args.func(args)
    return rc


def test_hall_names_and_cities_come_from_a_csv_with_or_without_bom(
        province_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv_path = tmp_path / "halls.csv"
    csv_path.write_bytes(b"\xef\xbb\xbf" + HALLS_CSV.encode())          # as Excel saves "CSV UTF-8"
    assert halls_cli(["halls", "--db", province_db.url, "--csv", str(csv_path)]) == 0
    assert "2 added, 0 changed" in capsys.readouterr().out
    with province_db.connect() as conn:
        assert conn.all("SELECT hall, name, city, county FROM halls ORDER BY hall") == [
            ("hf01", "合肥市政务中心营业厅", "合肥市", "蜀山区"),
            ("hf02", "芜湖市镜湖营业厅", "芜湖市", None)]
        assert [r[0] for r in conn.all("SELECT action FROM audit_log")] == ["halls-import"]
    # Without the BOM, one hall renamed: an update, audited again.
    csv_path.write_text(HALLS_CSV.replace("镜湖营业厅", "镜湖区营业厅"), encoding="utf-8")
    assert halls_cli(["halls", "--db", province_db.url, "--csv", str(csv_path)]) == 0
    assert "0 added, 1 changed" in capsys.readouterr().out
    # A bad line names itself and changes nothing, not even the good lines before it.
    bad = HALLS_CSV.replace("合肥市政务中心营业厅", "新名字") + "hf03,,合肥市,\n"
    csv_path.write_text(bad, encoding="utf-8")
    assert halls_cli(["halls", "--db", province_db.url, "--csv", str(csv_path)]) == 2
    assert "line 4: hall hf03 needs a name and a city" in capsys.readouterr().err
    with province_db.connect() as conn:
        assert conn.all("SELECT hall, name FROM halls ORDER BY hall") == [
            ("hf01", "合肥市政务中心营业厅"), ("hf02", "芜湖市镜湖区营业厅")]
        assert conn.scalar("SELECT COUNT(*) FROM audit_log") == 2
    csv_path.write_text("id,name\nhf01,x\n", encoding="utf-8")
    assert halls_cli(["halls", "--db", province_db.url, "--csv", str(csv_path)]) == 2
    assert "first line must be hall,name,city,county" in capsys.readouterr().err


def test_a_lost_database_connection_costs_nothing_the_worker_reconnects(
        world: World, pg_server: PgServer) -> None:
    db = Database(pg_server.create_db("lost_connection"))
    p = world.province(db, workers=1)
    hall = world.hall_client("hf01")
    k = world.device_key("hf01-w01")
    gk = world.gateway_keys["hf01"]
    hall.publish("hf01", signed_batch(gk, "hf01", 1, [entry(rating(k, "hf01-w01", 1))]))
    hall.wait_acks(1)
    # The server ends the worker's session (a restart, a failover, an administrator's kill).
    with db.connect() as conn:
        killed = conn.scalar("SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity"
                             " WHERE datname = current_database() AND pid <> pg_backend_pid()")
    assert killed >= 1
    hall.publish("hf01", signed_batch(gk, "hf01", 2, [entry(rating(k, "hf01-w01", 2))]))
    [_, (_, ack)] = hall.wait_acks(2, timeout=20)
    assert (ack.batch, ack.stored) == (2, 1)
    assert p.stats()["db_errors"] >= 1 and p.stats()["workers"]["province-1"]["failed"] is None
    with db.connect() as conn:
        assert conn.all("SELECT seq FROM ratings ORDER BY seq") == [(1,), (2,)]
