"""The province's side of a hall gateway's reports (province/hallreports.py) and the daily reconciliation
per hop (province/reconcile.py), on SQLite and on a real PostgreSQL server (``province_db``).

Reports are decoded from their wire form first (batch.decode_entry), as the receiver gets them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from countersign.protocol import batch, cbor
from countersign.protocol.kcv import key_check_value
from countersign.protocol.outcome import Outcome
from countersign.province import hallreports as hr
from countersign.province.db import Conn, Database
from countersign.province.migrations import upgrade
from countersign.province.period import day_start_ms, rating_day
from countersign.province.reconcile import ReconRow, reconcile

TZ = ZoneInfo("Asia/Shanghai")
DAY = "2026-11-30"
NEXT_DAY_MS = day_start_ms(dt.date(2026, 12, 1), TZ) + 3_600_000     # 01:00 the day after
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def wire(e: batch.Entry) -> Any:
    """The entry as the province decodes it from a batch."""
    return batch.decode_entry(cbor.dumps(e.to_map()))


@pytest.fixture
def conn(province_db: Database) -> Any:
    upgrade(province_db, TZ)
    c = province_db.connect()
    yield c
    c.close()


def status(device: str = "hf01-w01", at: int = 1_000, *, online: bool = True, stuck: int | None = 0,
           fw: str | None = "1.25.0") -> batch.KeypadStatusEntry:
    return wire(batch.KeypadStatusEntry(device, at, at - 500, online, fw, 1, 40_000, 2, -55, stuck))


def keypad_row(conn: Conn, device: str = "hf01-w01") -> Any:
    return conn.one("SELECT hall, seen_ms, online, fw, reset_cause, free_heap, outbox, rssi, stuck_keys,"
                    " reported_ms FROM keypad_status WHERE device = ?", (device,))


def test_keypad_status_keeps_the_latest_report(conn: Conn) -> None:
    with conn.transaction():
        got = hr.store_keypad_status(conn, "hf01", status(at=1_000, stuck=0b101), 5, "hf01")
    assert got is Outcome.STORED
    assert keypad_row(conn) == ("hf01", 500, 1, "1.25.0", "1", 40_000, 2, -55, "1,3", 1_000)
    with conn.transaction():
        # An older report arriving later (batches from several workers) changes nothing.
        got = hr.store_keypad_status(conn, "hf01", status(at=900, online=False), 6, "hf01")
    assert got is Outcome.DUPLICATE
    assert keypad_row(conn)[2] == 1
    with conn.transaction():
        assert hr.store_keypad_status(conn, "hf01", status(at=2_000, online=False, stuck=None, fw=None), 7,
                                      "hf01") is Outcome.STORED
    assert keypad_row(conn) == ("hf01", 1_500, 0, None, "1", 40_000, 2, -55, None, 2_000)


def test_a_hall_cannot_report_another_halls_keypad(conn: Conn) -> None:
    with conn.transaction():
        assert hr.store_keypad_status(conn, "hf01", status(at=1_000), 5, "hf01") is Outcome.STORED
        refused = hr.store_keypad_status(conn, "hf02", status(at=9_000, online=False), 6, "hf01")
    assert isinstance(refused, hr.Refused) and refused.reason == "wrong-hall"
    assert keypad_row(conn)[0] == "hf01" and keypad_row(conn)[2] == 1
    # A keypad the registry does not know yet: the hall that reported it first keeps it.
    with conn.transaction():
        assert hr.store_keypad_status(conn, "hf03", status("hf03-w09", 1_000), 5, None) is Outcome.STORED
        other = hr.store_keypad_status(conn, "hf04", status("hf03-w09", 2_000, online=False), 6, None)
    assert isinstance(other, hr.Refused) and other.reason == "wrong-hall"
    assert keypad_row(conn, "hf03-w09")[:3] == ("hf03", 500, 1)
    # Day counts follow the same rule.
    dc = wire(batch.DayCountEntry("hf01-w01", 1, DAY, 3, 0, 1, 3, 10))
    with conn.transaction():
        wrong = hr.store_day_count(conn, "hf02", dc, 11, "hf01")
    assert isinstance(wrong, hr.Refused) and wrong.reason == "wrong-hall"
    assert conn.scalar("SELECT count(*) FROM day_counts") == 0


def test_gateway_status_keeps_the_latest(conn: Conn) -> None:
    with conn.transaction():
        assert hr.store_gateway_status(conn, "hf01", wire(batch.GatewayStatusEntry(1_000, 5, 400)), 0) \
            is Outcome.STORED
        assert hr.store_gateway_status(conn, "hf01", wire(batch.GatewayStatusEntry(800, 9, 300)), 0) \
            is Outcome.DUPLICATE
        assert hr.store_gateway_status(conn, "hf02", wire(batch.GatewayStatusEntry(700, 0, None)), 0) \
            is Outcome.STORED
    assert conn.all("SELECT hall, backlog, oldest_ms, reported_ms FROM gateway_status ORDER BY hall") == [
        ("hf01", 5, 400, 1_000), ("hf02", 0, None, 700)]
    with conn.transaction():
        assert hr.store_report(conn, "hf01", wire(batch.GatewayStatusEntry(2_000, 0, None)), 0, None) \
            is Outcome.STORED
    assert conn.one("SELECT backlog, oldest_ms FROM gateway_status WHERE hall = 'hf01'") == (0, None)


def test_day_count_latest_report_wins(conn: Conn) -> None:
    first = wire(batch.DayCountEntry("hf01-w01", 1, DAY, 8, 1, 1, 9, 10_000))
    late = wire(batch.DayCountEntry("hf01-w01", 1, DAY, 9, 1, 1, 10, 20_000))   # after a keypad's reboot
    with conn.transaction():
        assert hr.store_day_count(conn, "hf01", first, 1, "hf01") is Outcome.STORED
        assert hr.store_day_count(conn, "hf01", first, 2, "hf01") is Outcome.DUPLICATE     # resent batch
        assert hr.store_day_count(conn, "hf01", late, 3, "hf01") is Outcome.STORED
        assert hr.store_day_count(conn, "hf01", first, 4, "hf01") is Outcome.DUPLICATE     # older, later
    assert conn.all("SELECT hall, device, epoch, day, ratings, no_ratings, first_seq, last_seq, reported_ms"
                    " FROM day_counts") == [("hf01", "hf01-w01", 1, DAY, 9, 1, 1, 10, 20_000)]


def enroll(device: str = "hf01-w01", key: bytes = KEY, epoch: int = 1) -> batch.EnrollEntry:
    return wire(batch.EnrollEntry(device, "1", epoch, 4, key_check_value(key), 5_000))


def enrollment(conn: Conn, device: str = "hf01-w01") -> Any:
    return conn.one('SELECT hall, "window", epoch, scale, kcv, gateway_ms, state, key FROM enrollments'
                    " WHERE device = ?", (device,))


def mismatch_alarms(conn: Conn) -> list[Any]:
    return conn.all("SELECT hall, device, detail FROM alarms WHERE kind = 'enrollment-mismatch' ORDER BY id")


def test_enroll_notice_alone_is_a_pending_enrollment_without_a_key(conn: Conn) -> None:
    with conn.transaction():
        assert hr.store_enroll_notice(conn, "hf01", enroll(), 7_000, None) is Outcome.STORED
        assert hr.store_enroll_notice(conn, "hf01", enroll(), 8_000, None) is Outcome.DUPLICATE
    assert enrollment(conn) == ("hf01", "1", 1, 4, key_check_value(KEY), 7_000, "pending", None)
    assert mismatch_alarms(conn) == []


def technician_record(conn: Conn, hall: str = "hf01", key: bytes = KEY) -> None:
    with conn.transaction():
        conn.execute('INSERT INTO enrollments (device, hall, "window", epoch, scale, key, technician_ms,'
                     " technician, state) VALUES (?,?,?,?,?,?,?,?,'pending')",
                     ("hf01-w01", hall, "1", 1, 4, key, 1_000, "tech.li"))


def test_enroll_notice_fills_in_the_technicians_record(conn: Conn) -> None:
    technician_record(conn)
    with conn.transaction():
        assert hr.store_enroll_notice(conn, "hf01", enroll(), 7_000, None) is Outcome.STORED
    row = enrollment(conn)
    assert row[:7] == ("hf01", "1", 1, 4, key_check_value(KEY), 7_000, "pending")
    assert bytes(row[7]) == KEY                  # the technician's key, untouched by the notice
    assert conn.scalar("SELECT count(*) FROM enrollments") == 1
    assert mismatch_alarms(conn) == []


def test_enroll_notice_with_another_key_is_recorded_and_alarmed_once(conn: Conn) -> None:
    technician_record(conn)
    with conn.transaction():
        assert hr.store_enroll_notice(conn, "hf01", enroll(key=OTHER_KEY), 7_000, "hf01") is Outcome.STORED
    with conn.transaction():     # the same notice again (a resent batch): no second alarm
        hr.store_enroll_notice(conn, "hf01", enroll(key=OTHER_KEY), 9_000, "hf01")
    assert enrollment(conn)[4] == key_check_value(OTHER_KEY)
    alarms = mismatch_alarms(conn)
    assert len(alarms) == 1 and alarms[0][:2] == ("hf01", "hf01-w01")
    assert "not that of the technician's key" in alarms[0][2]


def test_enroll_notice_from_another_hall_is_alarmed_and_changes_no_record(conn: Conn) -> None:
    technician_record(conn, hall="hf01")
    with conn.transaction():
        hr.store_enroll_notice(conn, "hf02", enroll(), 7_000, "hf01")
    row = enrollment(conn)
    assert row[0] == "hf01" and row[5] is None and row[4] is None   # the technician's record untouched
    [(hall, device, detail)] = mismatch_alarms(conn)
    assert (hall, device) == ("hf02", "hf01-w01")
    assert "registry has it at hall hf01" in detail and "technician enrolled it at hall hf01" in detail


# ---- reconciliation ------------------------------------------------------------------------------------

def add_rating(conn: Conn, hall: str, device: str, seq: int, *, epoch: int = 1, kind: str = "rating",
               day: str = DAY) -> None:
    cose = f"{device}/{epoch}/{seq}".encode()
    conn.execute("INSERT INTO ratings (device, epoch, seq, kind, score, scale, prompt, press_s, hall,"
                 ' "window", service, received_ms, stored_ms, batch_hall, batch_id, cose, digest, day)'
                 " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                 (device, epoch, seq, kind, 3 if kind == "rating" else None, 4 if kind == "rating" else None,
                  seq, None, hall, "1", 2, 1, 2, hall, 7, cose, hashlib.sha256(cose).digest(), day))


def add_held(conn: Conn, hall: str, device: str, seq: int, press_ms: int) -> None:
    cose = f"held/{device}/{seq}".encode()
    conn.execute('INSERT INTO held (hall, device, epoch, seq, kind, press_s, "window", service, received_ms,'
                 " stored_ms, batch_hall, batch_id, cose, digest, reason, detail, day)"
                 " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                 (hall, device, 1, seq, "rating", press_ms // 1000, "1", 2, press_ms, press_ms, hall, 7, cose,
                  hashlib.sha256(cose).digest(), "unknown-device", "not enrolled yet",
                  rating_day(press_ms // 1000, press_ms, TZ)))


def day_count(conn: Conn, hall: str, device: str, ratings: int, no_ratings: int, first: int, last: int,
              day: str = DAY) -> None:
    e = wire(batch.DayCountEntry(device, 1, day, ratings, no_ratings, first, last, 50_000))
    assert hr.store_day_count(conn, hall, e, 60_000, hall) is Outcome.STORED


def one(rows: list[ReconRow], device: str) -> ReconRow:
    [row] = [r for r in rows if r.device == device]
    return row


def test_reconcile_flags_a_rating_the_gateway_lost(conn: Conn) -> None:
    with conn.transaction():
        # The keypad made seqs 1..10; seq 5 never reached the gateway: it stored 9 and so did the province.
        for seq in (1, 2, 3, 4, 6, 7, 8, 9, 10):
            add_rating(conn, "hf01", "hf01-w01", seq, kind="no-rating" if seq == 9 else "rating")
        day_count(conn, "hf01", "hf01-w01", 8, 1, 1, 10)
    r = one(reconcile(conn, DAY, DAY, tz=TZ, now_ms=NEXT_DAY_MS), "hf01-w01")
    assert (r.made, r.gateway, r.province, r.held) == (10, 9, 9, 0)
    assert (r.gateway_ratings, r.gateway_no_ratings) == (8, 1)
    assert r.flagged
    assert "1 numbered by the keypad never stored at the gateway" in r.reason
    assert r.reason.startswith("评价器编号 10 条，网关只存 9 条")


def test_reconcile_flags_what_is_still_in_the_gateways_backlog(conn: Conn) -> None:
    with conn.transaction():
        for seq in range(1, 10):
            add_rating(conn, "hf01", "hf01-w01", seq)
        day_count(conn, "hf01", "hf01-w01", 10, 0, 1, 10)
        hr.store_gateway_status(conn, "hf01", wire(batch.GatewayStatusEntry(70_000, 1, 40_000)), 71_000)
    r = one(reconcile(conn, DAY, DAY, tz=TZ, now_ms=NEXT_DAY_MS), "hf01-w01")
    assert (r.made, r.gateway, r.province) == (10, 10, 9)
    assert r.flagged
    assert "still in the gateway's backlog (1 unacked)" in r.reason
    assert "1 stored at the gateway not received by the province" in r.reason


def test_reconcile_agrees_counts_held_and_filters_by_hall_and_city(conn: Conn) -> None:
    with conn.transaction():
        conn.execute("INSERT INTO halls (hall, name, city, county) VALUES ('hf01', '合肥一厅', '合肥', NULL),"
                     " ('wh01', '芜湖一厅', '芜湖', NULL)")
        for seq in range(1, 5):
            add_rating(conn, "hf01", "hf01-w01", seq)
        # seq 5 of the day is held (its keypad's enrollment not approved yet): received, not counted.
        add_held(conn, "hf01", "hf01-w01", 5, day_start_ms(dt.date(2026, 11, 30), TZ) + 10 * 3_600_000)
        day_count(conn, "hf01", "hf01-w01", 5, 0, 1, 5)
        for seq in range(1, 4):
            add_rating(conn, "wh01", "wh01-w01", seq)
        day_count(conn, "wh01", "wh01-w01", 3, 0, 1, 3)
    rows = reconcile(conn, DAY, DAY, tz=TZ, now_ms=NEXT_DAY_MS)
    assert [(r.hall, r.device) for r in rows] == [("hf01", "hf01-w01"), ("wh01", "wh01-w01")]
    r = one(rows, "hf01-w01")
    assert (r.made, r.gateway, r.province, r.held, r.flagged) == (5, 5, 5, 1, False)
    assert "1 of them held" in r.reason
    w = one(rows, "wh01-w01")
    assert not w.flagged and "agree" in w.reason
    assert [r.hall for r in reconcile(conn, DAY, DAY, city="芜湖", tz=TZ, now_ms=NEXT_DAY_MS)] == ["wh01"]
    assert [r.hall for r in reconcile(conn, DAY, DAY, hall="hf01", tz=TZ, now_ms=NEXT_DAY_MS)] == ["hf01"]
    # A scope condition as province/scope.py writes it.
    assert [r.hall for r in reconcile(conn, DAY, DAY, scope=(" AND hall = ?", ["wh01"]), tz=TZ,
                                      now_ms=NEXT_DAY_MS)] == ["wh01"]
    assert reconcile(conn, "2026-12-01", "2026-12-31", tz=TZ, now_ms=NEXT_DAY_MS) == []


def test_reconcile_waits_for_the_day_count_until_the_day_is_over(conn: Conn) -> None:
    with conn.transaction():
        for seq in range(1, 4):
            add_rating(conn, "hf01", "hf01-w01", seq)
    during = one(reconcile(conn, DAY, DAY, tz=TZ, now_ms=NEXT_DAY_MS - 12 * 3_600_000), "hf01-w01")
    assert (during.made, during.gateway, during.province, during.flagged) == (3, None, 3, False)
    assert "day not over" in during.reason
    after = one(reconcile(conn, DAY, DAY, tz=TZ, now_ms=NEXT_DAY_MS), "hf01-w01")
    assert after.flagged and "no day count from the gateway" in after.reason
