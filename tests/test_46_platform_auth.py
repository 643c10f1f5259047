"""The provincial platform at the HTTP level (uvicorn on a free port, urllib as the browser), on SQLite and
on a real PostgreSQL: log-in, the login limiter, sessions that expire (absolute and idle, the app's clock
injected) or end when the account changes, CSRF, who sees what (a hall manager editing a URL gets 404),
the figures, the chain of custody, exports and the audit log."""

from __future__ import annotations

import getpass
import io
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import openpyxl
import pytest
from platform_helpers import NOW_MS, PASSWORD, Client, Clock, Filler, fill, start

from countersign.province import users
from countersign.province.db import Database
from countersign.province.migrations import upgrade
from countersign.province.web import PlatformServer
from countersign.province.web_demo import serve_demo
from countersign.sim.broker import free_port

MINUTE = 60_000


@pytest.fixture
def platform(province_db: Database, tmp_path: Path) -> Iterator[tuple[PlatformServer, Filler, Clock]]:
    filler = fill(province_db)
    clock = Clock()
    server = start(tmp_path, province_db, clock, session_hours=8, idle_minutes=30)
    try:
        yield server, filler, clock
    finally:
        server.stop()


def text_of(html: str, element_id: str) -> str:
    """The text inside the element with that id (tags stripped), or "" if none."""
    m = re.search(rf'<(\w+)[^>]*\bid="{re.escape(element_id)}"[^>]*>(.*?)</\1>', html, re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", m.group(2))).strip() if m else ""


def cell(html: str, row_id: str, cls: str) -> str:
    m = re.search(rf'<tr id="{re.escape(row_id)}"[^>]*>(.*?)</tr>', html, re.S)
    assert m is not None, f"no row {row_id}"
    c = re.search(rf'<td class="{cls}">(.*?)</td>', m.group(1), re.S)
    assert c is not None, f"no {cls} in row {row_id}"
    return re.sub(r"<[^>]+>", "", c.group(1)).strip()


def rating_id(db: Database, txn: str) -> int:
    with db.connect() as conn:
        return int(conn.scalar("SELECT id FROM ratings WHERE txn = ?", (txn,)))


def audit_rows(db: Database, action: str) -> list[tuple[str, str]]:
    with db.connect() as conn:
        return [(r[0], r[1]) for r in conn.all("SELECT actor, target FROM audit_log WHERE action = ?"
                                               " ORDER BY id", (action,))]


def test_wrong_password_refused_right_one_accepted(platform: tuple[PlatformServer, Filler, Clock]) -> None:
    server, _, _ = platform
    c = Client(server.url)
    status, _, headers = c.get("/")
    assert status == 303 and headers["location"] == "/login"      # nothing shown before a log-in
    assert c.log_in("admin", "not the password") == 401
    assert c.log_in("nobody", PASSWORD) == 401                      # an unknown name: the same answer
    assert c.get("/")[0] == 303
    assert c.log_in("admin") == 303
    status, html, headers = c.get("/")
    assert status == 200 and "省公司 分析员" in text_of(html, "who")
    # the gateway's page's security headers, on every response
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-store"
    assert c.get("/static/platform.css")[2]["x-content-type-options"] == "nosniff"
    fresh = Client(server.url)
    fresh.get("/login")
    status, _, headers = fresh.post("/login", {"csrf": fresh.csrf, "name": "admin", "password": PASSWORD})
    cookie = headers["set-cookie"].lower()
    assert status == 303 and "httponly" in cookie and "samesite=strict" in cookie


def test_failed_log_ins_are_limited_per_account(platform: tuple[PlatformServer, Filler, Clock]) -> None:
    server, _, _ = platform
    c = Client(server.url)
    for _ in range(5):
        assert c.log_in("hefei", "guess-guess-guess") == 401
    c.get("/login")
    status, body, headers = c.post("/login", {"csrf": c.csrf, "name": "hefei", "password": PASSWORD})
    assert status == 429 and "尝试次数过多" in body and int(headers["retry-after"]) > 0
    # another account is not held up by these failures
    assert Client(server.url).log_in("admin") == 303


def test_a_session_ends_when_idle_and_after_its_hours(platform: tuple[PlatformServer, Filler, Clock]) -> None:
    server, _, clock = platform
    c = Client(server.url)
    assert c.log_in("admin") == 303
    # The overview's periodic refresh is not the person: it does not keep an idle session alive.
    for _ in range(3):
        clock.ms += 9 * MINUTE
        assert c.get("/overview/figures", {"X-Countersign-Poll": "1", "HX-Request": "true"})[0] == 200
    clock.ms += 4 * MINUTE     # 31 minutes since the last request of the person
    status, _, headers = c.get("/overview/figures", {"X-Countersign-Poll": "1", "HX-Request": "true"})
    assert status == 401 and headers["hx-redirect"] == "/login"
    assert c.get("/")[0] == 303

    clock.ms = NOW_MS
    assert c.log_in("admin") == 303
    # a person at work every 20 minutes stays logged in ... until 8 hours after the log-in
    for _ in range(23):
        clock.ms += 20 * MINUTE
        assert c.get("/")[0] == 200
    clock.ms += 21 * MINUTE    # 8 h 1 min after the log-in
    assert c.get("/")[0] == 303


def test_a_password_change_a_disable_or_a_removal_ends_the_sessions(
        platform: tuple[PlatformServer, Filler, Clock], province_db: Database) -> None:
    server, _, clock = platform
    c = Client(server.url)
    assert c.log_in("mgr-hf01") == 303 and c.get("/")[0] == 200
    with province_db.connect() as conn:
        users.passwd(conn, "mgr-hf01", "a new password 2026", actor="cli:test", now_ms=clock.ms)
    assert c.get("/")[0] == 303
    assert c.log_in("mgr-hf01") == 401                               # the old password is gone
    assert c.log_in("mgr-hf01", "a new password 2026") == 303 and c.get("/")[0] == 200

    with province_db.connect() as conn:
        users.disable(conn, "mgr-hf01", True, actor="cli:test", now_ms=clock.ms)
    assert c.get("/")[0] == 303 and c.log_in("mgr-hf01", "a new password 2026") == 401
    with province_db.connect() as conn:
        users.disable(conn, "mgr-hf01", False, actor="cli:test", now_ms=clock.ms)
    assert c.log_in("mgr-hf01", "a new password 2026") == 303 and c.get("/")[0] == 200

    with province_db.connect() as conn:
        users.remove(conn, "mgr-hf01", actor="cli:test", now_ms=clock.ms)
    assert c.get("/")[0] == 303
    assert [a for a in audit_rows(province_db, "user.passwd")] == [("cli:test", "mgr-hf01")]
    assert audit_rows(province_db, "user.remove") == [("cli:test", "mgr-hf01")]
    assert ("cli:test", "mgr-hf01") in audit_rows(province_db, "user.disable")


def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(
        platform: tuple[PlatformServer, Filler, Clock], province_db: Database) -> None:
    server, _, _ = platform
    c = Client(server.url)
    c.get("/login")
    # a log-in without the token: 403, no session, no audit row
    assert c.post("/login", {"name": "admin", "password": PASSWORD})[0] == 403
    assert c.post("/login", {"csrf": "not-the-token", "name": "admin", "password": PASSWORD})[0] == 403
    assert c.get("/")[0] == 303 and audit_rows(province_db, "login") == []
    assert c.log_in("admin") == 303
    assert audit_rows(province_db, "login") == [("admin", "admin")]
    # a log-out without the token: 403 and the session goes on
    assert c.post("/logout", {})[0] == 403
    assert c.post("/logout", {"csrf": "wrong"})[0] == 403
    assert c.get("/")[0] == 200
    # with the token in the header htmx sends, the same POST works
    assert c.post("/logout", {}, {"X-CSRF-Token": c.csrf})[0] == 303
    assert c.get("/")[0] == 303


def test_the_overview_counts_by_the_one_definition(platform: tuple[PlatformServer, Filler, Clock]) -> None:
    server, filler, _ = platform
    c = Client(server.url)
    assert c.log_in("admin") == 303
    html = c.get("/?period=today")[1]
    # 8 ratings (hf01 4,3,3,1 and 2; hf02 1; wh01 1 and 4) + 1 no-rating, 9 prompts: 5 of 8 satisfied
    row = "summary-total"
    assert [cell(html, row, k) for k in ("ratings", "satisfaction", "participation", "dissatisfied",
                                         "prompts", "keypads")] == ["8", "62.5%", "88.9%", "3", "9", "1/6"]
    assert [cell(html, "cities-合肥", k) for k in ("ratings", "satisfaction", "dissatisfied")] == \
        ["6", "66.7%", "2"]
    assert cell(html, "halls-wh01", "satisfaction") == "50.0%"
    # a hall with no rating today is counted and named
    with filler.db.connect() as conn:
        conn.execute("INSERT INTO halls (hall, name, city) VALUES ('wh02', '芜湖新区营业厅', '芜湖')")
    html = c.get("/?period=today")[1]
    assert cell(html, "cities-芜湖", "nodata") == "1" and "芜湖新区营业厅" in text_of(html, "nodata-today")
    # the hall manager sees their windows, not the other halls
    h = Client(server.url)
    assert h.log_in("mgr-hf01") == 303
    html = h.get("/?period=today")[1]
    assert [cell(html, "windows-1", k) for k in ("ratings", "satisfaction", "keypads")] == \
        ["4", "75.0%", "1/1"]
    assert cell(html, "windows-2", "participation") == "50.0%"
    assert "hf02" not in html and "wh01" not in html and 'id="cities' not in html


def test_a_hall_user_cannot_see_another_halls_data_by_editing_a_url(
        platform: tuple[PlatformServer, Filler, Clock], province_db: Database) -> None:
    server, _, _ = platform
    own, other = rating_id(province_db, "T00001"), rating_id(province_db, "HF02-SECRET-TXN")
    far = rating_id(province_db, "WH01-SECRET-TXN")
    h = Client(server.url)
    assert h.log_in("mgr-hf01") == 303
    # what is theirs works (so the refusals below are the scope's doing)
    for path in ("/drill/hall/hf01", "/drill/hall/hf01/window/1", "/drill/hall/hf01/window/1/clerk/10001",
                 f"/ratings/{own}", "/drill/hall/hf01?format=csv"):
        assert h.get(path)[0] == 200, path
    missing = h.get("/ratings/999999")
    assert missing[0] == 404
    for path in ("/drill/hall/hf02", "/drill/hall/hf02/window/1", "/drill/hall/hf02/window/1/clerk/20001",
                 f"/ratings/{other}", f"/ratings/{far}", "/drill/hall/hf02?format=xlsx",
                 "/drill/hall/hf02/window/1/clerk/20001?format=csv", f"/drill/city/{quote('合肥')}",
                 f"/drill/city/{quote('芜湖')}"):
        status, body, _ = h.get(path)
        # the same answer as for a rating that does not exist: nothing tells that it does
        assert status == 404 and text_of(body, "error-detail") == text_of(missing[1], "error-detail"), path
        assert "SECRET" not in body
    # the dissatisfied list filtered to another hall is empty, in the page and in its exports
    status, body, _ = h.get("/dissatisfied?hall=hf02&period=month")
    assert status == 200 and text_of(body, "count") == "0" and "HF02-SECRET-TXN" not in body
    for fmt in ("csv", "xlsx"):
        status, data, _ = h.raw(f"/dissatisfied?hall=hf02&format={fmt}")
        assert status == 200 and b"HF02-SECRET-TXN" not in data and b"hf02-w01" not in data
    body = h.get("/dissatisfied")[1]
    assert text_of(body, "count") == "1" and "SECRET" not in body
    assert h.get("/audit")[0] == 403                               # the audit log is the province's

    city = Client(server.url)
    assert city.log_in("hefei") == 303
    assert city.get("/drill/hall/hf02")[0] == 200 and city.get(f"/ratings/{other}")[0] == 200
    assert city.get("/drill/hall/wh01")[0] == 404 and city.get(f"/ratings/{far}")[0] == 404
    assert city.get(f"/drill/city/{quote('芜湖')}")[0] == 404
    body = city.get(f"/dissatisfied?city={quote('芜湖')}")[1]
    assert text_of(body, "count") == "0" and "WH01-SECRET-TXN" not in body


def test_the_drill_down_ends_at_a_rating_with_its_chain_of_custody(
        platform: tuple[PlatformServer, Filler, Clock], province_db: Database) -> None:
    server, filler, _ = platform
    unknown_time = filler.rating("hf01", 1, "10001", 1, press_s=None, txn="NO-CLOCK")
    invite = filler.rating("hf01", 1, None, 4, invite=True)
    c = Client(server.url)
    assert c.log_in("admin") == 303
    html = c.get("/drill")[1]
    assert '/drill/city/%E5%90%88%E8%82%A5' in html
    html = c.get("/drill/hall/hf01/window/1/clerk/10001?period=today")[1]
    ids = re.findall(r'id="rating-(\d+)"', html)
    assert str(unknown_time) in ids and len(ids) == 5
    page = c.get(f"/ratings/{unknown_time}")[1]
    assert text_of(page, "mac").startswith("已验证 verified")
    assert text_of(page, "press") == "时间未知 time unknown"
    assert "不满意" in text_of(page, "score") and text_of(page, "txn") == "NO-CLOCK"
    assert "接收时已验证 verified at receipt" in text_of(page, "gateway")
    assert "超时 timeout 60 s" in text_of(page, "prompt") and "电费缴纳" in text_of(page, "service")
    assert "邀评键 invite key" in text_of(c.get(f"/ratings/{invite}")[1], "prompt")
    # a row changed after receipt no longer matches its keypad's MAC, and the page says so
    with province_db.connect() as conn:
        conn.execute("UPDATE ratings SET score = 4 WHERE id = ?", (unknown_time,))
    mac = text_of(c.get(f"/ratings/{unknown_time}")[1], "mac")
    assert "不符" in mac and "score 1 signed, 4 stored" in mac


def test_exports_carry_the_period_the_filters_and_who_made_them(
        platform: tuple[PlatformServer, Filler, Clock]) -> None:
    server, _, _ = platform
    c = Client(server.url)
    assert c.log_in("admin") == 303
    status, data, headers = c.raw("/dissatisfied?format=xlsx&service=4&period=week")
    assert status == 200 and headers["content-type"].startswith("application/vnd.openxmlformats")
    assert re.fullmatch(r'attachment; filename="dissatisfied-\d{8}-\d{4}\.xlsx"',
                        headers["content-disposition"])
    ws = openpyxl.load_workbook(io.BytesIO(data)).active
    assert ws is not None
    rows = [tuple(r) for r in ws.iter_rows(values_only=True)]
    meta = {r[0]: r[1] for r in rows[1:8] if r and r[0]}
    assert "2026-11-30 ~ 2026-12-06" in meta["期间 Period"] and meta["筛选 service"] == "4"
    assert meta["生成人 Made by"].startswith("admin")
    head = rows.index(next(r for r in rows if r and r[0] == "编号 ID"))
    body = rows[head + 1:]
    assert [r[6] for r in body] == ["HF02-SECRET-TXN"]            # only the complaint (service 4)
    status, data, headers = c.raw("/?format=csv&table=halls&period=today")
    text = data.decode("utf-8")
    assert text.startswith("\ufeff") and "合肥东营业厅 (hf01),5,6,1,80.0%,83.3%,1,1/2,0" in text
    assert c.get("/dissatisfied?format=pdf")[0] == 400
    assert c.get("/?period=year")[0] == 400 and c.get("/dissatisfied?from=2026-13-01&to=2026-12-01")[0] == 400


def test_the_audit_log_shows_every_change(platform: tuple[PlatformServer, Filler, Clock],
                                          province_db: Database) -> None:
    server, _, clock = platform
    with province_db.connect() as conn:
        users.disable(conn, "mgr-wh01", True, actor="cli:ops", now_ms=clock.ms)
        with pytest.raises(users.UsersError):
            users.add(conn, "x-1", "X", PASSWORD, "hall", "no-such-hall", actor="cli:ops", now_ms=clock.ms)
        with pytest.raises(users.UsersError):
            users.add(conn, "admin", "again", PASSWORD, "province", None, actor="cli:ops", now_ms=clock.ms)
    c = Client(server.url)
    assert c.log_in("admin") == 303
    html = c.get("/audit")[1]
    actions = re.findall(r'<td class="action">([^<]*)</td>', html)
    assert actions[:2] == ["login", "user.disable"] and actions.count("user.add") == 4   # refused adds: none
    assert "cli:ops" in html


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "countersign.province.web_cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=60, check=False)


def test_accounts_from_the_command_line_audited_and_never_printed(province_db: Database,
                                                                  tmp_path: Path) -> None:
    fill(province_db)
    conf = tmp_path / "province.toml"
    conf.write_text(f'database = "{province_db.url}"\ntimezone = "Asia/Shanghai"\n'
                    '[web]\nsecret_file = "web.secret"\n', encoding="utf-8")
    secret = "a long secret for hf02"
    pw = tmp_path / "pw"
    pw.write_text(secret + "\n", encoding="utf-8")
    got = _cli("user", "add", "mgr-hf02", "--config", str(conf), "--role", "hall", "--scope", "hf02",
               "--name", "合肥西 厅长", "--password-file", str(pw))
    assert got.returncode == 0, got.stderr
    assert secret not in got.stdout + got.stderr
    # a scope that names no hall, or no password at hand: refused with one line, nothing added
    bad = _cli("user", "add", "typo", "--config", str(conf), "--role", "hall", "--scope", "hf99",
               "--password-file", str(pw))
    assert bad.returncode == 1 and "no hall 'hf99'" in bad.stderr and "Traceback" not in bad.stderr
    nopw = _cli("user", "add", "nopw", "--config", str(conf), "--role", "province", stdin="")
    assert nopw.returncode == 1 and "--password-file" in nopw.stderr
    listed = _cli("user", "list", "--db", province_db.url).stdout.splitlines()
    assert [ln.split("\t")[:4] for ln in listed if ln.startswith("mgr-hf02")] == [["mgr-hf02", "hall", "hf02",
                                                                                    "active"]]
    assert not any(ln.startswith(("typo", "nopw")) for ln in listed)
    actor = f"cli:{getpass.getuser()}"
    assert (actor, "mgr-hf02") in audit_rows(province_db, "user.add")
    assert _cli("user", "remove", "mgr-hf02", "--config", str(conf)).returncode == 0
    assert audit_rows(province_db, "user.remove") == [(actor, "mgr-hf02")]
    assert _cli("user", "remove", "mgr-hf02", "--config", str(conf)).returncode == 1

    # `province web` serves the platform until SIGINT; the session key is created 0600
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "countersign.province.web_cli", "web", "--config",
                             str(conf), "--port", str(port)], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert f"http://127.0.0.1:{port}" in line, line
        c = Client(f"http://127.0.0.1:{port}")
        assert c.get("/login")[0] == 200 and c.log_in("admin") == 303 and c.get("/")[0] == 200
        assert (tmp_path / "web.secret").stat().st_mode & 0o777 == 0o600
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_demo_serves_a_runs_database_with_a_log_in_per_role(province_db: Database,
                                                                tmp_path: Path) -> None:
    upgrade(province_db)
    filler = Filler(province_db)          # a run's database: ratings, no halls table rows, no accounts
    filler.rating("hf01", 1, "10001", 4, press_s=int(time.time()))
    filler.rating("hf01", 2, "10002", 1, press_s=int(time.time()))
    demo = serve_demo(province_db, tmp_path)
    try:
        passwords = dict(ln.split(" ", 1) for ln in demo.password_file.read_text().splitlines())
        assert demo.password_file.stat().st_mode & 0o777 == 0o600
        assert sorted(passwords) == ["demo-city", "demo-hall", "demo-province"]
        printed = "\n".join(demo.lines())
        assert demo.url in printed and not any(p in printed for p in passwords.values())
        for name in passwords:
            c = Client(demo.server.url)
            assert c.log_in(name, passwords[name]) == 303
            html = c.get("/?period=today")[1]
            assert cell(html, "summary-total", "ratings") == "2", name
    finally:
        demo.stop()


def test_accounts_page_changes_need_the_csrf_token_and_are_audited(
        platform: tuple[PlatformServer, Filler, Clock], province_db: Database) -> None:
    server, _, _ = platform
    admin = Client(server.url)
    assert admin.log_in("admin") == 303
    assert admin.get("/users")[0] == 200
    new = {"username": "mgr-hf02", "name": "合肥西 厅长", "role": "hall", "hall": "hf02",
           "password": "hf02 manager password"}
    # without the token, or with another session's: 403 and no account, no audit row
    assert admin.post("/users", new)[0] == 403
    other = Client(server.url)
    other.get("/login")
    assert admin.post("/users", {**new, "csrf": other.csrf})[0] == 403
    with province_db.connect() as conn:
        assert conn.scalar("SELECT COUNT(*) FROM users WHERE username = 'mgr-hf02'") == 0
    assert audit_rows(province_db, "user.add") == [("test", u) for u in ("admin", "hefei", "mgr-hf01",
                                                                         "mgr-wh01")]
    # a hall manager holding a good token is still not an administrator
    m = Client(server.url)
    assert m.log_in("mgr-hf01") == 303
    m.get("/")
    assert m.post("/users", {**new, "csrf": m.csrf})[0] == 403 and m.get("/users")[0] == 403
    # with the token: added, audited under the administrator's name; the new account logs in
    admin.get("/users")
    assert admin.post("/users", {**new, "csrf": admin.csrf})[0] == 303
    assert ("admin", "mgr-hf02") in audit_rows(province_db, "user.add")
    hf02 = Client(server.url)
    assert hf02.log_in("mgr-hf02", "hf02 manager password") == 303 and hf02.get("/drill/hall/hf02")[0] == 200
    # a bad scope is refused with the reason, nothing added
    status, body, _ = admin.post("/users", {**new, "username": "x", "hall": "", "csrf": admin.csrf})
    assert status == 400 and "needs a value" in body
    # disabling ends the account's session at once; an administrator cannot disable themself here
    assert admin.post("/users/mgr-hf02/disable", {"csrf": admin.csrf})[0] == 303
    assert hf02.get("/")[0] == 303
    assert ("admin", "mgr-hf02") in audit_rows(province_db, "user.disable")
    assert admin.post("/users/admin/disable", {"csrf": admin.csrf})[0] == 400
    assert admin.post("/users/mgr-hf02/frobnicate", {"csrf": admin.csrf})[0] == 404
    assert admin.post("/users/mgr-hf02/remove", {})[0] == 403
    assert admin.post("/users/mgr-hf02/remove", {"csrf": admin.csrf})[0] == 303
    assert audit_rows(province_db, "user.remove") == [("admin", "mgr-hf02")]
