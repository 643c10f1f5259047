"""The alerts inbox in a real headless Chromium, on SQLite and PostgreSQL: a hall manager sees their hall's
不满意 alert, acknowledges it (their name and the time appear, the unacknowledged count falls), sees a new
alert arrive without reloading the page (htmx), and another hall's manager sees none of it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alert_helpers import alerts_of
from browser_helpers import click, log_in, wait_text
from platform_helpers import NOW_MS, TZ, Clock, Filler, fill, start
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from countersign.province.db import Database
from countersign.province.supervision import run_pass
from countersign.province.web import PlatformServer


@pytest.fixture
def platform(province_db: Database, tmp_path: Path) -> Iterator[tuple[PlatformServer, Filler, Database]]:
    filler = fill(province_db)
    run_pass(province_db, TZ, NOW_MS)
    server = start(tmp_path, province_db, Clock())
    try:
        yield server, filler, province_db
    finally:
        server.stop()


def dissatisfied(db: Database, hall: str) -> list[int]:
    return [a["id"] for a in alerts_of(db, "dissatisfied") if a["hall"] == hall]


def test_a_hall_manager_acknowledges_their_alert_and_another_hall_does_not_see_it(
        platform: tuple[PlatformServer, Filler, Database], browser: WebDriver) -> None:
    server, filler, db = platform
    (mine,), (theirs,) = dissatisfied(db, "hf01"), dissatisfied(db, "wh01")
    log_in(browser, server.url, "mgr-hf01")
    browser.find_element(By.CSS_SELECTOR, "nav a[href='/alerts']").click()
    wait_text(browser, "h1", lambda t: "告警" in t)
    card = wait_text(browser, f"#alert-{mine}", bool)
    assert "不满意评价" in card and "合肥东营业厅" in card and "未确认" in card
    assert not browser.find_elements(By.CSS_SELECTOR, f"#alert-{theirs}")
    assert "芜湖" not in browser.find_element(By.TAG_NAME, "body").text
    before = int(wait_text(browser, "#unacked", bool))
    assert wait_text(browser, "#unacked-badge", bool) == str(before)
    # Every page's navigation bar carries the count (the inbox is always in sight).
    browser.get(server.url + "/")
    assert wait_text(browser, "#nav-unacked", bool) == str(before)
    browser.get(server.url + "/alerts")

    click(browser, f"#ack-{mine}")
    assert "mgr-hf01" in wait_text(browser, f"#alert-{mine} .acked", bool)
    assert "已确认" in wait_text(browser, f"#alert-{mine}", bool)
    assert wait_text(browser, "#unacked", bool) == str(before - 1)
    assert not browser.find_elements(By.CSS_SELECTOR, f"#ack-{mine}")
    browser.get(server.url + "/")
    shown = browser.find_elements(By.CSS_SELECTOR, "#nav-unacked")
    assert (shown[0].text if shown else "0") == str(before - 1)
    browser.get(server.url + "/alerts")

    # A new 不满意 rating: its alert appears in the open page by itself (htmx refresh), not by a reload.
    browser.execute_script("document.body.setAttribute('data-not-reloaded', '1')")
    filler.rating("hf01", 2, "10002", 1)
    run_pass(db, TZ, NOW_MS + 60_000)
    new = max(dissatisfied(db, "hf01"))
    assert "不满意评价" in wait_text(browser, f"#alert-{new}", bool, timeout=40)
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-not-reloaded") == "1"

    # The other hall's manager: their own alert only, none of hf01's, even by a hand-made URL.
    click(browser, "#logout")
    log_in(browser, server.url, "mgr-wh01")
    browser.get(server.url + "/alerts")
    assert "芜湖" in wait_text(browser, f"#alert-{theirs}", bool)
    assert not browser.find_elements(By.CSS_SELECTOR, f"#alert-{mine}")
    assert not browser.find_elements(By.CSS_SELECTOR, f"#alert-{new}")
    browser.get(server.url + "/alerts?state=cleared")
    assert not browser.find_elements(By.CSS_SELECTOR, f"#alert-{mine}")
