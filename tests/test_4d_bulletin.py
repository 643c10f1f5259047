"""The monthly 通报 over HTTP (the platform on uvicorn, SQLite and PostgreSQL): the PDF opens (pypdf),
says the month, and prints the halls with the very figures the /assessment page shows; the Excel holds
the same figures as numbers; a city office gets its own city's bulletin only, a hall manager none; the
weights page makes a version only for a province user and refuses bad weights with a reason."""

from __future__ import annotations

import html
import io
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import openpyxl
import pytest
from analytics_helpers import TZ, Rows, prepared
from assessment_helpers import V1, V1_SCORES, appeal, case, ms, november, page_rows, pdf_text
from browser_helpers import chromium, click, wait_text
from platform_helpers import HALLS, PASSWORD, Client, Clock, Filler, fill, start
from selenium.webdriver.common.by import By

from countersign.cli import main as countersign_main
from countersign.province import assessment, bulletin
from countersign.province.db import Database
from countersign.province.scope import Scope
from countersign.province.web import PlatformServer

MONTH = "2026-12"          # the month of platform_helpers' NOW_MS
NAMES = {h: n for h, n, _ in HALLS}
WUHU = urllib.parse.quote("芜湖")
# reportlab reads Paragraph text as markup: a decision must print as typed.
DECISION = "误按 <b>确认</b> & 录像为证"


@pytest.fixture
def platform(tmp_path: Path, province_db: Database) -> Iterator[tuple[PlatformServer, Filler]]:
    f = fill(province_db)
    # hf01: 7 ratings, 6 satisfied; hf02: 3 ratings, 2 satisfied; wh01: its 不满意 excluded by an upheld
    # appeal, 1 rating left, satisfied.
    for _ in range(2):
        f.rating("hf01", 1, "10001", 3)
        f.rating("hf02", 1, "20001", 4)
    with province_db.connect() as conn:
        bad = conn.scalar("SELECT id FROM ratings WHERE hall = 'wh01' AND score = 1")
        appeal(conn, "wh01", int(bad), "upheld", "2026-12-02", DECISION)
        hf01_bad = conn.scalar("SELECT id FROM ratings WHERE hall = 'hf01' AND score = 1")
        case(conn, "hf01", int(hf01_bad), opened="2026-12-01", closed="2026-12-02", on_time=1)
    server = start(tmp_path, province_db, Clock())
    try:
        yield server, f
    finally:
        server.stop()


def logged_in(server: PlatformServer, name: str) -> Client:
    c = Client(server.url)
    assert c.log_in(name) == 303
    return c


def min_sample_1(admin: Client) -> None:
    admin.get("/assessment/weights")
    status, _, _ = admin.post("/assessment/weights", {
        "csrf": admin.csrf, "w_satisfaction": "60", "w_participation": "20", "w_cases_on_time": "15",
        "w_appeals_upheld": "5", "w_dissatisfied": "2", "min_sample": "1", "note": "bulletin test"})
    assert status == 303


def test_the_pdf_and_the_excel_print_the_figures_the_page_shows(platform: tuple[PlatformServer, Filler]
                                                                 ) -> None:
    server, _ = platform
    admin = logged_in(server, "admin")
    min_sample_1(admin)
    status, text, _ = admin.get(f"/assessment?month={MONTH}")
    assert status == 200
    rows = page_rows(text)
    assert set(rows) == {"hf01", "hf02", "wh01"}
    assert rows["hf01"]["satisfaction"] == "85.7%"          # 6 of 7
    assert rows["hf02"]["satisfaction"] == "66.7%"          # 2 of 3
    assert rows["wh01"]["satisfaction"] == "100.0%"         # its 不满意 excluded by the upheld appeal
    assert rows["wh01"]["excluded"] == "1"

    status, body, headers = admin.raw(f"/assessment/bulletin.pdf?month={MONTH}")
    assert status == 200 and {k.lower(): v for k, v in headers.items()}["content-type"] == "application/pdf"
    pages, ptext = pdf_text(body)
    assert pages > 0
    assert "2026年12月 窗口服务满意度评价通报" in ptext
    assert "全省 Province" in ptext
    for hall, r in rows.items():
        # The hall's row as printed: rank, hall, name, score, ratings, satisfaction, participation.
        printed = "\n".join([r["rank"], hall, NAMES[hall], r["score"], r["ratings"], r["satisfaction"],
                             r["participation"]])
        assert printed in ptext, (printed, ptext[:3000])
    assert "各营业厅满意率" in ptext                           # the chart's title
    assert "误操作 Misoperation" in ptext                       # the upheld appeal listed
    assert DECISION in " ".join(ptext.split())        # wrapped in its cell: lines joined

    status, body, _ = admin.raw(f"/assessment/bulletin.xlsx?month={MONTH}")
    assert status == 200
    wb = openpyxl.load_workbook(io.BytesIO(body))
    assert wb.sheetnames[0] == "汇总 Summary"
    ws = wb["营业厅考核 Hall assessment"]
    grid = [list(r) for r in ws.iter_rows(values_only=True)]
    head_at = next(i for i, r in enumerate(grid) if r and r[0] == "名次 Rank")
    head = grid[head_at]
    by_hall = {r[head.index("营业厅 Hall")]: dict(zip(head, r, strict=True)) for r in grid[head_at + 1:]}
    for hall, r in rows.items():
        x = by_hall[hall]
        assert f"{x['满意率 Satisfaction'] * 100:.1f}%" == r["satisfaction"]
        assert f"{x['得分 Score']:.2f}" == r["score"]
        assert str(x["评价数 Ratings"]) == r["ratings"]
    summary = {r[0]: r[1] for r in wb["汇总 Summary"].iter_rows(values_only=True) if r[0]}
    assert summary["评价数 Ratings"] == 11
    assert summary["按期整改 Closed on time"] == 1
    assert summary["申诉采信 Appeals upheld"] == 1


def test_a_city_office_gets_its_own_city_only_and_a_hall_manager_no_bulletin(
        platform: tuple[PlatformServer, Filler]) -> None:
    server, _ = platform
    min_sample_1(logged_in(server, "admin"))
    hefei = logged_in(server, "hefei")
    status, body, _ = hefei.raw(f"/assessment/bulletin.pdf?month={MONTH}")
    assert status == 200
    _, ptext = pdf_text(body)
    assert "hf01" in ptext and "hf02" in ptext
    assert "wh01" not in ptext and NAMES["wh01"] not in ptext
    for path in ("bulletin.pdf", "bulletin.xlsx"):
        status, body, _ = hefei.raw(f"/assessment/{path}?month={MONTH}&city={WUHU}")
        assert status == 404
        assert b"wh01" not in body
    mgr = logged_in(server, "mgr-hf01")
    assert mgr.raw(f"/assessment/bulletin.pdf?month={MONTH}")[0] == 403
    assert mgr.raw(f"/assessment/bulletin.xlsx?month={MONTH}")[0] == 403
    admin = logged_in(server, "admin")
    status, body, _ = admin.raw(f"/assessment/bulletin.pdf?month={MONTH}&city={WUHU}")
    assert status == 200
    _, ptext = pdf_text(body)
    assert "wh01" in ptext and "hf01" not in ptext
    assert admin.raw(f"/assessment/bulletin.pdf?month={MONTH}&city=nowhere")[0] == 404
    assert admin.raw("/assessment/bulletin.pdf?month=2026-13")[0] == 400


def test_the_assessment_page_is_scoped_and_exports(platform: tuple[PlatformServer, Filler]) -> None:
    server, _ = platform
    min_sample_1(logged_in(server, "admin"))
    mgr = logged_in(server, "mgr-hf01")
    status, text, _ = mgr.get(f"/assessment?month={MONTH}&level=clerk")
    assert status == 200
    assert {r for r in re.findall(r'data-hall="([^"]+)"', text)} == {"hf01"}
    assert "bulletin-pdf" not in text
    assert mgr.get(f"/assessment?month={MONTH}&city={WUHU}")[0] == 404
    status, body, _ = mgr.raw(f"/assessment?month={MONTH}&format=xlsx")
    assert status == 200
    ws = openpyxl.load_workbook(io.BytesIO(body)).active
    assert ws is not None
    halls = {r[1] for r in ws.iter_rows(values_only=True) if r[1] in ("hf01", "hf02", "wh01")}
    assert halls == {"hf01"}
    status, body, _ = mgr.raw(f"/assessment?month={MONTH}&format=csv")
    csv_text = body.decode("utf-8-sig")
    assert "权重版本 Weights version,v1" in csv_text and "最少评价数 Minimum sample,1" in csv_text
    hefei = logged_in(server, "hefei")
    status, text, _ = hefei.get(f"/assessment?month={MONTH}")
    assert set(page_rows(text)) == {"hf01", "hf02"}
    for bad in ("month=2026-00", "level=city", "version=abc", "version=99"):
        assert hefei.get(f"/assessment?{bad}")[0] == 400, bad


def test_only_a_province_user_makes_weights_and_bad_ones_are_refused(platform: tuple[PlatformServer, Filler]
                                                                     ) -> None:
    server, f = platform
    hefei = logged_in(server, "hefei")
    status, text, _ = hefei.get("/assessment/weights")
    assert status == 200 and 'id="new-weights"' not in text
    status, _, _ = hefei.post("/assessment/weights", {
        "csrf": hefei.csrf, "w_satisfaction": "100", "w_participation": "0", "w_cases_on_time": "0",
        "w_appeals_upheld": "0", "w_dissatisfied": "0", "min_sample": "1", "note": "mine"})
    assert status == 403
    admin = logged_in(server, "admin")
    admin.get("/assessment/weights")
    status, text, _ = admin.post("/assessment/weights", {
        "csrf": admin.csrf, "w_satisfaction": "90", "w_participation": "20", "w_cases_on_time": "0",
        "w_appeals_upheld": "0", "w_dissatisfied": "0", "min_sample": "1", "note": "too much"})
    assert status == 400 and "must sum to 100" in text
    status, _, _ = admin.post("/assessment/weights", {"w_satisfaction": "100", "note": "no csrf"})
    assert status == 403
    with f.db.connect() as conn:
        assert conn.scalar("SELECT COUNT(*) FROM assessment_weights") == 0
    min_sample_1(admin)
    status, text, _ = admin.get("/assessment/weights")
    assert "bulletin test" in text and 'id="version-1"' in text
    status, text, _ = admin.get("/audit?action=assessment-weights")
    assert "bulletin test" in html.unescape(text)


def test_the_command_line_writes_the_same_bulletin(tmp_path: Path, province_db: Database,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    conn = november(province_db)
    assessment.add_version(conn, V1, "5", "cli test", actor="admin", now_ms=ms("2026-12-02"))
    conn.close()
    cfg = tmp_path / "province.toml"
    cfg.write_text(f'database = "{province_db.url}"\ntimezone = "Asia/Shanghai"\n', encoding="utf-8")
    out = tmp_path / "out" / "bulletin-2026-11.pdf"
    assert countersign_main(["province", "bulletin", "--config", str(cfg), "--month", "2026-11",
                             "--out", str(out)]) == 0
    _, ptext = pdf_text(out.read_bytes())
    assert "2026年11月 窗口服务满意度评价通报" in ptext
    # hf01: 12 of 14 satisfied, score 77.43 (assessment_helpers, by hand).
    assert "\n".join(["1", "hf01", "合肥庐阳营业厅", f"{V1_SCORES['hf01']:.2f}", "14", "85.7%"]) in ptext
    xlsx = tmp_path / "hefei.xlsx"
    assert countersign_main(["province", "bulletin", "--config", str(cfg), "--month", "2026-11",
                             "--city", "合肥", "--out", str(xlsx)]) == 0
    wb = openpyxl.load_workbook(xlsx)
    halls = {r[1] for r in wb["营业厅考核 Hall assessment"].iter_rows(values_only=True)}
    assert {"hf01", "hf02"} <= halls and "wh01" not in halls
    capsys.readouterr()
    assert countersign_main(["province", "bulletin", "--config", str(cfg), "--month", "2026-13",
                             "--out", str(out)]) == 1
    assert "month must be YYYY-MM" in capsys.readouterr().err
    assert countersign_main(["province", "bulletin", "--config", str(cfg), "--month", "2026-11",
                             "--city", "nowhere", "--out", str(out)]) == 2
    assert countersign_main(["province", "bulletin", "--config", str(cfg), "--month", "2026-11",
                             "--out", str(tmp_path / "b.doc")]) == 2


def test_in_the_browser_new_weights_and_an_upheld_appeal_change_the_scores_not_the_rating(
        platform: tuple[PlatformServer, Filler], tmp_path: Path) -> None:
    server, f = platform
    with chromium(tmp_path) as d:
        d.get(server.url + "/login")
        d.find_element(By.ID, "name").send_keys("admin")
        d.find_element(By.ID, "password").send_keys(PASSWORD)
        d.find_element(By.ID, "login").click()
        wait_text(d, "#who", bool)
        d.get(server.url + "/assessment/weights")
        for part, value in (("satisfaction", "100"), ("participation", "0"), ("cases_on_time", "0"),
                            ("appeals_upheld", "0"), ("dissatisfied", "0")):
            box = d.find_element(By.ID, f"w-{part}")
            box.clear()
            box.send_keys(value)
        box = d.find_element(By.ID, "min-sample")
        box.clear()
        box.send_keys("1")
        d.find_element(By.ID, "note").send_keys("只看满意率 satisfaction only")
        click(d, "#save-weights")
        wait_text(d, "#versions", lambda t: "satisfaction only" in t)
        d.get(server.url + f"/assessment?month={MONTH}")
        hf02 = 'tr[data-hall="hf02"]'
        assert wait_text(d, f"#ranked {hf02} td.score", bool) == "66.67"          # 2 of 3 satisfied
        assert "satisfaction only" in d.find_element(By.ID, "version").text
        with f.db.connect() as conn:
            bad = int(conn.scalar("SELECT id FROM ratings WHERE hall = 'hf02' AND score = 1"))
            stored = conn.one("SELECT score, cose, digest FROM ratings WHERE id = ?", (bad,))
            # The appeal as the province's decision leaves it (the appeals page is another part's).
            appeal(conn, "hf02", bad, "upheld", "2026-12-02")
        d.refresh()
        assert wait_text(d, f"#ranked {hf02} td.score", lambda t: t != "66.67") == "100.00"
        assert d.find_element(By.CSS_SELECTOR, f"#ranked {hf02} td.excluded").text == "1"
        assert d.find_element(By.CSS_SELECTOR, f"#ranked {hf02} td.ratings").text == "2"
        with f.db.connect() as conn:
            assert conn.one("SELECT score, cose, digest FROM ratings WHERE id = ?", (bad,)) == stored


def test_a_province_of_many_halls_charts_the_best_30_and_tables_them_all(province_db: Database) -> None:
    conn = prepared(province_db)
    rows = Rows(conn)
    for i in range(35):
        hall = f"x{i:02d}"
        conn.execute("INSERT INTO halls (hall, name, city) VALUES (?, ?, '宣城')", (hall, f"宣城{i}号厅"))
        rows.many(hall, f"9{i:02d}", 10 + i % 7, i % 3, "2026-11-08")
    assessment.add_version(conn, V1, "1", "many halls", actor="admin", now_ms=ms("2026-12-02"))
    b = bulletin.build(conn, assessment.parse_month("2026-11", TZ), Scope("province"), "全省 Province",
                       tz=TZ, made_ms=ms("2026-12-02"), made_by="test")
    pages, ptext = pdf_text(bulletin.to_pdf(b))
    assert pages >= 2
    assert "the best 30 of 35" in ptext
    for i in range(35):
        assert f"宣城{i}号厅" in ptext
    city_row = "\n".join(["宣城", "35", str(sum(10 + i % 7 + i % 3 for i in range(35)))])
    assert city_row in ptext                                  # the cities' table: halls, ratings
    conn.close()
