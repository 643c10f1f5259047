"""Appeals (issue 13, Deliver 3) on SQLite and PostgreSQL: a hall manager appeals a dissatisfied rating,
the province decides. Upheld: the figures for assessment leave the rating out and nothing else changes
(the ordinary figures, the stored row, its COSE bytes, its MAC). Rejected: nothing changes. One open
appeal per rating; only the province decides; another hall neither appeals nor sees; appeals are never
deleted; bad input changes nothing. Then the same through the platform's pages over HTTP."""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from appeal_helpers import user
from jinja2 import Environment, FileSystemLoader
from platform_helpers import NOW_MS, TZ, Client, Clock, Filler, fill, start

from countersign.province import appeals
from countersign.province.appeals import AppealConflict, AppealError, AppealForbidden, AppealNotFound
from countersign.province.assessment import assessed_figures
from countersign.province.custody import custody
from countersign.province.db import Conn, Database, IntegrityError
from countersign.province.figures import Figures, Filter, figures_by, total
from countersign.province.scope import Scope
from countersign.province.web import PlatformServer

HF01 = Scope("hall", "hf01")
TODAY = "2026-12-02"


def bad_rating(conn: Conn, hall: str) -> int:
    """The hall's one 不满意 rating of platform_helpers.fill."""
    rid = conn.scalar("SELECT id FROM ratings WHERE hall = ? AND kind = 'rating' AND score = 1", (hall,))
    assert rid is not None
    return int(rid)


def stored(conn: Conn, rid: int) -> tuple[Any, ...]:
    row = conn.one("SELECT * FROM ratings WHERE id = ?", (rid,))
    return tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)


def figs(conn: Conn, scope: Scope = HF01, *, assessment: bool = False) -> dict[str, Any]:
    f: Figures = total(conn, Filter(scope, TODAY, TODAY, assessment=assessment))
    return f.as_json()


def audit_actions(conn: Conn) -> list[tuple[str, str, dict[str, Any]]]:
    return [(str(a), str(t), json.loads(d)) for a, t, d in conn.all(
        "SELECT actor, action, detail FROM audit_log WHERE action LIKE 'appeal.%' ORDER BY id")]


@pytest.fixture
def filled(province_db: Database) -> Iterator[tuple[Filler, Conn]]:
    filler = fill(province_db)
    with province_db.connect() as conn:
        yield filler, conn


def test_an_upheld_appeal_changes_the_assessment_figures_not_the_rating(filled: tuple[Filler, Conn]) -> None:
    _, conn = filled
    rid = bad_rating(conn, "hf01")
    before_row, before_plain = stored(conn, rid), figs(conn)
    assert figs(conn, assessment=True) == before_plain        # no appeal: the two are the same
    assert before_plain["ratings"] == 5 and before_plain["dissatisfied"] == 1 and before_plain["prompts"] == 6

    mgr, admin = user(conn, "mgr-hf01"), user(conn, "admin")
    with conn.transaction():
        a = appeals.file(conn, mgr, rid, "misoperation",
                         "顾客误按了不满意键，已电话回访确认 pressed by mistake", NOW_MS)
    assert a.state == "pending" and a.hall == "hf01" and a.filed_by == "mgr-hf01"
    assert figs(conn, assessment=True) == before_plain        # pending: still counted
    with conn.transaction():
        decided = appeals.decide(conn, admin, a.id, "upheld",
                                 "回访录音证实为误操作 the call-back recording shows it", NOW_MS + 1000)
    assert decided.state == "upheld" and decided.decided_by == "admin"

    after = figs(conn, assessment=True)
    assert after["ratings"] == 4 and after["dissatisfied"] == 0 and after["satisfaction_rate"] == 1.0
    # its prompt goes with it: participation is not lowered by a successful appeal
    assert after["prompts"] == 5 and after["participation_rate"] == pytest.approx(4 / 5)
    assert figs(conn) == before_plain                         # the ordinary figures do not change
    assert total(conn, Filter()).ratings == 8                 # every hall, every stored rating
    # the rating stays stored, byte for byte, and its MAC still verifies
    assert stored(conn, rid) == before_row
    chain = custody(conn, rid, TZ)
    assert chain["mac_ok"] is True
    standing = appeals.appeal_of(conn, rid)
    assert standing is not None and standing.excluded and standing.decision is not None
    assert "回访录音" in standing.decision
    # the side-by-side report shows the difference for hf01 only
    report = {c.hall: c for c in appeals.compare(conn, Scope("province"), TODAY, TODAY)}
    assert report["hf01"].excluded == 1 and report["hf01"].stored.dissatisfied == 1
    assert report["hf01"].assessed.dissatisfied == 0
    assert report["wh01"].excluded == 0
    assert report["wh01"].assessed.as_json() == report["wh01"].stored.as_json()
    # the assessment (part D) counts the same figures as figures.py's assessment option
    by_hall = figures_by(conn, ("hall",), Filter(Scope("province"), TODAY, TODAY, assessment=True))
    theirs, excluded = assessed_figures(conn, ("hall",), Filter(Scope("province"), TODAY, TODAY))
    assert {k: v.as_json() for k, v in theirs.items()} == {k: v.as_json() for k, v in by_hall.items()}
    assert excluded == {("hf01",): 1}
    # each step is in the audit log, with who did it
    acts = audit_actions(conn)
    assert [(actor, action) for actor, action, _ in acts] == [("mgr-hf01", "appeal.file"),
                                                              ("admin", "appeal.decide")]
    assert acts[0][2]["rating"] == rid and acts[1][2]["outcome"] == "upheld"


def test_a_rejected_appeal_changes_nothing_and_the_hall_may_appeal_again(filled: tuple[Filler, Conn]) -> None:
    _, conn = filled
    rid = bad_rating(conn, "hf01")
    before = figs(conn)
    with conn.transaction():
        a = appeals.file(conn, user(conn, "mgr-hf01"), rid, "malicious", "该客户多次无理投诉 repeated abuse",
                         NOW_MS)
        appeals.decide(conn, user(conn, "admin"), a.id, "rejected", "依据不足 not enough evidence", NOW_MS)
    assert figs(conn, assessment=True) == before == figs(conn)
    standing = appeals.appeal_of(conn, rid)
    assert standing is not None and standing.state == "rejected" and not standing.excluded
    with conn.transaction():
        again = appeals.file(conn, user(conn, "mgr-hf01"), rid, "malicious", "补充了监控录像 CCTV added",
                             NOW_MS)
    assert again.id != a.id and [x.state for x in appeals.history(conn, rid)] == ["rejected", "pending"]
    # a decided appeal is not decided again
    with pytest.raises(AppealConflict), conn.transaction():
        appeals.decide(conn, user(conn, "admin"), a.id, "upheld", "changed my mind", NOW_MS)


def test_one_open_appeal_per_rating(filled: tuple[Filler, Conn]) -> None:
    _, conn = filled
    rid = bad_rating(conn, "hf01")
    with conn.transaction():
        a = appeals.file(conn, user(conn, "mgr-hf01"), rid, "misoperation", "pressed by mistake", NOW_MS)
    with pytest.raises(AppealConflict, match="already has appeal"), conn.transaction():
        appeals.file(conn, user(conn, "hefei"), rid, "malicious", "another try", NOW_MS)
    with conn.transaction():
        appeals.decide(conn, user(conn, "admin"), a.id, "upheld", "misoperation shown", NOW_MS)
    with pytest.raises(AppealConflict), conn.transaction():
        appeals.file(conn, user(conn, "mgr-hf01"), rid, "misoperation", "once more", NOW_MS)
    # the database itself refuses a second open one, whatever the code above it does
    with pytest.raises(IntegrityError), conn.transaction():
        conn.execute("INSERT INTO appeals (rating, hall, reason, evidence, filed_ms, filed_by)"
                     " VALUES (?, 'hf01', 'malicious', 'x', 1, 'x')", (rid,))
    assert conn.scalar("SELECT COUNT(*) FROM appeals") == 1


def test_only_the_province_decides(filled: tuple[Filler, Conn]) -> None:
    _, conn = filled
    rid = bad_rating(conn, "hf01")
    with conn.transaction():
        a = appeals.file(conn, user(conn, "mgr-hf01"), rid, "not-our-customer", "not a customer of ours",
                         NOW_MS)
    for name in ("mgr-hf01", "hefei"):
        with pytest.raises(AppealForbidden), conn.transaction():
            appeals.decide(conn, user(conn, name), a.id, "upheld", "I decide it myself", NOW_MS)
    got = appeals.get(conn, Scope("province"), a.id)
    assert got.state == "pending" and got.decided_by is None
    assert [act for _, act, _ in audit_actions(conn)] == ["appeal.file"]


def test_another_hall_neither_appeals_nor_sees(filled: tuple[Filler, Conn]) -> None:
    _, conn = filled
    rid = bad_rating(conn, "hf01")
    with pytest.raises(AppealNotFound), conn.transaction():
        appeals.file(conn, user(conn, "mgr-wh01"), rid, "malicious", "not my hall but I try", NOW_MS)
    with conn.transaction():
        a = appeals.file(conn, user(conn, "mgr-hf01"), rid, "malicious", "rude customer, recorded", NOW_MS)
    wh01 = Scope("hall", "wh01")
    assert appeals.listing(conn, wh01) == []
    assert appeals.listing(conn, Scope("city", "芜湖")) == []
    assert [x.id for x in appeals.listing(conn, Scope("city", "合肥"))] == [a.id]
    with pytest.raises(AppealNotFound):
        appeals.get(conn, wh01, a.id)
    assert all(c.hall == "wh01" for c in appeals.compare(conn, wh01, TODAY, TODAY))


def test_appeals_are_never_deleted(filled: tuple[Filler, Conn]) -> None:
    _, conn = filled
    rid = bad_rating(conn, "hf01")
    with conn.transaction():
        appeals.file(conn, user(conn, "mgr-hf01"), rid, "misoperation", "pressed by mistake", NOW_MS)
    with pytest.raises((sqlite3.Error, psycopg.Error), match="never deleted"), conn.transaction():
        conn.execute("DELETE FROM appeals")
    assert conn.scalar("SELECT COUNT(*) FROM appeals") == 1


@pytest.mark.parametrize(("reason", "evidence", "pick", "message"), [
    ("spite", "a real reason here", "bad", "reason must be one of"),
    ("malicious", "   ", "bad", "evidence"),
    ("malicious", "x" * (appeals.MAX_TEXT + 1), "bad", "at most"),
    ("malicious", "a good rating appealed", "good", "only a dissatisfied rating"),
    ("malicious", "a no-rating appealed", "none", "only a dissatisfied rating"),
])
def test_bad_appeals_are_refused_and_change_nothing(filled: tuple[Filler, Conn], reason: str, evidence: str,
                                                    pick: str, message: str) -> None:
    _, conn = filled
    cond = {"bad": "kind = 'rating' AND score = 1", "good": "kind = 'rating' AND score = 4",
            "none": "kind = 'no-rating'"}[pick]
    rid = int(conn.scalar(f"SELECT MIN(id) FROM ratings WHERE hall = 'hf01' AND {cond}"))
    with pytest.raises(AppealError, match=message), conn.transaction():
        appeals.file(conn, user(conn, "mgr-hf01"), rid, reason, evidence, NOW_MS)
    assert conn.scalar("SELECT COUNT(*) FROM appeals") == 0 and audit_actions(conn) == []


def test_a_decision_needs_its_reasons(filled: tuple[Filler, Conn]) -> None:
    _, conn = filled
    with conn.transaction():
        a = appeals.file(conn, user(conn, "mgr-hf01"), bad_rating(conn, "hf01"), "misoperation", "by mistake",
                         NOW_MS)
    for outcome, text in (("upheld", ""), ("maybe", "a fine reason")):
        with pytest.raises(AppealError), conn.transaction():
            appeals.decide(conn, user(conn, "admin"), a.id, outcome, text, NOW_MS)
    assert appeals.get(conn, Scope("province"), a.id).state == "pending"


# --- the pages, over HTTP ---------------------------------------------------------------------------------


@pytest.fixture
def served(province_db: Database, tmp_path: Path) -> Iterator[tuple[PlatformServer, Filler]]:
    filler = fill(province_db)
    server = start(tmp_path, province_db, Clock())
    try:
        yield server, filler
    finally:
        server.stop()


def logged_in(server: PlatformServer, name: str) -> Client:
    c = Client(server.url)
    assert c.log_in(name) == 303
    return c


def test_the_pages_file_decide_and_report_in_scope(served: tuple[PlatformServer, Filler],
                                                   province_db: Database) -> None:
    server, _ = served
    with province_db.connect() as conn:
        rid, other = bad_rating(conn, "hf01"), bad_rating(conn, "wh01")
    mgr = logged_in(server, "mgr-hf01")
    status, page, _ = mgr.get("/appeals?period=today")
    assert status == 200 and f'id="appeal-open-{rid}"' in page and f"appeal-open-{other}" not in page
    # another hall's rating: not found, to look at and to appeal, whatever the URL says
    assert mgr.get(f"/appeals/rating/{other}")[0] == 404
    assert mgr.post(f"/appeals/rating/{other}", {"csrf": mgr.csrf, "reason": "malicious",
                                                  "evidence": "not mine"})[0] == 404
    # bad input: 400 with the reason, nothing filed
    mgr.get(f"/appeals/rating/{rid}")
    status, body, _ = mgr.post(f"/appeals/rating/{rid}", {"csrf": mgr.csrf, "reason": "malicious",
                                                          "evidence": ""})
    assert status == 400 and "evidence" in body
    # without the CSRF token: refused
    assert mgr.post(f"/appeals/rating/{rid}", {"reason": "malicious", "evidence": "rude customer"})[0] == 403
    status, _, headers = mgr.post(f"/appeals/rating/{rid}", {
        "csrf": mgr.csrf, "reason": "malicious", "evidence": "顾客辱骂员工，有录像 abuse on video"})
    assert status == 303 and headers["location"].endswith("ok=filed")
    status, page, _ = mgr.get(f"/appeals/rating/{rid}")
    assert "待复核 Pending" in page and 'id="file"' not in page and 'id="uphold"' not in page
    assert mgr.post(f"/appeals/rating/{rid}", {"csrf": mgr.csrf, "reason": "malicious",
                                               "evidence": "again"})[0] == 409
    with province_db.connect() as conn:
        aid = int(conn.scalar("SELECT id FROM appeals WHERE rating = ?", (rid,)))
    # the hall manager cannot decide, nor another hall see it
    assert mgr.post(f"/appeals/{aid}/decide", {"csrf": mgr.csrf, "outcome": "upheld",
                                               "decision": "mine"})[0] == 403
    wh = logged_in(server, "mgr-wh01")
    status, page, _ = wh.get("/appeals")
    assert status == 200 and f'id="appeal-{aid}"' not in page and "hf01" not in page
    admin = logged_in(server, "admin")
    status, page, _ = admin.get(f"/appeals/rating/{rid}")
    assert 'id="uphold"' in page
    status, _, headers = admin.post(f"/appeals/{aid}/decide", {"csrf": admin.csrf, "outcome": "upheld",
                                                               "decision": "录像证实 the video shows it"})
    assert status == 303 and headers["location"] == f"/appeals/rating/{rid}?ok=upheld"
    status, page, _ = mgr.get(f"/appeals/rating/{rid}")
    assert 'id="excluded-marker"' in page and "录像证实" in page
    # the side-by-side report, on the page and as CSV
    status, page, _ = admin.get("/appeals/report?period=today")
    row = re.search(r'<tr id="report-hf01".*?</tr>', page, re.S)
    assert status == 200 and row is not None
    cells = dict(re.findall(r'<td class="([a-z-]+)">([^<]*)<', row.group(0)))
    assert cells["dissatisfied"] == "1" and cells["a-dissatisfied"] == "0" and cells["excluded"] == "1"
    assert cells["satisfaction"] == "80.0%" and cells["a-satisfaction"] == "100.0%"
    status, raw, _ = admin.raw("/appeals/report?period=today&format=csv")
    lines = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
    hf01 = next(r for r in lines if r and r[0] == "hf01")
    assert hf01[3] == "5" and hf01[7] == "1" and hf01[8] == "4" and hf01[9] == "100.0%"
    every = next(r for r in lines if r and r[0] == "total")
    assert every[3:11] == ["8", "62.5%", "88.9%", "3", "1", "7", "71.4%", "87.5%"]
    # the hall manager's report is their own hall only
    status, page, _ = mgr.get("/appeals/report?period=today")
    assert 'id="report-hf01"' in page and "report-hf02" not in page and "report-wh01" not in page
    # and the audit log has both steps
    with province_db.connect() as conn:
        assert [(a, act) for a, act, _ in audit_actions(conn)] == [("mgr-hf01", "appeal.file"),
                                                                   ("admin", "appeal.decide")]


def test_the_appeal_marker_other_pages_include(filled: tuple[Filler, Conn]) -> None:
    """templates/appeal_marker.html, for a page of one rating (the custody page) given appeal_of()."""
    _, conn = filled
    rid = bad_rating(conn, "hf01")
    env = Environment(loader=FileSystemLoader(Path(appeals.__file__).parent / "templates"), autoescape=True)
    env.filters["time"] = lambda ms: "—" if ms is None else str(ms)
    marker = env.get_template("appeal_marker.html")
    assert "appeal-marker" not in marker.render(appeal=appeals.appeal_of(conn, rid))
    with conn.transaction():
        a = appeals.file(conn, user(conn, "mgr-hf01"), rid, "malicious", "<b>rude</b> customer", NOW_MS)
        appeals.decide(conn, user(conn, "admin"), a.id, "upheld", "录像证实 shown on video", NOW_MS)
    html = marker.render(appeal=appeals.appeal_of(conn, rid))
    assert 'id="appeal-marker"' in html and "申诉成立" in html and "不计入考核" in html and "录像证实" in html
    assert f'href="/appeals/rating/{rid}"' in html
