"""The rankings and the trends chart in a real headless Chromium (Debian's chromium + chromium-driver,
Selenium), under the platform's own CSP: log in, open a ranking, sort it by a column and back, then see
the trends chart drawn by ECharts (its instance on the box, a canvas of non-zero size), with no script
refused by the CSP and no error in the console."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from browser_helpers import chromium
from platform_helpers import NOW_MS, PASSWORD, Clock, fill, start
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from countersign.province.db import Database
from countersign.province.web import PlatformServer

DAY_S = 86_400


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[PlatformServer]:
    db = Database(str(tmp_path / "province.db"))
    filler = fill(db)
    # A week of ratings for the chart: a gap on two days, hf01's clerk 10003 with many ratings.
    for days_ago, scores in ((6, (4, 3, 1)), (5, (3,)), (2, (4, 4, 2, 1)), (1, (3, 3, 3))):
        for s in scores:
            filler.rating("hf01", 1, "10003", s, press_s=NOW_MS // 1000 - days_ago * DAY_S)
    server = start(tmp_path, db, Clock())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    with chromium(tmp_path, console=True) as driver:
        yield driver


def until(driver: WebDriver, what: str, check: Callable[[WebDriver], object], timeout: float = 20) -> object:
    # A page can be replaced (a click's navigation) between finding an element and reading it: a stale
    # element is one more try, not a failure.
    wait = WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,))
    return wait.until(check, what)


def clerks(driver: WebDriver, table: str) -> list[str]:
    got: list[str] = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map(r => r.dataset.clerk);",
        f"#{table} tr.rank-row")
    return got


def log_in(driver: WebDriver, server: PlatformServer, name: str) -> None:
    driver.get(server.url + "/login")
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "login").click()
    until(driver, "the log-in to land on the overview", lambda d: d.find_elements(By.ID, "who"))


def console_errors(driver: WebDriver) -> list[str]:
    # The browser's own request for /favicon.ico (the platform has none) is not the page's error.
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and "/favicon.ico" not in e["message"]]


def test_open_a_ranking_and_sort_it(platform: PlatformServer, browser: WebDriver) -> None:
    log_in(browser, platform, "admin")
    browser.find_element(By.LINK_TEXT, "排名 Rankings").click()
    until(browser, "the hall ranking", lambda d: d.find_elements(By.ID, "ranked"))
    browser.find_element(By.ID, "level-clerk").click()
    until(browser, "the clerk ranking", lambda d: "level=clerk" in d.current_url)
    box = browser.find_element(By.ID, "min")
    box.clear()
    box.send_keys("2")
    browser.find_element(By.CSS_SELECTOR, "#ranking-form button[type=submit]").click()
    until(browser, "the ranking with the minimum of 2", lambda d: "min=2" in d.current_url)
    # This month (December): 10003 3 of 3, 10001 3 of 4, 30001 1 of 2, by the lower bound; 10002 and 20001
    # (1 rating each) listed apart.
    assert clerks(browser, "ranked") == ["10003", "10001", "30001"]
    assert {"10002", "20001"} == set(clerks(browser, "too-few"))
    assert "样本不足" in browser.find_element(By.ID, "too-few-title").text

    browser.find_element(By.CSS_SELECTOR, '#ranked th[data-col="clerk"] a.sort').click()
    until(browser, "sorted by clerk", lambda d: clerks(d, "ranked") == ["10001", "10003", "30001"])
    header = browser.find_element(By.CSS_SELECTOR, '#ranked th[data-col="clerk"]')
    assert header.get_attribute("aria-sort") == "ascending"
    header.find_element(By.CSS_SELECTOR, "a.sort").click()
    until(browser, "sorted by clerk, descending",
          lambda d: clerks(d, "ranked") == ["30001", "10003", "10001"])
    browser.find_element(By.CSS_SELECTOR, '#ranked th[data-col="ratings"] a.sort').click()
    until(browser, "sorted by ratings", lambda d: clerks(d, "ranked") == ["10001", "10003", "30001"])
    assert console_errors(browser) == []


def test_the_trends_chart_is_drawn(platform: PlatformServer, browser: WebDriver) -> None:
    log_in(browser, platform, "admin")
    browser.get(platform.url + "/trends?from=2026-11-25&to=2026-12-02&hall=hf01")
    size = until(browser, "an ECharts canvas drawn in the trend box", lambda d: d.execute_script(
        "const box = document.getElementById('trend-chart');"
        " const c = box && box.querySelector('canvas');"
        " return box && box.hasAttribute('_echarts_instance_') && box.dataset.drawn === '1' && c"
        " && c.width > 0 && c.height > 0 ? [c.width, c.height] : null;"))
    assert isinstance(size, list) and size[0] > 300 and size[1] > 200
    # What ECharts holds is the page's data: 8 days, a bar per day, zero on the days without ratings.
    opt = browser.execute_script(
        "const o = echarts.getInstanceByDom(document.getElementById('trend-chart')).getOption();"
        " return [o.xAxis[0].data, o.series.map(s => [s.type, s.data])];")
    labels, series = opt
    assert labels[0] == "2026-11-25" and labels[-1] == "2026-12-02" and len(labels) == 8
    assert series[0] == ["bar", [0, 3, 1, 0, 0, 4, 3, 5]]
    assert series[2][0] == "line" and series[2][1][0] is None            # no ratings: a gap, not 0 %
    # The table says the same, and the grain tabs work.
    cells = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#trend-table td.ratings")]
    assert cells == ["0", "3", "1", "0", "0", "4", "3", "5"]
    browser.find_element(By.ID, "grain-week").click()
    until(browser, "the weekly chart", lambda d: d.execute_script(
        "const b = document.getElementById('trend-chart'); const i = b && echarts.getInstanceByDom(b);"
        " return i ? i.getOption().xAxis[0].data.join(',') : null;") == "2026-W48,2026-W49")
    assert console_errors(browser) == []
