"""An appeal in the platform's real browser (Debian's headless Chromium, Selenium), on SQLite and
PostgreSQL: the hall manager finds a dissatisfied rating on /appeals and appeals it with evidence; the
province user opens it and upholds it; the rating page says it is left out of assessment, its custody
page still verifies its MAC, and the with/without report shows the hall's figures change for assessment
only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_helpers import click, log_in, no_horizontal_scroll, wait_text
from platform_helpers import NOW_MS, TZ, Clock, Filler, fill, start
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from countersign.province.db import Database
from countersign.province.supervision import run_pass
from countersign.province.web import PlatformServer


@pytest.fixture
def platform(province_db: Database, tmp_path: Path) -> Iterator[tuple[PlatformServer, Filler]]:
    filler = fill(province_db)
    server = start(tmp_path, province_db, Clock())
    try:
        yield server, filler
    finally:
        server.stop()


def report_cells(driver: WebDriver, hall: str) -> dict[str, str]:
    row = driver.find_element(By.ID, f"report-{hall}")
    return {td.get_attribute("class") or "": td.text for td in row.find_elements(By.TAG_NAME, "td")}


def test_a_hall_appeals_the_province_upholds_the_report_shows_it(platform: tuple[PlatformServer, Filler],
                                                                 browser: WebDriver,
                                                                 province_db: Database) -> None:
    server, _ = platform
    with province_db.connect() as conn:
        rid = int(conn.scalar("SELECT id FROM ratings WHERE hall = 'hf01' AND score = 1"))
        before = conn.one("SELECT cose, score, day FROM ratings WHERE id = ?", (rid,))

    log_in(browser, server.url, "mgr-hf01")
    browser.find_element(By.LINK_TEXT, "申诉 Appeals").click()
    wait_text(browser, "h1", lambda t: "申诉" in t)
    click(browser, "#period-today")
    click(browser, f"#appeal-open-{rid}")
    wait_text(browser, "h1", lambda t: f"#{rid}" in t)
    assert browser.find_element(By.ID, "no-appeals")
    Select(browser.find_element(By.ID, "reason")).select_by_value("misoperation")
    browser.find_element(By.ID, "evidence").send_keys("顾客误按不满意键，回访时确认 pressed by mistake")
    click(browser, "#file-submit")
    assert "待省公司复核" in wait_text(browser, "#done", bool)
    assert "待复核" in browser.find_element(By.CSS_SELECTOR, ".appeal .state").text
    assert not browser.find_elements(By.ID, "uphold")        # the hall does not decide
    assert "计入" in browser.find_element(By.ID, "assessment").text
    click(browser, "#logout")
    wait_text(browser, "#login", lambda _t: True)

    log_in(browser, server.url, "admin")
    browser.get(server.url + "/appeals?state=pending")
    click(browser, f"a[href='/appeals/rating/{rid}']")
    wait_text(browser, "h1", lambda t: f"#{rid}" in t)
    assert "回访时确认" in browser.find_element(By.CSS_SELECTOR, ".appeal .evidence").text
    browser.find_element(By.ID, "decision-text").send_keys("回访录音证实为误操作 the recording shows it")
    click(browser, "#uphold")
    assert "申诉成立" in wait_text(browser, "#done", bool)
    assert "不计入考核" in wait_text(browser, "#excluded-marker", bool)
    assert "回访录音" in browser.find_element(By.CSS_SELECTOR, ".decision").text

    # the rating stays stored and signed: its custody page still verifies it
    click(browser, "#custody")
    wait_text(browser, "#mac", bool)
    assert "ok" in (browser.find_element(By.ID, "mac").get_attribute("class") or "")
    assert browser.find_element(By.ID, "score").text == "不满意"
    # ... and says the appeal's decision beside it
    assert "申诉成立" in wait_text(browser, "#appeal-marker-state", bool)
    assert "回访录音" in browser.find_element(By.ID, "appeal-marker").text

    # the report: hf01's figures as stored and for assessment, side by side
    browser.get(server.url + "/appeals/report?period=today")
    wait_text(browser, "#report-hf01", bool)
    hf01 = report_cells(browser, "hf01")
    assert (hf01["ratings"], hf01["dissatisfied"], hf01["satisfaction"]) == ("5", "1", "80.0%")
    assert hf01["excluded"] == "1"
    assert (hf01["a-ratings"], hf01["a-dissatisfied"], hf01["a-satisfaction"]) == ("4", "0", "100.0%")
    wh01 = report_cells(browser, "wh01")
    assert wh01["excluded"] == "0" and wh01["satisfaction"] == wh01["a-satisfaction"] == "50.0%"
    with province_db.connect() as conn:
        assert tuple(conn.one("SELECT cose, score, day FROM ratings WHERE id = ?", (rid,))) == tuple(before)


def test_the_appeal_and_flag_pages_fit_a_phone(platform: tuple[PlatformServer, Filler], browser: WebDriver,
                                               province_db: Database) -> None:
    server, filler = platform
    with province_db.connect() as conn:
        rid = int(conn.scalar("SELECT id FROM ratings WHERE hall = 'hf01' AND score = 1"))
    # a flag to show: six invite-key top scores in a row
    for i in range(6):
        filler.rating("hf01", 2, "10002", 4, invite=True, press_s=NOW_MS // 1000 - 3000 + i * 60)
    run_pass(province_db, TZ, NOW_MS)
    # the city office: the appeal form and the flag's review form are on its pages
    log_in(browser, server.url, "hefei")
    browser.set_window_size(375, 800)
    for path in ("/appeals?period=today", f"/appeals/rating/{rid}", "/appeals/report?period=today", "/flags",
                 "/flags/1"):
        browser.get(server.url + path)
        wait_text(browser, "h1", bool)
        no_horizontal_scroll(browser)
    assert browser.find_elements(By.ID, "review")


def test_a_self_rating_pattern_is_flagged_and_reviewed_in_the_browser(platform: tuple[PlatformServer, Filler],
                                                                      browser: WebDriver,
                                                                      province_db: Database) -> None:
    server, filler = platform
    # the clerk at window 2 rates himself with his invite key after closing: 18:00 onwards, yesterday
    evening = NOW_MS // 1000 - 16 * 3600
    mine = [filler.rating("hf01", 2, "10002", 4, invite=True, press_s=evening + i * 120) for i in range(6)]
    run_pass(province_db, TZ, NOW_MS)
    log_in(browser, server.url, "hefei")
    browser.find_element(By.LINK_TEXT, "疑点 Flags").click()
    wait_text(browser, "h1", lambda t: "疑点" in t)
    flags_shown = browser.find_elements(By.CSS_SELECTOR, "div.flag")
    texts = " ".join(f.text for f in flags_shown)
    assert len(flags_shown) == 2 and "连续 6 次" in texts and "非营业时间" in texts and "18:00" in texts
    streak = next(f for f in flags_shown if "连续" in f.text)
    links = [a.get_attribute("href") or "" for a in streak.find_elements(By.CSS_SELECTOR, ".ratings a")]
    assert [int(h.rsplit("/", 1)[1]) for h in links] == mine
    streak.find_element(By.CSS_SELECTOR, "h3 a").click()
    wait_text(browser, "#why", lambda t: "invite key" in t)
    assert {e.get_attribute("id") for e in browser.find_elements(By.CSS_SELECTOR, "#ratings tr.rating")} == {
        f"rating-{i}" for i in mine}
    browser.find_element(By.ID, "note-text").send_keys("已约谈该员工 the clerk was spoken to")
    click(browser, "#confirm")
    assert "已确认" in wait_text(browser, "#done", bool)
    assert "hefei" in browser.find_element(By.ID, "state").text
    browser.get(server.url + "/flags")
    wait_text(browser, "#flag-count", lambda t: t == "1")
