"""The provincial platform in a real headless Chromium (Debian's chromium + chromium-driver, Selenium), on
SQLite and PostgreSQL: each role logs in and sees its overview, opens a ranking, drills down to one
rating and sees its MAC verified, exports the dissatisfied list as Excel (read back with openpyxl), is
refused another hall's page, sees a new rating without a reload, and a phone's 375 px has no horizontal
scroll."""

from __future__ import annotations

import http.cookiejar
import io
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openpyxl
import pytest
from browser_helpers import click, log_in, no_horizontal_scroll, wait_text
from platform_helpers import Clock, Filler, fill, start
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from countersign.province.db import Database
from countersign.province.web import PlatformServer


@pytest.fixture
def platform(province_db: Database, tmp_path: Path) -> Iterator[tuple[PlatformServer, Filler]]:
    filler = fill(province_db)
    server = start(tmp_path, province_db, Clock())
    try:
        yield server, filler
    finally:
        server.stop()


@pytest.mark.parametrize(("name", "who", "own_row", "ratings"), [
    ("admin", "省公司 分析员", "#cities-合肥", "8"), ("hefei", "合肥市公司", "#halls-hf02", "6"),
    ("mgr-hf01", "合肥东 厅长", "#windows-1", "5")])
def test_each_role_logs_in_and_sees_its_overview(platform: tuple[PlatformServer, Filler], browser: WebDriver,
                                                 name: str, who: str, own_row: str, ratings: str) -> None:
    server, _ = platform
    browser.get(server.url + "/")
    assert browser.current_url.endswith("/login")
    log_in(browser, server.url, name)
    assert who in wait_text(browser, "#who", bool)
    click(browser, "#period-today")
    assert wait_text(browser, "#summary-total .ratings", bool) == ratings
    assert browser.find_elements(By.CSS_SELECTOR, own_row)
    # what is beyond the scope is not on the page at all
    body = browser.find_element(By.TAG_NAME, "body").text
    if name != "admin":
        assert "芜湖" not in body and "wh01" not in body
    if name == "mgr-hf01":
        assert "hf02" not in body and not browser.find_elements(By.CSS_SELECTOR, "#halls")
    # a ranking opens from the navigation
    browser.find_element(By.LINK_TEXT, "排名 Rankings").click()
    wait_text(browser, "h1", lambda t: "排名" in t)
    assert browser.find_elements(By.CSS_SELECTOR, "table.ranking")


def test_drill_down_to_one_rating_and_see_it_verified(platform: tuple[PlatformServer, Filler],
                                                      browser: WebDriver) -> None:
    server, _ = platform
    log_in(browser, server.url, "admin")
    browser.find_element(By.LINK_TEXT, "逐级查看 Drill-down").click()
    click(browser, "#period-today")
    click(browser, "#units-合肥 a")
    assert "合肥" in wait_text(browser, "#title", bool)
    click(browser, "#units-hf01 a")
    assert "hf01" in wait_text(browser, "#title", bool)
    assert wait_text(browser, "#units-1 .satisfaction", bool) == "75.0%"
    click(browser, "#units-1 a")
    click(browser, "#units-10001 a")
    assert "10001" in wait_text(browser, "#title", bool)
    rows = browser.find_elements(By.CSS_SELECTOR, "#ratings tr.rating")
    assert len(rows) == 4
    bad = browser.find_element(By.CSS_SELECTOR, "#ratings tr.rating.bad a.open")
    bad.click()
    assert wait_text(browser, "#mac", bool).startswith("已验证 verified")
    assert "不满意" in browser.find_element(By.ID, "score").text
    assert "10001" in browser.find_element(By.ID, "clerk").text
    assert "hf01/" in browser.find_element(By.ID, "gateway").text


def test_the_dissatisfied_list_exported_as_excel(platform: tuple[PlatformServer, Filler],
                                                 browser: WebDriver) -> None:
    server, _ = platform
    log_in(browser, server.url, "hefei")
    browser.find_element(By.LINK_TEXT, "不满意评价 Dissatisfied").click()
    assert wait_text(browser, "#count", bool) == "2"          # 合肥's two: hf01's 不满意 and hf02's
    href = browser.find_element(By.CSS_SELECTOR, ".export-xlsx").get_attribute("href")
    assert href is not None
    # the file as the browser's session downloads it
    jar = http.cookiejar.CookieJar()
    for c in browser.get_cookies():
        jar.set_cookie(http.cookiejar.Cookie(0, c["name"], c["value"], None, False, "127.0.0.1", False, False,
                                             "/", True, False, None, False, None, None, {}))
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(href, timeout=20) as r:
        assert r.headers["Content-Disposition"].startswith('attachment; filename="dissatisfied-')
        data = r.read()
    ws = openpyxl.load_workbook(io.BytesIO(data)).active
    assert ws is not None
    rows = [r for r in ws.iter_rows(values_only=True) if any(v is not None for v in r)]
    assert rows[0][0] == "不满意评价 Dissatisfied ratings"
    meta = {r[0]: r[1] for r in rows if r[1] is not None and r[0] != "编号 ID"}
    assert meta["生成人 Made by"].startswith("hefei") and "期间 Period" in meta
    head = next(i for i, r in enumerate(rows) if r[0] == "编号 ID")
    assert sorted(r[2] for r in rows[head + 1:]) == ["hf01", "hf02"]
    assert {r[7] for r in rows[head + 1:]} == {"不满意"}


def test_a_hall_user_is_refused_another_halls_page(platform: tuple[PlatformServer, Filler],
                                                   browser: WebDriver) -> None:
    server, _ = platform
    log_in(browser, server.url, "mgr-hf01")
    browser.get(server.url + "/drill/hall/hf01")
    assert "hf01" in wait_text(browser, "#title", bool)
    browser.get(server.url + "/drill/hall/hf02")
    assert wait_text(browser, "#error-title", bool) == "未找到 Not found"
    assert "合肥西" not in browser.find_element(By.TAG_NAME, "body").text
    browser.get(server.url + "/drill")                  # the top of the drill-down is their own hall
    assert "hf01" in wait_text(browser, "#title", bool)


def test_a_new_rating_appears_without_a_reload(platform: tuple[PlatformServer, Filler],
                                               browser: WebDriver) -> None:
    server, filler = platform
    log_in(browser, server.url, "mgr-hf01")
    click(browser, "#period-today")
    assert wait_text(browser, "#windows-2 .ratings", bool) == "1"
    browser.execute_script("window.notReloaded = true;")
    filler.rating("hf01", 2, "10002", 4)
    assert wait_text(browser, "#windows-2 .ratings", lambda t: t == "2") == "2"
    assert browser.find_element(By.CSS_SELECTOR, "#windows-2 .satisfaction").text == "100.0%"
    assert browser.execute_script("return window.notReloaded === true;")


def test_a_phone_width_has_no_horizontal_scroll(platform: tuple[PlatformServer, Filler],
                                                browser: WebDriver) -> None:
    server, _ = platform
    log_in(browser, server.url, "admin")
    browser.set_window_size(375, 800)
    for path in ("/?period=today", "/drill/hall/hf01/window/1/clerk/10001?period=today", "/dissatisfied",
                 "/ratings/1", "/audit", "/users"):
        browser.get(server.url + path)
        wait_text(browser, "h1", bool)
        no_horizontal_scroll(browser)
