"""Test helpers for the platform's pages (test_46, test_47): a province database filled with real
ratings (each a keypad's real COSE_Mac0 under the key in the devices table), the halls of two cities,
accounts of each role, and the web app served by uvicorn on a free port."""

from __future__ import annotations

import hashlib
import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

from countersign.protocol import cose, messages
from countersign.province import users
from countersign.province.db import Conn, Database
from countersign.province.migrations import upgrade
from countersign.province.period import rating_day
from countersign.province.web import PlatformServer, create_app
from countersign.province.web_config import WebConfig

TZ = ZoneInfo("Asia/Shanghai")
# 2026-12-02 10:00 Beijing time (a Wednesday): "today", in "this week" (from Monday 11-30), "this month".
NOW_MS = 1_796_176_800_000
PASSWORD = "correct horse battery staple"
# (hall, name, city): two halls in 合肥, one in 芜湖.
HALLS = (("hf01", "合肥东营业厅", "合肥"), ("hf02", "合肥西营业厅", "合肥"),
         ("wh01", "芜湖中心营业厅", "芜湖"))
ACCOUNTS = (("admin", "省公司 分析员", "province", None), ("hefei", "合肥市公司", "city", "合肥"),
            ("mgr-hf01", "合肥东 厅长", "hall", "hf01"), ("mgr-wh01", "芜湖 厅长", "hall", "wh01"))


def key_of(device: str) -> bytes:
    return hashlib.sha256(b"test key " + device.encode()).digest()


class Clock:
    """The app's clock, moved by the test (sessions' expiry, periods, audit rows)."""

    def __init__(self, ms: int = NOW_MS) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


@dataclass
class Filler:
    """Writes rows as the receiver stores them: batches, prompts, ratings (with real MACs)."""

    db: Database
    seqs: dict[str, int] = field(default_factory=dict)
    batch_no: int = 0
    prompt_no: int = 0

    def setup(self, conn: Conn) -> None:
        for hall, name, city in HALLS:
            conn.execute("INSERT INTO halls (hall, name, city) VALUES (?, ?, ?)", (hall, name, city))
            for w in (1, 2):
                device = f"{hall}-w{w:02d}"
                conn.execute('INSERT INTO devices (device, hall, key, epoch, "window", scale, source,'
                             " changed_ms) VALUES (?, ?, ?, 1, ?, 4, 'registry', ?)",
                             (device, hall, key_of(device), str(w), NOW_MS))

    def rating(self, hall: str, window: int, clerk: str | None, score: int | None, *, service: int = 2,
               press_s: int | None = NOW_MS // 1000 - 600, invite: bool = False, scale: int = 4,
               txn: str | None = None) -> int:
        """One outcome (score None: a no-rating) in its own batch, with its prompt record unless opened by
        the invite key; returns ratings.id."""
        device = f"{hall}-w{window:02d}"
        seq = self.seqs.get(device, 0) + 1
        self.seqs[device] = seq
        self.batch_no += 1
        prompt = 0
        if not invite:
            self.prompt_no += 1
            prompt = self.prompt_no
        received_ms = (press_s * 1000 if press_s is not None else NOW_MS - 300_000) + 2_000
        if score is None:
            msg: messages.Message = messages.NoRating(epoch=1, seq=seq, prompt=prompt, time=press_s, mono=5,
                                                      delay=20_000, boot=1)
        else:
            msg = messages.Rating(epoch=1, seq=seq, score=score, scale=scale, prompt=prompt, time=press_s,
                                  mono=1000 + seq, delay=1500, boot=1)
        mac = cose.mac0_encode(key_of(device), device.encode(), msg.encode())
        txn = txn or f"T{self.batch_no:05d}"
        day = rating_day(press_s, received_ms, TZ)
        with self.db.connect() as conn, conn.transaction():
            conn.execute("INSERT INTO batches (hall, batch, created_ms, received_ms, entries, stored,"
                         " duplicates, rejected, ack) VALUES (?, ?, ?, ?, 1, 1, 0, '[]', ?)",
                         (hall, self.batch_no, received_ms + 100, received_ms + 500, b"ack"))
            if prompt:
                conn.execute('INSERT INTO prompts (hall, prompt, device, "window", clerk, service, txn,'
                             " opened_ms, timeout, batch_id, day) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 60, ?, ?)",
                             (hall, prompt, device, str(window), clerk, service, txn, received_ms - 10_000,
                              self.batch_no, day))
            rid = conn.scalar(
                "INSERT INTO ratings (device, epoch, seq, kind, score, scale, prompt, press_s, delay_ms,"
                ' boot, hall, "window", clerk, service, txn, prompt_ms, received_ms, stored_ms, batch_hall,'
                " batch_id, cose, digest, day) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
                " RETURNING id",
                (device, 1, seq, "rating" if score is not None else "no-rating", score,
                 scale if score is not None else None, prompt, press_s, 1500, 1, hall, str(window), clerk,
                 service if not invite else 0, txn if not invite else None,
                 received_ms - 10_000 if not invite else None, received_ms, received_ms + 600, hall,
                 self.batch_no, mac, hashlib.sha256(mac).digest(), day))
        return int(rid)


def fill(db: Database) -> Filler:
    """The schema, halls, keypads, accounts, and a day's ratings in each hall."""
    upgrade(db, TZ)
    f = Filler(db)
    with db.connect() as conn:
        with conn.transaction():
            f.setup(conn)
        for username, name, role, scope in ACCOUNTS:
            users.add(conn, username, name, PASSWORD, role, scope, actor="test", now_ms=NOW_MS)
        conn.execute("INSERT INTO keypad_status (device, hall, seen_ms, online, reported_ms)"
                     " VALUES ('hf01-w01', 'hf01', ?, 1, ?)", (NOW_MS, NOW_MS))
    for score in (4, 3, 3, 1):
        f.rating("hf01", 1, "10001", score)
    f.rating("hf01", 2, "10002", 2, service=1)
    f.rating("hf01", 2, "10002", None)
    f.rating("hf02", 1, "20001", 1, service=4, txn="HF02-SECRET-TXN")
    f.rating("wh01", 1, "30001", 1, service=3, txn="WH01-SECRET-TXN")
    f.rating("wh01", 1, "30001", 4)
    return f


def web_config(tmp: Path, db: Database, **kw: float) -> WebConfig:
    return WebConfig(database=db, secret_file=tmp / "web.secret", timezone="Asia/Shanghai", port=0, **kw)


def start(tmp: Path, db: Database, clock: Clock, **kw: float) -> PlatformServer:
    cfg = web_config(tmp, db, **kw)
    return PlatformServer(create_app(cfg, now_ms=clock), "127.0.0.1", 0).start()


class Client:
    """A person's browser at the HTTP level: a cookie jar, the CSRF token of the last page read."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect)
        self.csrf = ""

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
        status, body, h = self.request("GET", path, headers=headers)
        text = body.decode("utf-8", "replace")
        m = re.search(r'name="csrf" value="([^"]+)"', text)
        if m:
            self.csrf = m.group(1)
        return status, text, h

    def raw(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        return self.request("GET", path)

    def post(self, path: str, form: dict[str, str], headers: dict[str, str] | None = None
             ) -> tuple[int, str, dict[str, str]]:
        status, body, h = self.request("POST", path, urllib.parse.urlencode(form).encode(), headers)
        return status, body.decode("utf-8", "replace"), h

    def request(self, method: str, path: str, data: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers or {})
        try:
            with self.opener.open(req, timeout=20) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def log_in(self, name: str, password: str = PASSWORD) -> int:
        self.get("/login")
        return self.post("/login", {"csrf": self.csrf, "name": name, "password": password})[0]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_a: object, **_k: object) -> None:
        return None


def iter_ids(text: str, prefix: str) -> Iterator[str]:
    yield from re.findall(rf'id="{prefix}-([^"]+)"', text)
