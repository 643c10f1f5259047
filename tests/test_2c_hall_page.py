"""The hall manager's page in a real headless Chromium (Debian's chromium + chromium-driver, Selenium):
log-in, windows, a keypad's rating appearing without a reload, an alarm acknowledged, a phone's width,
and the CSRF check on every POST."""

from __future__ import annotations

import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_helpers import chromium, wait_text
from conftest import device_key, make_keystore
from gw_helpers import Device, rating, rows, start_gateway, write_config
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from test_2b_alarms import health

from countersign.gateway.api import create_app
from countersign.gateway.gateway import Gateway
from countersign.gateway.hallview import HallView
from countersign.gateway.hours import zone
from countersign.gateway.http import HttpLimits, HttpServer
from countersign.gateway.page import page_routes
from countersign.gateway.store import Store
from countersign.gateway.users import Users
from countersign.protocol.keystore import Keystore
from countersign.sim.broker import Mosquitto

A, KA = "hf01-w01", device_key(1)
USER, PASSWORD = "wang.li", "correct horse battery"


class Hall:
    def __init__(self, gw: Gateway, server: HttpServer, users: Path) -> None:
        self.gw, self.server, self.users = gw, server, users

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"


@pytest.fixture
def hall(tmp_path: Path, hall_broker: Callable[[Keystore], Mosquitto]) -> Iterator[dict[str, Any]]:
    ks = make_keystore(devices=2)
    broker = hall_broker(ks)
    users = tmp_path / "users.json"
    Users(users).add(USER, PASSWORD)
    cfg = write_config(tmp_path, ks, broker.port, users_path=users, alarm_check_s=0.2)
    gw = start_gateway(cfg)
    # The page as the gateway serves it: its own HTTP server, beside the counter API.
    dev = Device(broker.port, A, KA).start()
    try:
        yield {"hall": Hall(gw, gw.api, users), "device": dev, "tmp": tmp_path}
    finally:
        dev.stop()
        gw.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    with chromium(tmp_path) as driver:
        yield driver


def texts(driver: WebDriver, *css: str) -> list[str | None]:
    """Several elements' texts read in one script: one snapshot of the page, never stale between them."""
    got: list[str | None] = driver.execute_script(
        "return arguments[0].map(c => { const e = document.querySelector(c);"
        " return e ? e.innerText : null; });", list(css))
    return got


def log_in(driver: WebDriver, hall: Hall, password: str = PASSWORD) -> None:
    driver.get(hall.url + "/login")
    driver.find_element(By.ID, "name").clear()
    driver.find_element(By.ID, "name").send_keys(USER)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "login").click()


def test_log_in_refused_with_a_wrong_password_accepted_with_the_right_one(hall: dict[str, Any],
                                                                          browser: WebDriver) -> None:
    h: Hall = hall["hall"]
    browser.get(h.url + "/")
    assert browser.current_url.endswith("/login")          # nothing shown before a log-in
    assert browser.find_elements(By.CSS_SELECTOR, ".win") == []
    log_in(browser, h, "wrong password!")
    assert "用户名或密码错误" in wait_text(browser, "#login-error", bool)
    assert browser.find_elements(By.CSS_SELECTOR, ".win") == []
    log_in(browser, h)
    assert "窗口 1" in wait_text(browser, "#win-1 h2", bool)
    win2, ratings1 = texts(browser, "#win-2", "#win-1 .ratings")
    assert win2 is not None and "窗口 2" in win2 and "离线" in win2      # never seen: offline
    assert ratings1 == "0"


def test_a_keypad_rating_appears_without_a_reload(hall: dict[str, Any], browser: WebDriver) -> None:
    h: Hall = hall["hall"]
    dev: Device = hall["device"]
    log_in(browser, h)
    wait_text(browser, "#win-1 .ratings", lambda t: t == "0")
    browser.execute_script("window.notReloaded = true;")
    with h.gw.store.transaction() as c:
        Store.set_session(c, "1", "10001", "张三", h.gw.cfg.now_ms())
    dev.publish(health(A, KA, 1))
    dev.publish(rating(KA, A, 1, score=4, scale=4))       # 非常满意 from the invite key
    assert dev.wait_acked({1})
    assert wait_text(browser, "#win-1 .ratings", lambda t: t == "1") == "1"
    sat, clerk, state, fw, clerk_ratings = texts(browser, "#win-1 .satisfaction", "#win-1 .clerk",
                                                 "#win-1 .state", "#win-1 .fw", "#clerk-10001 .ratings")
    assert sat == "100.0%" and clerk is not None and "10001 张三" in clerk
    assert state is not None and "在线" in state and fw == "1.2.0" and clerk_ratings == "1"
    assert browser.execute_script("return window.notReloaded === true;")


def test_an_alarm_appears_and_is_acknowledged(hall: dict[str, Any], browser: WebDriver) -> None:
    h: Hall = hall["hall"]
    dev: Device = hall["device"]
    log_in(browser, h)
    wait_text(browser, "#alarm-count", lambda t: t == "0")
    dev.publish(health(A, KA, 1, stuck=0b1))
    wait_text(browser, ".alarm .kind", lambda t: t == "卡键")
    (aid,) = rows(h.gw, "SELECT id FROM alarms WHERE kind='stuck-key'")[0]
    browser.find_element(By.CSS_SELECTOR, f"#alarm-{aid} .ack-button").click()
    assert USER in wait_text(browser, f"#alarm-{aid} .ack", bool)
    assert rows(h.gw, "SELECT acked_by FROM alarms WHERE id=?", (aid,)) == [(USER,)]
    assert browser.find_elements(By.CSS_SELECTOR, f"#alarm-{aid} .ack-button") == []


def test_a_phone_width_has_no_horizontal_scroll(hall: dict[str, Any], browser: WebDriver) -> None:
    h: Hall = hall["hall"]
    with h.gw.store.transaction() as c:
        Store.set_session(c, "1", "10001", "欧阳娜娜娜", h.gw.cfg.now_ms())
        Store.raise_alarm(c, h.gw.cfg.now_ms(), "security", A, "conflicting message " + "x" * 120)
    log_in(browser, h)
    browser.set_window_size(375, 800)
    wait_text(browser, "#win-1 h2", bool)
    width = browser.execute_script("return window.innerWidth;")
    assert width <= 400, f"the window is {width} px wide, not a phone's"
    scroll = browser.execute_script("return document.documentElement.scrollWidth;")
    assert scroll <= width, f"the page is {scroll} px wide in a {width} px window"
    # one column: window 2's card is below window 1's, not beside it
    w1 = browser.find_element(By.ID, "win-1").rect
    w2 = browser.find_element(By.ID, "win-2").rect
    assert w2["y"] >= w1["y"] + w1["height"] and w2["x"] == w1["x"]


def _opener() -> tuple[urllib.request.OpenerDirector, http.cookiejar.CookieJar]:
    jar = http.cookiejar.CookieJar()
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar)), jar


def _post(opener: urllib.request.OpenerDirector, url: str, form: dict[str, str],
          headers: dict[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(), method="POST",
                                 headers=headers or {})
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _csrf_of(opener: urllib.request.OpenerDirector, url: str) -> str:
    with opener.open(url, timeout=10) as r:
        m = re.search(r'name="csrf" value="([^"]+)"', r.read().decode())
    assert m is not None
    return m.group(1)


def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(hall: dict[str, Any],
                                                                       browser: WebDriver) -> None:
    h: Hall = hall["hall"]
    with h.gw.store.transaction() as c:
        Store.raise_alarm(c, h.gw.cfg.now_ms(), "security", A, "conflict")
    (aid,) = rows(h.gw, "SELECT id FROM alarms")[0]
    log_in(browser, h)
    wait_text(browser, f"#alarm-{aid} .kind", bool)
    # From the logged-in browser itself: a POST with the session cookie but no token.
    status = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        f"fetch('/hall/alarms/{aid}/ack', {{method: 'POST', credentials: 'same-origin'}})"
        ".then(r => done(r.status));")
    assert status == 403
    # The same session with a wrong token, from outside the browser.
    opener, jar = _opener()
    for cookie in browser.get_cookies():
        jar.set_cookie(http.cookiejar.Cookie(0, cookie["name"], cookie["value"], None, False, "127.0.0.1",
                                             False, False, "/", True, False, None, False, None, None, {}))
    assert _post(opener, f"{h.url}/hall/alarms/{aid}/ack", {"csrf": "not-the-token"})[0] == 403
    assert _post(opener, f"{h.url}/hall/alarms/{aid}/ack", {})[0] == 403
    assert rows(h.gw, "SELECT acked_ms, acked_by FROM alarms WHERE id=?", (aid,)) == [(None, None)]
    # With the token the same POST works (so the refusals above were the token's doing).
    token = _csrf_of(opener, h.url + "/")
    assert _post(opener, f"{h.url}/hall/alarms/{aid}/ack", {"csrf": token})[0] == 200
    assert rows(h.gw, "SELECT acked_by FROM alarms WHERE id=?", (aid,)) == [(USER,)]


def test_log_in_without_csrf_refused_and_failures_rate_limited(hall: dict[str, Any]) -> None:
    h: Hall = hall["hall"]
    opener, _jar = _opener()
    assert _post(opener, h.url + "/login", {"name": USER, "password": PASSWORD})[0] == 403
    token = _csrf_of(opener, h.url + "/login")
    for _ in range(5):
        wrong = {"csrf": token, "name": USER, "password": "guess-guess"}
        assert _post(opener, h.url + "/login", wrong)[0] == 401
    # the sixth try waits, even with the right password
    status, body = _post(opener, h.url + "/login", {"csrf": token, "name": USER, "password": PASSWORD})
    assert status == 429 and "尝试次数过多" in body
    # the API beside the page keeps its own answers: a wrong method on an API path is still 405
    status, body = _post(opener, h.url + "/v1/status", {})
    assert status == 405


def test_removed_account_session_ends_and_no_accounts_shows_nothing(hall: dict[str, Any]) -> None:
    h: Hall = hall["hall"]
    opener, _jar = _opener()
    token = _csrf_of(opener, h.url + "/login")
    assert _post(opener, h.url + "/login", {"csrf": token, "name": USER, "password": PASSWORD})[0] == 200
    with opener.open(h.url + "/hall/board", timeout=10) as r:
        assert r.status == 200 and "窗口 1" in r.read().decode()
    Users(h.users).remove(USER)
    try:
        opener.open(h.url + "/hall/board", timeout=10)
        raise AssertionError("a removed account still sees the board")
    except urllib.error.HTTPError as e:
        assert e.code == 401 and e.headers["HX-Redirect"] == "/login"


def test_without_accounts_the_page_says_so_and_shows_nothing(hall: dict[str, Any]) -> None:
    h: Hall = hall["hall"]
    gw = h.gw
    view = HallView(gw.store, gw.keystore, gw.backlog, gw.cfg.now_ms, zone(gw.cfg.timezone))
    server = HttpServer(create_app(gw, gw.credentials, page_routes(view, None, b"k" * 32, gw.cfg.hall)),
                        "127.0.0.1", 0, HttpLimits(), None)
    server.start()
    try:
        opener, _jar = _opener()
        try:
            opener.open(f"http://127.0.0.1:{server.port}/login", timeout=10)
            raise AssertionError("a log-in form without accounts")
        except urllib.error.HTTPError as e:
            assert e.code == 503 and "未配置管理员账户" in e.read().decode()
        try:
            opener.open(f"http://127.0.0.1:{server.port}/hall/board", timeout=10)
            raise AssertionError("the board without accounts")
        except urllib.error.HTTPError as e:
            assert e.code == 401 and "窗口" not in e.read().decode()
    finally:
        server.stop()
