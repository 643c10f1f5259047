"""province/enroll.py on both backends: the technician's record imported strictly, approval verifies and
counts a keypad's held ratings, refusal keeps them held with the reason; every change audited, a refused
request changes nothing, and no held row is ever deleted."""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from province_helpers import no_rating, rating

from countersign.protocol import batch
from countersign.protocol.context import Context
from countersign.protocol.enrollment import EnrollmentRecord
from countersign.protocol.kcv import key_check_value
from countersign.province import enroll, migrations
from countersign.province.db import Conn, Database
from countersign.province.hallreports import store_enroll_notice
from countersign.province.store import HeldRow, PromptRow, RatingRow, Store

TZ = ZoneInfo("Asia/Shanghai")
HALL, DEV = "hf01", "hf01-a1b2c3"
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
T0 = 1_764_662_400_000
ACTOR = "cli:tester"


def record(**over: object) -> bytes:
    rec = EnrollmentRecord(device=DEV, hall=HALL, window="3", epoch=1, scale=4, key=KEY, technician="wang",
                           made_ms=T0)
    doc = json.loads(rec.to_json())
    doc.update(over)
    return json.dumps(doc).encode()


@pytest.fixture
def conn(province_db: Database) -> Iterator[Conn]:
    migrations.upgrade(province_db, TZ)
    c = province_db.connect()
    yield c
    c.close()


def hold(c: Conn, msg: bytes, *, seq: int, prompt: int = 0, clerk: str = "c001", hall: str = HALL,
         device: str = DEV, kind: str = "rating") -> None:
    """A held 'unknown-device' entry as the receiver keeps it (fields read before any MAC check)."""
    ctx = Context("3", clerk, 2, f"t{seq}", T0 - 5000)
    row = HeldRow(device, 1, seq, kind, 4 if kind == "rating" else None, 4 if kind == "rating" else None,
                  prompt, 1_764_662_000 + seq, 1500, 1, hall, ctx, T0 + seq, hall, 100 + seq, msg)
    with c.transaction():
        assert Store(c, T0, TZ).hold(row, enroll.UNKNOWN_DEVICE, f"no device {device} in the registry (yet)"
                                     ).value == "stored"


def counts(c: Conn) -> tuple[int, int, int, int]:
    return (c.scalar("SELECT COUNT(*) FROM ratings"), c.scalar("SELECT COUNT(*) FROM held"),
            c.scalar("SELECT COUNT(*) FROM enrollments"), c.scalar("SELECT COUNT(*) FROM audit_log"))


def notice(c: Conn, *, hall: str = HALL, window: str = "3", kcv: str | None = None) -> None:
    e = batch.EnrollEntry(DEV, window, 1, 4, kcv or key_check_value(KEY), T0 - 1000)
    with c.transaction():
        store_enroll_notice(c, hall, e, T0 - 900, None, batch_id=7)


def test_import_then_approve_counts_every_held_rating_and_keeps_the_forged_one_held(conn: Conn) -> None:
    for seq in range(1, 6):
        hold(conn, rating(KEY, DEV, seq, score=seq % 4 + 1), seq=seq)
    hold(conn, no_rating(KEY, DEV, 6), seq=6, kind="no-rating")
    hold(conn, rating(OTHER_KEY, DEV, 7), seq=7)          # made with a key that is not the keypad's
    assert counts(conn)[:2] == (0, 7)
    with conn.transaction():
        e = enroll.import_record(conn, record(), ACTOR, T0 + 10)
    assert (e.state, e.device, e.hall, e.window, e.epoch, e.technician) == \
        ("pending", DEV, HALL, "3", 1, "wang")
    assert e.technician_kcv == key_check_value(KEY) and e.gateway_kcv is None and e.kcv_match is None
    with conn.transaction():
        res = enroll.approve(conn, e.id, ACTOR, T0 + 20, TZ)
    assert (res.released, res.duplicates, res.bad_mac, dict(res.still_held)) == (6, 0, 1, {})
    assert res.enrollment.state == "approved" and res.enrollment.decided_by == ACTOR
    # Counted: the five ratings and the no-rating, with the verified payload's values and their context.
    got = conn.all("SELECT seq, kind, score, clerk, batch_id FROM ratings WHERE device = ? ORDER BY seq",
                   (DEV,))
    assert got == [(s, "rating", s % 4 + 1, "c001", 100 + s) for s in range(1, 6)] + \
        [(6, "no-rating", None, "c001", 106)]
    # Held rows are kept, never deleted: released ones point at their rating, the forged one stays held.
    rows = conn.all("SELECT seq, state, reason, rating_id IS NOT NULL, decided_by FROM held ORDER BY seq")
    assert rows[:6] == [(s, "released", "unknown-device", True, ACTOR) for s in range(1, 7)]
    assert rows[6] == (7, "held", "bad-mac", False, None)
    assert conn.one("SELECT source, epoch, key, changed_ms FROM devices WHERE device = ?", (DEV,)) == \
        ("enrollment", 1, KEY, T0 + 20)
    assert [r[0] for r in conn.all("SELECT action FROM audit_log ORDER BY id")] == \
        ["enrollment.import", "enrollment.approve"]
    detail = json.loads(conn.scalar("SELECT detail FROM audit_log WHERE action = 'enrollment.approve'"))
    assert detail["released"] == 6 and detail["bad_mac"] == 1 and KEY.hex() not in json.dumps(detail)
    assert conn.scalar("SELECT COUNT(*) FROM alarms WHERE kind = 'held-entries' AND device = ?", (DEV,)) == 1


def test_the_same_rating_held_and_counted_is_counted_once(conn: Conn) -> None:
    msg = rating(KEY, DEV, 1)
    hold(conn, msg, seq=1)
    with conn.transaction():
        e = enroll.import_record(conn, record(), ACTOR, T0)
    # The gateway resent it after approval elsewhere (another receiver): already in ratings.
    ctx = Context("3", "c001", 2, "t1", T0 - 5000)
    with conn.transaction():
        Store(conn, T0, TZ).insert_rating(RatingRow(DEV, 1, 1, "rating", 4, 4, 0, 1_764_662_001, 1500, 1,
                                                    HALL, ctx, T0 + 1, HALL, 101, msg))
    with conn.transaction():
        res = enroll.approve(conn, e.id, ACTOR, T0 + 5, TZ)
    assert (res.released, res.duplicates) == (0, 1)
    assert conn.scalar("SELECT COUNT(*) FROM ratings") == 1
    rating_id = conn.scalar("SELECT id FROM ratings")
    assert conn.one("SELECT state, rating_id FROM held") == ("released", rating_id)


def test_a_released_rating_meets_its_prompt_record(conn: Conn) -> None:
    with conn.transaction():
        s = Store(conn, T0, TZ)
        s.insert_prompt(PromptRow(HALL, 700, DEV, Context("3", "A-001", 2, "t1", T0 - 5000), 30, 50))
        s.insert_prompt(PromptRow(HALL, 701, DEV, Context("3", "c001", 2, "t2", T0 - 4000), 30, 50))
    hold(conn, rating(KEY, DEV, 1, prompt=700), seq=1, prompt=700, clerk="Z-999")   # bound to another clerk
    hold(conn, rating(KEY, DEV, 2, prompt=701), seq=2, prompt=701)
    with conn.transaction():
        e = enroll.import_record(conn, record(), ACTOR, T0)
        res = enroll.approve(conn, e.id, ACTOR, T0 + 5, TZ)
    assert res.released == 1 and dict(res.still_held) == {"prompt-mismatch": 1}
    assert conn.all("SELECT seq FROM ratings") == [(2,)]
    assert conn.one("SELECT state, reason FROM held WHERE seq = 1") == ("held", "prompt-mismatch")


def test_refuse_keeps_them_held_with_the_reason(conn: Conn) -> None:
    for seq in (1, 2, 3):
        hold(conn, rating(KEY, DEV, seq), seq=seq)
    with conn.transaction():
        e = enroll.import_record(conn, record(), ACTOR, T0)
    with conn.transaction():
        r = enroll.refuse(conn, e.id, "admin", "  not our keypad:\n ticket 4711 ", T0 + 5)
    assert (r.state, r.reason, r.decided_by) == ("refused", "not our keypad: ticket 4711", "admin")
    rows = conn.all("SELECT state, reason, decision, decided_by FROM held ORDER BY seq")
    assert rows == [("held", "unknown-device", f"enrollment {e.id} refused: not our keypad: ticket 4711",
                     "admin")] * 3
    assert conn.scalar("SELECT COUNT(*) FROM ratings") == 0
    assert conn.scalar("SELECT COUNT(*) FROM devices") == 0
    before = counts(conn)
    for attempt in (lambda: enroll.approve(conn, e.id, ACTOR, T0 + 6, TZ),
                    lambda: enroll.refuse(conn, e.id, ACTOR, "again", T0 + 6),
                    lambda: enroll.import_record(conn, record(), ACTOR, T0 + 6)):
        with pytest.raises(enroll.EnrollmentError, match="already refused"), conn.transaction():
            attempt()
    assert counts(conn) == before


def test_a_refusal_needs_a_reason(conn: Conn) -> None:
    with conn.transaction():
        e = enroll.import_record(conn, record(), ACTOR, T0)
    before = counts(conn)
    with pytest.raises(enroll.EnrollmentError, match="needs a reason"):
        enroll.refuse(conn, e.id, ACTOR, " \n ", T0)
    assert counts(conn) == before and enroll.get(conn, e.id).state == "pending"


@pytest.mark.parametrize(("data", "match"), [
    (b"\xff\xfe", "JSON in UTF-8"),
    (b"[1]", "one JSON object"),
    (record(kcv="00" * 8), "kcv does not match"),
    (record(key="ab" * 31), "64 lowercase hex"),
    (record(key="AB" * 32, kcv=key_check_value(bytes([0xAB]) * 32)), "64 lowercase hex"),
    (record(epoch=True), "epoch must be an integer"),
    (record(epoch=70000), "epoch must be an integer"),
    (record(scale=3), "scale"),
    (record(device="HF01/+"), "device id"),
    (record(hall="_gateway"), "hall id"),
    (record(window="3 4"), "window"),
    (record(technician=""), "technician"),
    (record(version=2), "version 2 is not supported"),
    (record(format="other"), "format"),
    (record(extra=1), "unknown extra"),
    (record()[:-1] + b', "device": "hf01-zzz"}', "appears twice"),
    (b" " * 5000, "at most 4096 bytes"),
])
def test_bad_records_are_refused_and_change_nothing(conn: Conn, data: bytes, match: str) -> None:
    before = counts(conn)
    with pytest.raises(enroll.EnrollmentError, match=match), conn.transaction():
        enroll.import_record(conn, data, ACTOR, T0)
    assert counts(conn) == before


def test_record_missing_a_member_is_refused(conn: Conn) -> None:
    doc = json.loads(record())
    del doc["window"]
    with pytest.raises(enroll.EnrollmentError, match="missing window"):
        enroll.import_record(conn, json.dumps(doc).encode(), ACTOR, T0)


@pytest.mark.parametrize(("kw", "match"), [
    ({"hall": "hf02"}, "the hall gateway hf02 reports it"),
    ({"window": "9"}, "reports window 9"),
    ({"kcv": key_check_value(OTHER_KEY)}, "the gateway holds another key"),
])
def test_a_record_that_contradicts_the_gateways_notice_is_refused(conn: Conn, kw: dict[str, str],
                                                                  match: str) -> None:
    notice(conn, **kw)
    before = counts(conn)
    row = conn.one("SELECT hall, \"window\", kcv, key, technician FROM enrollments")
    with pytest.raises(enroll.EnrollmentError, match=match), conn.transaction():
        enroll.import_record(conn, record(), ACTOR, T0)
    assert counts(conn) == before
    assert conn.one("SELECT hall, \"window\", kcv, key, technician FROM enrollments") == row


def test_the_gateways_notice_and_the_record_meet(conn: Conn) -> None:
    notice(conn)
    with conn.transaction():
        e = enroll.import_record(conn, record(), ACTOR, T0)
    assert e.gateway_ms == T0 - 900 and e.technician_ms == T0 and e.kcv_match is True
    assert counts(conn)[2] == 1
    with conn.transaction():                           # the same file again: nothing changes
        again = enroll.import_record(conn, record(), ACTOR, T0 + 99)
    assert again == e and counts(conn)[3] == 1


def test_approval_needs_the_technicians_key(conn: Conn) -> None:
    notice(conn)                                       # the gateway's word alone
    e = enroll.list_enrollments(conn)[0]
    assert not e.has_key
    before = counts(conn)
    with pytest.raises(enroll.EnrollmentError, match="no technician's record"):
        enroll.approve(conn, e.id, ACTOR, T0, TZ)
    assert counts(conn) == before and conn.scalar("SELECT COUNT(*) FROM devices") == 0
    with pytest.raises(enroll.EnrollmentNotFound):
        enroll.approve(conn, 999, ACTOR, T0, TZ)


def test_a_later_notice_with_another_key_blocks_approval(conn: Conn) -> None:
    with conn.transaction():
        e = enroll.import_record(conn, record(), ACTOR, T0)
    notice(conn, kcv=key_check_value(OTHER_KEY))
    assert enroll.get(conn, e.id).kcv_match is False
    with pytest.raises(enroll.EnrollmentError, match="key check value"):
        enroll.approve(conn, e.id, ACTOR, T0, TZ)
    assert conn.scalar("SELECT COUNT(*) FROM devices") == 0


def test_an_epoch_not_newer_than_the_registered_one_is_refused(conn: Conn) -> None:
    conn.execute('INSERT INTO devices (device, hall, key, epoch, "window", scale, revoked, source,'
                 " changed_ms) VALUES (?,?,?,?,?,?,0,'registry',?)", (DEV, HALL, OTHER_KEY, 2, "3", 4, T0))
    with pytest.raises(enroll.EnrollmentError, match="registered with epoch 2"):
        enroll.import_record(conn, record(), ACTOR, T0)
    with conn.transaction():                            # a newer epoch re-keys it on approval
        e = enroll.import_record(conn, record(epoch=3), ACTOR, T0)
        enroll.approve(conn, e.id, ACTOR, T0 + 1, TZ)
    assert conn.one("SELECT epoch, key, source FROM devices") == (3, KEY, "enrollment")


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`countersign province enroll ...` through enroll_cli.register, as province/cli.py wires it."""
    import argparse

    from countersign.province.enroll_cli import register

    ap = argparse.ArgumentParser()
    register(ap.add_subparsers(dest="cmd", required=True))
    args = ap.parse_args(["enroll", *argv])
    rc = args.func(args)
    out, err = capsys.readouterr()
    return rc, out, err


def test_command_line_import_list_approve(province_db: Database, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    migrations.upgrade(province_db, TZ)
    with province_db.connect() as c:
        for seq in (1, 2):
            hold(c, rating(KEY, DEV, seq), seq=seq)
    f = tmp_path / f"{DEV}-e1.enroll.json"
    f.write_bytes(record())
    rc, out, err = _cli(capsys, "import", str(f), "--db", province_db.url)
    assert rc == 0, err
    assert out.startswith("enrollment 1: hf01-a1b2c3 (hall hf01, window 3, epoch 1) by wang, pending")
    rc, again, err = _cli(capsys, "import", str(f), "--db", province_db.url)
    assert rc == 0 and again == out
    rc, out, err = _cli(capsys, "list", "--db", province_db.url)
    assert rc == 0 and "pending" in out and "2 held, 0 released" in out
    rc, out, err = _cli(capsys, "approve", "1", "--db", province_db.url)
    assert rc == 0, err
    assert "held ratings counted 2" in out and "bad-mac 0" in out
    rc, out, err = _cli(capsys, "approve", "1", "--db", province_db.url)
    assert rc == 2 and out == "" and "already approved" in err
    for text in (out, err, again):
        assert KEY.hex() not in text
    with province_db.connect() as c:
        assert c.scalar("SELECT COUNT(*) FROM ratings") == 2
        assert {r[0] for r in c.all("SELECT actor FROM audit_log")} == {f"cli:{getpass.getuser()}"}


def test_command_line_refuses_a_bad_file_and_refuse_needs_a_reason(
        province_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "x.enroll.json"
    f.write_bytes(record(kcv="0" * 16))
    rc, out, err = _cli(capsys, "import", str(f), "--db", province_db.url)
    assert rc == 2 and out == "" and "kcv does not match the key" in err and str(f) in err
    rc, out, err = _cli(capsys, "import", str(tmp_path / "missing.json"), "--db", province_db.url)
    assert rc == 2 and "cannot read" in err
    f.write_bytes(record())
    assert _cli(capsys, "import", str(f), "--db", province_db.url)[0] == 0
    rc, out, err = _cli(capsys, "refuse", "1", "--reason", "  ", "--db", province_db.url)
    assert rc == 2 and "needs a reason" in err
    rc, out, err = _cli(capsys, "refuse", "1", "--reason", "wrong hall", "--db", province_db.url)
    assert rc == 0 and "refused" in out and "(wrong hall)" in out
    rc, out, err = _cli(capsys, "list", "--state", "refused", "--db", province_db.url)
    assert "refused" in out and "(wrong hall)" in out


# --- the pages: /enrollments (administrators) and /held (every role, in its scope) -------------------------

NEW = "hf01-0a0b0c"                     # provisioned at hf01, not in the province's devices yet


@pytest.fixture
def platform(province_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from platform_helpers import NOW_MS, Clock, fill, start

    from countersign.province import pages_enroll, web

    if pages_enroll not in web.PAGE_MODULES:          # until web.py lists the module
        monkeypatch.setattr(web, "PAGE_MODULES", (*web.PAGE_MODULES, pages_enroll))
    fill(province_db)
    with province_db.connect() as c:
        for seq in (1, 2, 3):
            hold(c, rating(KEY, NEW, seq, time_s=NOW_MS // 1000 - 900), seq=seq, device=NEW)
        hold(c, rating(KEY, "wh01-0d0e0f", 1), seq=1, device="wh01-0d0e0f", hall="wh01")
    server = start(tmp_path, province_db, Clock())
    yield server.url
    server.stop()


def _multipart(csrf: str | None, data: bytes, filename: str = "rec.enroll.json") -> tuple[bytes, str]:
    boundary = "----countersign-test-boundary"
    parts = []
    if csrf is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="csrf"\r\n\r\n{csrf}\r\n'
                     .encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="record"; filename="{filename}"\r\n'
                 "Content-Type: application/json\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _upload(client: object, csrf: str | None, data: bytes) -> tuple[int, str, dict[str, str]]:
    from platform_helpers import Client

    assert isinstance(client, Client)
    body, ctype = _multipart(csrf, data)
    status, raw, headers = client.request("POST", "/enrollments/upload", body, {"Content-Type": ctype})
    return status, raw.decode("utf-8", "replace"), headers


def test_pages_upload_approve_and_the_held_list(platform: str, province_db: Database) -> None:
    from platform_helpers import Client

    admin = Client(platform)
    assert admin.log_in("admin") == 303
    status, page, _h = admin.get("/enrollments")
    assert status == 200 and "暂无登记" in page
    rec = record(device=NEW)
    with province_db.connect() as c:
        before = counts(c)
    # No CSRF token: refused, nothing imported.
    assert _upload(admin, None, rec)[0] == 403
    assert _upload(admin, "forged", rec)[0] == 403
    # A damaged file: the page says why, nothing changed.
    status, page, _h = _upload(admin, admin.csrf, record(device=NEW, kcv="1" * 16))
    assert status == 400 and "kcv does not match the key" in page
    with province_db.connect() as c:
        assert counts(c) == before
    status, _page, h = _upload(admin, admin.csrf, rec)
    assert status == 303 and h["location"] == "/enrollments?ok=imported&id=1"
    status, page, _h = admin.get("/enrollments?ok=imported&id=1")
    assert status == 200 and 'id="done"' in page and 'id="enrollment-1"' in page
    row = page.split('id="enrollment-1"', 1)[1].split("</tr>", 1)[0]
    assert NEW in row and key_check_value(KEY) in row and "尚无" in row      # no gateway notice yet
    assert '<span class="n-held">3</span>' in row and KEY.hex() not in page
    # A hall manager may neither see nor decide it.
    mgr = Client(platform)
    assert mgr.log_in("mgr-hf01") == 303
    assert mgr.get("/enrollments")[0] == 403
    mgr.get("/held")
    assert mgr.post("/enrollments/1/approve", {"csrf": mgr.csrf})[0] == 403
    # The administrator approves (with the form's token; without it: refused).
    assert admin.post("/enrollments/1/approve", {})[0] == 403
    status, _page, h = admin.post("/enrollments/1/approve", {"csrf": admin.csrf})
    assert status == 303 and h["location"] == "/enrollments?ok=approved&id=1"
    with province_db.connect() as c:
        assert c.scalar("SELECT COUNT(*) FROM ratings WHERE device = ?", (NEW,)) == 3
        assert [r[0] for r in c.all("SELECT action FROM audit_log WHERE actor = 'admin' AND"
                                    " action LIKE 'enrollment.%' ORDER BY id")] == \
            ["enrollment.import", "enrollment.approve"]
    status, page, _h = admin.post("/enrollments/1/approve", {"csrf": admin.csrf})
    assert status == 409 and "already approved" in page
    assert admin.post("/enrollments/99/approve", {"csrf": admin.csrf})[0] == 404
    # /held: released rows show what they became; the hall manager sees their own hall only.
    status, page, _h = admin.get("/held?state=released")
    assert status == 200 and '<span id="count">3</span>' in page and NEW in page
    status, page, _h = mgr.get("/held?state=all")
    assert status == 200 and '<span id="count">3</span>' in page and "wh01-0d0e0f" not in page
    status, page, _h = mgr.get("/held?hall=wh01")
    assert status == 200 and '<span id="count">0</span>' in page
    status, page, _h = admin.get("/held")
    assert '<span id="count">1</span>' in page and "wh01-0d0e0f" in page and "未登记设备" in page
    status, body, h = admin.raw("/held?state=all&format=csv")
    text = body.decode("utf-8-sig")
    assert status == 200 and "暂存评价 Held ratings" in text and text.count("unknown-device") == 4


def test_pages_refuse_keeps_them_held(platform: str, province_db: Database) -> None:
    from platform_helpers import Client

    admin = Client(platform)
    admin.log_in("admin")
    admin.get("/enrollments")
    assert _upload(admin, admin.csrf, record(device=NEW))[0] == 303
    admin.get("/enrollments")
    status, page, _h = admin.post("/enrollments/1/refuse", {"csrf": admin.csrf, "reason": " "})
    assert status == 409 and "needs a reason" in page
    status, _page, _h = admin.post("/enrollments/1/refuse", {"csrf": admin.csrf, "reason": "未经批准的设备"})
    assert status == 303
    status, page, _h = admin.get(f"/held?device={NEW}")
    assert status == 200 and '<span id="count">3</span>' in page and page.count("未经批准的设备") == 3
    status, page, _h = admin.get("/enrollments?state=refused")
    assert 'id="enrollment-1"' in page and "未经批准的设备" in page
    with province_db.connect() as c:
        assert c.scalar("SELECT COUNT(*) FROM ratings WHERE device = ?", (NEW,)) == 0
