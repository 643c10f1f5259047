"""The README's screenshots of the provincial platform: the overview, a ranking and the trends, as a
province user sees them in Debian's headless Chromium, over a province database a simulator run left behind.

    .venv/bin/countersign sim province --halls 12 --devices 3 --per-device 25 --seed 3 --workdir /tmp/shots
    .venv/bin/python tools/screenshots.py /tmp/shots/province/province.db docs/img

The platform is served by ``serve_demo`` (the same demo accounts as ``make demo``) on a free local port;
Chinese labels need a CJK font in the browser (Debian's ``fonts-noto-cjk``, installed by ``make``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from countersign.province.web_demo import serve_demo

PAGES = (("/", "platform-overview.png", "h1"), ("/rankings?level=hall", "platform-ranking.png", "table"),
         ("/trends", "platform-trends.png", "h1"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("database", help="a province database (SQLite path or postgresql:// URL)")
    ap.add_argument("out", type=Path, help="folder the PNG files are written to")
    ap.add_argument("--width", type=int, default=1280)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        demo = serve_demo(args.database, Path(tmp))
        try:
            password = dict(line.split(" ", 1) for line in
                            demo.password_file.read_text(encoding="utf-8").splitlines())["demo-province"]
            opts = Options()
            opts.binary_location = "/usr/bin/chromium"
            for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--no-first-run", f"--user-data-dir={tmp}/chromium",
                        f"--window-size={args.width},900", "--hide-scrollbars"):
                opts.add_argument(arg)
            driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
            try:
                base = demo.server.url
                driver.get(base + "/login")
                driver.find_element(By.NAME, "name").send_keys("demo-province")
                driver.find_element(By.NAME, "password").send_keys(password)
                driver.find_element(By.ID, "login").click()
                WebDriverWait(driver, 20).until(lambda d: "/login" not in d.current_url)
                for path, name, ready in PAGES:
                    driver.get(base + path)

                    def shown(d: WebDriver, css: str = ready) -> bool:
                        return bool(d.find_elements(By.CSS_SELECTOR, css))

                    WebDriverWait(driver, 20).until(shown)
                    # Charts draw after load; the page is complete when ECharts has made its canvases.
                    WebDriverWait(driver, 20).until(lambda d: d.execute_script(
                        "return [...document.querySelectorAll('[data-chart]')]"
                        ".every(e => e.querySelector('canvas'))"))
                    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
                    driver.set_window_size(args.width, min(max(height, 600), 2400))
                    driver.save_screenshot(str(args.out / name))
                    print(f"{args.out / name}")
            finally:
                driver.quit()
        finally:
            demo.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
