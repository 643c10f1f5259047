"""Cases in a real headless Chromium, on SQLite and PostgreSQL: the hall manager, on a phone's width,
opens the case of their hall's 不满意 rating from the list, records the call-back and the measures and
submits; the city user reviews and closes it; the list shows it closed on time. No page of the flow
scrolls sideways at 390 px, and the hall manager never sees another hall's case."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_helpers import click, log_in, no_horizontal_scroll, wait_text
from case_helpers import audit_of, case_of_rating
from platform_helpers import NOW_MS, TZ, Clock, fill, start
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from countersign.province.db import Database
from countersign.province.supervision import run_pass
from countersign.province.web import PlatformServer


@pytest.fixture
def platform(province_db: Database, tmp_path: Path) -> Iterator[tuple[PlatformServer, Database]]:
    fill(province_db)
    run_pass(province_db, TZ, NOW_MS)
    server = start(tmp_path, province_db, Clock())
    try:
        yield server, province_db
    finally:
        server.stop()


def bad_case(db: Database, hall: str) -> int:
    with db.connect() as conn:
        rid = conn.scalar("SELECT id FROM ratings WHERE hall = ? AND kind = 'rating' AND score = 1", (hall,))
        return int(case_of_rating(conn, int(rid))["id"])


def test_the_hall_rectifies_on_a_phone_and_the_city_closes_the_case(
        platform: tuple[PlatformServer, Database], browser: WebDriver) -> None:
    server, db = platform
    mine, theirs = bad_case(db, "hf01"), bad_case(db, "wh01")

    browser.set_window_size(390, 900)
    log_in(browser, server.url, "mgr-hf01")
    browser.find_element(By.LINK_TEXT, "整改工单 Cases").click()
    wait_text(browser, "h1", lambda t: "整改工单" in t)
    no_horizontal_scroll(browser)
    assert "已通报" in browser.find_element(By.CSS_SELECTOR, f"#case-{mine}").text
    assert not browser.find_elements(By.CSS_SELECTOR, f"#case-{theirs}")
    click(browser, f"#case-{mine} a.open")
    wait_text(browser, "h1", lambda t: f"#{mine}" in t)
    no_horizontal_scroll(browser)
    assert "不满意" in browser.find_element(By.ID, "rating").text
    with db.connect() as conn:
        rating = conn.scalar("SELECT rating FROM cases WHERE id = ?", (mine,))
    assert str(browser.find_element(By.ID, "custody").get_attribute("href")).endswith(f"/ratings/{rating}")
    assert not browser.find_elements(By.ID, "accept")

    # Submitting first is refused with the reason, on the page.
    click(browser, "#submit")
    assert "call-back" in wait_text(browser, "#error", bool)
    no_horizontal_scroll(browser)

    browser.find_element(By.ID, "outcome").send_keys("已电话回访客户，客户接受道歉")
    click(browser, "#save-callback")
    wait_text(browser, "#done", lambda t: "回访已记录" in t)
    assert "已电话回访客户，客户接受道歉" in browser.find_element(By.ID, "callback").text
    assert "整改中" in browser.find_element(By.ID, "state").text
    browser.find_element(By.ID, "cause-text").send_keys("高峰期叫号系统故障，未及时向客户解释")
    browser.find_element(By.ID, "measures-text").send_keys("每日开厅前检查叫号系统；窗口人员培训")
    click(browser, "#save-analysis")
    wait_text(browser, "#done", lambda t: "已保存" in t)
    no_horizontal_scroll(browser)
    click(browser, "#submit")
    wait_text(browser, "#state", lambda t: "待复核" in t)
    assert not browser.find_elements(By.ID, "callback-form")
    click(browser, "#logout")
    wait_text(browser, "h1", bool)

    # The city user, at a desk, reviews and closes it.
    browser.set_window_size(1280, 900)
    log_in(browser, server.url, "hefei")
    browser.get(server.url + "/cases?state=review")
    click(browser, f"#case-{mine} a.open")
    wait_text(browser, "#measures", lambda t: "每日开厅前检查叫号系统" in t)
    browser.find_element(By.ID, "note").send_keys("整改到位，同意关闭")
    click(browser, "#accept")
    wait_text(browser, "#state", lambda t: "已关闭" in t)
    assert "按期" in browser.find_element(By.ID, "on-time").text
    assert "hefei" in browser.find_element(By.ID, "history").text

    browser.find_element(By.LINK_TEXT, "整改工单 Cases").click()
    row = wait_text(browser, f"#case-{mine}", bool)
    assert "已关闭" in row and "是 Yes" in row
    # The rating's custody page names its case and where it ended.
    browser.get(server.url + f"/ratings/{rating}")
    assert "已关闭" in wait_text(browser, "#case-marker", bool)
    assert str(browser.find_element(By.ID, "case-link").get_attribute("href")).endswith(f"/cases/{mine}")
    with db.connect() as conn:
        assert [b for _, b, _ in audit_of(conn, mine)] == ["case.open", "case.callback", "case.analysis",
                                                           "case.submit", "case.accept"]
