"""Rows for the assessment tests (test_4d_*): a small month of ratings, cases and appeals written
directly into a real province database, with every figure the expected scores come from written out
here by hand (not computed by the code under test).

The month is 2026-11 (Asia/Shanghai). Cases and appeals are rows of step 4's tables as the cases and
appeals code leaves them (another part writes that code; these tests write the rows themselves)."""

from __future__ import annotations

import html
import io
import re
from datetime import datetime

import pypdf
from analytics_helpers import TZ, Rows, prepared

from countersign.province.db import Conn, Database

MONTH = "2026-11"


def ms(day: str, hour: int = 12) -> int:
    y, m, d = (int(x) for x in day.split("-"))
    return int(datetime(y, m, d, hour, tzinfo=TZ).timestamp() * 1000)


def case(conn: Conn, hall: str, rating: int | None, *, opened: str, closed: str | None = None,
         on_time: int | None = None, overdue: str | None = None) -> int:
    state = "closed" if closed else "rectifying"
    return int(conn.scalar(
        "INSERT INTO cases (hall, rating, source, title, state, opened_ms, opened_by, deadline, closed_ms,"
        " on_time, overdue_ms) VALUES (?, ?, ?, 'test case', ?, ?, 'supervisor', '2026-12-31', ?, ?, ?)"
        " RETURNING id",
        (hall, rating, "rating" if rating else "manual", state, ms(opened),
         ms(closed) if closed else None, on_time, ms(overdue) if overdue else None)))


def appeal(conn: Conn, hall: str, rating: int, state: str, decided: str, decision: str | None = None) -> int:
    return int(conn.scalar(
        "INSERT INTO appeals (rating, hall, reason, evidence, filed_ms, filed_by, state, decided_ms,"
        " decided_by, decision) VALUES (?, ?, 'misoperation', 'video', ?, 'mgr', ?, ?, 'admin', ?)"
        " RETURNING id", (rating, hall, ms(decided) - 86_400_000, state, ms(decided),
                          decision or f"test {state}")))


def november(db: Database) -> Conn:
    """The month below; returns the open connection (autocommit).

    hf01 (合肥): clerk 10001 on 11-05: 8 satisfied, 2 dissatisfied, 2 prompts without a rating
                 clerk 10002 on 11-10: 4 satisfied
                 -> 14 ratings, 12 satisfied, 2 dissatisfied, 16 prompts
                 cases: both dissatisfied ones closed in November, one on time, one late (1 of 2);
                 one more closed on 12-01 and a rating on 10-31 and 12-01: outside the month
                 no appeal
    hf02 (合肥): clerk 20001: 3 satisfied, 1 dissatisfied -> 4 ratings, 4 prompts
    wh01 (芜湖): clerk 30001 on 11-20: 5 satisfied, 3 dissatisfied, 1 prompt without a rating
                 one dissatisfied one excluded by an upheld appeal (decided 11-25), another appeal
                 rejected (11-26): 7 ratings, 5 satisfied, 2 dissatisfied, 8 prompts; appeals 1 of 2
                 cases: 2 closed on time in November, 1 still open, found overdue on 11-28: on time
                 2 of 3 (a case left open past its deadline counts against the hall)
    """
    conn = prepared(db)
    rows = Rows(conn)
    rows.many("hf01", "10001", 8, 0, "2026-11-05")
    hf01_bad = [rows.rating("hf01", "10001", 1, "2026-11-05") for _ in range(2)]
    rows.rating("hf01", "10001", None, "2026-11-05")
    rows.rating("hf01", "10001", None, "2026-11-06")
    rows.many("hf01", "10002", 4, 0, "2026-11-10", window="2")
    early = rows.rating("hf01", "10001", 1, "2026-10-31")
    late = rows.rating("hf01", "10001", 1, "2026-12-01")
    case(conn, "hf01", hf01_bad[0], opened="2026-11-05", closed="2026-11-12", on_time=1)
    case(conn, "hf01", hf01_bad[1], opened="2026-11-05", closed="2026-11-30", on_time=0)
    case(conn, "hf01", early, opened="2026-10-31", closed="2026-12-01", on_time=1)
    case(conn, "hf01", late, opened="2026-12-01")
    rows.many("hf02", "20001", 3, 1, "2026-11-15")
    rows.many("wh01", "30001", 5, 0, "2026-11-20")
    wh_bad = [rows.rating("wh01", "30001", 1, "2026-11-20") for _ in range(3)]
    rows.rating("wh01", "30001", None, "2026-11-20")
    appeal(conn, "wh01", wh_bad[0], "upheld", "2026-11-25")
    appeal(conn, "wh01", wh_bad[1], "rejected", "2026-11-26")
    case(conn, "wh01", wh_bad[1], opened="2026-11-20", closed="2026-11-24", on_time=1)
    case(conn, "wh01", wh_bad[2], opened="2026-11-20", overdue="2026-11-28")
    case(conn, "wh01", None, opened="2026-11-21", closed="2026-11-27", on_time=1)
    return conn


# The weights of the tests' version 1 and the scores they give, by hand:
#   score = 60 sat + 20 part + 15 cases + 5 appeals - 2 x dissatisfied   (min_sample 5)
V1 = {"satisfaction": "60", "participation": "20", "cases_on_time": "15", "appeals_upheld": "5",
      "dissatisfied": "2"}
V1_SCORES = {
    "hf01": 60 * 12 / 14 + 20 * 14 / 16 + 15 * 1 / 2 + 5 * 1 - 2 * 2,   # 77.428571...
    "wh01": 60 * 5 / 7 + 20 * 7 / 8 + 15 * 2 / 3 + 5 * 1 / 2 - 2 * 2,   # 68.857142...
}
V1_CLERKS = {
    ("hf01", "10001"): 60 * 8 / 10 + 20 * 10 / 12 + 15 * 1 / 2 + 5 * 1 - 2 * 2,   # 73.1666...
    # The hall's by-hand case (no rating, so no clerk) is not the clerk's: on time 1 of 2.
    ("wh01", "30001"): 60 * 5 / 7 + 20 * 7 / 8 + 15 * 1 / 2 + 5 * 1 / 2 - 2 * 2,   # 66.357142...
}
# Version 2: satisfaction only, no penalty, min_sample 4 (hf02's 4 ratings now count).
V2 = {"satisfaction": "100", "participation": "0", "cases_on_time": "0", "appeals_upheld": "0",
      "dissatisfied": "0"}
V2_SCORES = {"hf01": 100 * 12 / 14, "hf02": 100 * 3 / 4, "wh01": 100 * 5 / 7}


def page_rows(text: str, table: str = "ranked") -> dict[str, dict[str, str]]:
    """hall -> column -> the cell's text, as the page shows it."""
    body = text.split(f'id="{table}"', 1)[1].split("</table>", 1)[0]
    out = {}
    for hall, cells in re.findall(r'<tr class="score-row" data-hall="([^"]+)"[^>]*>(.*?)</tr>', body, re.S):
        out[hall] = {k: html.unescape(v.strip()) for k, v in re.findall(r'<td class="([^"]+)">(.*?)</td>',
                                                                            cells, re.S)}
    return out


def pdf_text(body: bytes) -> tuple[int, str]:
    r = pypdf.PdfReader(io.BytesIO(body))
    return len(r.pages), "\n".join(p.extract_text() for p in r.pages)
