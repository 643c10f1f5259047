"""Province reports on a generated data set; every expected figure is recomputed here from that data."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from province_helpers import entry, make_registry, no_rating, rating, signed_batch

from countersign.cli import main as countersign_main
from countersign.protocol import batch
from countersign.protocol.context import Context
from countersign.province import receiver
from countersign.province import store as st
from countersign.province.db import Database
from countersign.province.migrations import upgrade
from countersign.province.report import Range, build_report, render_text

CST = timezone(timedelta(hours=8))
DAY1 = datetime(2024, 3, 1, tzinfo=CST)
DAY2 = DAY1 + timedelta(days=1)
SCALES = {"hf01": 4, "hf02": 5}
# By hand, from the scheme's wording: 基本满意 and better are "satisfied".
SATISFIED_SCORES = {4: {2, 3, 4}, 5: {3, 4, 5}}
NAMES = {4: {4: "非常满意", 3: "满意", 2: "基本满意", 1: "不满意"},
         5: {5: "非常满意", 4: "满意", 3: "基本满意", 2: "不满意", 1: "非常不满意"}}
# Seqs each device "made" but whose message never reached the province: the reconciliation must find them.
LOST = {"hf01-w02": {5, 9, 10}, "hf02-w01": {3}}


@dataclass
class Event:
    hall: str
    device: str
    clerk: str | None
    service: int
    prompt: int
    opened_ms: int
    seq: int
    kind: str             # 'rating' / 'no-rating'
    score: int | None
    press_s: int | None   # None: device clock unknown
    received_ms: int

    @property
    def when_ms(self) -> int:
        return self.press_s * 1000 if self.press_s is not None else self.received_ms

    @property
    def delivered(self) -> bool:
        return self.seq not in LOST.get(self.device, set())


def generate(rnd: random.Random) -> list[Event]:
    events = []
    seqs: dict[str, int] = defaultdict(int)
    for hall in ("hf01", "hf02"):
        for prompt in range(1, 81):
            device = f"{hall}-w{rnd.randint(1, 3):02d}"
            seqs[device] += 1
            day = DAY1 if prompt <= 45 else DAY2
            opened = day + timedelta(hours=rnd.randint(9, 16), seconds=rnd.randint(0, 3000))
            opened_ms = int(opened.timestamp() * 1000)
            rated = rnd.random() < 0.8
            clock_known = rnd.random() < 0.9
            press_ms = opened_ms + rnd.randint(2000, 15000)
            events.append(Event(
                hall, device, rnd.choice(["c001", "c002", "c003", None]), rnd.choice([1, 2, 3, 4]), prompt,
                opened_ms, seqs[device], "rating" if rated else "no-rating",
                rnd.randint(1, SCALES[hall]) if rated else None,
                press_ms // 1000 if clock_known else None, press_ms + 300))
    return events


def load(db: Database, root: Path, events: list[Event]) -> None:
    """Feed the events through the receiver's own batch processing (signed batches, real MACs)."""
    registry, gateway_keys, province_key = make_registry(root, scales=SCALES)
    upgrade(db)
    conn = db.connect()
    by_hall: dict[str, list[batch.Entry]] = defaultdict(list)
    for e in events:
        by_hall[e.hall].append(batch.PromptEntry(
            e.prompt, e.device, Context(e.device[-1], e.clerk, e.service, f"t{e.prompt}", e.opened_ms), 20))
        if not e.delivered:
            continue
        key = registry.devices[e.device].key
        msg = (rating(key, e.device, e.seq, e.score, scale=SCALES[e.hall], prompt=e.prompt, time_s=e.press_s)
               if e.kind == "rating" and e.score is not None else
               no_rating(key, e.device, e.seq, prompt=e.prompt, time_s=e.press_s))
        by_hall[e.hall].append(entry(msg, window=e.device[-1], clerk=e.clerk, service=e.service,
                                     txn=f"t{e.prompt}", received_ms=e.received_ms, prompt_ms=e.opened_ms))
    for hall, entries in by_hall.items():
        for n, i in enumerate(range(0, len(entries), 25), start=1):
            s = st.Store(conn, 0)
            s.begin()
            res = receiver.process_message(s, registry, province_key, f"cs/1/h/{hall}/batch",
                                           signed_batch(gateway_keys[hall], hall, n, entries[i:i + 25]))
            s.commit()
            assert res.ack is not None and not res.rejected
    conn.close()


@dataclass(frozen=True)
class Window:
    """[start, end) in unix ms, computed here by hand from the CST day boundaries."""

    start_ms: int | None = None
    end_ms: int | None = None


ALL_TIME = Window()
DAY1_ONLY = Window(int(DAY1.timestamp() * 1000), int(DAY2.timestamp() * 1000))


def expected(events: list[Event], key: Callable[[Event], Any],
             rng: Window = ALL_TIME) -> dict[Any, dict[str, Any]]:
    def inside(ms: int) -> bool:
        return (rng.start_ms is None or ms >= rng.start_ms) and (rng.end_ms is None or ms < rng.end_ms)

    out: dict[Any, dict[str, Any]] = defaultdict(lambda: {"ratings": 0, "no_ratings": 0, "prompts": 0,
                                                          "satisfied": 0, "scores": defaultdict(int)})
    for e in events:
        if inside(e.opened_ms):
            out[key(e)]["prompts"] += 1
        if not e.delivered or not inside(e.when_ms):
            continue
        g = out[key(e)]
        if e.kind == "no-rating" or e.score is None:
            g["no_ratings"] += 1
            continue
        scale = SCALES[e.hall]
        g["ratings"] += 1
        g["satisfied"] += e.score in SATISFIED_SCORES[scale]
        g["scores"][(scale, NAMES[scale][e.score])] += 1
    return out


def check_groups(got: list[dict[str, Any]], want: dict[Any, dict[str, Any]],
                 key: Callable[[dict[str, Any]], Any]) -> None:
    assert {key(g) for g in got} == set(want)
    for g in got:
        w = want[key(g)]
        assert (g["ratings"], g["no_ratings"], g["prompts"]) == (w["ratings"], w["no_ratings"], w["prompts"])
        assert g["dissatisfied"] == w["ratings"] - w["satisfied"]
        sat = pytest.approx(w["satisfied"] / w["ratings"]) if w["ratings"] else None
        part = pytest.approx(w["ratings"] / w["prompts"]) if w["prompts"] else None
        assert (g["satisfaction_rate"], g["participation_rate"]) == (sat, part)
        scores = {(int(scale), name): n
                  for scale, names in g["scores"].items() for name, n in names.items() if n}
        assert scores == dict(w["scores"])


@pytest.fixture
def data(tmp_path: Path, province_db: Database) -> tuple[Database, list[Event]]:
    events = generate(random.Random(41))
    load(province_db, tmp_path, events)
    return province_db, events


def report_of(db: Database, *args: Any) -> dict[str, Any]:
    with db.connect() as conn:
        return build_report(conn, *args)


def test_figures_per_hall_clerk_service_and_device(data: tuple[Database, list[Event]]) -> None:
    db, events = data
    report = report_of(db)
    groups = report["groups"]
    check_groups(groups["hall"], expected(events, lambda e: e.hall), lambda g: g["hall"])
    check_groups(groups["clerk"], expected(events, lambda e: (e.hall, e.clerk)),
                 lambda g: (g["hall"], g["clerk"]))
    check_groups(groups["service"], expected(events, lambda e: e.service), lambda g: g["service"])
    check_groups(groups["device"], expected(events, lambda e: e.device), lambda g: g["device"])
    check_groups([report["total"]], expected(events, lambda e: "all"), lambda g: "all")
    assert {g["service"]: g["service_name"] for g in groups["service"]} == {
        1: "业扩报装", 2: "电费缴纳", 3: "咨询查询", 4: "投诉举报"}
    # 4-key hall and 5-key hall: each reports on its own scale, 非常不满意 exists only on the 5-key one.
    hall = {g["hall"]: g for g in groups["hall"]}
    assert set(hall["hf01"]["scores"]) == {"4"} and set(hall["hf02"]["scores"]) == {"5"}
    assert "非常不满意" in hall["hf02"]["scores"]["5"] and "非常不满意" not in hall["hf01"]["scores"]["4"]
    text = render_text(report)
    for needle in ("营业厅", "电费缴纳", "非常不满意", "hf01 c001", "对账"):
        assert needle in text


def test_date_range_uses_press_time_or_gateway_time(data: tuple[Database, list[Event]]) -> None:
    db, events = data
    report = report_of(db, ("hall",), Range("2024-03-01", "2024-03-01"))
    assert set(report["groups"]) == {"hall"}
    rng = DAY1_ONLY
    want = expected(events, lambda e: e.hall, rng)
    check_groups(report["groups"]["hall"], want, lambda g: g["hall"])
    day1_unknown_clock = [e for e in events if e.press_s is None and e.delivered and e.when_ms < rng.end_ms]
    assert day1_unknown_clock, "the data set must include ratings made while the device clock was unknown"
    assert sum(w["ratings"] + w["no_ratings"] for w in want.values()) < sum(e.delivered for e in events)


def test_reconciliation_finds_the_seqs_that_never_arrived(data: tuple[Database, list[Event]]) -> None:
    db, events = data
    rec = {(r["device"], r["epoch"]): r for r in report_of(db)["reconciliation"]}
    made: dict[str, list[int]] = defaultdict(list)
    for e in events:
        made[e.device].append(e.seq)
    assert set(rec) == {(d, 1) for d in made}
    for device, seqs in made.items():
        got = rec[(device, 1)]
        arrived = sorted(set(seqs) - LOST.get(device, set()))
        assert (got["count"], got["min_seq"], got["max_seq"]) == (len(arrived), arrived[0], arrived[-1])
        missing_inside = [s for s in range(arrived[0], arrived[-1] + 1) if s not in arrived]
        assert got["missing"] == len(missing_inside)
        assert [s for a, b in got["gaps"] for s in range(a, b + 1)] == missing_inside
    assert rec[("hf01-w02", 1)]["gaps"] == [[5, 5], [9, 10]]
    assert rec[("hf02-w01", 1)]["gaps"] == [[3, 3]]
    assert all(r["missing"] == 0 for (d, _), r in rec.items() if d not in LOST)


def test_cli_report_prints_json(data: tuple[Database, list[Event]], tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    db, events = data
    rc = countersign_main(["province", "report", "--db", db.url, "--json", "--by", "clerk",
                           "--from", "2024-03-01", "--to", "2024-03-01"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["groups"]) == {"clerk"} and out["range"] == {"from": "2024-03-01", "to": "2024-03-01"}
    check_groups(out["groups"]["clerk"], expected(events, lambda e: (e.hall, e.clerk), DAY1_ONLY),
                 lambda g: (g["hall"], g["clerk"]))
    # Text mode prints the table; a missing database or a bad day is a clear error, not a traceback.
    assert countersign_main(["province", "report", "--db", db.url, "--by", "service"]) == 0
    assert "服务项目" in capsys.readouterr().out
    assert countersign_main(["province", "report", "--db", str(tmp_path / "nope.db")]) == 2
    assert countersign_main(["province", "report", "--db", db.url, "--from", "2024-03-01T08:00"]) == 2
    assert "YYYY-MM-DD" in capsys.readouterr().err


def test_participation_counts_every_opened_prompt_invite_key_ones_too(tmp_path: Path,
                                                                       province_db: Database) -> None:
    """A keypad's invite key opens a prompt the counter system never recorded: its outcome is one opened
    prompt more, so 参评率 = ratings / opened prompts stays at most 100 % (it was 133 % here before)."""
    registry, gateway_keys, province_key = make_registry(tmp_path)
    upgrade(province_db)
    k = registry.devices["hf01-w01"].key
    opened = int(DAY1.timestamp() * 1000) + 10 * 3600_000
    ctx = Context("1", "c001", 2, "t", opened)
    entries: list[batch.Entry] = [batch.PromptEntry(n, "hf01-w01", replace(ctx, txn=f"t{n}"), 20)
                                  for n in (1, 2, 3)]
    press = opened // 1000 + 5
    entries += [entry(rating(k, "hf01-w01", 1, 4, prompt=1, time_s=press), txn="t1"),
                entry(rating(k, "hf01-w01", 2, 1, prompt=2, time_s=press), txn="t2"),
                entry(no_rating(k, "hf01-w01", 3, prompt=3, time_s=press), txn="t3"),
                # The invite key, twice rated and once walked away from: three prompts nobody recorded.
                entry(rating(k, "hf01-w01", 4, 3, time_s=press), service=0, txn=None, prompt_ms=None),
                entry(rating(k, "hf01-w01", 5, 2, time_s=press), service=0, txn=None, prompt_ms=None),
                entry(no_rating(k, "hf01-w01", 6, time_s=press), service=0, txn=None, prompt_ms=None)]
    with province_db.connect() as conn:
        s = st.Store(conn, 0)
        s.begin()
        res = receiver.process_message(s, registry, province_key, "cs/1/h/hf01/batch",
                                       signed_batch(gateway_keys["hf01"], "hf01", 1, entries))
        s.commit()
        assert res.counts["stored"] == 9 and not res.rejected and not res.held
        report = build_report(conn, ("hall", "device"), Range("2024-03-01", "2024-03-01"))
    # By hand: 4 ratings (2 prompted, 2 invited), 2 no-ratings, 3 + 3 opened prompts, 3 satisfied.
    for g in (report["total"], *report["groups"]["hall"], *report["groups"]["device"]):
        assert (g["ratings"], g["no_ratings"], g["prompts"], g["satisfied"]) == (4, 2, 6, 3)
        assert g["participation_rate"] == pytest.approx(4 / 6)
        assert g["satisfaction_rate"] == pytest.approx(3 / 4)
