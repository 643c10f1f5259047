"""The open read API over real HTTP (uvicorn) on a real database, SQLite and PostgreSQL alike: tokens
(missing, wrong, revoked -> 401), pagination that walks every row once, filters, aggregates that agree
with figures.py, keypads, a rating's COSE_Mac0 re-verified from the API's base64 with the keypad's key,
the OpenAPI 3.1 description (every route in it, every documented parameter accepted, nothing else), and
`countersign province api-client add|revoke|list` (the token printed once, only its hash stored)."""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from analytics_helpers import TZ, Rows, noon_ms, prepared
from platform_helpers import NOW_MS as PLATFORM_NOW
from platform_helpers import Client, Clock, fill, start
from starlette.applications import Starlette
from starlette.routing import Mount

from countersign.protocol import cose, messages
from countersign.province import api_cli
from countersign.province.api import ENDPOINTS, MAX_LIMIT, api_routes, openapi
from countersign.province.apiclients import add_client, revoke_client, token_hash
from countersign.province.db import Conn, Database
from countersign.province.figures import Filter, total
from countersign.province.web import PlatformServer

NOW = noon_ms("2026-11-20")


@dataclass
class Api:
    url: str
    conn: Conn
    db: Database
    token: str

    def get(self, path: str, token: str | None = "", **params: Any) -> tuple[int, dict[str, Any]]:
        url = path if path.startswith("http") else self.url + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        return fetch(url, self.token if token == "" else token)


def fetch(url: str, token: str | None) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read())
        return exc.code, body


@pytest.fixture
def api(province_db: Database) -> Iterator[Api]:
    conn = prepared(province_db)
    token = add_client(conn, "erp", "test", NOW)
    app = Starlette(routes=[Mount("/api/v1", routes=api_routes(province_db, TZ, lambda: NOW))])
    server = PlatformServer(app, "127.0.0.1", 0).start()
    try:
        yield Api(server.url + "/api/v1", conn, province_db, token)
    finally:
        server.stop()
        conn.close()


def test_no_token_a_wrong_one_or_a_revoked_one_is_401(api: Api) -> None:
    Rows(api.conn).many("hf01", "A-001", 2, 1, "2026-11-10")
    for token in (None, "cs1_not-a-token", "", " "):
        status, body = api.get("/ratings", token=token if token != "" else None)
        assert status == 401 and body["error"] == "unauthorized" and body["detail"], token
    req = urllib.request.Request(api.url + "/ratings", headers={"Authorization": f"Basic {api.token}"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 401 and err.value.headers["WWW-Authenticate"].startswith("Bearer")
    status, body = api.get("/ratings")
    assert status == 200 and len(body["data"]) == 3
    other = add_client(api.conn, "bi", "test", NOW)
    revoke_client(api.conn, "erp", "test", NOW)
    for path in ("/ratings", "/prompts", "/aggregates?by=hall", "/keypads"):
        status, body = api.get(path)
        assert (status, body["error"]) == (401, "unauthorized"), path
        assert api.get(path, token=other)[0] == 200, path
    # Only the hash is stored; the audit log names both changes.
    assert api.conn.scalar("SELECT COUNT(*) FROM api_clients WHERE token_hash = ?", (token_hash(other),)) == 1
    assert not any(other in str(r) for r in api.conn.all("SELECT * FROM api_clients"))
    assert [r[0] for r in api.conn.all("SELECT action FROM audit_log ORDER BY id")] == \
        ["api-client.add", "api-client.add", "api-client.revoke"]


def test_pagination_walks_every_row_once_and_new_rows_come_at_the_end(api: Api) -> None:
    rows = Rows(api.conn)
    for i in range(237):
        rows.rating("hf01" if i % 3 else "hf02", f"A-{i % 7:03d}", 1 + i % 4, f"2026-11-{1 + i % 20:02d}")
    want = [r[0] for r in api.conn.all("SELECT id FROM ratings ORDER BY id")]
    seen: list[int] = []
    status, page = api.get("/ratings", limit=50)
    pages = 1
    while True:
        assert status == 200 and len(page["data"]) <= 50
        seen += [r["id"] for r in page["data"]]
        if pages == 2:       # a rating arriving mid-walk has a higher id: it is on a later page, once
            want.append(rows.rating("hf01", "A-001", 4, "2026-11-05"))
        if page["next"] is None:
            break
        status, page = api.get(page["next"])
        pages += 1
    assert seen == want and len(set(seen)) == 238 and pages == 5
    # The same for prompts, with a filter kept across pages.
    walked: list[int] = []
    status, page = api.get("/prompts", limit=40, hall="hf02")
    while True:
        walked += [p["id"] for p in page["data"]]
        assert {p["hall"] for p in page["data"]} <= {"hf02"}
        if page["next"] is None:
            break
        assert "hall=hf02" in page["next"]
        status, page = api.get(page["next"])
    assert walked == [r[0] for r in api.conn.all("SELECT id FROM prompts WHERE hall = 'hf02' ORDER BY id")]
    for bad in (0, MAX_LIMIT + 1, -1, "ten"):
        status, body = api.get("/ratings", limit=bad)
        assert (status, body["error"]) == (400, "bad-parameter"), bad
    assert len(api.get("/ratings", limit=MAX_LIMIT)[1]["data"]) == 238


def test_filters_aggregates_and_keypads(api: Api) -> None:
    rows = Rows(api.conn)
    rows.many("hf01", "A-001", 5, 2, "2026-11-09", service=1)
    rows.many("hf01", "A-002", 3, 0, "2026-11-10", service=2)
    rows.many("hf02", "B-001", 4, 4, "2026-11-10", service=1, window="2")
    rows.rating("hf02", "B-001", None, "2026-11-10", service=1, window="2")
    rows.rating("wh01", None, 4, "2026-11-11", invite=True, service=0)

    def ids(path: str, **params: Any) -> set[int]:
        status, body = api.get(path, limit=1000, **params)
        assert status == 200, body
        return {r["id"] for r in body["data"]}

    def where(sql: str, *args: Any) -> set[int]:
        return {r[0] for r in api.conn.all(f"SELECT id FROM ratings WHERE {sql}", args)}

    assert ids("/ratings", **{"from": "2026-11-10", "to": "2026-11-10"}) == where("day = '2026-11-10'")
    assert ids("/ratings", hall="hf01") == where("hall = 'hf01'")
    assert ids("/ratings", hall="hf01", clerk="A-002") == where("clerk = 'A-002'")
    assert len(where("clerk = 'A-002'")) == 3
    assert ids("/ratings", service=1) == where("service = 1")
    assert ids("/ratings", kind="no-rating") == where("kind = 'no-rating'")
    assert len(where("kind = 'no-rating'")) == 1
    assert ids("/ratings", device="hf02-w02", **{"from": "2026-11-11"}) == set()
    assert len(ids("/prompts", clerk="B-001")) == 9
    status, body = api.get("/ratings", kind="no-rating")
    nr = body["data"][0]
    assert (nr["score"], nr["score_name"], nr["satisfied"], nr["press_time"]) == (None, None, None,
                                                                                  "2026-11-10T12:00:00+08:00")

    for by in ("hall", "clerk", "service", "day"):
        status, body = api.get("/aggregates", by=by, **{"from": "2026-11-09", "to": "2026-11-11"})
        assert status == 200
        want = total(api.conn, Filter(day_from="2026-11-09", day_to="2026-11-11"))
        assert body["total"]["ratings"] == want.ratings == 7 + 3 + 8 + 1
        assert body["as_of"] == "2026-11-20T12:00:00+08:00"               # the app's clock
        assert sum(g["ratings"] for g in body["data"]) == want.ratings
        assert sum(g["prompts"] for g in body["data"]) == want.prompts
    status, body = api.get("/aggregates", by="clerk", hall="hf02")
    assert [(g["hall"], g["clerk"], g["ratings"], g["satisfied"]) for g in body["data"]] == \
        [("hf02", "B-001", 8, 4)]
    assert body["data"][0]["satisfaction_rate"] == 0.5 and body["data"][0]["wilson_low"] < 0.5
    status, body = api.get("/aggregates", by="service")
    names = {g["service"]: g["service_name"] for g in body["data"]}
    assert names == {0: "未知", 1: "业扩报装", 2: "电费缴纳"}
    assert api.get("/aggregates")[1]["error"] == "missing-parameter"

    api.conn.execute('INSERT INTO devices (device, hall, key, epoch, "window", scale, revoked, source,'
                     " changed_ms) VALUES ('hf01-w01', 'hf01', ?, 1, '1', 4, 0, 'registry', ?),"
                     " ('hf01-w09', 'hf01', ?, 2, '9', 5, 1, 'enrollment', ?)",
                     (b"k" * 32, NOW, b"k" * 32, NOW))
    api.conn.execute("INSERT INTO keypad_status (device, hall, seen_ms, online, fw, reset_cause, free_heap,"
                     " outbox, rssi, stuck_keys, reported_ms) VALUES ('hf01-w01', 'hf01', ?, 1, '1.25.0',"
                     " 'power-on', 81920, 2, -60, NULL, ?), ('wh01-w03', 'wh01', ?, 0, '1.24.1', 'watchdog',"
                     " 50000, 7, -80, '2', ?)", (NOW, NOW, NOW - 5000, NOW))
    status, body = api.get("/keypads")
    got = {k["device"]: k for k in body["data"]}
    assert list(got) == ["hf01-w01", "hf01-w09", "wh01-w03"]
    assert got["hf01-w01"]["status"]["online"] is True and got["hf01-w01"]["status"]["outbox"] == 2
    assert got["hf01-w09"]["status"] is None and got["hf01-w09"]["revoked"] is True
    assert got["wh01-w03"]["registered"] is False and got["wh01-w03"]["status"]["stuck_keys"] == "2"
    status, body = api.get("/keypads", limit=2)
    assert [k["device"] for k in body["data"]] == ["hf01-w01", "hf01-w09"]
    status, body = api.get(body["next"])
    assert [k["device"] for k in body["data"]] == ["wh01-w03"] and body["next"] is None
    assert [k["device"] for k in api.get("/keypads", hall="wh01")[1]["data"]] == ["wh01-w03"]


def test_a_rating_from_the_api_verifies_with_its_keypads_key(api: Api) -> None:
    key = bytes(range(32))
    payload = messages.Rating(epoch=1, seq=1, score=1, scale=4, prompt=1, time=1_763_600_000, mono=1000,
                              delay=1500, boot=1).encode()
    sealed = cose.mac0_encode(key, b"hf01-w01", payload)
    rid = Rows(api.conn).rating("hf01", "A-001", 1, "2026-11-10", cose=sealed)
    _, body = api.get("/ratings")
    got = next(r for r in body["data"] if r["id"] == rid)
    raw = base64.b64decode(got["cose"], validate=True)
    assert raw == sealed
    verified = cose.mac0_verify(raw, lambda kid: key if kid == b"hf01-w01" else None)
    decoded = messages.decode_payload(verified.payload)
    assert isinstance(decoded, messages.Rating) and decoded.score == got["score"] == 1
    assert got["score_name"] == "不满意" and got["satisfied"] is False and got["invite_key"] is False
    with pytest.raises(cose.VerifyError):
        cose.mac0_verify(raw, lambda kid: bytes(32))


SAMPLES = {"from": "2026-11-01", "to": "2026-11-30", "hall": "hf01", "clerk": "A-001", "service": "2",
           "device": "hf01-w01", "limit": "10", "kind": "rating", "by": "hall"}


def test_openapi_describes_every_route_and_every_documented_parameter_is_accepted(api: Api) -> None:
    Rows(api.conn).many("hf01", "A-001", 3, 1, "2026-11-10")
    with urllib.request.urlopen(api.url + "/openapi.json", timeout=10) as resp:   # no token needed
        doc = json.loads(resp.read())
    assert doc["openapi"] == "3.1.0" and doc["servers"] == [{"url": "/api/v1"}]
    assert doc == json.loads(json.dumps(openapi("/api/v1")))
    routes = {r.path for r in api_routes(api.db, TZ, lambda: NOW)}   # type: ignore[attr-defined]
    assert set(doc["paths"]) == routes == {"/ratings", "/prompts", "/aggregates", "/keypads", "/openapi.json"}
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "$ref":
                    yield v
                else:
                    yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)

    for ref in refs(doc):
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"]
    for ep in ENDPOINTS:
        op = doc["paths"][ep.path]["get"]
        assert {"200", "400", "401"} <= set(op["responses"])
        params = op["parameters"]
        assert [p["name"] for p in params] == [p.name for p in ep.params]
        required = {p["name"]: SAMPLES[p["name"]] for p in params if p["required"]}
        for p in params:
            assert p["in"] == "query" and p["schema"]["type"]
            value = "hf01-w00" if ep.path == "/keypads" and p["name"] == "after" else \
                SAMPLES.get(p["name"], "1")
            status, body = api.get(ep.path, **{**required, p["name"]: value})
            assert status == 200, (ep.path, p["name"], body)
        status, body = api.get(ep.path, **required, color="blue")
        assert (status, body["error"]) == (400, "unknown-parameter"), ep.path
        assert "color" in body["detail"]
    # Bad values of documented parameters: 400 with a reason, never a 500 or a silent default.
    for path, params in (("/ratings", {"from": "2026-13-01"}), ("/ratings", {"from": "yesterday"}),
                         ("/ratings", {"service": "two"}), ("/ratings", {"kind": "great"}),
                         ("/ratings", {"from": "2026-11-10", "to": "2026-11-01"}),
                         ("/aggregates", {"by": "window"}), ("/prompts", {"after": "-5"})):
        status, body = api.get(path, **params)
        assert status == 400 and body["error"] == "bad-parameter" and body["detail"], (path, params)
    status, body = api.get("/ratings?hall=hf01&hall=hf02")
    assert status == 400


def test_the_api_client_command_prints_the_token_once_and_revokes_it(api: Api, tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="countersign province")
    api_cli.register(parser.add_subparsers(dest="province_cmd", required=True))

    config = tmp_path / "province.toml"       # the same database named by a config file's `database`
    config.write_text(f"database = {json.dumps(api.db.url)}\ntimezone = \"Asia/Shanghai\"\n")

    def run(*argv: str, where: tuple[str, str] = ("--db", api.db.url)) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        args = parser.parse_args([*argv, *where])
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = args.func(args)
        return code, out.getvalue(), err.getvalue()

    code, out, err = run("api-client", "add", "crm")
    token = out.strip()
    assert code == 0 and out.count("\n") == 1 and token.startswith("cs1_") and token not in err
    assert api.get("/ratings", token=token)[0] == 200
    code, out, err = run("api-client", "list", where=("--config", str(config)))
    assert code == 0 and token not in out
    lines = dict(line.split("\t", 1) for line in out.splitlines())
    assert set(lines) == {"erp", "crm"} and "active" in lines["crm"] and "cli:" in lines["crm"]
    assert run("api-client", "add", "crm")[0] == 1                       # a name is used once
    assert run("api-client", "add", "no spaces please")[0] == 1
    code, out, err = run("api-client", "revoke", "crm")
    assert code == 0 and out == ""
    assert api.get("/ratings", token=token)[0] == 401
    assert "revoked" in dict(line.split("\t", 1) for line in run("api-client", "list")[1].splitlines())["crm"]
    assert run("api-client", "revoke", "crm")[0] == 1
    assert run("api-client", "revoke", "nobody")[0] == 1
    assert run("api-client", "list", where=("--db", str(tmp_path / "none.db")))[0] == 2
    assert not (tmp_path / "none.db").exists()                          # a typo creates no database
    actors = api.conn.all("SELECT actor, action, target FROM audit_log WHERE target = 'crm' ORDER BY id")
    assert [(a.startswith("cli:"), act) for a, act, _ in actors] == [(True, "api-client.add"),
                                                                     (True, "api-client.revoke")]


def test_the_platform_serves_the_api_at_api_v1_and_a_log_in_is_no_token(province_db: Database,
                                                                        tmp_path: Path) -> None:
    fill(province_db)
    server = start(tmp_path, province_db, Clock())
    try:
        with province_db.connect() as conn:
            token = add_client(conn, "erp", "test", PLATFORM_NOW)
        base = server.url + "/api/v1"
        with urllib.request.urlopen(base + "/openapi.json", timeout=10) as resp:
            assert json.loads(resp.read())["servers"] == [{"url": "/api/v1"}]
        status, body = fetch(base + "/ratings?limit=3", token)
        assert status == 200 and len(body["data"]) == 3 and body["next"] is not None
        # A person's session is not an API client: a logged-in admin's cookie gets 401 here.
        browser = Client(server.url)
        assert browser.log_in("admin") == 303
        status, raw, _ = browser.raw("/api/v1/ratings")
        assert status == 401 and json.loads(raw)["error"] == "unauthorized"
        status, raw, headers = browser.raw("/api/v1/nothing")
        assert status == 404 and headers["content-type"].startswith("application/json")
    finally:
        server.stop()
