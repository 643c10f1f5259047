"""The gateway's own reports to the province (gateway/reports.py; batch entry kinds 3..6): a real hall
mosquitto with keypads' MQTT clients, the gateway embedded, a real provincial mosquitto and the scripted
province peer of test_24 that verifies and decodes every signed batch.

The gateway runs on a clock the test moves (config ``now_ms``), so "five minutes later" and "after
midnight" take no waiting; the forwarder is woken after each move, as a real round would be woken by a
commit or its own due time.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import cbor2
import pycddl
import pytest
from conftest import device_key, make_keystore
from gw_helpers import Device, no_rating, rating, write_config
from test_24_gateway_forward import HALL_PASSWORD, WAIT, ProvincePeer, Uplink

from countersign.gateway.forward import Forwarder
from countersign.gateway.gateway import Gateway
from countersign.gateway.reports import ReportConfig, Reporter, init_report_schema
from countersign.gateway.store import Store
from countersign.protocol import batch, cbor, cose, keystore, messages, topics
from countersign.protocol.errors import ProtocolError
from countersign.protocol.kcv import key_check_value
from countersign.protocol.keystore import DeviceKey, Keystore
from countersign.province.db import Database
from countersign.province.hallreports import store_report
from countersign.province.migrations import upgrade

ROOT = Path(__file__).resolve().parent.parent
TZ = ZoneInfo("Asia/Shanghai")
D1 = dt.date(2026, 11, 30)
DAY1 = D1.isoformat()
DAY2 = (D1 + dt.timedelta(days=1)).isoformat()
EVERY_S = 300.0


def local_ms(d: dt.date, hour: int, minute: int = 0, second: int = 0) -> int:
    return int(dt.datetime(d.year, d.month, d.day, hour, minute, second, tzinfo=TZ).timestamp() * 1000)


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            return self.ms

    def set(self, ms: int) -> None:
        with self._lock:
            self.ms = ms

    def advance(self, s: float) -> None:
        with self._lock:
            self.ms += int(s * 1000)


E = TypeVar("E")


@dataclass
class Hall:
    tmp: Path
    ks: Keystore
    gw: Gateway
    fwd: Forwarder
    uplink: Uplink
    peer: ProvincePeer
    clock: Clock
    devices: dict[str, Device]

    def reports(self, cls: type[E]) -> list[E]:
        """Entries of type ``cls`` of every distinct batch the province got, in batch order."""
        with self.peer.cond:
            seen: dict[int, batch.Batch] = {}
            for d in self.peer.deliveries:
                seen.setdefault(d.batch_id, d.batch)
        return [e for _bid, b in sorted(seen.items()) for e in b.entries if isinstance(e, cls)]

    def wait_reports(self, cls: type[E], n: int, timeout: float = WAIT) -> list[E]:
        self.fwd.wake()
        assert self.peer.wait(lambda _p: len(self.reports(cls)) >= n, timeout), self.reports(cls)
        return self.reports(cls)

    def db(self, sql: str, *args: Any) -> list[Any]:
        conn = sqlite3.connect(self.gw.cfg.db_path)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def round_done(self) -> None:
        """Wait for a whole forwarder round that started after now (so a report due now is queued)."""
        with self.fwd._changed:
            self.fwd.wake()
            assert self.fwd._changed.wait(WAIT)
        with self.fwd._changed:
            self.fwd.wake()
            assert self.fwd._changed.wait(WAIT)

    def device(self, name: str) -> Device:
        return self.devices[name]


def heartbeat(key: bytes, device: str, nonce: int, *, heap: int = 40_000, stuck: int = 0, fw: str = "1.0.0",
              boot: int = 1, reset: int = 1, hello: bool = False) -> bytes:
    cls = messages.Hello if hello else messages.Heartbeat
    payload = cls(epoch=1, boot=boot, nonce=nonce, fw=fw, reset=reset, heap=heap, outbox=0, outbox_free=100,
                  uptime=5, rssi=-50, ignored=0, stuck=stuck, time=None).encode()
    return cose.mac0_encode(key, device.encode(), payload)


@pytest.fixture
def hall(tmp_path: Path, hall_broker: Any) -> Iterator[Hall]:
    ks = make_keystore("hf01", devices=2)
    broker = hall_broker(ks)
    uplink = Uplink(tmp_path / "province-broker")
    uplink.start()
    hall_key = keystore.new_signing_key()
    keystore.save_signing_key(tmp_path / "hall.key", hall_key)
    province_key = keystore.new_signing_key()
    peer = ProvincePeer(uplink.port, {"hf01": hall_key.public_key()}, province_key).start()
    clock = Clock(local_ms(D1, 10))
    cfg = write_config(tmp_path, ks, broker.port, uplink_host="127.0.0.1", uplink_port=uplink.port,
                       uplink_password=HALL_PASSWORD, signing_key_path=tmp_path / "hall.key",
                       province_public_key=keystore.public_bytes(province_key).hex(), retry_s=0.5,
                       now_ms=clock)
    gw = Gateway(cfg)
    # The gateway's forwarder with reports on, as gateway.py is to build it from the config.
    assert gw.forwarder is not None
    gw.forwarder = Forwarder(dataclasses.replace(
        gw.forwarder.cfg, reconnect_min_s=0.1, reconnect_max_s=0.5,
        # Every round looks at the reports (min_interval_s 0), so a round the test waits for has.
        reports=ReportConfig(gw.keystore, cfg.timezone, cfg.heartbeat_s, EVERY_S, min_interval_s=0)))
    gw.start()
    assert gw.ingest.ready.is_set()
    devices = {d: Device(broker.port, d, dk.key).start() for d, dk in ks.devices.items()}
    h = Hall(tmp_path, ks, gw, gw.forwarder, uplink, peer, clock, devices)
    yield h
    for d in devices.values():
        d.stop()
    gw.stop()
    peer.stop()
    uplink.stop()


def health_sent(h: Hall, dev: Device, n: int) -> None:
    """The gateway has committed ``n`` hello/heartbeats of ``dev`` (each answered with a time sync)."""
    assert dev.wait(lambda: len(dev.of_type(messages.TimeSync)) >= n, WAIT)


# ---- keypad status -------------------------------------------------------------------------------------

def test_keypad_status_on_meaningful_change_and_at_most_every_n_minutes(hall: Hall) -> None:
    name = "hf01-w01"
    dev, key = hall.device(name), device_key(1)
    dev.publish(heartbeat(key, name, 1, hello=True))
    [first] = hall.wait_reports(batch.KeypadStatusEntry, 1)
    assert (first.online, first.fw, first.reset, first.heap, first.outbox, first.rssi, first.stuck) == \
        (True, "1.0.0", 1, 40_000, 0, -50, 0)
    assert first.seen_ms == hall.clock()
    # Heartbeats a minute apart whose figures move a little: not one report each.
    for i, heap in enumerate((39_000, 38_000, 37_000), start=2):
        hall.clock.advance(60)
        dev.publish(heartbeat(key, name, i, heap=heap))
        health_sent(hall, dev, i)
        hall.round_done()
    # A key stuck: reported at once, with the latest figures.
    hall.clock.advance(10)
    dev.publish(heartbeat(key, name, 5, heap=36_000, stuck=0b100))
    mine = [s for s in hall.wait_reports(batch.KeypadStatusEntry, 2) if s.device == name]
    assert [(s.heap, s.stuck) for s in mine] == [(40_000, 0), (36_000, 0b100)]
    assert mine[1].stuck_keys == [3]
    # Heartbeats go on a minute apart; five minutes after that report its moving figures (the last
    # message's time at least) are reported once more, and not again at once.
    for i in range(6, 10):
        hall.clock.advance(60)
        dev.publish(heartbeat(key, name, i, heap=36_000, stuck=0b100))
        health_sent(hall, dev, i)
        hall.round_done()
    assert len(hall.reports(batch.KeypadStatusEntry)) == 2
    last_seen = hall.clock()
    hall.clock.advance(60)
    mine = hall.wait_reports(batch.KeypadStatusEntry, 3)
    assert (mine[2].seen_ms, mine[2].at_ms - mine[1].at_ms) == (last_seen, EVERY_S * 1000)
    hall.clock.advance(30)
    dev.publish(heartbeat(key, name, 10, heap=34_000, stuck=0b100))
    health_sent(hall, dev, 10)
    hall.round_done()
    # A reboot (same reset cause, next boot count) and new firmware are news at once.
    dev.publish(heartbeat(key, name, 11, heap=33_000, stuck=0, boot=2, fw="1.1.0", hello=True))
    mine = hall.wait_reports(batch.KeypadStatusEntry, 4)
    assert [s.heap for s in mine] == [40_000, 36_000, 36_000, 33_000], "heartbeat 10 was not reported"
    assert (mine[-1].fw, mine[-1].stuck, mine[-1].online) == ("1.1.0", 0, True)
    # Its last will: offline, reported at once.
    dev.publish(b"", topic=topics.device_will(name))
    mine = hall.wait_reports(batch.KeypadStatusEntry, 5)
    assert (len(mine), mine[-1].online, mine[-1].heap) == (5, False, 33_000)


def test_a_silent_keypad_is_reported_offline_after_three_heartbeat_periods(hall: Hall) -> None:
    name = "hf01-w02"
    dev = hall.device(name)
    dev.publish(heartbeat(device_key(2), name, 1, hello=True))
    health_sent(hall, dev, 1)
    assert hall.wait_reports(batch.KeypadStatusEntry, 1)[0].device == name
    hall.clock.advance(3 * hall.gw.cfg.heartbeat_s - 1)
    hall.round_done()
    assert all(s.online for s in hall.reports(batch.KeypadStatusEntry) if s.device == name)
    hall.clock.advance(2)
    hall.fwd.wake()
    assert hall.peer.wait(lambda _p: any(s.device == name and not s.online
                                         for s in hall.reports(batch.KeypadStatusEntry)), WAIT)
    off = [s for s in hall.reports(batch.KeypadStatusEntry) if s.device == name][-1]
    assert off.seen_ms == local_ms(D1, 10) and off.fw == "1.0.0"


# ---- day counts ----------------------------------------------------------------------------------------

def test_day_count_after_the_day_ends_and_again_for_late_ratings(hall: Hall) -> None:
    name = "hf01-w01"
    dev, key = hall.device(name), device_key(1)
    press = local_ms(D1, 10) // 1000
    for seq in range(1, 5):
        dev.publish(rating(key, name, seq, time_s=press + seq))
    dev.publish(no_rating(key, name, 5, prompt=0))       # clock unknown: the day it reached the gateway
    assert dev.wait_acked({1, 2, 3, 4, 5}, WAIT)
    assert hall.fwd.wait_until(lambda _f: bool(hall.db("SELECT 1 FROM report_days")), WAIT)
    hall.round_done()
    kind = int(batch.EntryKind.DAY_COUNT)
    assert hall.db("SELECT count(*) FROM uplink_entries WHERE kind = ?", kind) == [(0,)]
    assert hall.reports(batch.DayCountEntry) == []       # the day is not over
    hall.clock.set(local_ms(D1 + dt.timedelta(days=1), 0, 0, 30))
    [count] = hall.wait_reports(batch.DayCountEntry, 1)
    assert (count.device, count.epoch, count.day, count.ratings, count.no_ratings, count.first_seq,
            count.last_seq) == (name, 1, DAY1, 4, 1, 1, 5)
    assert count.at_ms == hall.clock()
    # After midnight: a rating pressed before it (the keypad's outbox drained late) and one of today.
    hall.clock.advance(300)
    dev.publish(rating(key, name, 6, time_s=local_ms(D1, 23, 59) // 1000))
    dev.publish(rating(key, name, 7, time_s=hall.clock() // 1000))
    assert dev.wait_acked({6, 7}, WAIT)
    counts = hall.wait_reports(batch.DayCountEntry, 2)
    assert [(c.day, c.ratings, c.no_ratings, c.first_seq, c.last_seq) for c in counts] == [
        (DAY1, 4, 1, 1, 5), (DAY1, 5, 1, 1, 6)]
    assert counts[1].at_ms > counts[0].at_ms           # the province keeps this one
    # Today's rating is counted when today ends.
    hall.clock.set(local_ms(D1 + dt.timedelta(days=2), 0, 1))
    counts = hall.wait_reports(batch.DayCountEntry, 3)
    assert (counts[2].day, counts[2].ratings, counts[2].first_seq, counts[2].last_seq) == (DAY2, 1, 7, 7)


# ---- gateway status ------------------------------------------------------------------------------------

def test_gateway_status_reports_the_backlog_and_replaces_a_queued_one(hall: Hall) -> None:
    first = hall.wait_reports(batch.GatewayStatusEntry, 1)[0]
    assert first.at_ms == local_ms(D1, 10)
    assert hall.fwd.wait_until(lambda f: f.backlog() == 0, WAIT)
    hall.uplink.stop()                                  # the provincial uplink is down
    assert hall.fwd.wait_until(lambda f: not f.connected, WAIT)
    name = "hf01-w01"
    dev, key = hall.device(name), device_key(1)
    for seq in range(1, 4):
        dev.publish(rating(key, name, seq))
    assert dev.wait_acked({1, 2, 3}, WAIT)
    queued = hall.db("SELECT min(created_ms) FROM uplink_entries WHERE kind = 1")[0][0]
    for _ in range(3):                                  # three reports fall due while the uplink is down
        hall.clock.advance(EVERY_S)
        hall.round_done()
    kind = int(batch.EntryKind.GATEWAY_STATUS)
    assert hall.db("SELECT count(*) FROM uplink_entries WHERE kind = ? AND batch_id IS NULL", kind) == [(1,)]
    backlog = hall.gw.backlog()
    hall.uplink.start()
    statuses = hall.wait_reports(batch.GatewayStatusEntry, 2)
    assert len(statuses) == 2, "the queued reports were replaced by the latest one"
    last = statuses[-1]
    assert last.at_ms == hall.clock()
    # What was unacked when it was taken (3 ratings, the keypad's status they made), itself not.
    assert last.backlog == backlog - 1, hall.db("SELECT kind, batch_id, created_ms FROM uplink_entries")
    assert last.backlog >= 3 and last.oldest_ms == queued
    # Once the province has acked everything, the next report says so.
    assert hall.fwd.wait_until(lambda f: f.backlog() == 0, WAIT)
    hall.clock.advance(EVERY_S)
    statuses = hall.wait_reports(batch.GatewayStatusEntry, 3)
    assert (statuses[-1].backlog, statuses[-1].oldest_ms) == (0, None)


# ---- enrollment notices --------------------------------------------------------------------------------

def test_enroll_notices_carry_a_key_check_value_never_the_key(hall: Hall) -> None:
    notices = hall.wait_reports(batch.EnrollEntry, 2)
    assert sorted((n.device, n.window, n.epoch, n.scale, n.kcv) for n in notices) == [
        ("hf01-w01", "1", 1, 4, key_check_value(device_key(1))),
        ("hf01-w02", "2", 1, 4, key_check_value(device_key(2)))]
    # Provisioning adds a keypad and signals the gateway, which reloads its keystore.
    hall.ks.add_device("hf01-w03", DeviceKey(device_key(3), epoch=1, window="3", scale=5, hall="hf01"))
    hall.ks.devices["hf01-w02"] = DeviceKey(device_key(12), epoch=2, window="2", hall="hf01")  # re-keyed
    hall.ks.save(hall.gw.cfg.keystore_path)
    hall.gw.reload_keystore()
    notices = hall.wait_reports(batch.EnrollEntry, 4)
    assert sorted((n.device, n.epoch, n.scale, n.kcv) for n in notices[2:]) == [
        ("hf01-w02", 2, 4, key_check_value(device_key(12))),
        ("hf01-w03", 1, 5, key_check_value(device_key(3)))]
    hall.round_done()
    assert len(hall.reports(batch.EnrollEntry)) == 4      # no notice again for what was reported
    keys = [device_key(n) for n in (1, 2, 3, 12)]
    with hall.peer.cond:
        signed = [d.signed for d in hall.peer.deliveries]
    assert not any(k in s or k.hex().encode() in s for k in keys for s in signed)


# ---- the wire format -----------------------------------------------------------------------------------

CDDL = (ROOT / "protocol" / "countersign.cddl").read_text(encoding="utf-8")
RULES = {batch.KeypadStatusEntry: "keypad-status-entry", batch.GatewayStatusEntry: "gateway-status-entry",
         batch.DayCountEntry: "day-count-entry", batch.EnrollEntry: "enroll-entry"}
SAMPLES: list[batch.ReportEntry] = [
    batch.KeypadStatusEntry("hf01-w01", 1_735_700_060_000, 1_735_700_000_000, True, "1.25.0", 1, 41_000, 3,
                            -61, 2),
    batch.KeypadStatusEntry("hf01-w02", 1_735_700_060_000, 1_735_700_000_000, False),
    batch.GatewayStatusEntry(1_735_700_060_000, 12, 1_735_696_400_000),
    batch.DayCountEntry("hf01-w01", 1, "2025-01-01", 9, 1, 31, 40, 1_735_700_060_000),
    batch.EnrollEntry("hf01-w01", "1", 1, 4, key_check_value(device_key(1)), 1_735_700_060_000),
]
MUTANTS: list[Any] = [None, True, False, 0, 1, 4, 5, -1, -201, 2**32, 2**64 - 1, "", "x", "hf01-w01",
                      "2025-01-01", "ABCDEF0123456789", "0123456789abcdef", "a" * 65, b"", b"x", [], [1], {}]


# pycddl 0.6 tries only the first alternative of a choice inside an array (test_12): a batch's entries are
# checked one by one against their own rule.
BATCH_CDDL = CDDL.replace("[0*1000 batch-entry]", "[0*1000 any]")


def _cddl_ok(rule: str, data: bytes, cddl: str = CDDL) -> bool:
    try:
        pycddl.Schema(f"start = {rule}\n" + cddl).validate_cbor(data)
    except pycddl.ValidationError:
        return False
    return True


def _code_ok(data: bytes) -> bool:
    try:
        batch.decode_entry(data)
    except ProtocolError:
        return False
    return True


@pytest.mark.parametrize("entry", SAMPLES, ids=lambda e: type(e).__name__)
def test_report_entries_cddl_and_decoder_agree_field_by_field(entry: batch.ReportEntry) -> None:
    rule = RULES[type(entry)]
    base = entry.to_map()
    data = cbor.dumps(base)
    assert _cddl_ok(rule, data) and batch.decode_entry(data) == entry
    assert _cddl_ok("batch", batch.Batch("hf01", 7, 1, [entry]).encode(), BATCH_CDDL)
    disagreements = []
    for key in [*(k for k in base if k != 0), 30]:
        for value in MUTANTS:
            m = {**base, key: value}
            raw = cbor2.dumps(m, canonical=True)
            code_ok, cddl_ok = _code_ok(raw), _cddl_ok(rule, raw)
            # pycddl 0.6 lets a one-element array through "T / null" (test_12 says more); the decoder's
            # cross-field rules (a day count's seqs, oldest_ms null exactly at backlog 0) are not CDDL.
            lax = (not code_ok and isinstance(value, list) and len(value) == 1)
            cross = cddl_ok and not code_ok and type(entry) in (batch.DayCountEntry, batch.GatewayStatusEntry)
            if code_ok != cddl_ok and not lax and not cross:
                disagreements.append((key, value, code_ok))
    assert not disagreements


def test_report_entries_are_strict() -> None:
    status = SAMPLES[0].to_map()
    for bad, reason in [({**status, 13: 1}, "bad-field"),           # online must be a bool
                        ({**status, 31: 0}, "bad-field"),           # an unknown field
                        ({k: v for k, v in status.items() if k != 11}, "missing-field"),
                        ({**status, 8: "HF01"}, "bad-field"),        # not a device id
                        ({**SAMPLES[3].to_map(), 24: 10}, "bad-field"),   # 11 outcomes over 10 seqs
                        ({**SAMPLES[3].to_map(), 26: 41}, "bad-field"),   # first_seq > last_seq
                        ({**SAMPLES[3].to_map(), 23: "2025-1-01"}, "bad-field"),
                        ({**SAMPLES[2].to_map(), 21: None}, "bad-field"),  # a backlog without its age
                        ({**SAMPLES[4].to_map(), 29: "0123"}, "bad-field"),
                        ({0: 7, 11: 1}, "bad-batch")]:
        with pytest.raises(ProtocolError) as exc:
            batch.decode_entry(cbor2.dumps(bad, canonical=True))
        assert exc.value.reason == reason, bad


def test_batch_entry_vectors() -> None:
    import json
    files = sorted((ROOT / "protocol" / "vectors" / "batch").glob("*.json"))
    assert len(files) == 14
    for p in files:
        vec = json.loads(p.read_text(encoding="utf-8"))
        data = bytes.fromhex(vec["entry_hex"])
        if vec["fail"]:
            with pytest.raises(ProtocolError) as exc:
                batch.decode_entry(data)
            assert exc.value.reason == vec["reason"], p.name
        else:
            e = batch.decode_entry(data)
            assert {"kind": type(e).__name__, **vars(e)} == vec["entry"], p.name
            assert cbor.dumps(e.to_map()) == data
            assert _cddl_ok(RULES[type(e)], data), p.name


# ---- robustness and the province's end ------------------------------------------------------------------

def test_a_health_row_that_cannot_be_reported_costs_no_rating(hall: Hall,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    # A health record no keypad could have sent (a firmware string over 64 bytes), as a damaged or foreign
    # database might hold: that keypad's status is not reported, everything else goes on.
    with hall.gw.store.transaction() as c:
        c.execute("INSERT INTO device_health (device, last_seen_ms, last, online) VALUES (?,?,?,1)",
                  ("hf01-w02", hall.clock(), '{"fw": "' + "x" * 100 + '"}'))
    name = "hf01-w01"
    dev, key = hall.device(name), device_key(1)
    dev.publish(rating(key, name, 1))
    assert dev.wait_acked({1}, WAIT)
    assert hall.peer.wait(lambda p: len(p.entry_msgs()) == 1, WAIT)
    statuses = hall.wait_reports(batch.KeypadStatusEntry, 1)
    assert [s.device for s in statuses] == [name]
    assert "hf01-w02: its health figures cannot be reported" in caplog.text
    assert hall.fwd.stats()["running"] == 1 and not hall.gw.failed.is_set()


def test_the_province_keeps_what_the_gateway_reported(hall: Hall, tmp_path: Path) -> None:
    name = "hf01-w01"
    dev, key = hall.device(name), device_key(1)
    dev.publish(heartbeat(key, name, 1, hello=True, stuck=1))
    for seq in range(1, 4):
        dev.publish(rating(key, name, seq, time_s=local_ms(D1, 11) // 1000))
    assert dev.wait_acked({1, 2, 3}, WAIT)
    hall.clock.set(local_ms(D1 + dt.timedelta(days=1), 0, 1))
    hall.wait_reports(batch.DayCountEntry, 1)
    db = Database(str(tmp_path / "province.db"))
    upgrade(db, TZ)
    with db.connect() as conn, conn.transaction():
        for cls in batch.REPORT_ENTRIES:
            for e in hall.reports(cls):
                store_report(conn, "hf01", e, hall.clock(), "hf01")
        assert conn.all("SELECT device, epoch, day, ratings, no_ratings, first_seq, last_seq"
                        " FROM day_counts") == [(name, 1, DAY1, 3, 0, 1, 3)]
        # Offline: a day without a heartbeat.
        assert conn.one("SELECT hall, online, fw, stuck_keys FROM keypad_status WHERE device = ?",
                        (name,)) == ("hf01", 0, "1.0.0", "1")
        assert conn.scalar("SELECT count(*) FROM enrollments WHERE state = 'pending' AND key IS NULL") == 2
        assert conn.scalar("SELECT backlog FROM gateway_status WHERE hall = 'hf01'") is not None


def test_reports_are_looked_at_at_most_once_per_interval(tmp_path: Path) -> None:
    """Rounds follow every commit; the reporter looks once per min_interval_s and says when to come back."""
    wall = Clock(local_ms(D1, 10))
    mono = [100.0]
    store = Store(tmp_path / "gw.db", wall)
    ks = make_keystore("hf01", devices=1)
    conn = sqlite3.connect(tmp_path / "gw.db", isolation_level=None)
    init_report_schema(conn)
    r = Reporter(ReportConfig(lambda: ks, min_interval_s=1.0), wall, lambda: mono[0])

    def queued() -> list[int]:
        return [k for (k,) in conn.execute("SELECT kind FROM uplink_entries ORDER BY id")]

    assert r.run(conn) is not None
    assert sorted(queued()) == [int(batch.EntryKind.GATEWAY_STATUS), int(batch.EntryKind.ENROLL)]
    with store.transaction() as c:
        Store.update_health(c, "hf01-w01", wall(), {"fw": "1.0.0", "reset": 1, "stuck": 0})
    mono[0] += 0.4
    assert r.run(conn) == pytest.approx(0.6)
    assert int(batch.EntryKind.KEYPAD_STATUS) not in queued()
    mono[0] += 0.6
    r.run(conn)
    assert queued().count(int(batch.EntryKind.KEYPAD_STATUS)) == 1
    store.close()
    conn.close()
