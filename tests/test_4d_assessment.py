"""考核 Assessment at the store level, on SQLite and PostgreSQL: monthly scores per hall and clerk from
hand-computed figures (assessment_helpers.november), versioned weights (a new version changes the
scores, the old one still gives the old ones), the minimum sample, upheld appeals excluded, and scope."""

from __future__ import annotations

import json

import pytest
from analytics_helpers import TZ
from assessment_helpers import MONTH, V1, V1_CLERKS, V1_SCORES, V2, V2_SCORES, ms, november

from countersign.province import assessment
from countersign.province.assessment import AssessmentError
from countersign.province.db import Database
from countersign.province.scope import Scope

PROVINCE = Scope("province")
NOW = ms("2026-12-02", 10)


def _scores(a: assessment.Assessment) -> dict[str, float]:
    return {r.hall if r.clerk is None else f"{r.hall}/{r.clerk}": r.score or 0.0 for r in a.ranked}


def test_hall_scores_match_the_hand_computed_month(province_db: Database) -> None:
    conn = november(province_db)
    w = assessment.add_version(conn, V1, "5", "test weights v1", actor="admin", now_ms=NOW)
    a = assessment.assess(conn, assessment.parse_month(MONTH, TZ), PROVINCE, "hall")
    assert a.weights.version == w.version
    assert [r.hall for r in a.ranked] == ["hf01", "wh01"]
    assert [r.rank for r in a.ranked] == [1, 2]
    for r in a.ranked:
        assert r.score == pytest.approx(V1_SCORES[r.hall])
    hf01, wh01 = a.ranked
    # The figures each part came from, as an analyst would recompute them.
    d = hf01.as_dict()
    assert (d["ratings"], d["satisfied"], d["dissatisfied"], d["prompts"]) == (14, 12, 2, 16)
    assert (d["cases_closed"], d["cases_on_time"], d["appeals_decided"]) == (2, 1, 0)
    assert d["satisfaction"] == pytest.approx(12 / 14)
    assert d["pts_satisfaction"] == pytest.approx(round(60 * 12 / 14, 2))
    assert d["pts_dissatisfied"] == -4
    assert d["pts_appeals_upheld"] == 5         # no appeal decided: full marks
    d = wh01.as_dict()
    assert (d["ratings"], d["satisfied"], d["dissatisfied"], d["prompts"], d["excluded"]) == (7, 5, 2, 8, 1)
    assert (d["cases_closed"], d["cases_on_time"], d["cases_overdue"]) == (2, 2, 1)
    assert (d["appeals_decided"], d["appeals_upheld"]) == (2, 1)
    # hf02 has 4 ratings, below the minimum sample of 5: listed apart, no score, no rank.
    assert [(r.hall, r.rank, r.score) for r in a.too_few] == [("hf02", None, None)]
    assert a.too_few[0].as_dict()["status"] == "样本不足 insufficient sample"


def test_clerk_scores_and_their_minimum_sample(province_db: Database) -> None:
    conn = november(province_db)
    assessment.add_version(conn, V1, "5", "test weights v1", actor="admin", now_ms=NOW)
    a = assessment.assess(conn, assessment.parse_month(MONTH, TZ), PROVINCE, "clerk")
    assert [(r.hall, r.clerk) for r in a.ranked] == [("hf01", "10001"), ("wh01", "30001")]
    for r in a.ranked:
        assert r.score == pytest.approx(V1_CLERKS[(r.hall, str(r.clerk))])
    assert sorted((r.hall, r.clerk, r.figures.ratings) for r in a.too_few) == [
        ("hf01", "10002", 4), ("hf02", "20001", 4)]


def test_a_new_version_changes_the_scores_and_the_old_one_reproduces_them(province_db: Database) -> None:
    conn = november(province_db)
    month = assessment.parse_month(MONTH, TZ)
    v1 = assessment.add_version(conn, V1, "5", "test weights v1", actor="admin", now_ms=NOW)
    before = _scores(assessment.assess(conn, month, PROVINCE))
    v2 = assessment.add_version(conn, V2, "4", "satisfaction only", actor="admin", now_ms=NOW + 1000)
    assert v2.version > v1.version
    newest = assessment.assess(conn, month, PROVINCE)
    assert newest.weights.version == v2.version
    assert _scores(newest) == pytest.approx(V2_SCORES)
    assert [r.hall for r in newest.ranked] == ["hf01", "hf02", "wh01"]
    again = assessment.assess(conn, month, PROVINCE, "hall", assessment.version(conn, v1.version))
    assert _scores(again) == pytest.approx(before)
    assert _scores(again) == pytest.approx(V1_SCORES)
    assert [v.version for v in assessment.versions(conn)] == [v2.version, v1.version]
    # Each version is in the audit log, with what it says.
    audits = conn.all("SELECT actor, action, target, detail FROM audit_log"
                      " WHERE action = 'assessment-weights' ORDER BY id")
    assert [(a, t) for a, _, t, _ in audits] == [("admin", f"v{v1.version}"), ("admin", f"v{v2.version}")]
    assert json.loads(audits[1][3])["note"] == "satisfaction only"


def test_an_upheld_appeal_changes_the_score_not_the_stored_rating(province_db: Database) -> None:
    conn = november(province_db)
    month = assessment.parse_month(MONTH, TZ)
    assessment.add_version(conn, V1, "5", "v1", actor="admin", now_ms=NOW)
    rejected = conn.one("SELECT id, rating FROM appeals WHERE state = 'rejected'")
    stored = conn.one("SELECT score, cose FROM ratings WHERE id = ?", (rejected[1],))
    conn.execute("UPDATE appeals SET state = 'upheld' WHERE id = ?", (rejected[0],))
    wh01 = next(r for r in assessment.assess(conn, month, PROVINCE).rows if r.hall == "wh01")
    # Now 6 ratings (5 satisfied, 1 dissatisfied), 7 prompts, appeals 2 of 2.
    assert (wh01.figures.ratings, wh01.figures.dissatisfied, wh01.excluded) == (6, 1, 2)
    assert wh01.score == pytest.approx(60 * 5 / 6 + 20 * 6 / 7 + 15 * 2 / 3 + 5 - 2)
    assert conn.one("SELECT score, cose FROM ratings WHERE id = ?", (rejected[1],)) == stored


def test_scope_a_city_and_a_hall_see_only_their_own(province_db: Database) -> None:
    conn = november(province_db)
    month = assessment.parse_month(MONTH, TZ)
    assessment.add_version(conn, V1, "4", "v1 min 4", actor="admin", now_ms=NOW)
    city = assessment.assess(conn, month, Scope("city", "合肥"))
    assert sorted(r.hall for r in city.rows) == ["hf01", "hf02"]
    hall = assessment.assess(conn, month, Scope("hall", "hf01"), "clerk")
    assert {r.hall for r in hall.rows} == {"hf01"}
    assert sorted(str(r.clerk) for r in hall.rows) == ["10001", "10002"]
    # The same hall's score whoever looks at it.
    prov = {r.hall: r.score for r in assessment.assess(conn, month, PROVINCE).rows}
    assert {r.hall: r.score for r in city.rows} == {h: prov[h] for h in ("hf01", "hf02")}


def test_default_weights_before_any_version(province_db: Database) -> None:
    conn = november(province_db)
    w = assessment.version(conn)
    assert w.version == 0 and w.min_sample == 30
    a = assessment.assess(conn, assessment.parse_month(MONTH, TZ), PROVINCE)
    assert a.ranked == [] and len(a.too_few) == 3        # no hall has 30 ratings


@pytest.mark.parametrize(("change", "min_sample", "note", "says"), [
    ({"satisfaction": "70"}, "5", "n", "must sum to 100"),
    ({"satisfaction": "sixty"}, "5", "n", "must be a number"),
    ({"dissatisfied": "-1"}, "5", "n", "must be 0..100"),
    ({"participation": "nan"}, "5", "n", "must be a number"),
    ({}, "0", "n", "min_sample"),
    ({}, "5.5", "n", "min_sample"),
    ({}, "5", "   ", "note"),
    ({"bonus": "1"}, "5", "n", "unknown part"),
])
def test_bad_weights_are_refused_and_change_nothing(province_db: Database, change: dict[str, str],
                                                    min_sample: str, note: str, says: str) -> None:
    conn = november(province_db)
    with pytest.raises(AssessmentError, match=says):
        assessment.add_version(conn, {**V1, **change}, min_sample, note, actor="admin", now_ms=NOW)
    assert conn.scalar("SELECT COUNT(*) FROM assessment_weights") == 0
    assert conn.scalar("SELECT COUNT(*) FROM audit_log WHERE action = 'assessment-weights'") == 0


def test_months_and_versions_that_do_not_exist() -> None:
    for bad in ("2026-13", "2026-1", "26-11", "2026-11-01", ""):
        with pytest.raises(AssessmentError):
            assessment.parse_month(bad, TZ)
    m = assessment.parse_month("2026-02", TZ)
    assert (m.day_from, m.day_to, m.label) == ("2026-02-01", "2026-02-28", "2026年2月")
    assert m.end_ms - m.start_ms == 28 * 86_400_000
    dec = assessment.parse_month("2026-12", TZ)
    assert dec.day_to == "2026-12-31"


def test_unknown_version_is_an_error(province_db: Database) -> None:
    conn = november(province_db)
    with pytest.raises(AssessmentError, match="no weights version 7"):
        assessment.version(conn, 7)
