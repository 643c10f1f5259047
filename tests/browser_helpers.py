"""Debian's headless Chromium for the page tests (hall page, platform), driven by Selenium.

One way to start it (the flags a closed network needs: no background fetches, no first-run, a throw-away
profile) and the waits every page test needs: a fragment swapped by htmx between finding an element and
reading it is one more try, not a failure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from platform_helpers import PASSWORD
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@contextmanager
def chromium(tmp_path: Path, *, console: bool = False) -> Iterator[WebDriver]:
    """A headless Chromium; ``console=True`` keeps the browser console (CSP violations land there)."""
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.fail(f"{CHROMIUM} or {CHROMEDRIVER} is missing: `make test` installs Debian's chromium and "
                    "chromium-driver (or: sudo apt-get install chromium chromium-driver)")
    opts = Options()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1280,900"):
        opts.add_argument(arg)
    if console:
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def wait_text(driver: WebDriver, css: str, predicate: Callable[[str], bool], timeout: float = 25) -> str:
    def check(d: WebDriver) -> str | None:
        els = d.find_elements(By.CSS_SELECTOR, css)
        text = els[0].text if els else None
        return text if text is not None and predicate(text) else None

    wait = WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,))
    got: str = wait.until(check, f"no {css} as expected")
    return got


def click(driver: WebDriver, css: str) -> None:
    WebDriverWait(driver, 20, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: d.find_element(By.CSS_SELECTOR, css).click() or True, f"no {css} to click")


def log_in(driver: WebDriver, base: str, name: str, password: str = PASSWORD) -> None:
    """Log in to the provincial platform at ``base`` through its form, as a person does."""
    driver.get(base + "/login")
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "login").click()
    wait_text(driver, "#who", bool)


def no_horizontal_scroll(driver: WebDriver) -> None:
    """The page fits the phone-sized window it is shown in (a hall manager's phone)."""
    width = driver.execute_script("return window.innerWidth;")
    assert width <= 400, f"the window is {width} px wide, not a phone's"
    scroll = driver.execute_script("return document.documentElement.scrollWidth;")
    assert scroll <= width, f"{driver.current_url} is {scroll} px wide in a {width} px window"
