"""What the hall page counts, from the store's rows: today in the hall's time zone, 满意率 (基本满意 and
better, as the province counts it), 参评率 (rated / ended prompts), per window and clerk; and the
hall-manager accounts' CLI."""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

from conftest import make_keystore

from countersign.gateway.hallview import HallView
from countersign.gateway.store import RatingRecord, Store
from countersign.gateway.users import Users
from countersign.protocol.context import Context

SHANGHAI = ZoneInfo("Asia/Shanghai")
A = "hf01-w01"


def ms(*args: int) -> int:
    return int(dt.datetime(*args, tzinfo=SHANGHAI).timestamp() * 1000)


def test_today_is_the_halls_local_day_with_satisfaction_and_participation(tmp_path: Path) -> None:
    now = ms(2026, 12, 2, 0, 40)           # 00:40 in Shanghai is still 12-01 in UTC
    store = Store(tmp_path / "gw.db", lambda: now)
    ks = make_keystore(devices=2)
    seq = iter(range(1, 100))

    def outcome(c: object, received: int, clerk: str, score: int | None, prompt: int = 0) -> None:
        ctx = Context("1", clerk, 1, None, None, {"10001": "张三", "10002": "李四"}[clerk])
        store.store_rating(c, RatingRecord(  # type: ignore[arg-type]
            device=A, epoch=1, seq=next(seq), kind="rating" if score is not None else "no-rating",
            score=score, scale=4 if score is not None else None, prompt=prompt, press_time=None, mono_ms=1,
            boot=1, delay_ms=1, received_ms=received, ctx=ctx, msg=os.urandom(16)))

    try:
        with store.transaction() as c:
            outcome(c, ms(2026, 12, 1, 23, 50), "10001", 1)        # yesterday, local: not counted
            outcome(c, ms(2026, 12, 2, 0, 10), "10001", 4)         # 非常满意
            outcome(c, ms(2026, 12, 2, 0, 11), "10001", 3)         # 满意
            outcome(c, ms(2026, 12, 2, 0, 12), "10002", 1)         # 不满意 (基本满意 would count)
            p = [store.insert_prompt(c, A, Context("1", k, 1, f"t{i}", ms(2026, 12, 2, 0, 20 + i), None), 20)
                 for i, k in enumerate(("10001", "10001", "10002"))]
            outcome(c, ms(2026, 12, 2, 0, 20, 10), "10001", 4, prompt=p[0])    # rated
            outcome(c, ms(2026, 12, 2, 0, 21, 25), "10001", None, prompt=p[1])  # no rating
            # p[2] (10002) has no outcome and is long past its timeout: ended, not rated
            store.insert_prompt(c, A, Context("1", "10002", 1, "open", now - 5000, None), 20)   # still open
        view = HallView(store, lambda: ks, lambda: 7, lambda: now, SHANGHAI)
        today = view.today()
        assert today["day"] == dt.date(2026, 12, 2)
        total = today["total"]
        assert (total.ratings, total.satisfied, total.ended, total.rated) == (4, 3, 3, 1)
        assert total.satisfaction == 0.75 and total.participation == 1 / 3
        clerks = {k: (name, t.ratings, t.satisfaction, t.participation) for k, name, t in today["clerks"]}
        assert clerks == {"10001": ("张三", 3, 1.0, 0.5), "10002": ("李四", 1, 0.0, 0.0)}
        assert today["windows"]["1"].ratings == 4 and "2" not in today["windows"]
        assert [w["window"] for w in view.windows()] == ["1", "2"]
    finally:
        store.close()


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "countersign.cli", "gateway", "user", *args], input=stdin,
                          capture_output=True, text=True, timeout=60, check=False)


def test_user_add_list_remove(tmp_path: Path) -> None:
    f = tmp_path / "users.json"
    r = cli("add", "--users", str(f), "--name", "wang.li", stdin="a long password\n")
    assert r.returncode == 0, r.stderr
    assert "a long password" not in r.stdout + r.stderr
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert "a long password" not in f.read_text()
    assert Users(f).verify("wang.li", "a long password") and not Users(f).verify("wang.li", "a long passwor")
    pw = tmp_path / "pw"
    pw.write_text("another password\n")
    assert cli("add", "--users", str(f), "--name", "zhao", "--password-file", str(pw)).returncode == 0
    again = cli("add", "--users", str(f), "--name", "zhao", stdin="yet another one\n")
    assert again.returncode == 2 and "exists" in again.stderr
    short = cli("add", "--users", str(f), "--name", "li", stdin="short\n")
    assert short.returncode == 2 and "password" in short.stderr
    bad = cli("add", "--users", str(f), "--name", "li\nforged", stdin="a long password\n")
    assert bad.returncode == 2 and "name" in bad.stderr
    listed = cli("list", "--users", str(f))
    assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == ["wang.li", "zhao"]
    assert cli("remove", "--users", str(f), "--name", "zhao").returncode == 0
    assert Users(f).names() == ["wang.li"]
    assert cli("remove", "--users", str(f), "--name", "zhao").returncode == 2
