"""The supervision loop's spine (province/supervision.py): every stored rating is given to the steps
exactly once, whatever fails; the working-day calendar and business hours the steps rely on.

On both databases (``province_db``). The steps here are recorders: the real steps (cases, alerts, flags)
have their own tests; what is checked here is the queue's promise to them.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
from analytics_helpers import TZ, Rows, noon_ms, prepared

from countersign.province import supervision
from countersign.province.db import Conn, Database
from countersign.province.hours import Hours
from countersign.province.migrations import MIGRATIONS, upgrade
from countersign.province.rated import Rated
from countersign.province.workdays import Calendar

NOW = noon_ms("2026-12-02")


class Recorder:
    """A step that remembers what it was given; ``fail_on`` makes it raise for one rating (a bug)."""

    def __init__(self, fail_on: int | None = None, error: type[Exception] = ValueError) -> None:
        self.seen: list[int] = []
        self.ticks = 0
        self.fail_on, self.error = fail_on, error
        self.lock = threading.Lock()

    def on_ratings(self, conn: Conn, ratings: Sequence[Rated], p: supervision.Pass) -> None:
        if self.fail_on is not None and any(r.id == self.fail_on for r in ratings):
            raise self.error(f"cannot handle rating {self.fail_on}")
        with self.lock:
            self.seen.extend(r.id for r in ratings)

    def on_tick(self, conn: Conn, p: supervision.Pass) -> None:
        self.ticks += 1


def queued(db: Database) -> int:
    with db.connect() as conn:
        return int(conn.scalar("SELECT COUNT(*) FROM supervision_queue"))


def test_each_stored_rating_reaches_the_steps_once(province_db: Database) -> None:
    conn = prepared(province_db)
    rows = Rows(conn)
    ids = [rows.rating("hf01", "c001", s, "2026-12-02") for s in (4, 1, 3, 2, 4)]
    conn.close()
    step = Recorder()
    assert supervision.run_pass(province_db, TZ, NOW, [step]) == 5
    assert step.seen == ids and step.ticks == 1
    assert supervision.run_pass(province_db, TZ, NOW, [step]) == 0
    assert step.seen == ids and step.ticks == 2 and queued(province_db) == 0


def test_a_dissatisfied_rating_is_seen_as_one(province_db: Database) -> None:
    conn = prepared(province_db)
    rows = Rows(conn)
    bad, good = rows.rating("hf01", "c001", 1, "2026-12-02"), rows.rating("hf01", "c001", 4, "2026-12-02")
    invite = rows.rating("hf01", "c001", 1, "2026-12-02", invite=True)
    conn.close()
    got: dict[int, Rated] = {}

    class Keep(Recorder):
        def on_ratings(self, conn: Conn, ratings: Sequence[Rated], p: supervision.Pass) -> None:
            got.update({r.id: r for r in ratings})

    supervision.run_pass(province_db, TZ, NOW, [Keep()])
    assert got[bad].dissatisfied and not got[good].dissatisfied
    assert got[invite].dissatisfied and got[invite].prompt == 0 and got[bad].clerk == "c001"
    assert got[bad].at_ms == noon_ms("2026-12-02") // 1000 * 1000


def test_a_pass_that_dies_leaves_its_ratings_queued(province_db: Database) -> None:
    conn = prepared(province_db)
    rows = Rows(conn)
    ids = [rows.rating("hf01", "c001", 4, "2026-12-02") for _ in range(3)]
    conn.close()
    dying = Recorder(fail_on=ids[1], error=RuntimeError)     # not a handled kind: the pass ends
    with pytest.raises(RuntimeError):
        supervision.run_pass(province_db, TZ, NOW, [dying])
    assert queued(province_db) == 3
    step = Recorder()
    assert supervision.run_pass(province_db, TZ, NOW, [step]) == 3 and step.seen == ids


def test_a_rating_a_step_cannot_handle_is_alarmed_and_the_others_go_on(province_db: Database) -> None:
    conn = prepared(province_db)
    rows = Rows(conn)
    ids = [rows.rating("hf01", "c001", 4, "2026-12-02") for _ in range(4)]
    conn.close()
    step = Recorder(fail_on=ids[2])
    assert supervision.run_pass(province_db, TZ, NOW, [step]) == 4
    assert step.seen == [ids[0], ids[1], ids[3]] and queued(province_db) == 0
    with province_db.connect() as c:
        alarms = c.all("SELECT kind, hall, detail FROM alarms")
    assert [(k, h) for k, h, _ in alarms] == [("supervision-error", "hf01")]
    assert f"rating {ids[2]}" in alarms[0][2]


def test_ratings_stored_before_the_upgrade_are_not_queued(province_db: Database) -> None:
    upgrade(province_db, TZ, MIGRATIONS[:3])
    with province_db.connect() as conn:
        rows = Rows(conn)
        old = rows.rating("hf01", "c001", 1, "2026-11-02")
    upgrade(province_db, TZ)
    assert queued(province_db) == 0
    with province_db.connect() as conn:
        rows.conn = conn
        new = rows.rating("hf01", "c001", 1, "2026-12-02")
    step = Recorder()
    supervision.run_pass(province_db, TZ, NOW, [step])
    assert step.seen == [new] and old not in step.seen


def test_two_receivers_passes_at_once_handle_each_rating_once(province_db: Database) -> None:
    conn = prepared(province_db)
    rows = Rows(conn)
    with conn.transaction():
        ids = [rows.rating("hf01", "c001", 4, "2026-12-02") for _ in range(1200)]
    conn.close()
    step = Recorder()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            while supervision.run_pass(province_db, TZ, NOW, [step]) != 0:
                pass
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert sorted(step.seen) == ids and queued(province_db) == 0


def test_the_supervisor_thread_runs_a_pass_when_woken(province_db: Database) -> None:
    conn = prepared(province_db)
    step = Recorder()
    sup = supervision.Supervisor(province_db, TZ, lambda: NOW, interval_s=3600, steps=[step]).start()
    try:
        rid = Rows(conn).rating("hf01", "c001", 1, "2026-12-02")
        sup.wake()
        assert sup.wait_passes(1, 10)
        assert step.seen == [rid]
    finally:
        sup.stop()
        conn.close()


# --- the working-day calendar and business hours --------------------------------------------------------

def test_fifteen_working_days_skip_the_national_day_week_and_count_its_make_up_saturday() -> None:
    cal = Calendar()
    # 2026: 10-01 .. 10-07 off; 09-20 (Sunday) and 10-10 (Saturday) are working days (State Council).
    assert cal.is_workday(dt.date(2026, 9, 20)) and cal.is_workday(dt.date(2026, 10, 10))
    assert not cal.is_workday(dt.date(2026, 10, 5)) and not cal.is_workday(dt.date(2026, 10, 11))
    # Opened Wed 09-30: 10-08, 10-09, 10-10 (make-up), 10-12..16, 10-19..23, 10-26, 10-27.
    assert cal.add_workdays(dt.date(2026, 9, 30), 15) == dt.date(2026, 10, 27)
    # An ordinary fortnight: three weeks of Mondays to Fridays.
    assert cal.add_workdays(dt.date(2026, 11, 2), 15) == dt.date(2026, 11, 23)


def test_an_administrators_calendar_entry_wins_and_unknown_years_fall_back_to_weekdays() -> None:
    cal = Calendar({dt.date(2027, 1, 1): False, dt.date(2026, 11, 23): False})
    assert not cal.is_workday(dt.date(2027, 1, 1))          # 元旦 entered by hand
    assert cal.is_workday(dt.date(2027, 1, 4)) and not cal.is_workday(dt.date(2027, 1, 2))
    assert cal.add_workdays(dt.date(2026, 11, 2), 15) == dt.date(2026, 11, 24)
    assert Calendar().unknown_years(range(2026, 2028)) == [2027]
    assert cal.unknown_years(range(2026, 2028)) == []


@pytest.mark.parametrize(("when", "days", "open_"), [
    ("2026-12-02 08:30", "mon-fri", True),      # opening minute
    ("2026-12-02 17:30", "mon-fri", False),     # closing minute: closed
    ("2026-11-07 10:00", "mon-fri", False),     # an ordinary Saturday
    ("2026-11-07 10:00", "mon-sat", True),
    ("2026-10-03 10:00", "mon-sat", False),     # the Saturday of the National Day week
    ("2026-10-01 10:00", "mon-sat", False),     # National Day, a Thursday
    ("2026-10-10 10:00", "mon-fri", True),      # the make-up Saturday
    ("2026-09-20 10:00", "mon-fri", True),      # the make-up Sunday
])
def test_business_hours_follow_the_calendar(when: str, days: str, open_: bool) -> None:
    hours = Hours.parse(days, "08:30", "17:30")
    local = dt.datetime.fromisoformat(when).replace(tzinfo=TZ)
    assert hours.is_open(local, Calendar()) is open_


@pytest.mark.parametrize(("days", "o", "c"), [("mon-funday", "08:30", "17:30"), ("mon-fri", "8h", "17:30"),
                                              ("mon-fri", "17:30", "08:30")])
def test_unreadable_hours_are_refused_with_a_reason(days: str, o: str, c: str) -> None:
    with pytest.raises(ValueError, match=r"mon-sat|08:30|before"):
        Hours.parse(days, o, c)


def test_the_calendar_table_is_read(province_db: Database, tmp_path: Path) -> None:
    from countersign.province import workdays

    conn = prepared(province_db)
    conn.execute("INSERT INTO calendar_days (day, workday, name, changed_ms, changed_by) VALUES"
                 " ('2027-02-06', 1, '春节调休', 0, 'admin')")
    cal = workdays.load(conn)
    conn.close()
    assert cal.is_workday(dt.date(2027, 2, 6))                 # a Saturday made a working day


def test_a_bug_in_one_steps_time_rules_leaves_the_others_and_the_queue_working(province_db: Database) -> None:
    conn = prepared(province_db)
    rid = Rows(conn).rating("hf01", "c001", 4, "2026-12-02")
    conn.close()

    class BadTick(Recorder):
        def on_tick(self, conn: Conn, p: supervision.Pass) -> None:
            conn.execute("INSERT INTO calendar_days (day, workday, name, changed_ms, changed_by)"
                         " VALUES ('2027-01-01', 0, 'half-done', 0, 'bug')")
            raise KeyError("a rule the code does not know")

    bad, good = BadTick(), Recorder()
    assert supervision.run_pass(province_db, TZ, NOW, [bad, good]) == 1
    assert bad.seen == [rid] and good.seen == [rid] and good.ticks == 1 and queued(province_db) == 0
    with province_db.connect() as c:     # the failed tick's half-done writes are undone
        assert c.scalar("SELECT COUNT(*) FROM calendar_days") == 0


def test_open_time_between_two_instants_skips_nights_weekends_and_holidays() -> None:
    hours = Hours.parse("mon-fri", "08:30", "17:30")
    cal = Calendar()

    def ms(when: str) -> int:
        return int(dt.datetime.fromisoformat(when).replace(tzinfo=TZ).timestamp() * 1000)

    minute = 60_000
    assert hours.open_ms(ms("2026-12-02 10:00"), ms("2026-12-02 11:00"), TZ, cal) == 60 * minute
    assert hours.open_ms(ms("2026-12-02 17:00"), ms("2026-12-03 09:00"), TZ, cal) == 60 * minute
    # Friday 17:00 to Monday 09:00: the weekend does not count.
    assert hours.open_ms(ms("2026-12-04 17:00"), ms("2026-12-07 09:00"), TZ, cal) == 60 * minute
    # Through the National Day week to the make-up Saturday (a working day, the hall opens on it).
    evening, two_days, saturday = 30, 2 * 540, 30
    assert hours.open_ms(ms("2026-09-30 17:00"), ms("2026-10-10 09:00"), TZ, cal) == (
        evening + two_days + saturday) * minute
    assert hours.open_ms(ms("2026-12-02 11:00"), ms("2026-12-02 10:00"), TZ, cal) == 0
