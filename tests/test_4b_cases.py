"""Cases (issue 13, Deliver 2: 通报 -> 整改 -> 复核 -> 关闭) on SQLite and PostgreSQL.

A dissatisfied rating opens exactly one case, assigned to its hall, due 15 working days later on the
official 2026 calendar (National Day week and the 调休 Saturday counted as they are); a satisfied rating
opens none; a pass run again (or a rating queued twice) opens none again. The whole flow with its role
checks (a hall manager does not review, another hall's manager neither sees nor acts), submit refused
without a call-back, overdue found by moving the test's clock, every step in the audit log, DELETE
refused by the database. Then the same through the platform's pages over HTTP, with the list's scope,
filters and export."""

from __future__ import annotations

import csv
import io
import re
import threading
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from urllib.parse import quote

import chinese_calendar
import openpyxl
import pytest
from analytics_helpers import Rows, prepared
from case_helpers import audit_of, case_of_rating, cases_of, events_of, local_ms, user
from platform_helpers import NOW_MS, PASSWORD, TZ, Client, Clock, Filler, fill, start
from province_helpers import entry, make_world, signed_batch
from province_helpers import rating as pr_rating

from countersign.province import cases, users
from countersign.province.cases import CaseConflict, CaseError, CaseForbidden, CaseNotFound
from countersign.province.db import Conn, Database, DatabaseError
from countersign.province.supervision import run_pass
from countersign.province.web import PlatformServer
from countersign.province.workdays import Calendar


def bad_rating(conn: Conn, hall: str) -> int:
    """The hall's one 不满意 rating of platform_helpers.fill."""
    rid = conn.scalar("SELECT id FROM ratings WHERE hall = ? AND kind = 'rating' AND score = 1", (hall,))
    assert rid is not None
    return int(rid)


@pytest.fixture
def filled(province_db: Database) -> Iterator[tuple[Filler, Conn]]:
    filler = fill(province_db)
    run_pass(province_db, TZ, NOW_MS)
    with province_db.connect() as conn:
        yield filler, conn


# --- opening ----------------------------------------------------------------------------------------------

def test_a_dissatisfied_rating_opens_one_case_due_15_working_days_later_across_national_day(
        province_db: Database) -> None:
    conn = prepared(province_db)
    try:
        rows = Rows(conn)
        # Wednesday 2026-09-30, the day before the National Day week.
        bad = rows.rating("hf01", "10001", 1, "2026-09-30", service=2, window="3")
        good = rows.rating("hf01", "10001", 4, "2026-09-30")
        no_rating = rows.rating("hf01", "10001", None, "2026-09-30")
        assert run_pass(province_db, TZ, local_ms("2026-09-30", "12:05")) == 3
        (case,) = cases_of(conn)
        assert case["rating"] == bad and case["hall"] == "hf01" and case["source"] == "rating"
        assert case["state"] == "notified" and case["opened_by"] == "supervisor"
        assert good not in {c["rating"] for c in cases_of(conn)}
        assert no_rating not in {c["rating"] for c in cases_of(conn)}
        # The title carries the rating's context: its score, window, clerk and service item.
        assert "不满意" in case["title"] and "窗口 3" in case["title"] and "10001" in case["title"]
        assert "(2)" in case["title"]

        # By hand, from the State Council's 2026 notice: 中秋 9-25..27 and 国庆 10-01..07 off, Sunday 9-20
        # and Saturday 10-10 are 调休 working days. The 15 working days after Wednesday 9-30:
        by_hand = ["2026-10-08", "2026-10-09", "2026-10-10",
                   "2026-10-12", "2026-10-13", "2026-10-14", "2026-10-15", "2026-10-16",
                   "2026-10-19", "2026-10-20", "2026-10-21", "2026-10-22", "2026-10-23",
                   "2026-10-26", "2026-10-27"]
        assert len(by_hand) == cases.DEADLINE_WORKDAYS
        assert date(2026, 10, 10).weekday() == 5 and chinese_calendar.is_workday(date(2026, 10, 10))
        assert all(not chinese_calendar.is_workday(date(2026, 10, d)) for d in range(1, 8))
        assert case["deadline"] == by_hand[-1] == "2026-10-27"
        # Not the date a Monday-Friday count or a count ignoring the make-up Saturday would give.
        assert Calendar({date(2026, 10, 10): False}).add_workdays(date(2026, 9, 30), 15) == date(2026, 10, 28)

        # Retried: a second pass, and the same rating queued again, open nothing more.
        assert run_pass(province_db, TZ, local_ms("2026-09-30", "12:06")) == 0
        conn.execute("INSERT INTO supervision_queue (rating, queued_ms) VALUES (?, ?)", (bad, 0))
        assert run_pass(province_db, TZ, local_ms("2026-09-30", "12:07")) == 1
        assert [c["rating"] for c in cases_of(conn)] == [bad]
        assert events_of(conn, case["id"]) == [("supervisor", "opened")]
        ((actor, action, detail),) = audit_of(conn, case["id"])
        assert (actor, action, detail["rating"], detail["deadline"]) == ("supervisor", "case.open", bad,
                                                                        "2026-10-27")
    finally:
        conn.close()


def test_the_platforms_calendar_entry_moves_the_deadline(province_db: Database) -> None:
    """An administrator's calendar_days entry (a year the package does not know, a late change) wins."""
    conn = prepared(province_db)
    try:
        conn.execute("INSERT INTO calendar_days (day, workday, name, changed_ms, changed_by)"
                     " VALUES ('2026-12-03', 0, '临时休息 test', 0, 'test')")
        Rows(conn).rating("hf01", "10001", 1, "2026-12-02")
        run_pass(province_db, TZ, NOW_MS)
        (case,) = cases_of(conn)
        assert case["deadline"] == "2026-12-24"      # 12-23 without the entry
    finally:
        conn.close()


def test_a_pass_of_many_ratings_opens_a_case_for_each_dissatisfied_one(filled: tuple[Filler, Conn]) -> None:
    _, conn = filled
    got = {c["rating"]: c for c in cases_of(conn)}
    assert set(got) == {bad_rating(conn, h) for h in ("hf01", "hf02", "wh01")}
    assert {c["hall"] for c in got.values()} == {"hf01", "hf02", "wh01"}
    # Opened Wednesday 2026-12-02: 15 working days (no holiday in December) is Wednesday 12-23.
    assert {c["deadline"] for c in got.values()} == {"2026-12-23"}


# --- the flow ---------------------------------------------------------------------------------------------

def test_the_whole_flow_with_its_role_checks_and_audit(filled: tuple[Filler, Conn]) -> None:
    _, conn = filled
    mgr, other, city, admin = (user(conn, n) for n in ("mgr-hf01", "mgr-wh01", "hefei", "admin"))
    cid = case_of_rating(conn, bad_rating(conn, "hf01"))["id"]
    t = NOW_MS + 3_600_000

    def state() -> str:
        return str(conn.scalar("SELECT state FROM cases WHERE id = ?", (cid,)))

    # Another hall's manager: the case does not exist for them, whatever they try.
    with pytest.raises(CaseNotFound):
        cases.get(conn, other.scope, cid)
    for act in (lambda: cases.record_callback(conn, other, cid, t, "called back", t, TZ),
                lambda: cases.record_analysis(conn, other, cid, "a cause", "measures", t),
                lambda: cases.submit(conn, other, cid, t)):
        with pytest.raises(CaseNotFound), conn.transaction():
            act()
    assert state() == "notified"

    # Submit without a call-back (or anything): refused with the reason, nothing changed.
    with pytest.raises(CaseError, match="call-back"), conn.transaction():
        cases.submit(conn, mgr, cid, t)
    assert state() == "notified"
    with pytest.raises(CaseError, match="future"), conn.transaction():
        cases.record_callback(conn, mgr, cid, t + 86_400_000, "客户已接受道歉", t, TZ)
    with pytest.raises(CaseError, match="outcome"), conn.transaction():
        cases.record_callback(conn, mgr, cid, t, " ", t, TZ)
    assert state() == "notified"

    with conn.transaction():
        c = cases.record_callback(conn, mgr, cid, t - 600_000, "已电话回访，客户接受道歉", t, TZ)
    assert (c.state, c.callback_by, c.callback_ms) == ("rectifying", "mgr-hf01", t - 600_000)
    with pytest.raises(CaseError, match="cause"), conn.transaction():
        cases.submit(conn, mgr, cid, t)
    with conn.transaction():
        cases.record_analysis(conn, mgr, cid, "高峰期等候过长，窗口人员解释不足",
                              "增开高峰窗口，开展服务培训", t)
    # The hall manager cannot review their own case, nor can a city of another hall see it.
    with conn.transaction():
        c = cases.submit(conn, mgr, cid, t)
    assert c.state == "review"
    with pytest.raises(CaseForbidden), conn.transaction():
        cases.accept(conn, mgr, cid, "", t, TZ)
    with pytest.raises(CaseConflict), conn.transaction():
        cases.record_analysis(conn, mgr, cid, "changed cause", "changed measures", t)
    wh_case = case_of_rating(conn, bad_rating(conn, "wh01"))["id"]
    with pytest.raises(CaseNotFound), conn.transaction():
        cases.accept(conn, city, wh_case, "", t, TZ)

    # The city returns it (a note is required), the hall resubmits, the city accepts.
    with pytest.raises(CaseError, match="note"), conn.transaction():
        cases.return_case(conn, city, cid, "", t)
    assert state() == "review"
    with conn.transaction():
        c = cases.return_case(conn, city, cid, "请补充培训记录", t + 1000)
    assert (c.state, c.review_note) == ("rectifying", "请补充培训记录")
    with conn.transaction():
        cases.record_analysis(conn, mgr, cid, "高峰期等候过长，窗口人员解释不足",
                              "增开高峰窗口；12-02 已培训 8 人", t + 2000)
        cases.submit(conn, mgr, cid, t + 3000)
    with conn.transaction():
        c = cases.accept(conn, city, cid, "整改到位", t + 4000, TZ)
    assert (c.state, c.closed_ms, c.on_time, c.reviewed_by) == ("closed", t + 4000, True, "hefei")
    with pytest.raises(CaseConflict), conn.transaction():
        cases.accept(conn, admin, cid, "", t + 5000, TZ)
    with pytest.raises(CaseConflict), conn.transaction():
        cases.record_callback(conn, mgr, cid, t, "again", t + 5000, TZ)

    assert events_of(conn, cid) == [
        ("supervisor", "opened"), ("mgr-hf01", "callback"), ("mgr-hf01", "analysis"),
        ("mgr-hf01", "submitted"), ("hefei", "returned"), ("mgr-hf01", "analysis"), ("mgr-hf01", "submitted"),
        ("hefei", "accepted")]
    assert [(a, b) for a, b, _ in audit_of(conn, cid)] == [
        ("supervisor", "case.open"), ("mgr-hf01", "case.callback"), ("mgr-hf01", "case.analysis"),
        ("mgr-hf01", "case.submit"), ("hefei", "case.return"), ("mgr-hf01", "case.analysis"),
        ("mgr-hf01", "case.submit"), ("hefei", "case.accept")]
    assert audit_of(conn, cid)[-1][2] == {"note": "整改到位", "on_time": True}
    # The refused attempts left nothing behind.
    assert conn.scalar("SELECT COUNT(*) FROM case_events WHERE case_id = ?", (wh_case,)) == 1


def test_opened_by_hand_by_a_city_or_the_province_for_a_hall_in_scope(filled: tuple[Filler, Conn]) -> None:
    _, conn = filled
    mgr, city, admin = (user(conn, n) for n in ("mgr-hf01", "hefei", "admin"))
    cal = Calendar()
    before = len(cases_of(conn))
    with pytest.raises(CaseForbidden), conn.transaction():
        cases.open_manual(conn, mgr, "hf01", "客户投诉 complaint", "窗口人员态度差", NOW_MS, TZ, cal)
    with pytest.raises(CaseError, match="scope"), conn.transaction():
        cases.open_manual(conn, city, "wh01", "客户投诉 complaint", "窗口人员态度差", NOW_MS, TZ, cal)
    with pytest.raises(CaseError, match="scope"), conn.transaction():
        cases.open_manual(conn, admin, "nosuch", "客户投诉 complaint", "窗口人员态度差", NOW_MS, TZ, cal)
    with pytest.raises(CaseError, match="description"), conn.transaction():
        cases.open_manual(conn, city, "hf02", "客户投诉 complaint", "", NOW_MS, TZ, cal)
    assert len(cases_of(conn)) == before
    with conn.transaction():
        c = cases.open_manual(conn, city, "hf02", "12345 热线投诉 hotline complaint", "客户反映排队过久",
                              NOW_MS, TZ, cal)
    assert (c.source, c.rating, c.hall, c.opened_by, c.deadline) == ("manual", None, "hf02", "hefei",
                                                                     "2026-12-23")
    assert [(a, b) for a, b, _ in audit_of(conn, c.id)] == [("hefei", "case.open")]
    with conn.transaction():
        c2 = cases.open_manual(conn, admin, "wh01", "暗访发现 observation", "窗口无人值守十分钟", NOW_MS,
                               TZ, cal)
    assert c2.source == "manual" and len(cases_of(conn)) == before + 2


def test_overdue_found_once_when_the_clock_passes_the_deadline(filled: tuple[Filler, Conn],
                                                               province_db: Database) -> None:
    _, conn = filled
    mgr, city = user(conn, "mgr-hf01"), user(conn, "hefei")
    hf01 = case_of_rating(conn, bad_rating(conn, "hf01"))["id"]
    hf02 = case_of_rating(conn, bad_rating(conn, "hf02"))["id"]
    # hf02's case closes in time; hf01's and wh01's do not.
    with conn.transaction():
        cases.record_callback(conn, city, hf02, NOW_MS, "已回访，客户认可", NOW_MS, TZ)
        cases.record_analysis(conn, city, hf02, "系统卡顿", "更换终端", NOW_MS)
        cases.submit(conn, city, hf02, NOW_MS)
        cases.accept(conn, city, hf02, "", NOW_MS, TZ)

    run_pass(province_db, TZ, local_ms("2026-12-23", "23:59"))     # the deadline day itself: not overdue
    assert all(c["overdue_ms"] is None for c in cases_of(conn))
    late = local_ms("2026-12-24", "00:30")
    run_pass(province_db, TZ, late)
    by_id = {c["id"]: c for c in cases_of(conn)}
    assert by_id[hf01]["overdue_ms"] == late and by_id[hf02]["overdue_ms"] is None
    run_pass(province_db, TZ, late + 3_600_000)                      # found once, not again
    assert {c["id"]: c["overdue_ms"] for c in cases_of(conn)}[hf01] == late
    assert events_of(conn, hf01) == [("supervisor", "opened"), ("supervisor", "overdue")]
    assert [b for _, b, _ in audit_of(conn, hf01)] == ["case.open", "case.overdue"]

    total, listed = cases.listing(conn, city.scope, cases.Query(overdue=True, today="2026-12-24"), limit=50)
    assert (total, [c.id for c in listed]) == (1, [hf01])            # wh01's is not the city's
    total, _ = cases.listing(conn, mgr.scope, cases.Query(overdue=True, today="2026-12-24"), limit=50)
    assert total == 1
    # Closed after the deadline: closed, but not on time.
    with conn.transaction():
        cases.record_callback(conn, mgr, hf01, late, "已回访，客户认可", late, TZ)
        cases.record_analysis(conn, mgr, hf01, "人员不足", "增加人员", late)
        cases.submit(conn, mgr, hf01, late)
        c = cases.accept(conn, city, hf01, "逾期完成", late + 1000, TZ)
    assert (c.state, c.on_time) == ("closed", False)
    assert cases.listing(conn, city.scope, cases.Query(overdue=True, today="2026-12-24"), limit=50)[0] == 0


def test_two_reviewers_at_once_close_the_case_once(filled: tuple[Filler, Conn],
                                                   province_db: Database) -> None:
    """The city and the province accept the same case at the same moment: one closes it, the other is
    told it is no longer in review (the row is locked for the action; SQLite's write lock does the same)."""
    _, conn = filled
    mgr, city, admin = (user(conn, n) for n in ("mgr-hf01", "hefei", "admin"))
    cid = case_of_rating(conn, bad_rating(conn, "hf01"))["id"]
    with conn.transaction():
        cases.record_callback(conn, mgr, cid, NOW_MS, "已回访，客户认可", NOW_MS, TZ)
        cases.record_analysis(conn, mgr, cid, "系统卡顿", "更换终端", NOW_MS)
        cases.submit(conn, mgr, cid, NOW_MS)
    first = province_db.connect()
    got: dict[str, str] = {}

    def the_other() -> None:
        with province_db.connect(timeout=20) as second:
            try:
                with second.transaction():
                    cases.accept(second, admin, cid, "", NOW_MS + 1, TZ)
                got["second"] = "accepted"
            except CaseConflict as exc:
                got["second"] = str(exc)

    try:
        first.begin()
        cases.accept(first, city, cid, "", NOW_MS, TZ)
        worker = threading.Thread(target=the_other)
        worker.start()
        if province_db.dialect == "postgres":
            # Commit only once the other transaction waits on the row (there is no event to wait on).
            until = time.monotonic() + 10
            while time.monotonic() < until and not conn.scalar(
                    "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database()"):
                threading.Event().wait(0.02)
        first.commit()
        worker.join(30)
    finally:
        first.close()
    assert "not in review" in got["second"]
    assert [a for _, a in events_of(conn, cid)].count("accepted") == 1
    assert conn.scalar("SELECT reviewed_by FROM cases WHERE id = ?", (cid,)) == "hefei"


def test_cases_and_their_history_are_never_deleted(filled: tuple[Filler, Conn]) -> None:
    _, conn = filled
    before = (conn.scalar("SELECT COUNT(*) FROM cases"), conn.scalar("SELECT COUNT(*) FROM case_events"))
    assert before[0] == 3
    for sql in ("DELETE FROM cases", "DELETE FROM case_events", "DELETE FROM cases WHERE id = 1"):
        with pytest.raises(DatabaseError, match="never deleted"), conn.transaction():
            conn.execute(sql)
    after = (conn.scalar("SELECT COUNT(*) FROM cases"), conn.scalar("SELECT COUNT(*) FROM case_events"))
    assert after == before


# --- the pages --------------------------------------------------------------------------------------------

@pytest.fixture
def served(province_db: Database, tmp_path: Path) -> Iterator[tuple[PlatformServer, Clock, Database]]:
    fill(province_db)
    run_pass(province_db, TZ, NOW_MS)
    clock = Clock()
    server = start(tmp_path, province_db, clock)
    try:
        yield server, clock, province_db
    finally:
        server.stop()


def client(server: PlatformServer, name: str) -> Client:
    c = Client(server.url)
    assert c.log_in(name) == 303
    return c


def listed(html: str) -> set[int]:
    return {int(x) for x in re.findall(r'id="case-(\d+)"', html)}


def test_the_pages_flow_scope_and_refusals(served: tuple[PlatformServer, Clock, Database]) -> None:
    server, clock, db = served
    with db.connect() as conn:
        mine = case_of_rating(conn, bad_rating(conn, "hf01"))["id"]
        hf02 = case_of_rating(conn, bad_rating(conn, "hf02"))["id"]
        theirs = case_of_rating(conn, bad_rating(conn, "wh01"))["id"]
    mgr, other, city = client(server, "mgr-hf01"), client(server, "mgr-wh01"), client(server, "hefei")

    status, html, _ = mgr.get("/cases")
    assert status == 200 and listed(html) == {mine}
    assert listed(city.get("/cases")[1]) == {mine, hf02}
    assert listed(client(server, "admin").get("/cases")[1]) == {mine, hf02, theirs}
    # Editing the URL by hand: another hall's case is not found, and a filter does not widen the scope.
    assert other.get(f"/cases/{mine}")[0] == 404
    assert listed(other.get("/cases?hall=hf01")[1]) == set()
    other.get("/cases")
    assert other.post(f"/cases/{mine}/callback", {"csrf": other.csrf, "callback_at": "2026-12-02T09:00",
                                                  "outcome": "已回访客户"})[0] == 404
    assert mgr.get("/cases?state=bogus")[0] == 400
    assert mgr.get("/cases/new")[0] == 403

    status, html, _ = mgr.get(f"/cases/{mine}")
    assert status == 200 and "不满意" in html and f'href="/ratings/{bad_rating_id(db, "hf01")}"' in html
    assert 'id="accept"' not in html and 'id="callback-form"' in html
    # Submit without a call-back: 400 with the reason, nothing changed; a missing CSRF token: 403.
    status, html, _ = mgr.post(f"/cases/{mine}/submit", {"csrf": mgr.csrf})
    assert status == 400 and "call-back" in html
    no_csrf = {"callback_at": "2026-12-02T09:50", "outcome": "已回访客户"}
    assert mgr.post(f"/cases/{mine}/callback", no_csrf)[0] == 403
    status, html, _ = mgr.post(f"/cases/{mine}/callback", {"csrf": mgr.csrf, "callback_at": "not a time",
                                                           "outcome": "已回访客户"})
    assert status == 400 and "call-back time" in html
    with db.connect() as conn:
        assert events_of(conn, mine) == [("supervisor", "opened")]

    clock.ms = NOW_MS + 1_800_000
    mgr.get(f"/cases/{mine}")
    assert mgr.post(f"/cases/{mine}/callback", {"csrf": mgr.csrf, "callback_at": "2026-12-02T10:20",
                                                "outcome": "已电话回访，客户表示理解"})[0] == 303
    assert mgr.post(f"/cases/{mine}/analysis", {"csrf": mgr.csrf, "cause": "叫号系统故障，未及时解释",
                                                "measures": "每日开厅前检查叫号系统"})[0] == 303
    assert mgr.post(f"/cases/{mine}/submit", {"csrf": mgr.csrf})[0] == 303
    # The hall manager may not review (403), the city may.
    assert mgr.post(f"/cases/{mine}/review", {"csrf": mgr.csrf, "outcome": "accept"})[0] == 403
    city.get(f"/cases/{mine}")
    status, html, _ = city.get(f"/cases/{mine}")
    assert 'id="accept"' in html and "已电话回访，客户表示理解" in html and "每日开厅前检查叫号系统" in html
    assert city.post(f"/cases/{mine}/review", {"csrf": city.csrf, "outcome": "maybe"})[0] == 400
    accept = {"csrf": city.csrf, "outcome": "accept", "note": "同意"}
    assert city.post(f"/cases/{mine}/review", accept)[0] == 303
    assert city.post(f"/cases/{mine}/review", {"csrf": city.csrf, "outcome": "accept"})[0] == 409

    status, html, _ = mgr.get("/cases?state=closed")
    assert listed(html) == {mine}
    row = re.search(rf'<tr id="case-{mine}".*?</tr>', html, re.S)
    assert row and "已关闭" in row.group(0) and "是 Yes" in row.group(0)
    with db.connect() as conn:
        assert [b for _, b, _ in audit_of(conn, mine)] == ["case.open", "case.callback", "case.analysis",
                                                           "case.submit", "case.accept"]

    # Export: the user's scope only.
    status, body, headers = city.raw("/cases?format=csv")
    assert status == 200
    text = body.decode("utf-8-sig")
    ids = {r[0] for r in csv.reader(io.StringIO(text)) if r and r[0].isdigit()}
    assert ids == {str(mine), str(hf02)}

    # Opened by hand on /cases/new by the city, for a hall of its own only.
    city.get("/cases/new")
    status, html, _ = city.post("/cases/new", {"csrf": city.csrf, "hall": "wh01", "title": "热线投诉",
                                               "detail": "客户反映排队过久"})
    assert status == 400 and "scope" in html
    status, _, headers = city.post("/cases/new", {"csrf": city.csrf, "hall": "hf02",
                                                  "title": "热线投诉 hotline", "detail": "客户反映排队过久"})
    assert status == 303
    new_id = int(headers["location"].rsplit("/", 1)[1].split("?")[0])
    assert mgr.get(f"/cases/{new_id}")[0] == 404 and city.get(f"/cases/{new_id}")[0] == 200

    # The overdue list: the clock moved past 12-23 (the sessions expired meanwhile: log in again).
    clock.ms = local_ms("2026-12-28", "09:00")
    run_pass(db, TZ, clock.ms)
    city, mgr = client(server, "hefei"), client(server, "mgr-hf01")
    status, html, _ = city.get("/cases?overdue=1")
    assert status == 200 and "逾期工单" in html and listed(html) == {hf02, new_id}
    overdue_sum = re.search(r'id="sum-overdue">.*?<dd[^>]*>(\d+)</dd>', html, re.S)
    assert overdue_sum and overdue_sum.group(1) == "2"
    assert listed(client(server, "admin").get("/cases?overdue=1")[1]) == {hf02, new_id, theirs}
    assert listed(mgr.get("/cases?overdue=1")[1]) == set()
    status, html, _ = city.get(f"/cases/{hf02}")
    assert 'id="overdue"' in html and "逾期 Overdue (escalated)" in html


def bad_rating_id(db: Database, hall: str) -> int:
    with db.connect() as conn:
        return bad_rating(conn, hall)


def test_the_list_filters_and_pages(served: tuple[PlatformServer, Clock, Database]) -> None:
    server, _, db = served
    admin = client(server, "admin")
    assert listed(admin.get("/cases?city=" + quote("芜湖"))[1]) == {case_of_rating_id(db, "wh01")}
    assert listed(admin.get("/cases?hall=hf02")[1]) == {case_of_rating_id(db, "hf02")}
    assert len(listed(admin.get("/cases?period=today")[1])) == 3
    # A period before any case was opened.
    assert listed(admin.get("/cases?from=2026-11-01&to=2026-11-30")[1]) == set()
    assert admin.get("/cases?from=2026-13-01")[0] == 400
    assert admin.get("/cases?page=0")[0] == 400
    assert admin.get("/cases?overdue=yes")[0] == 400
    assert admin.get("/cases/999999")[0] == 404
    status, body, _ = admin.raw("/cases?format=xlsx&hall=hf02")
    assert status == 200 and body[:2] == b"PK"
    sheet = openpyxl.load_workbook(io.BytesIO(body)).active
    assert sheet is not None
    cells = [str(c.value) for row in sheet.iter_rows() for c in row if c.value is not None]
    assert str(case_of_rating_id(db, "hf02")) in cells and "工单编号 Case" in cells
    # Newest first, 50 a page.
    with db.connect() as conn, conn.transaction():
        for i in range(55):
            cases.open_manual(conn, user(conn, "admin"), "hf01", f"暗访 observation {i}", "窗口无人",
                              NOW_MS + 1000 * (i + 1), TZ, Calendar())
    html = admin.get("/cases")[1]
    ids = [int(x) for x in re.findall(r'id="case-(\d+)"', html)]
    assert len(ids) == 50 and ids == sorted(ids, reverse=True) and 'id="next"' in html
    assert len(listed(admin.get("/cases?page=2")[1])) == 58 - 50


def case_of_rating_id(db: Database, hall: str) -> int:
    with db.connect() as conn:
        return int(case_of_rating(conn, bad_rating(conn, hall))["id"])


# --- end to end -------------------------------------------------------------------------------------------

def test_a_dissatisfied_rating_through_a_real_province_becomes_a_case_in_the_hall_managers_list(
        tmp_path: Path, province_db: Database) -> None:
    """A hall gateway publishes a signed batch (one 不满意, one 非常满意) to a real mosquitto; the province's
    worker stores it and its supervisor thread opens one case, which the hall's manager finds on /cases."""
    world = make_world(tmp_path / "world", workers=1)
    server = None
    try:
        p = world.province(province_db)
        hall = world.hall_client("hf01")
        k = world.device_key("hf01-w02")
        hall.publish("hf01", signed_batch(world.gateway_keys["hf01"], "hf01", 1, [
            entry(pr_rating(k, "hf01-w02", 1, 1), window="2", clerk="c002", txn="t-bad"),
            entry(pr_rating(k, "hf01-w02", 2, 4), window="2", clerk="c002", txn="t-good")]))
        hall.wait_acks(1)

        def opened() -> list[dict[str, object]]:
            return cases_of(province_db)

        # Each supervisor pass is a condition to wait on; the case is there after the pass that saw it.
        deadline = time.monotonic() + 15
        while not opened() and time.monotonic() < deadline:
            p.supervisor.wait_passes(p.supervisor.passes + 1, max(0.0, deadline - time.monotonic()))
        (case,) = opened()
        with province_db.connect() as conn:
            bad = conn.scalar("SELECT id FROM ratings WHERE txn = 't-bad'")
            for h, name, city in (("hf01", "合肥东营业厅", "合肥"), ("wh01", "芜湖中心营业厅", "芜湖")):
                conn.execute("INSERT INTO halls (hall, name, city) VALUES (?, ?, ?)"
                             " ON CONFLICT (hall) DO NOTHING", (h, name, city))
            users.add(conn, "mgr-hf01", "合肥东 厅长", PASSWORD, "hall", "hf01", actor="test", now_ms=NOW_MS)
            users.add(conn, "mgr-wh01", "芜湖 厅长", PASSWORD, "hall", "wh01", actor="test", now_ms=NOW_MS)
        assert case["rating"] == bad and case["hall"] == "hf01" and "c002" in str(case["title"])
        server = start(tmp_path, province_db, Clock())
        mgr, other = client(server, "mgr-hf01"), client(server, "mgr-wh01")
        status, html, _ = mgr.get("/cases")
        assert status == 200 and listed(html) == {case["id"]} and "c002" in html
        assert listed(other.get("/cases")[1]) == set() and other.get(f"/cases/{case['id']}")[0] == 404
    finally:
        if server is not None:
            server.stop()
        world.close()
