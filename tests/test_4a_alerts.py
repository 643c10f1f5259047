"""Alerts (issue 13, Deliver 1): each rule raises and clears by the supervisor's passes with the test's
clock, deduplicated, within business hours (统一营业时间 with the working-day calendar), escalated when
nobody acknowledges; rules edited with validation and audit; and every raise/escalation/clear delivered
through apprise to a REAL local HTTP receiver and a REAL SMTP server, retried while they are down, never
twice. On both databases (``province_db``: SQLite and PostgreSQL).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from alert_helpers import (
    HttpReceiver,
    SmtpReceiver,
    alerts_of,
    events_of,
    gateway,
    keypad,
    open_kinds,
    wait_until,
)
from analytics_helpers import TZ, Rows, noon_ms, prepared
from platform_helpers import NOW_MS, Client, Clock, fill, iter_ids, start
from province_helpers import entry, make_world, signed_batch
from province_helpers import rating as pr_rating

from countersign.province import alerts, hours
from countersign.province import cases as cases_step
from countersign.province.config import ConfigError, NotifyTarget, ProvinceConfig, parse_notify
from countersign.province.db import Conn, Database
from countersign.province.notify import Notifier, target_id
from countersign.province.province import Province
from countersign.province.scope import Scope
from countersign.province.supervision import run_pass

DAY = "2026-12-02"             # a Wednesday
NOON = noon_ms(DAY)
MIN = 60_000


def at(day: str, hh: int, mm: int = 0) -> int:
    d = dt.date.fromisoformat(day)
    return int(dt.datetime(d.year, d.month, d.day, hh, mm, tzinfo=TZ).timestamp() * 1000)


@pytest.fixture
def conn(province_db: Database) -> Iterator[Conn]:
    c = prepared(province_db)
    yield c
    c.close()


def only_rules(conn: Conn, *kinds: str) -> None:
    """Switch every other rule off, so a test sees the alerts of the rule it is about."""
    for kind, rule in alerts.rules(conn).items():
        if kind not in kinds:
            alerts.set_rule(conn, alerts.Rule(kind, False, rule.params, rule.escalate_s), "test", NOON)


# --- the rules --------------------------------------------------------------------------------------------

def test_a_dissatisfied_rating_raises_one_alert_naming_its_rating(province_db: Database, conn: Conn) -> None:
    only_rules(conn, "dissatisfied")
    rows = Rows(conn)
    good = rows.rating("hf01", "c001", 4, DAY)
    bad = rows.rating("hf01", "c001", 1, DAY, window="3")
    very_bad = rows.rating("wh01", "c009", 1, DAY, scale=5)
    assert run_pass(province_db, TZ, NOON + MIN) == 3
    got = alerts_of(province_db)
    assert [(a["kind"], a["hall"], a["rating"], a["dedup"]) for a in got] == [
        ("dissatisfied", "hf01", bad, f"dissatisfied:{bad}"),
        ("dissatisfied", "wh01", very_bad, f"dissatisfied:{very_bad}")]
    assert good not in [a["rating"] for a in got]
    assert "不满意" in got[0]["detail"] and "window 3" in got[0]["detail"] and "c001" in got[0]["detail"]
    assert "非常不满意" in got[1]["detail"]
    assert events_of(province_db) == [(got[0]["id"], "raised", 0), (got[1]["id"], "raised", 0)]
    # Another pass does not raise them again.
    run_pass(province_db, TZ, NOON + 2 * MIN)
    assert len(alerts_of(province_db)) == 2 and len(events_of(province_db)) == 2


def test_the_alert_names_its_case_and_ends_when_the_case_closes(province_db: Database, conn: Conn) -> None:
    only_rules(conn, "dissatisfied")
    bad = Rows(conn).rating("hf01", "c001", 1, DAY)
    steps = [cases_step, alerts]        # the order of supervision.STEPS: the case exists when alerts run
    run_pass(province_db, TZ, NOON + MIN, steps)
    case = conn.scalar("SELECT id FROM cases WHERE rating = ?", (bad,))
    (alert,) = alerts_of(province_db)
    assert f"case #{case}" in alert["detail"]
    (a,) = alerts.inbox(conn, Scope("hall", "hf01"))
    assert a.case == case and a.state == "open"
    run_pass(province_db, TZ, NOON + 2 * MIN, steps)
    assert alerts_of(province_db)[0]["state"] == "open"
    conn.execute("UPDATE cases SET state = 'closed', closed_ms = ? WHERE id = ?", (NOON, case))
    run_pass(province_db, TZ, NOON + 3 * MIN, steps)
    (alert,) = alerts_of(province_db)
    assert alert["state"] == "cleared" and "case closed" in alert["detail"]
    assert [e for _a, e, _l in events_of(province_db)] == ["raised", "cleared"]


def test_an_overdue_case_is_the_citys_alert_until_it_closes(province_db: Database, conn: Conn) -> None:
    only_rules(conn, "case-overdue")
    bad = Rows(conn).rating("hf01", "c001", 1, DAY)
    run_pass(province_db, TZ, NOON + MIN)
    case = conn.scalar("SELECT id FROM cases WHERE rating = ?", (bad,))
    deadline = str(conn.scalar("SELECT deadline FROM cases WHERE id = ?", (case,)))
    assert alerts_of(province_db) == []
    run_pass(province_db, TZ, at(deadline, 20))                # the deadline day itself: not yet
    assert alerts_of(province_db) == []
    late = at((dt.date.fromisoformat(deadline) + dt.timedelta(days=1)).isoformat(), 9)
    run_pass(province_db, TZ, late)
    (alert,) = alerts_of(province_db)
    assert (alert["kind"], alert["hall"], alert["state"]) == ("case-overdue", "hf01", "open")
    assert alert["level"] == 1
    assert f"case #{case}" in alert["detail"] and deadline in alert["detail"]
    assert events_of(province_db) == [(alert["id"], "raised", 1)]     # told to the city, not only the hall
    run_pass(province_db, TZ, late + 60 * MIN)
    assert len(alerts_of(province_db)) == 1 and len(events_of(province_db)) == 1
    conn.execute("UPDATE cases SET state = 'closed', closed_ms = ?, on_time = 0 WHERE id = ?", (late, case))
    run_pass(province_db, TZ, late + 61 * MIN)
    (alert,) = alerts_of(province_db)
    assert alert["state"] == "cleared"
    assert [e for _a, e, _l in events_of(province_db)] == ["raised", "cleared"]


def test_negative_share_at_window_and_hall_deduplicated_and_cleared(province_db: Database,
                                                                     conn: Conn) -> None:
    only_rules(conn, "negative-share")
    rows = Rows(conn)
    for s in (4, 1, 3):
        rows.rating("hf01", "c001", s, DAY, window="1")
    run_pass(province_db, TZ, NOON + MIN)
    assert open_kinds(province_db) == []           # 1 of 3: below the minimum count and the share
    rows.rating("hf01", "c001", 1, DAY, window="1")    # 2 of 4 = 50 %
    run_pass(province_db, TZ, NOON + MIN)
    assert open_kinds(province_db) == [("negative-share", "negative-share:hall:hf01"),
                                       ("negative-share", "negative-share:window:hf01:1")]
    # A third dissatisfied rating in the window: the same two alerts, counted again, not a third.
    rows.rating("hf01", "c001", 1, DAY, window="1")
    run_pass(province_db, TZ, NOON + MIN)
    got = alerts_of(province_db, "negative-share")
    assert len(got) == 2 and all(a["repeats"] == 1 for a in got)
    assert len(events_of(province_db)) == 2
    assert "3/5" in got[0]["detail"]
    # Another window's ratings are that window's: window 2 has none bad, the hall's share falls.
    for _ in range(4):
        rows.rating("hf01", "c002", 4, DAY, window="2")
    run_pass(province_db, TZ, NOON + 2 * MIN)       # 3 of 9 at the hall: below 50 %: cleared
    assert open_kinds(province_db) == [("negative-share", "negative-share:window:hf01:1")]
    # The window's share is still high until its ratings leave the 15-minute window.
    run_pass(province_db, TZ, NOON + 16 * MIN)
    assert open_kinds(province_db) == []
    assert [e for _a, e, _l in events_of(province_db)] == ["raised", "raised", "cleared", "cleared"]
    # A new burst later raises a new alert for the same key.
    for _ in range(4):
        rows.rating("hf01", "c001", 1, "2026-12-03", window="1")
    run_pass(province_db, TZ, noon_ms("2026-12-03") + MIN)
    assert len(alerts_of(province_db, "negative-share")) == 4


def test_keypad_offline_stuck_outbox_raise_and_clear(province_db: Database, conn: Conn) -> None:
    only_rules(conn, "offline", "stuck-key", "outbox-full")
    keypad(conn, "hf01-w01", "hf01", NOON)
    keypad(conn, "hf01-w02", "hf01", NOON, online=False)
    keypad(conn, "wh01-w01", "wh01", NOON, stuck="2", outbox=8500)
    run_pass(province_db, TZ, NOON + MIN)
    assert open_kinds(province_db) == [("offline", "offline:hf01-w02"),
                                       ("outbox-full", "outbox-full:wh01-w01"),
                                       ("stuck-key", "stuck-key:wh01-w01")]
    # hf01-w01 stops reporting: offline once its last report is older than after_s (600 s).
    run_pass(province_db, TZ, NOON + 9 * MIN)
    assert ("offline", "offline:hf01-w01") not in open_kinds(province_db)
    run_pass(province_db, TZ, NOON + 11 * MIN)
    assert ("offline", "offline:hf01-w01") in open_kinds(province_db)
    assert ("offline", "offline:wh01-w01") in open_kinds(province_db)       # it stopped reporting too
    run_pass(province_db, TZ, NOON + 12 * MIN)
    assert len(alerts_of(province_db, "offline")) == 3       # raised once, however many passes
    # Everything recovers: each alert cleared, with a cleared event.
    now = NOON + 13 * MIN
    keypad(conn, "hf01-w01", "hf01", now)
    keypad(conn, "hf01-w02", "hf01", now)
    keypad(conn, "wh01-w01", "wh01", now, stuck="", outbox=3)
    run_pass(province_db, TZ, now + 1000)
    assert open_kinds(province_db) == []
    assert sorted(e for _a, e, _l in events_of(province_db)) == ["cleared"] * 5 + ["raised"] * 5
    # A revoked keypad's last status is history: no alert for it.
    conn.execute('INSERT INTO devices (device, hall, key, epoch, "window", scale, revoked, source,'
                 " changed_ms) VALUES ('hf01-w09', 'hf01', ?, 1, '9', 4, 1, 'registry', ?)", (b"k" * 32, now))
    keypad(conn, "hf01-w09", "hf01", 0, online=False, stuck="1")
    run_pass(province_db, TZ, now + 2000)
    assert open_kinds(province_db) == []


def test_gateway_backlog_and_silence(province_db: Database, conn: Conn) -> None:
    only_rules(conn, "backlog", "gateway-silent")
    gateway(conn, "hf01", 6000, NOON)
    gateway(conn, "wh01", 10, NOON)
    run_pass(province_db, TZ, NOON + MIN)
    assert open_kinds(province_db) == [("backlog", "backlog:hf01")]
    run_pass(province_db, TZ, NOON + 16 * MIN)     # neither gateway heard for 16 min (rule: 15)
    assert open_kinds(province_db) == [("backlog", "backlog:hf01"), ("gateway-silent", "gateway-silent:hf01"),
                                       ("gateway-silent", "gateway-silent:wh01")]
    gateway(conn, "hf01", 0, NOON + 17 * MIN)
    run_pass(province_db, TZ, NOON + 17 * MIN)
    assert open_kinds(province_db) == [("gateway-silent", "gateway-silent:wh01")]


def test_a_keypad_silent_with_prompts_and_without(province_db: Database, conn: Conn) -> None:
    only_rules(conn, "silent")
    rows = Rows(conn)
    now = NOON + 30 * MIN
    keypad(conn, "hf01-w01", "hf01", now)         # prompts opened, no rating in 60 minutes
    keypad(conn, "hf01-w02", "hf01", now)         # no prompt at all
    keypad(conn, "wh01-w01", "wh01", now)         # rated: not silent
    for _ in range(3):
        rows.rating("hf01", "c001", None, DAY, window="1")   # no-ratings (timed out prompts)
    rows.rating("wh01", "c009", 4, DAY)
    run_pass(province_db, TZ, now)
    got = {a["device"]: a["detail"] for a in alerts_of(province_db, "silent")}
    assert set(got) == {"hf01-w01", "hf01-w02"}
    assert "3 prompts" in got["hf01-w01"] and "no prompt" in got["hf01-w02"]
    # A rating ends hf01-w01's silence; at closing time the hall is meant to be silent: all cleared.
    rows.rating("hf01", "c001", 4, DAY, window="1")
    run_pass(province_db, TZ, now + MIN)
    assert open_kinds(province_db) == [("silent", "silent:hf01-w02")]
    run_pass(province_db, TZ, at(DAY, 18))
    assert open_kinds(province_db) == []


def test_silence_counts_only_business_hours(province_db: Database, conn: Conn) -> None:
    """At 09:00 the hall (open 08:30) has not been open for the rule's 60 minutes: no silence yet."""
    only_rules(conn, "silent")
    keypad(conn, "hf01-w01", "hf01", at(DAY, 9))
    run_pass(province_db, TZ, at(DAY, 9))
    assert open_kinds(province_db) == []
    keypad(conn, "hf01-w01", "hf01", at(DAY, 9, 31))     # online (an offline keypad is not also silent)
    run_pass(province_db, TZ, at(DAY, 9, 31))
    assert open_kinds(province_db) == [("silent", "silent:hf01-w01")]


def test_business_hours_sunday_and_a_makeup_saturday(province_db: Database, conn: Conn) -> None:
    """Monday-Friday hours: a keypad offline on a Sunday raises nothing; on 2026-10-10, a Saturday that
    chinese-calendar makes a working day (National Day 调休), it does; an administrator's calendar entry
    makes an ordinary Saturday one too."""
    only_rules(conn, "offline")
    hours.set_hours(conn, "hf01", hours.Hours.parse("mon-fri", "08:30", "17:30"), "admin", NOON)
    keypad(conn, "hf01-w01", "hf01", 0, online=False)
    run_pass(province_db, TZ, at("2026-10-11", 10))          # Sunday
    run_pass(province_db, TZ, at("2026-12-05", 10))          # an ordinary Saturday
    run_pass(province_db, TZ, at("2026-12-02", 20))          # a Wednesday evening
    assert open_kinds(province_db) == []
    run_pass(province_db, TZ, at("2026-10-10", 10))          # the 调休 Saturday
    assert open_kinds(province_db) == [("offline", "offline:hf01-w01")]
    keypad(conn, "hf01-w01", "hf01", at("2026-10-10", 11))
    run_pass(province_db, TZ, at("2026-10-10", 11))
    assert open_kinds(province_db) == []
    keypad(conn, "hf01-w01", "hf01", 0, online=False)
    alerts.set_calendar_day(conn, "2026-12-05", True, "调休 test", "admin", NOON)
    run_pass(province_db, TZ, at("2026-12-05", 10))
    assert open_kinds(province_db) == [("offline", "offline:hf01-w01")]
    assert conn.scalar("SELECT COUNT(*) FROM audit_log WHERE action = 'calendar.set'") == 1


def test_escalation_after_escalate_s_and_acknowledgement_stops_it(province_db: Database, conn: Conn) -> None:
    only_rules(conn, "dissatisfied")
    rule = alerts.rules(conn)["dissatisfied"]
    alerts.set_rule(conn, alerts.Rule("dissatisfied", True, rule.params, 600), "admin", NOON)
    rows = Rows(conn)
    a1, a2 = rows.rating("hf01", "c001", 1, DAY), rows.rating("wh01", "c009", 1, DAY)
    run_pass(province_db, TZ, NOON)
    (x, y) = alerts_of(province_db)
    run_pass(province_db, TZ, NOON + 9 * MIN)
    assert [a["level"] for a in alerts_of(province_db)] == [0, 0]
    # The hall manager of wh01 acknowledges theirs; hf01's is not acknowledged and goes to the city.
    alerts.ack(conn, Scope("hall", "wh01"), y["id"], "mgr-wh01", NOON + 9 * MIN)
    run_pass(province_db, TZ, NOON + 10 * MIN)
    assert [a["level"] for a in alerts_of(province_db)] == [1, 0]
    run_pass(province_db, TZ, NOON + 15 * MIN)
    assert [a["level"] for a in alerts_of(province_db)] == [1, 0]
    run_pass(province_db, TZ, NOON + 20 * MIN)
    run_pass(province_db, TZ, NOON + 60 * MIN)
    assert [a["level"] for a in alerts_of(province_db)] == [2, 0]         # the province is the last level
    assert events_of(province_db) == [(x["id"], "raised", 0), (y["id"], "raised", 0),
                                      (x["id"], "escalated", 1), (x["id"], "escalated", 2)]
    assert alerts_of(province_db)[1]["acked_by"] == "mgr-wh01"
    assert conn.scalar("SELECT COUNT(*) FROM audit_log WHERE action = 'alert.ack'"
                       " AND actor = 'mgr-wh01'") == 1
    assert (a1, a2) == (x["rating"], y["rating"])


def test_escalation_counts_business_hours_only(province_db: Database, conn: Conn) -> None:
    """Raised at 17:00 on the eve of the National Day week (default hours mon-sat 08:30-17:30): half an
    hour counts that evening, none over the holiday, the rest on the first working morning."""
    only_rules(conn, "dissatisfied")
    rule = alerts.rules(conn)["dissatisfied"]
    alerts.set_rule(conn, alerts.Rule("dissatisfied", True, rule.params, 3600), "admin", NOON)
    Rows(conn).rating("hf01", "c001", 1, "2026-09-30")
    run_pass(province_db, TZ, at("2026-09-30", 17))
    for when in (at("2026-09-30", 23), at("2026-10-03", 12), at("2026-10-07", 12), at("2026-10-08", 8, 59)):
        run_pass(province_db, TZ, when)
        assert [a["level"] for a in alerts_of(province_db)] == [0], hours.local(when, TZ)
    run_pass(province_db, TZ, at("2026-10-08", 9, 1))            # 30 + 31 minutes open: an hour
    assert [a["level"] for a in alerts_of(province_db)] == [1]


def test_ack_is_scoped_and_once(province_db: Database, conn: Conn) -> None:
    only_rules(conn, "dissatisfied")
    Rows(conn).rating("hf01", "c001", 1, DAY)
    run_pass(province_db, TZ, NOON)
    (a,) = alerts_of(province_db)
    with pytest.raises(LookupError):
        alerts.ack(conn, Scope("hall", "wh01"), a["id"], "mgr-wh01", NOON)
    with pytest.raises(LookupError):
        alerts.ack(conn, Scope("city", "芜湖"), a["id"], "wuhu", NOON)
    assert alerts.inbox(conn, Scope("hall", "wh01")) == []
    assert alerts.unacked(conn, Scope("city", "芜湖")) == 0
    assert alerts.unacked(conn, Scope("city", "合肥")) == 1
    alerts.ack(conn, Scope("city", "合肥"), a["id"], "hefei", NOON)
    with pytest.raises(alerts.AlertError, match="already acknowledged"):
        alerts.ack(conn, Scope("province"), a["id"], "admin", NOON)
    assert alerts.unacked(conn, Scope("province")) == 0
    assert alerts.inbox(conn, Scope("hall", "hf01"))[0].acked_by == "hefei"


def test_a_rule_row_edited_by_hand_falls_back_to_the_default(province_db: Database, conn: Conn) -> None:
    conn.execute("INSERT INTO alert_rules (kind, enabled, params, escalate_s, changed_ms, changed_by)"
                 " VALUES ('negative-share', 1, 'not json', 60, 0, 'psql')")
    conn.execute("INSERT INTO hall_hours (hall, days, open, close, changed_ms, changed_by)"
                 " VALUES ('hf01', 'someday', '25:00', 'x', 0, 'psql')")
    assert alerts.rules(conn)["negative-share"].params == alerts.DEFAULTS["negative-share"].params
    keypad(conn, "hf01-w01", "hf01", 0, online=False)
    rows = Rows(conn)
    for _ in range(4):
        rows.rating("hf01", "c001", 1, DAY)
    assert run_pass(province_db, TZ, NOON) == 4                 # the pass goes on, with the defaults
    assert ("negative-share", "negative-share:hall:hf01") in open_kinds(province_db)
    assert ("offline", "offline:hf01-w01") in open_kinds(province_db)   # the default hours: open at noon


def test_rules_validated_and_audited(province_db: Database, conn: Conn) -> None:
    good = alerts.check_rule("negative-share", True, {"share": "0.3", "min_count": "6", "window_s": "600"},
                             "900")
    alerts.set_rule(conn, good, "admin", NOON)
    assert alerts.rules(conn)["negative-share"].params == {"share": 0.3, "min_count": 6, "window_s": 600}
    bad = [("negative-share", {"share": "1.5", "min_count": "6", "window_s": "600"}, "900", "share"),
           ("negative-share", {"share": "x", "min_count": "6", "window_s": "600"}, "900", "number"),
           ("negative-share", {"share": "0.5", "min_count": "2.5", "window_s": "600"}, "900", "whole"),
           ("negative-share", {"share": "nan", "min_count": "6", "window_s": "600"}, "900", "between"),
           ("offline", {"after_s": "600"}, "30", "escalate_s"),
           ("offline", {"after_s": "600", "evil": "1"}, "600", "no parameter"),
           ("nope", {}, "600", "no alert rule")]
    for kind, params, esc, why in bad:
        with pytest.raises(alerts.AlertError, match=why):
            alerts.check_rule(kind, True, params, esc)
    assert conn.scalar("SELECT COUNT(*) FROM audit_log WHERE action = 'alert.rule'") == 1


# --- delivery -----------------------------------------------------------------------------------------------

@pytest.fixture
def http() -> Iterator[HttpReceiver]:
    r = HttpReceiver()
    yield r
    r.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpReceiver]:
    r = SmtpReceiver()
    yield r
    r.stop()


def notifier(db: Database, *targets: NotifyTarget) -> Notifier:
    return Notifier(db, targets, TZ, retry_s=0.1, retry_max_s=0.4).start()


def test_delivered_to_a_real_http_receiver_and_smtp_server(
        province_db: Database, conn: Conn, http: HttpReceiver, smtp: SmtpReceiver,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    only_rules(conn, "dissatisfied")
    n = notifier(province_db, NotifyTarget(http.url()), NotifyTarget(smtp.url()))
    try:
        bad = Rows(conn).rating("hf01", "c001", 1, DAY, window="2")
        run_pass(province_db, TZ, NOON)
        n.wake()
        assert wait_until(lambda: len(http.posts) == 1 and len(smtp.messages) == 1)
        post = http.posts[0]
        assert "合肥庐阳营业厅" in post["title"] and "不满意评价" in post["title"] and "告警" in post["title"]
        assert f"rating #{bad}" in post["message"] and "window 2" in post["message"]
        mail = smtp.messages[0]
        assert "不满意评价" in str(mail["subject"]) and mail["to"] == "hall-manager@example.com"
        assert f"rating #{bad}" in mail.get_body().get_content()
        assert n.wait_idle(10) and n.pending() == 0
        sent = conn.all("SELECT target, tries, sent_ms FROM notify_deliveries ORDER BY target")
        assert sorted(t for t, _n, _s in sent) == sorted([target_id(http.url()), target_id(smtp.url())])
        assert all(tries == 1 and s is not None for _t, tries, s in sent)
        (a,) = alerts.inbox(conn, Scope("hall", "hf01"))
        assert (a.pushed, a.retrying) == (2, 0)                 # what the inbox says of the deliveries
        # Each target's next look starts after what it has delivered.
        last = conn.scalar("SELECT MAX(id) FROM alert_events")
        assert conn.scalar("SELECT since_event FROM notify_targets WHERE target = ?",
                           (target_id(http.url()),)) == last
    finally:
        n.stop()
    # The URLs' secrets are never logged (scheme://host only).
    assert SmtpReceiver.PASSWORD not in caplog.text and "mailto://127.0.0.1" in caplog.text


def test_retried_while_the_receivers_are_down_then_delivered_once(
        province_db: Database, conn: Conn, http: HttpReceiver, smtp: SmtpReceiver) -> None:
    only_rules(conn, "dissatisfied")
    http.down = smtp.down = True
    n = notifier(province_db, NotifyTarget(http.url()), NotifyTarget(smtp.url()))
    try:
        rows = Rows(conn)
        rows.rating("hf01", "c001", 1, DAY)
        rows.rating("wh01", "c009", 1, DAY)
        run_pass(province_db, TZ, NOON)
        n.wake()
        assert wait_until(lambda: http.refused >= 3 and smtp.refused >= 2, 30)
        assert http.posts == [] and smtp.messages == [] and n.pending() == 4
        tries = conn.scalar("SELECT MAX(tries) FROM notify_deliveries WHERE sent_ms IS NULL")
        assert tries >= 2
        # The inbox (newest first) shows the first alert's deliveries retrying on both targets; the second
        # waits its turn behind it (each target delivers in order).
        assert [x.retrying for x in alerts.inbox(conn, Scope("province"))] == [0, 2]
        http.down = smtp.down = False
        # apprise spaces its e-mails 5.5 s apart (its own throttle): a minute is plenty.
        assert wait_until(lambda: len(http.posts) == 2 and len(smtp.messages) == 2, 60)
        assert n.wait_idle(30) and n.pending() == 0
        # In order: the first alert's event first, even though it was the one retried.
        assert "合肥庐阳营业厅" in http.posts[0]["title"] and "芜湖" in http.posts[1]["title"]
        # A second receiver process on the same database (its own notifier) sends nothing again.
        other = notifier(province_db, NotifyTarget(http.url()), NotifyTarget(smtp.url()))
        try:
            assert other.wait_idle(30) and other.sent == 0
        finally:
            other.stop()
        assert len(http.posts) == 2 and len(smtp.messages) == 2
    finally:
        n.stop()
    # A restart delivers nothing twice either: the deliveries are in the database.
    again = notifier(province_db, NotifyTarget(http.url()))
    try:
        assert again.wait_idle(10) and again.sent == 0 and len(http.posts) == 2
    finally:
        again.stop()


def test_each_target_gets_its_halls_and_levels(province_db: Database, conn: Conn, http: HttpReceiver) -> None:
    """A hall's manager (level 0 of hf01), the 合肥 city office (level 1 only) and the province (level 2):
    an alert not acknowledged goes up, and its clearing reaches whoever was told of it."""
    only_rules(conn, "offline")
    rule = alerts.rules(conn)["offline"]
    alerts.set_rule(conn, alerts.Rule("offline", True, rule.params, 600), "admin", NOON)
    targets = (NotifyTarget(http.url("/hf01"), Scope("hall", "hf01"), (0,)),
               NotifyTarget(http.url("/hefei"), Scope("city", "合肥"), (1,)),
               NotifyTarget(http.url("/province"), Scope("province"), (2,)))
    n = notifier(province_db, *targets)
    try:
        keypad(conn, "hf01-w01", "hf01", NOON, online=False)
        keypad(conn, "wh01-w01", "wh01", NOON, online=False)
        run_pass(province_db, TZ, NOON)
        assert n.wait_idle(10)
        assert http.paths == ["/hf01"] and "hf01-w01" in http.posts[0]["title"]
        run_pass(province_db, TZ, NOON + 10 * MIN)             # both escalated to the cities
        assert n.wait_idle(10)
        assert http.paths == ["/hf01", "/hefei"] and "升级" in http.posts[1]["title"]
        assert "hf01-w01" in http.posts[1]["title"]             # wh01 (芜湖) is not 合肥's
        run_pass(province_db, TZ, NOON + 20 * MIN)             # ... and to the province
        assert n.wait_idle(10)
        assert sorted(http.paths[2:]) == ["/province", "/province"]
        keypad(conn, "hf01-w01", "hf01", NOON + 21 * MIN)
        run_pass(province_db, TZ, NOON + 21 * MIN)
        assert n.wait_idle(10)
        cleared = sorted(p for p, post in zip(http.paths, http.posts, strict=True)
                         if "已恢复" in post["title"])
        assert cleared == ["/hefei", "/hf01", "/province"]     # everyone who was told of it
    finally:
        n.stop()


def test_a_new_target_starts_after_the_events_already_queued(province_db: Database, conn: Conn,
                                                             http: HttpReceiver) -> None:
    only_rules(conn, "dissatisfied")
    rows = Rows(conn)
    rows.rating("hf01", "c001", 1, DAY)
    run_pass(province_db, TZ, NOON)
    n = notifier(province_db, NotifyTarget(http.url()))
    try:
        assert n.wait_idle(10) and http.posts == []
        rows.rating("hf01", "c001", 1, DAY)
        run_pass(province_db, TZ, NOON)
        n.wake()
        assert wait_until(lambda: len(http.posts) == 1)
    finally:
        n.stop()


def test_notify_config_checked(tmp_path: Path) -> None:
    got = parse_notify([{"url": "json://127.0.0.1:9/x", "scope": "city:合肥", "levels": [1]},
                        {"url": "mailto://u:p@h", "scope": "hall:hf01"}])
    assert got[0].scope == Scope("city", "合肥") and got[0].levels == (1,)
    assert got[1].scope == Scope("hall", "hf01") and got[1].levels == (0, 1, 2)
    assert "p@h" not in repr(got[1])
    secret = tmp_path / "wecom.url"
    secret.write_text("wecombot://SECRETKEY\n")
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        parse_notify([{"url_file": "wecom.url"}], tmp_path)
    os.chmod(secret, 0o600)
    assert parse_notify([{"url_file": "wecom.url"}], tmp_path)[0].url == "wecombot://SECRETKEY"
    for bad, why in (([{"url": "nope"}], "apprise URL"), ([{}], "exactly one"),
                     ([{"url": "json://h", "scope": "town:x"}], "scope"),
                     ([{"url": "json://h", "levels": [3]}], "levels"),
                     ([{"url": "json://h", "levels": []}], "levels"),
                     ([{"url": "json://h", "to": "x"}], "unknown key"),
                     ({"url": "json://h"}, "list of tables"),
                     ([{"url": "json://h"}, {"url": "json://h"}], "twice"),
                     ([{"url_file": "missing.url"}], "cannot read")):
        with pytest.raises(ConfigError, match=why):
            parse_notify(bad, tmp_path)


# --- the pages ----------------------------------------------------------------------------------------------

@pytest.fixture
def platform(tmp_path: Path, province_db: Database) -> Iterator[tuple[str, Database]]:
    fill(province_db)
    run_pass(province_db, TZ, NOW_MS)
    server = start(tmp_path, province_db, Clock())
    yield server.url, province_db
    server.stop()


def test_the_inbox_is_scoped_and_acknowledges(platform: tuple[str, Database]) -> None:
    url, db = platform
    by_hall = {a["hall"]: a for a in alerts_of(db, "dissatisfied")}
    assert set(by_hall) == {"hf01", "hf02", "wh01"}
    hf01, wh01 = by_hall["hf01"]["id"], by_hall["wh01"]["id"]
    mgr = Client(url)
    assert mgr.log_in("mgr-hf01") == 303
    status, text, _ = mgr.get("/alerts")
    def ids(*halls: str) -> list[str]:
        return sorted(str(a["id"]) for a in alerts_of(db) if a["hall"] in halls and a["state"] != "cleared")

    mine = ids("hf01")
    assert status == 200 and sorted(iter_ids(text, "alert")) == mine and str(hf01) in mine
    assert f'id="unacked">{len(mine)}<' in text and f'id="ack-{hf01}"' in text
    # Another hall's alert: neither listed nor acknowledgeable, even by a URL made by hand.
    assert mgr.post(f"/alerts/{wh01}/ack", {"csrf": mgr.csrf})[0] == 404
    assert mgr.post(f"/alerts/{hf01}/ack", {})[0] == 403                   # no CSRF token: refused
    status, _, headers = mgr.post(f"/alerts/{hf01}/ack", {"csrf": mgr.csrf,
                                                          "back": "state=open&kind=dissatisfied"})
    assert status == 303 and headers["location"] == "/alerts?state=open&kind=dissatisfied"
    status, text, _ = mgr.get("/alerts/list", {"HX-Request": "true", "X-Countersign-Poll": "1"})
    assert status == 200 and "mgr-hf01" in text and f'id="unacked">{len(mine) - 1}<' in text
    assert f"ack-{hf01}" not in text
    status, text, _ = mgr.post(f"/alerts/{hf01}/ack", {"csrf": mgr.csrf})
    assert status == 400 and "already acknowledged" in text
    city = Client(url)
    city.log_in("hefei")
    assert sorted(iter_ids(city.get("/alerts")[1], "alert")) == ids("hf01", "hf02")
    assert str(wh01) not in ids("hf01", "hf02")
    assert mgr.get("/alerts/rules")[0] == 403 and mgr.get("/alerts/hours")[0] == 403
    assert mgr.get("/alerts?state=nope")[0] == 400 and mgr.get("/alerts?kind=nope")[0] == 400
    assert mgr.get("/alerts?hall=wh01")[0] == 404                           # not theirs, by a hand-made URL
    status, body, headers = mgr.raw("/alerts?format=csv")
    csv_text = body.decode("utf-8-sig")
    assert status == 200 and "text/csv" in headers["content-type"] and "合肥东营业厅" in csv_text
    assert "wh01" not in csv_text and "mgr-hf01" in csv_text
    # Filters: the city office picks one hall and one kind.
    text = city.get("/alerts?hall=hf02&kind=dissatisfied")[1]
    assert list(iter_ids(text, "alert")) == [str(by_hall["hf02"]["id"])]
    assert city.get("/alerts?hall=wh01")[0] == 404
    with db.connect() as conn:
        assert conn.scalar("SELECT COUNT(*) FROM audit_log WHERE action = 'alert.ack'") == 1


def test_admin_edits_rules_hours_and_calendar(platform: tuple[str, Database]) -> None:
    url, db = platform
    admin = Client(url)
    admin.log_in("admin")
    status, text, _ = admin.get("/alerts/rules")
    assert status == 200 and 'id="rule-negative-share"' in text
    form = {"csrf": admin.csrf, "enabled": "1", "p_share": "0.6", "p_min_count": "5", "p_window_s": "1200",
            "escalate_s": "1800"}
    assert admin.post("/alerts/rules/negative-share", form)[0] == 303
    status, text, _ = admin.post("/alerts/rules/negative-share", {**form, "p_share": "2"})
    assert status == 400 and "share" in text and 'id="rules-error"' in text
    assert admin.post("/alerts/rules/offline", {"csrf": admin.csrf, "enabled": "1", "p_after_s": "abc",
                                                "escalate_s": "600"})[0] == 400
    assert admin.post("/alerts/rules/nope", {"csrf": admin.csrf})[0] == 404
    with db.connect() as conn:
        r = alerts.rules(conn)
        assert r["negative-share"].params == {"share": 0.6, "min_count": 5, "window_s": 1200}
        assert r["negative-share"].escalate_s == 1800 and r["offline"].params == {"after_s": 600}
    status, text, _ = admin.get("/alerts/hours")
    assert status == 200 and 'id="hours-hf01"' in text
    assert admin.post("/alerts/hours/hf01", {"csrf": admin.csrf, "days": "mon-fri", "open": "09:00",
                                             "close": "17:00"})[0] == 303
    status, text, _ = admin.post("/alerts/hours/hf02", {"csrf": admin.csrf, "days": "mon-fri",
                                                        "open": "18:00", "close": "09:00"})
    assert status == 400 and "open before it closes" in text
    assert admin.post("/alerts/hours/zz99", {"csrf": admin.csrf, "days": "mon-fri", "open": "09:00",
                                             "close": "17:00"})[0] == 404
    assert admin.post("/alerts/calendar", {"csrf": admin.csrf, "day": "2027-02-06", "workday": "1",
                                           "name": "春节调休"})[0] == 303
    assert admin.post("/alerts/calendar", {"csrf": admin.csrf, "day": "2027-13-01", "workday": "1",
                                           "name": "x"})[0] == 400
    assert 'id="day-2027-02-06"' in admin.get("/alerts/hours")[1]
    with db.connect() as conn:
        assert hours.for_hall(conn, "hf01").spec == "mon-fri"
        assert hours.for_hall(conn, "hf02") == hours.DEFAULT
        assert conn.scalar("SELECT workday FROM calendar_days WHERE day = '2027-02-06'") == 1
        actions = [a for (a,) in conn.all("SELECT action FROM audit_log WHERE actor = 'admin'"
                                          " AND action <> 'login' ORDER BY id")]
    assert actions == ["alert.rule", "hall.hours", "calendar.set"]
    assert admin.post("/alerts/calendar/2027-02-06/remove", {"csrf": admin.csrf})[0] == 303
    assert admin.post("/alerts/calendar/2027-02-06/remove", {"csrf": admin.csrf})[0] == 404


# --- end to end ---------------------------------------------------------------------------------------

def test_a_dissatisfied_rating_through_a_real_province_reaches_the_http_receiver(
        tmp_path: Path, province_db: Database, http: HttpReceiver) -> None:
    """A hall gateway publishes a signed batch with a 不满意 rating to a real mosquitto; the province's
    worker stores it, its supervisor raises the alert and its notifier posts it within seconds."""
    world = make_world(tmp_path / "world", workers=1)
    try:
        cfg = dataclasses.replace(world.config(province_db), notify=(NotifyTarget(http.url("/e2e")),))
        p = Province(cfg).start()
        world.provinces.append(p)
        hall = world.hall_client("hf01")
        k = world.device_key("hf01-w02")
        hall.publish("hf01", signed_batch(world.gateway_keys["hf01"], "hf01", 1, [
            entry(pr_rating(k, "hf01-w02", 1, 1), window="2", clerk="c002", txn="t-bad"),
            entry(pr_rating(k, "hf01-w02", 2, 4), window="2", clerk="c002", txn="t-good")]))
        hall.wait_acks(1)
        assert wait_until(lambda: any("不满意评价" in t for t in http.titles()), 15)
        (post,) = [x for x in http.posts if "不满意评价" in x["title"]]
        with province_db.connect() as conn:
            rid = conn.scalar("SELECT id FROM ratings WHERE txn = 't-bad'")
        assert f"rating #{rid}" in post["message"] and "c002" in post["message"] and http.paths[0] == "/e2e"
        assert [a["rating"] for a in alerts_of(province_db, "dissatisfied")] == [rid]
    finally:
        world.close()


def test_the_province_toml_takes_notify_tables(tmp_path: Path) -> None:
    (tmp_path / "mail.url").write_text("mailto://u:secret@127.0.0.1:2525?mode=insecure&to=a@example.com")
    os.chmod(tmp_path / "mail.url", 0o600)
    (tmp_path / "province.toml").write_text(
        'database = "p.db"\nregistry = "r.json"\nsigning_key = "k"\nnotify_retry_s = 2\n'
        '[[notify]]\nurl = "json://127.0.0.1:8080/hf01"\nscope = "hall:hf01"\nlevels = [0]\n'
        '[[notify]]\nurl_file = "mail.url"\nscope = "city:合肥"\nlevels = [1, 2]\n', encoding="utf-8")
    cfg = ProvinceConfig.load(tmp_path / "province.toml")
    assert [(t.scope, t.levels) for t in cfg.notify] == [(Scope("hall", "hf01"), (0,)),
                                                          (Scope("city", "合肥"), (1, 2))]
    assert cfg.notify[1].url.startswith("mailto://u:secret@") and cfg.notify_retry_s == 2
    assert "secret" not in repr(cfg)
    (tmp_path / "bad.toml").write_text('database = "p.db"\nregistry = "r.json"\nsigning_key = "k"\n'
                                       '[[notify]]\nurl = "json://h"\nscope = "everyone"\n')
    with pytest.raises(ConfigError, match="scope"):
        ProvinceConfig.load(tmp_path / "bad.toml")
