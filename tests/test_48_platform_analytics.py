"""The platform's analytics over a real database, SQLite and PostgreSQL alike (province_db): rankings by
the Wilson rule with a minimum sample, period filters and scopes, trends whose buckets add up to the
period's total with empty days as zero, and the keypad fleet (offline first, never reported, backlogs);
then the pages over HTTP (the platform app on uvicorn): rankings scoped, sorted and exported, the trends'
chart data and table, the fleet and the daily reconciliation, another hall's page refused."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import openpyxl
import pytest
from analytics_helpers import Rows, noon_ms, prepared
from platform_helpers import NOW_MS, Client, Clock, Filler, fill, start

from countersign.province.db import Conn, Database
from countersign.province.export import to_csv
from countersign.province.figures import Filter, total, wilson
from countersign.province.fleet import STALE_MS, fleet
from countersign.province.rankings import RankingError, ranking, ranking_table
from countersign.province.scope import Scope
from countersign.province.trends import TrendError, trend
from countersign.province.web import PlatformServer

DAY = "2026-11-10"


@pytest.fixture
def conn(province_db: Database) -> Iterator[Conn]:
    c = prepared(province_db)
    yield c
    c.close()


def clerks(conn: Conn) -> None:
    """hf01: A-001 3 of 3, A-002 95 of 100, A-003 30 of 40, A-004 60 of 60; hf02: B-001 40 of 50;
    wh01: C-001 29 of 29 (one short of the default minimum)."""
    rows = Rows(conn)
    rows.many("hf01", "A-001", 3, 0, DAY)
    rows.many("hf01", "A-002", 95, 5, DAY)
    rows.many("hf01", "A-003", 30, 10, DAY)
    rows.many("hf01", "A-004", 60, 0, DAY)
    rows.many("hf02", "B-001", 40, 10, DAY, window="2")
    rows.many("wh01", "C-001", 29, 0, DAY)


def test_a_clerk_with_3_of_3_is_not_ranked_first_and_small_samples_are_listed_apart(conn: Conn) -> None:
    clerks(conn)
    r = ranking(conn, "clerk", Filter())
    assert [(x.rank, x.clerk) for x in r.ranked] == [(1, "A-004"), (2, "A-002"), (3, "B-001"), (4, "A-003")]
    # 3 of 3 and 29 of 29 are 100 % but below the minimum of 30: no rank, listed apart.
    assert {x.clerk for x in r.too_few} == {"A-001", "C-001"}
    assert all(x.rank is None for x in r.too_few)
    top = r.ranked[0]
    assert (top.low, top.high) == pytest.approx(wilson(60, 60))
    assert top.figures.satisfaction_rate == 1.0

    # With the minimum lowered to 1 the 3-of-3 clerk is ranked, by its lower bound (44 %): last, below
    # 30 of 40 (60 %), not first with its 100 %.
    r1 = ranking(conn, "clerk", Filter(), min_ratings=1)
    assert r1.too_few == []
    order = [x.clerk for x in r1.ranked]
    assert order[0] == "A-004" and order[-1] == "A-001"
    assert order.index("A-002") < order.index("A-003") < order.index("A-001")
    # The same rule the other way round: a higher minimum lists more apart.
    r2 = ranking(conn, "clerk", Filter(), min_ratings=60)
    assert [x.clerk for x in r2.ranked] == ["A-004", "A-002"]


def test_a_ranking_sorts_by_any_column_and_keeps_its_wilson_ranks(conn: Conn) -> None:
    clerks(conn)
    by_ratings = ranking(conn, "clerk", Filter(), sort="ratings")
    assert [x.clerk for x in by_ratings.ranked] == ["A-002", "A-004", "B-001", "A-003"]
    assert [x.rank for x in by_ratings.ranked] == [2, 1, 3, 4]
    by_clerk = ranking(conn, "clerk", Filter(), sort="clerk")
    assert [x.clerk for x in by_clerk.ranked] == ["A-002", "A-003", "A-004", "B-001"]
    worst = ranking(conn, "clerk", Filter(), sort="satisfaction", desc=False)
    assert worst.ranked[0].clerk == "A-003"
    # 10 dissatisfied each: a tie keeps the Wilson order (B-001 ranks 3rd, A-003 4th).
    assert [x.clerk for x in ranking(conn, "clerk", Filter(), sort="dissatisfied").ranked][:2] == \
        ["B-001", "A-003"]
    for bad in ({"level": "window"}, {"sort": "password"}, {"min_ratings": 0}):
        with pytest.raises(RankingError):
            ranking(conn, str(bad.get("level", "clerk")), Filter(), sort=str(bad.get("sort", "rank")),
                    min_ratings=int(bad.get("min_ratings", 30)))


def test_hall_ranking_names_halls_and_its_export_lists_the_rule_and_the_small_ones(conn: Conn) -> None:
    clerks(conn)
    r = ranking(conn, "hall", Filter())
    assert [x.hall_name for x in r.ranked] == ["合肥庐阳营业厅", "合肥蜀山营业厅"]
    hf01 = next(x for x in r.ranked if x.hall == "hf01")
    assert (hf01.figures.ratings, hf01.figures.satisfied) == (203, 188)
    assert [x.hall for x in r.too_few] == ["wh01"]
    # hf01: 188 of 203 (lower bound 88.2 %) ranks above hf02: 40 of 50 (67.0 %).
    assert [x.hall for x in r.ranked] == ["hf01", "hf02"]
    text = to_csv(ranking_table(r, Filter(day_from=DAY, day_to=DAY))).decode("utf-8-sig")
    assert "Wilson" in text and "最少评价数 Minimum ratings,30" in text
    assert "样本不足 too few ratings" in text.splitlines()[-1] and "wh01" in text.splitlines()[-1]


def test_a_period_counts_only_its_days(conn: Conn) -> None:
    rows = Rows(conn)
    rows.many("hf01", "A-001", 40, 0, "2026-11-09")
    rows.many("hf01", "A-001", 0, 40, "2026-11-10")
    rows.many("hf01", "A-001", 10, 0, "2026-11-11")
    day10 = ranking(conn, "clerk", Filter(day_from="2026-11-10", day_to="2026-11-10"))
    assert [(x.clerk, x.figures.ratings, x.figures.satisfied) for x in day10.ranked] == [("A-001", 40, 0)]
    both = ranking(conn, "clerk", Filter(day_from="2026-11-09", day_to="2026-11-10"))
    assert both.ranked[0].figures.ratings == 80 and both.ranked[0].figures.satisfaction_rate == 0.5
    later = ranking(conn, "clerk", Filter(day_from="2026-11-11"))
    assert later.ranked == [] and later.too_few[0].figures.ratings == 10


def test_a_city_office_sees_only_its_halls_and_a_hall_manager_only_theirs(conn: Conn) -> None:
    clerks(conn)
    hefei = ranking(conn, "hall", Filter(scope=Scope("city", "合肥")))
    assert {x.hall for x in hefei.ranked + hefei.too_few} == {"hf01", "hf02"}
    wuhu = ranking(conn, "clerk", Filter(scope=Scope("city", "芜湖")), min_ratings=1)
    assert [x.clerk for x in wuhu.ranked] == ["C-001"]
    own = ranking(conn, "clerk", Filter(scope=Scope("hall", "hf02")), min_ratings=1)
    assert [x.clerk for x in own.ranked + own.too_few] == ["B-001"]
    assert trend(conn, Filter(scope=Scope("hall", "hf02"), day_from=DAY, day_to=DAY), "day")[0] \
        .figures.ratings == 50


def test_trend_buckets_add_up_to_the_total_and_empty_days_are_zero(conn: Conn) -> None:
    rows = Rows(conn)
    # Across a month's end and weeks: Fri 2026-11-27 .. Wed 2026-12-09, with days that have nothing.
    plan = {"2026-11-27": (5, 1), "2026-11-30": (7, 0), "2026-12-01": (2, 3), "2026-12-06": (1, 0),
            "2026-12-07": (4, 4), "2026-12-09": (3, 0)}
    for day, (good, bad) in plan.items():
        rows.many("hf01", "A-001", good, bad, day, service=1)
        rows.rating("hf01", "A-001", None, day, service=1)                 # a no-rating each of those days
    rows.rating("hf01", None, 4, "2026-12-02", invite=True, service=0)      # the invite key: its own prompt
    rows.many("hf01", "A-001", 50, 0, "2026-11-26")                         # before the period
    flt = Filter(day_from="2026-11-27", day_to="2026-12-09")
    want = total(conn, flt)
    assert want.ratings == sum(g + b for g, b in plan.values()) + 1

    days = trend(conn, flt, "day")
    assert [b.key for b in days][:4] == ["2026-11-27", "2026-11-28", "2026-11-29", "2026-11-30"]
    assert len(days) == 13
    empty = next(b for b in days if b.key == "2026-11-28")
    assert (empty.figures.ratings, empty.figures.satisfaction_rate, empty.figures.participation_rate) == \
        (0, None, None)
    weeks = trend(conn, flt, "week")
    assert [(b.key, b.day_from, b.day_to) for b in weeks] == [
        ("2026-W48", "2026-11-27", "2026-11-29"), ("2026-W49", "2026-11-30", "2026-12-06"),
        ("2026-W50", "2026-12-07", "2026-12-09")]
    assert weeks[1].figures.ratings == 7 + 5 + 1 + 1
    months = trend(conn, flt, "month")
    assert [(b.key, b.figures.ratings) for b in months] == [("2026-11", 6 + 7),
                                                            ("2026-12", 5 + 1 + 1 + 8 + 3)]
    for buckets in (days, weeks, months):
        for attr in ("ratings", "satisfied", "dissatisfied", "prompts", "no_ratings"):
            assert sum(getattr(b.figures, attr) for b in buckets) == getattr(want, attr), attr
        assert all(b.figures.participation_rate is None or b.figures.participation_rate <= 1 for b in buckets)

    # One service item, one clerk: the same rule on a subject.
    item = trend(conn, Filter(day_from="2026-11-27", day_to="2026-12-09", equals=(("service", 0),)), "month")
    assert [b.figures.ratings for b in item] == [0, 1]
    for bad in ("hour",):
        with pytest.raises(TrendError):
            trend(conn, flt, bad)
    with pytest.raises(TrendError):
        trend(conn, Filter(day_from="2026-12-09", day_to="2026-11-27"), "day")
    with pytest.raises(TrendError):
        trend(conn, Filter(day_from="2020-01-01", day_to="2026-12-09"), "day")
    assert len(trend(conn, Filter(day_from="2020-01-01", day_to="2026-12-09"), "month")) == 7 * 12


def test_the_fleet_lists_offline_keypads_first_silent_ones_and_backlogs(conn: Conn) -> None:
    now = noon_ms(DAY)
    status = [  # device, hall, seen, online, reported
        ("hf01-w01", "hf01", now - 60_000, 1, now - 30_000),
        ("hf01-w02", "hf01", now - 3_600_000, 0, now - 30_000),       # offline an hour
        ("hf01-w03", "hf01", now - 600_000, 0, now - 30_000),         # offline ten minutes
        ("hf02-w01", "hf02", now - 2 * STALE_MS, 1, now - 2 * STALE_MS),  # "online", long ago
        ("wh01-w01", "wh01", now - 1000, 1, now - 1000),
    ]
    for dev, hall, seen, online, rep in status:
        conn.execute("INSERT INTO keypad_status (device, hall, seen_ms, online, fw, reset_cause, free_heap,"
                     " outbox, rssi, stuck_keys, reported_ms)"
                     " VALUES (?, ?, ?, ?, '1.25.0', 'power-on', 81920, 0, -61, NULL, ?)",
                     (dev, hall, seen, online, rep))
    for dev, hall in (("hf01-w01", "hf01"), ("hf01-w04", "hf01"), ("wh01-w02", "wh01")):
        conn.execute('INSERT INTO devices (device, hall, key, epoch, "window", scale, revoked, source,'
                     " changed_ms) VALUES (?, ?, ?, 1, ?, 4, 0, 'registry', ?)",
                     (dev, hall, b"k" * 32, dev[-1], now))
    conn.execute("INSERT INTO gateway_status (hall, backlog, oldest_ms, reported_ms) VALUES"
                 " ('hf01', 12, ?, ?), ('hf02', 0, NULL, ?), ('wh01', 3, ?, ?)",
                 (now - 900_000, now, now, now - 60_000, now))
    f = fleet(conn, Scope("province"), now)
    assert [k.device for k in f.keypads] == ["hf02-w01", "hf01-w02", "hf01-w03", "wh01-w01", "hf01-w01",
                                             "hf01-w04", "wh01-w02"]
    assert [k.state for k in f.keypads[:3]] == ["状态过期 status stale", "离线 offline", "离线 offline"]
    assert [k.device for k in f.never_reported] == ["hf01-w04", "wh01-w02"]
    assert f.keypads[4].window == "1" and f.keypads[0].window is None
    assert [(b.hall, b.backlog, b.age_ms) for b in f.backlogs] == [("hf01", 12, 900_000), ("wh01", 3, 60_000)]
    hefei = fleet(conn, Scope("city", "合肥"), now)
    assert {k.hall for k in hefei.keypads} == {"hf01", "hf02"}
    assert [b.hall for b in hefei.backlogs] == ["hf01"]
    own = fleet(conn, Scope("hall", "wh01"), now)
    assert [k.device for k in own.keypads] == ["wh01-w01", "wh01-w02"]


# ---- the pages, over HTTP (the platform app served by uvicorn; urllib as the browser) -----------------

@pytest.fixture
def platform(province_db: Database, tmp_path: Path) -> Iterator[tuple[PlatformServer, Filler]]:
    filler = fill(province_db)
    server = start(tmp_path, province_db, Clock())
    try:
        yield server, filler
    finally:
        server.stop()


def rank_rows(html: str, table: str) -> list[tuple[str, str | None]]:
    m = re.search(rf'<table[^>]*id="{table}"[^>]*>(.*?)</table>', html, re.S)
    assert m is not None, f"no table {table}"
    return [(h, c or None) for h, c in re.findall(r'<tr class="rank-row" data-hall="([^"]*)"'
                                                  r'(?: data-clerk="([^"]*)")?', m.group(1))]


def test_the_ranking_page_is_scoped_sortable_and_exports(platform: tuple[PlatformServer, Filler]) -> None:
    server, _ = platform
    admin = Client(server.url)
    assert admin.log_in("admin") == 303
    status, html, _ = admin.get("/rankings?level=clerk&period=today&min=1")
    assert status == 200
    # 10001: 3 of 4 satisfied, 10002: 1 of 1, 20001: 0 of 1, 30001: 1 of 2; by the lower bound.
    assert rank_rows(html, "ranked") == [("hf01", "10001"), ("hf01", "10002"), ("wh01", "30001"),
                                         ("hf02", "20001")]
    status, html, _ = admin.get("/rankings?level=clerk&period=today&min=1&sort=clerk&dir=desc")
    assert [c for _, c in rank_rows(html, "ranked")] == ["30001", "20001", "10002", "10001"]
    status, html, _ = admin.get("/rankings?level=clerk&period=today")          # the default minimum: 30
    assert rank_rows(html, "ranked") == [] and len(rank_rows(html, "too-few")) == 4
    assert "样本不足 too few ratings" in html

    mgr = Client(server.url)
    assert mgr.log_in("mgr-hf01") == 303
    status, html, _ = mgr.get("/rankings?level=clerk&period=today&min=1")
    assert {h for h, _ in rank_rows(html, "ranked")} == {"hf01"}
    assert mgr.get("/rankings?level=clerk&hall=wh01")[0] == 404                 # another hall, by URL
    hefei = Client(server.url)
    assert hefei.log_in("hefei") == 303
    status, html, _ = hefei.get("/rankings?level=hall&period=today&min=1")
    assert [h for h, _ in rank_rows(html, "ranked")] == ["hf01", "hf02"]
    for bad in ("min=0", "min=x", "level=window", "sort=password", "dir=up"):
        assert admin.get(f"/rankings?{bad}")[0] == 400, bad

    status, body, headers = admin.raw("/rankings?level=clerk&period=today&min=1&format=xlsx")
    assert status == 200 and headers["content-disposition"].endswith('.xlsx"')
    sheet = openpyxl.load_workbook(io.BytesIO(body)).active
    values = [[c for c in row] for row in sheet.iter_rows(values_only=True)]
    head = next(i for i, r in enumerate(values) if r[0] == "名次 Rank")
    assert [r[3] for r in values[head + 1:]] == ["10001", "10002", "30001", "20001"]
    assert any(r[0] == "排名规则 Rule" for r in values[:head])
    status, body, _ = mgr.raw("/rankings?level=clerk&period=today&min=1&format=csv")
    text = body.decode("utf-8-sig")
    assert "10001" in text and "30001" not in text and "20001" not in text


def test_the_trends_page_has_chart_data_a_table_and_an_export(platform: tuple[PlatformServer, Filler]
                                                              ) -> None:
    server, filler = platform
    filler.rating("hf01", 1, "10001", 4, press_s=NOW_MS // 1000 - 3 * 86_400)   # Sunday 11-29
    admin = Client(server.url)
    assert admin.log_in("admin") == 303
    status, html, _ = admin.get("/trends?from=2026-11-27&to=2026-12-03")
    assert status == 200
    m = re.search(r'<script type="application/json" id="trend-data">(.*?)</script>', html, re.S)
    assert m is not None
    data = json.loads(m.group(1))
    assert data["labels"] == [f"2026-11-{d}" for d in (27, 28, 29, 30)] + ["2026-12-01", "2026-12-02",
                                                                           "2026-12-03"]
    assert data["ratings"] == [0, 0, 1, 0, 0, 8, 0]           # the days without a rating are there, as 0
    assert data["satisfaction"][:3] == [None, None, 100.0] and data["satisfaction"][5] == 62.5
    assert 'data-chart="trend"' in html and '/static/echarts.min.js' in html and "<script>" not in html
    status, html, _ = admin.get("/trends?from=2026-11-27&to=2026-12-03&grain=week&hall=hf01&clerk=10001")
    data = json.loads(re.search(r'id="trend-data">(.*?)</script>', html, re.S).group(1))  # type: ignore[union-attr]
    assert data["labels"] == ["2026-W48", "2026-W49"] and data["ratings"] == [1, 4]
    status, body, _ = admin.raw("/trends?from=2026-11-27&to=2026-12-03&grain=month&service=4&format=csv")
    lines = body.decode("utf-8-sig").splitlines()
    assert any("投诉举报" in ln for ln in lines) and lines[-2].startswith("2026-11,") and \
        lines[-1].startswith("2026-12,2026-12-01,2026-12-03,1,")
    mgr = Client(server.url)
    assert mgr.log_in("mgr-hf01") == 303
    assert mgr.get("/trends?hall=wh01")[0] == 404
    assert mgr.get("/trends?clerk=10001")[0] == 400                     # a clerk is within a hall
    assert mgr.get("/trends?grain=hour")[0] == 400
    data = json.loads(re.search(r'id="trend-data">(.*?)</script>',  # type: ignore[union-attr]
                                mgr.get("/trends?period=today")[1], re.S).group(1))
    assert data["ratings"] == [6 - 1]                                   # hf01 only; the no-rating is none


def test_the_fleet_and_reconciliation_pages(platform: tuple[PlatformServer, Filler]) -> None:
    server, filler = platform
    with filler.db.connect() as conn:
        conn.execute("INSERT INTO keypad_status (device, hall, seen_ms, online, fw, reset_cause, free_heap,"
                     " outbox, rssi, stuck_keys, reported_ms) VALUES ('hf01-w02', 'hf01', ?, 0, '1.25.0',"
                     " 'watchdog', 40000, 3, -77, '4', ?), ('wh01-w01', 'wh01', ?, 0, NULL, NULL, NULL,"
                     " NULL, NULL, NULL, ?)", (NOW_MS - 3_600_000, NOW_MS, NOW_MS - 60_000, NOW_MS))
        conn.execute("INSERT INTO gateway_status (hall, backlog, oldest_ms, reported_ms) VALUES"
                     " ('hf01', 5, ?, ?), ('wh01', 2, ?, ?)", (NOW_MS - 1_200_000, NOW_MS, NOW_MS, NOW_MS))
        # Yesterday hf01-w01 made seqs 1..4 by the gateway's count, which stored 4; the province has none.
        conn.execute("INSERT INTO day_counts (hall, device, epoch, day, ratings, no_ratings, first_seq,"
                     " last_seq, reported_ms) VALUES ('hf01', 'hf01-w01', 1, '2026-12-01', 4, 0, 1, 4, ?)",
                     (NOW_MS,))
    mgr = Client(server.url)
    assert mgr.log_in("mgr-hf01") == 303
    status, html, _ = mgr.get("/fleet")
    assert status == 200
    states = re.findall(r'<tr class="keypad[^"]*" data-device="([^"]+)" data-state="([^"]+)"', html)
    assert states == [("hf01-w02", "offline"), ("hf01-w01", "online")]
    assert re.findall(r'<tr class="backlog" data-hall="([^"]+)"', html) == ["hf01"]
    assert "20 分钟" in html and "watchdog" in html
    assert mgr.get("/fleet?hall=wh01")[0] == 404
    admin = Client(server.url)
    assert admin.log_in("admin") == 303
    html = admin.get("/fleet")[1]
    states = re.findall(r'<tr class="keypad[^"]*" data-device="([^"]+)" data-state="([^"]+)"', html)
    assert states[:2] == [("hf01-w02", "offline"), ("wh01-w01", "offline")]
    assert {d for d, s in states if s == "never"} == {"hf02-w01", "hf02-w02", "wh01-w02"}
    status, body, _ = admin.raw("/fleet?format=csv&table=backlogs")
    assert [ln.split(",")[0] for ln in body.decode("utf-8-sig").splitlines()[-2:]] == ["hf01", "wh01"]
    assert admin.get("/fleet?table=nothing")[0] == 400

    status, html, _ = mgr.get("/reconcile?from=2026-12-01&to=2026-12-02")
    assert status == 200
    rows = re.findall(r'<tr class="recon[^"]*" data-device="([^"]+)" data-day="([^"]+)" data-flagged="(\d)"',
                      html)
    assert rows[0] == ("hf01-w01", "2026-12-01", "1")                   # flagged first
    assert {d for d, _, _ in rows} == {"hf01-w01", "hf01-w02"}            # its own hall only
    assert all(f == "0" for _, day, f in rows if day == "2026-12-02")   # today is not over: not flagged
    status, body, _ = mgr.raw("/reconcile?from=2026-12-01&to=2026-12-02&flagged=1&format=csv")
    data_lines = body.decode("utf-8-sig").splitlines()
    assert "仅差异 flagged only" in body.decode("utf-8-sig") and "hf01-w01" in data_lines[-1]
