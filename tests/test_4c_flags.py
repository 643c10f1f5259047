"""Integrity flags (issue 13, Deliver 4) on SQLite and PostgreSQL, raised by the supervisor's pass
(``run_pass`` with the test's clock) over ratings queued as the receiver queues them: a scripted
self-rating pattern (the clerk's invite key, all top scores, some while the hall is closed) raises flags
that say why and list its ratings; an ordinary day raises none; each pattern is flagged once; presses
faster than a person, a transaction rated twice and a keypad of one key are flagged; a city or province
user reviews a flag, a hall manager does not, another hall never sees it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from analytics_helpers import TZ, Rows, prepared
from appeal_helpers import flags_of, local_ms, rate, user
from platform_helpers import PASSWORD, Client, Clock, start

from countersign.province import flags, users
from countersign.province.db import Database
from countersign.province.flags import FlagError, FlagForbidden, FlagNotFound
from countersign.province.scope import Scope
from countersign.province.supervision import run_pass
from countersign.province.web import PlatformServer

DAY = "2026-12-01"            # a Tuesday, a working day: the default hours are 08:30-17:30
NOW = local_ms("2026-12-01", "21:00")
ACCOUNTS = (("admin", "province", None), ("hefei", "city", "合肥"), ("wuhu", "city", "芜湖"),
            ("mgr-hf01", "hall", "hf01"), ("mgr-wh01", "hall", "wh01"))


@pytest.fixture
def rows(province_db: Database) -> Iterator[Rows]:
    conn = prepared(province_db)
    for name, role, scope in ACCOUNTS:
        users.add(conn, name, name, PASSWORD, role, scope, actor="test", now_ms=NOW)
    try:
        yield Rows(conn)
    finally:
        conn.close()


def ordinary_day(rows: Rows, day: str = DAY) -> list[int]:
    """A day as a hall has it: prompts from the counter, mixed scores, a few invite-key ratings within
    the hours, people taking a few seconds to press."""
    ids = []
    for i, score in enumerate([4, 3, 4, 2, 4, 3, 1, 4, 4, 3, 4, 4, 2, 4, 3, 4, 4, 3, 4, 4, 4, 3, 4, 4]):
        ids.append(rate(rows, "hf01", score, day, at=f"{9 + i // 4:02d}:{(i % 4) * 15:02d}",
                        delay_ms=1800 + 97 * i))
    for at, score in (("10:05", 4), ("14:40", 3), ("16:10", 4)):
        ids.append(rate(rows, "hf01", score, day, at=at, invite=True, window="2", delay_ms=2500))
    ids.append(rate(rows, "hf01", None, day, at="11:11", delay_ms=20_000))
    for i, score in enumerate([4, 4, 3, 1, 4]):
        ids.append(rate(rows, "wh01", score, day, at=f"1{i}:30", clerk="30001", delay_ms=2200))
    return ids


def test_a_scripted_self_rating_pattern_raises_flags_that_say_why(rows: Rows, province_db: Database) -> None:
    conn = rows.conn
    ordinary_day(rows)
    # the clerk at window 3 rates himself: six invite-key top scores in a row, two after closing
    times = ("16:50", "17:05", "17:12", "17:20", "18:40", "19:15")
    mine = [rate(rows, "hf01", 4, DAY, at=t, invite=True, window="3", clerk="10009") for t in times]
    assert run_pass(province_db, TZ, NOW) == 39

    got = {f["dedup"].split(":")[0]: f for f in flags_of(conn)}
    assert set(got) == {"invite-streak", "invite-after-hours"}, got
    streak, after = got["invite-streak"], got["invite-after-hours"]
    assert streak["kind"] == after["kind"] == "invite-pattern"
    assert streak["ratings"] == mine and streak["device"] == "hf01-w03" and streak["clerk"] == "10009"
    assert "连续 6 次" in streak["why"] and "6 ratings in a row" in streak["why"]
    assert "invite key" in streak["why"]
    assert after["ratings"] == mine[4:] and after["hall"] == "hf01"
    assert "非营业时间" in after["why"] and "18:40, 19:15" in after["why"] and "closed" in after["why"]
    assert all(f["state"] == "open" for f in got.values())
    # the supervisor's raising is in the audit log
    raised = conn.all("SELECT actor, target FROM audit_log WHERE action = 'flag.raise' ORDER BY id")
    assert [a for a, _ in raised] == ["supervisor", "supervisor"]

    # the pattern goes on: the same two flags grow, none is raised again
    more = [rate(rows, "hf01", 4, DAY, at=t, invite=True, window="3", clerk="10009")
            for t in ("19:30", "19:45")]
    run_pass(province_db, TZ, NOW + 60_000)
    again = flags_of(conn)
    assert len(again) == 2
    assert next(f for f in again if f["dedup"] == streak["dedup"])["ratings"] == mine + more
    assert next(f for f in again if f["dedup"] == after["dedup"])["ratings"] == mine[4:] + more
    # a reviewed flag stays as reviewed, and the same pattern is not flagged anew
    with conn.transaction():
        flags.review(conn, user(conn, "hefei"), streak["id"], "confirmed",
                     "店长确认自评 the manager confirms", NOW)
    rate(rows, "hf01", 4, DAY, at="20:00", invite=True, window="3", clerk="10009")
    run_pass(province_db, TZ, NOW + 120_000)
    final = flags_of(conn)
    assert len(final) == 2 and next(f for f in final if f["id"] == streak["id"])["ratings"] == mine + more


def test_an_ordinary_day_raises_no_flag(rows: Rows, province_db: Database) -> None:
    ordinary_day(rows)
    ordinary_day(rows, "2026-12-02")
    run_pass(province_db, TZ, NOW + 86_400_000)
    assert flags_of(rows.conn) == []


def test_a_broken_streak_and_a_rating_in_hours_raise_nothing(rows: Rows, province_db: Database) -> None:
    # four invite-key top scores, a 满意 in between, four more: no run of five
    for i, score in enumerate([4, 4, 4, 4, 3, 4, 4, 4, 4]):
        rate(rows, "hf01", score, DAY, at=f"10:{i * 5:02d}", invite=True, window="2")
    run_pass(province_db, TZ, NOW)
    assert flags_of(rows.conn) == []


def test_presses_faster_than_a_person_are_flagged_once_per_keypad_and_day(rows: Rows,
                                                                         province_db: Database) -> None:
    conn = rows.conn
    ordinary_day(rows)
    fast = [rate(rows, "wh01", 4, DAY, at=f"15:0{i}", delay_ms=90 + i * 40, clerk="30001") for i in range(2)]
    run_pass(province_db, TZ, NOW)
    assert flags_of(conn) == []                    # two: below the count
    fast.append(rate(rows, "wh01", 4, DAY, at="15:09", delay_ms=120, clerk="30001"))
    run_pass(province_db, TZ, NOW)
    got = flags_of(conn, "fast-press")
    assert len(got) == 1 and got[0]["ratings"] == fast and got[0]["device"] == "wh01-w01"
    assert "300" in got[0]["why"] and "最快 90" in got[0]["why"] and "faster than a person" in got[0]["why"]
    fast.append(rate(rows, "wh01", 4, DAY, at="15:20", delay_ms=50, clerk="30001"))
    run_pass(province_db, TZ, NOW)
    assert [f["ratings"] for f in flags_of(conn, "fast-press")] == [fast]
    # the next day is another day
    nxt = [rate(rows, "wh01", 4, "2026-12-02", at=f"09:0{i}", delay_ms=100, clerk="30001") for i in range(3)]
    run_pass(province_db, TZ, NOW + 86_400_000)
    assert [f["ratings"] for f in flags_of(conn, "fast-press")] == [fast, nxt]


def test_a_transaction_rated_twice_is_flagged(rows: Rows, province_db: Database) -> None:
    conn = rows.conn
    ordinary_day(rows)
    first = rate(rows, "hf01", 1, DAY, at="15:30", txn="TXN-2026-0042")
    # the same transaction at another hall is another hall's transaction
    rate(rows, "wh01", 1, DAY, at="15:31", txn="TXN-2026-0042", clerk="30001")
    run_pass(province_db, TZ, NOW)
    assert flags_of(conn) == []
    second = rate(rows, "hf01", 4, DAY, at="15:34", txn="TXN-2026-0042")
    run_pass(province_db, TZ, NOW)
    got = flags_of(conn, "txn-reused")
    assert len(got) == 1 and got[0]["ratings"] == [first, second] and got[0]["hall"] == "hf01"
    assert "TXN-2026-0042" in got[0]["why"] and "rated more than once" in got[0]["why"]


def test_a_keypad_of_one_key_is_flagged_once_per_run(rows: Rows, province_db: Database) -> None:
    conn = rows.conn
    run = [rate(rows, "hf02", 3, DAY, at=f"{9 + i // 6:02d}:{(i % 6) * 9:02d}", clerk="20001")
           for i in range(19)]
    rate(rows, "hf02", None, DAY, at="13:00", clerk="20001")   # a no-rating is not a key
    run_pass(province_db, TZ, NOW)
    assert flags_of(conn) == []                                 # 19 of one key: not yet
    run.append(rate(rows, "hf02", 3, DAY, at="13:10", clerk="20001"))
    run_pass(province_db, TZ, NOW)
    got = flags_of(conn, "one-key")
    assert len(got) == 1 and got[0]["ratings"] == run and "20" in got[0]["why"] and "满意" in got[0]["why"]
    run += [rate(rows, "hf02", 3, DAY, at=f"14:0{i}", clerk="20001") for i in range(3)]
    run_pass(province_db, TZ, NOW)
    assert [f["ratings"] for f in flags_of(conn, "one-key")] == [run]
    # another key ends the run; twenty more of one key are a new run, a new flag
    rate(rows, "hf02", 1, DAY, at="15:00", clerk="20001")
    again = [rate(rows, "hf02", 4, DAY, at=f"16:{i * 2:02d}", clerk="20001") for i in range(20)]
    run_pass(province_db, TZ, NOW)
    assert [f["ratings"] for f in flags_of(conn, "one-key")] == [run, again]


def test_a_run_longer_than_the_look_back_stays_one_flag(rows: Rows, province_db: Database,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # a short look-back instead of 500 ratings: the run outgrows it and is still the same run
    monkeypatch.setattr(flags, "LOOKBACK", 25)
    rate(rows, "hf02", 1, DAY, at="08:40", clerk="20001")
    first = [rate(rows, "hf02", 3, DAY, at=f"09:{i:02d}", clerk="20001") for i in range(20)]
    run_pass(province_db, TZ, NOW)
    [flag] = flags_of(rows.conn, "one-key")
    assert flag["ratings"] == first
    later = [rate(rows, "hf02", 3, DAY, at=f"10:{i:02d}", clerk="20001") for i in range(15)]
    run_pass(province_db, TZ, NOW)
    [again] = flags_of(rows.conn, "one-key")
    assert again["dedup"] == flag["dedup"] and again["ratings"] == (first + later)[-25:]


def raised(rows: Rows, province_db: Database) -> tuple[int, int]:
    """A flag in hf01 (合肥) and one in wh01 (芜湖): a fast-pressing keypad in each."""
    for hall, clerk in (("hf01", "10001"), ("wh01", "30001")):
        for i in range(3):
            rate(rows, hall, 4, DAY, at=f"10:0{i}", delay_ms=80, clerk=clerk)
    run_pass(province_db, TZ, NOW)
    by_hall = {f["hall"]: f["id"] for f in flags_of(rows.conn)}
    return by_hall["hf01"], by_hall["wh01"]


def test_a_flag_is_reviewed_by_the_city_or_province_and_audited(rows: Rows, province_db: Database) -> None:
    conn = rows.conn
    hf, wh = raised(rows, province_db)
    with pytest.raises(FlagForbidden), conn.transaction():
        flags.review(conn, user(conn, "mgr-hf01"), hf, "dismissed", "my own hall is fine", NOW)
    with pytest.raises(FlagNotFound), conn.transaction():
        flags.review(conn, user(conn, "wuhu"), hf, "dismissed", "not my city", NOW)
    for outcome, note in (("dismissed", "  "), ("ignored", "a note")):
        with pytest.raises(FlagError), conn.transaction():
            flags.review(conn, user(conn, "hefei"), hf, outcome, note, NOW)
    assert flags.get(conn, Scope("province"), hf).state == "open"
    with conn.transaction():
        f = flags.review(conn, user(conn, "hefei"), hf, "dismissed",
                         "键盘故障已报修 a faulty keypad, repaired", NOW)
    assert f.state == "dismissed" and f.reviewed_by == "hefei" and f.note is not None and "faulty" in f.note
    with pytest.raises(FlagError, match="already reviewed"), conn.transaction():
        flags.review(conn, user(conn, "admin"), hf, "confirmed", "second thoughts", NOW)
    with conn.transaction():
        flags.review(conn, user(conn, "admin"), wh, "confirmed", "确认 confirmed", NOW)
    rows_ = conn.all("SELECT actor, target, detail FROM audit_log WHERE action = 'flag.review' ORDER BY id")
    assert [(a, t) for a, t, _ in rows_] == [("hefei", f"flag:{hf}"), ("admin", f"flag:{wh}")]
    assert json.loads(rows_[0][2])["outcome"] == "dismissed"
    # open flags only, by default; in scope
    assert flags.listing(conn, Scope("province")) == []
    assert [x.id for x in flags.listing(conn, Scope("hall", "hf01"), None)] == [hf]
    assert [x.id for x in flags.listing(conn, Scope("city", "芜湖"), None)] == [wh]


@pytest.fixture
def served(rows: Rows, province_db: Database, tmp_path: Path) -> Iterator[tuple[PlatformServer, int, int]]:
    hf, wh = raised(rows, province_db)
    server = start(tmp_path, province_db, Clock(NOW))
    try:
        yield server, hf, wh
    finally:
        server.stop()


def test_the_flags_pages_in_scope(served: tuple[PlatformServer, int, int], province_db: Database) -> None:
    server, hf, wh = served
    mgr = Client(server.url)
    assert mgr.log_in("mgr-hf01") == 303
    status, page, _ = mgr.get("/flags")
    assert status == 200 and f'id="flag-{hf}"' in page
    assert f'id="flag-{wh}"' not in page and "wh01" not in page
    assert "按键过快" in page
    # each flag links to its ratings
    with province_db.connect() as conn:
        ids = flags.get(conn, Scope("province"), hf).ratings
    for rid in ids:
        assert f'href="/ratings/{rid}"' in page
    status, page, _ = mgr.get(f"/flags/{hf}")
    assert status == 200 and 'id="review"' not in page
    assert set(re.findall(r'id="rating-(\d+)"', page)) == {str(i) for i in ids}
    assert mgr.get(f"/flags/{wh}")[0] == 404
    assert mgr.post(f"/flags/{hf}/review", {"csrf": mgr.csrf, "outcome": "dismissed",
                                            "note": "fine"})[0] == 403
    city = Client(server.url)
    assert city.log_in("hefei") == 303
    assert city.get(f"/flags/{wh}")[0] == 404
    assert city.post(f"/flags/{wh}/review", {"csrf": city.csrf, "outcome": "dismissed",
                                             "note": "x"})[0] == 404
    status, page, _ = city.get(f"/flags/{hf}")
    assert 'id="review"' in page
    status, body, _ = city.post(f"/flags/{hf}/review", {"csrf": city.csrf, "outcome": "dismissed",
                                                        "note": ""})
    assert status == 400 and "note is required" in body
    status, _, headers = city.post(f"/flags/{hf}/review", {"csrf": city.csrf, "outcome": "confirmed",
                                                           "note": "回看录像属实 the video confirms it"})
    assert status == 303 and headers["location"] == f"/flags/{hf}?ok=confirmed"
    status, page, _ = city.get("/flags")
    assert f'id="flag-{hf}"' not in page                    # no longer open
    status, page, _ = city.get("/flags?state=confirmed")
    assert f'id="flag-{hf}"' in page
    assert city.get("/flags?state=bogus")[0] == 400
