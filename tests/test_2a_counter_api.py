"""The counter system's operations through the authenticated HTTP API, against a real gateway, broker and
keypad messages: the clerk roster, checked text, a transaction id once, the prompt rate limit, the
read-back and webhooks that survive a receiver outage and a gateway restart."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import sqlite3
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import device_key, make_keystore
from gw_helpers import (
    Device,
    client,
    http,
    no_rating,
    rating,
    rows,
    start_gateway,
    token_of,
    wait_for,
    write_config,
)

from countersign.gateway import tokens
from countersign.gateway.apiclient import ApiCallError
from countersign.gateway.config import GatewayConfig
from countersign.gateway.gateway import Gateway
from countersign.gateway.roster import RosterError, parse_roster, write_roster
from countersign.gateway.store import Store
from countersign.gateway.textcheck import TextError, check_clerk, check_name, check_txn, clerk_pattern
from countersign.gateway.watch import KILL_ENV
from countersign.gateway.webhook import DELIVERY_HEADER, SIGNATURE_HEADER
from countersign.gateway.webhook import PART as WEBHOOK_PART
from countersign.protocol import messages
from countersign.protocol.keystore import Keystore
from countersign.sim.broker import Mosquitto, free_port

A, B = "hf01-w01", "hf01-w02"
KA, KB = device_key(1), device_key(2)
T0 = 1_780_000_000_000

Roster = list[tuple[str, str, list[str] | None]]
ROSTER: Roster = [("10001", "张伟", ["1"]), ("10002", "王芳", None)]


class Clock:
    """The gateway's clock, moved by the test (token bucket, expiry)."""

    def __init__(self) -> None:
        self.ms = T0

    def __call__(self) -> int:
        return self.ms


@dataclass
class Hall:
    gw: Gateway
    a: Device
    b: Device
    cfg: GatewayConfig
    roster: Path
    clock: Clock | None
    tmp: Path
    restart: Callable[[], Gateway] = field(repr=False)


@pytest.fixture
def make_hall(tmp_path: Path, hall_broker: Callable[[Keystore], Mosquitto]) -> Iterator[Callable[..., Hall]]:
    halls: list[Hall] = []

    def make(*, clock: bool = False, roster: Roster = ROSTER, **extra: Any) -> Hall:
        ks = make_keystore(devices=2)
        broker = hall_broker(ks)
        path = tmp_path / "roster.csv"
        write_roster(path, roster)
        clk = Clock() if clock else None
        if clk is not None:
            extra["now_ms"] = clk
        cfg = write_config(tmp_path, ks, broker.port, roster_path=path, **extra)
        a, b = Device(broker.port, A, KA).start(), Device(broker.port, B, KB).start()
        hall = Hall(start_gateway(cfg), a, b, cfg, path, clk, tmp_path, lambda: start_gateway(cfg))
        halls.append(hall)
        return hall

    yield make
    for h in halls:
        h.a.stop()
        h.b.stop()
        h.gw.stop()


def state(gw: Gateway) -> tuple[object, ...]:
    return (rows(gw, "SELECT * FROM sessions ORDER BY window"), rows(gw, "SELECT * FROM prompts ORDER BY id"),
            rows(gw, "SELECT count(*) FROM uplink_entries"))


def sessions_shown(d: Device) -> list[tuple[str | None, str | None]]:
    return [(s.clerk, s.clerk_name) for s in d.of_type(messages.Session)]


# --- the roster and the text a keypad shows ---------------------------------------------------------------

BAD_TEXT = ["\n", "\x00", "\u202e", "\u200b", "\r", "\u2028", "\ufeff"]


def test_sign_in_refusals_change_nothing(make_hall: Callable[..., Hall],
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    h = make_hall()
    gw = h.gw
    before = state(gw)
    cases: list[tuple[str, dict[str, Any], int]] = [
        ("1", {"clerk": "99999"}, 403),                          # the invented 工号 of the issue
        ("2", {"clerk": "10001"}, 403),                          # on the roster, not for window 2
        ("1", {"clerk": "10001", "name": "李四"}, 409),           # a name the roster does not know for him
        ("1", {"clerk": "10001\nCS:RATED 4"}, 400),              # would forge a console line on the keypad
        ("1", {"clerk": "10001 "}, 400),
        ("1", {"clerk": "１0001"}, 400),                          # fullwidth digit one
        ("1", {"clerk": "-1"}, 400),
        ("1", {"clerk": "1" * 17}, 400),
        ("1", {"clerk": 10001}, 400),
        ("1", {}, 400),
        ("1", {"clerk": "10001", "windows": "*"}, 400),          # unknown field
    ]
    cases += [("1", {"clerk": f"100{ch}01"}, 400) for ch in BAD_TEXT]
    cases += [("1", {"clerk": "10001", "name": f"张{ch}伟"}, 400) for ch in BAD_TEXT]
    cases += [("1", {"clerk": "10001", "name": "张伟" * 11}, 400)]   # 66 bytes of UTF-8
    for window, body, want in cases:
        status, answer = http(gw, "POST", f"/v1/windows/{window}/signin", body)
        assert status == want, (body, answer)
        assert "error" in answer
    # A lone surrogate cannot even be JSON-decoded into text: still a 400, never a dropped connection.
    status, _ = http(gw, "POST", "/v1/windows/1/signin", b'{"clerk": "100\\ud800"}')
    assert status == 400
    assert state(gw) == before

    # The keypads saw none of it: the first Session each receives is the valid sign-in below (QoS1 keeps
    # the order of one publisher's messages on one topic).
    assert http(gw, "POST", "/v1/windows/1/signin", {"clerk": "10001"})[0] == 200
    assert http(gw, "POST", "/v1/windows/2/signin", {"clerk": "10002", "name": "王芳"})[0] == 200
    assert h.a.wait(lambda: bool(h.a.of_type(messages.Session)))
    assert h.b.wait(lambda: bool(h.b.of_type(messages.Session)))
    assert sessions_shown(h.a) == [("10001", "张伟")]       # the roster's name, not the caller's
    assert sessions_shown(h.b) == [("10002", "王芳")]
    assert rows(gw, "SELECT window, clerk, name FROM sessions ORDER BY window") == [
        ("1", "10001", "张伟"), ("2", "10002", "王芳")]
    assert "clerk 10001 signed in by test-counter" in caplog.text


def test_no_roster_refuses_every_sign_in(tmp_path: Path,
                                         hall_broker: Callable[[Keystore], Mosquitto]) -> None:
    ks = make_keystore(devices=1)
    broker = hall_broker(ks)
    cfg = write_config(tmp_path, ks, broker.port, roster_path=None)
    gw = start_gateway(cfg)
    try:
        status, answer = http(gw, "POST", "/v1/windows/1/signin", {"clerk": "10001"})
        assert (status, "no clerk roster" in answer["error"]) == (409, True)
        assert rows(gw, "SELECT * FROM sessions") == []
    finally:
        gw.stop()


def test_roster_refreshed_without_restart(make_hall: Callable[..., Hall],
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    h = make_hall()
    c = client(h.gw)
    with pytest.raises(ApiCallError) as e:
        c.sign_in("1", "30001")
    assert e.value.status == 403
    c.sign_in("2", "10002")

    # HR re-exports: 30001 joins (at window 1), 10002 leaves.
    write_roster(h.roster, [("10001", "张伟", ["1"]), ("30001", "赵敏", ["1", "2"])])
    assert c.sign_in("1", "30001")["name"] == "赵敏"
    with pytest.raises(ApiCallError) as e:
        c.sign_in("2", "10002")
    assert e.value.status == 403
    # 10002 was still signed in at window 2 from before: no prompt is opened in a removed clerk's name.
    with pytest.raises(ApiCallError) as e:
        c.open_prompt("2", "T-removed", 1)
    assert e.value.status == 409
    assert rows(h.gw, "SELECT count(*) FROM prompts") == [(0,)]

    # A broken export keeps the roster in use and says why, naming the line.
    h.roster.write_text("工号,姓名,窗口\n30001,赵敏,1\n3000\u202e1,X,1\n", encoding="utf-8")
    assert c.sign_in("2", "30001")["clerk"] == "30001"
    assert "keeping the previous roster" in caplog.text and "line 3" in caplog.text


def test_roster_in_gb18030_without_bom(make_hall: Callable[..., Hall]) -> None:
    h = make_hall()
    # What a Chinese Excel saves: GB18030, no BOM, a Chinese header, windows separated by 、
    h.roster.write_bytes("工号,姓名,窗口,部门\r\n10007,欧阳娜娜,1、2,营业部\r\n".encode("gb18030"))
    assert client(h.gw).sign_in("2", "10007")["name"] == "欧阳娜娜"
    assert h.b.wait(lambda: sessions_shown(h.b) == [("10007", "欧阳娜娜")])


def test_roster_parsing() -> None:
    p = clerk_pattern()
    bom = "\ufeffclerk,name,windows\n1,A B,*\n2,C,1;2\n3,D,\"1,3\"\n".encode()
    got = parse_roster(bom, p)
    assert {k: (v.name, v.windows) for k, v in got.items()} == {
        "1": ("A B", None), "2": ("C", frozenset({"1", "2"})), "3": ("D", frozenset({"1", "3"}))}
    for raw, where in [(b"clerk,name\n1,A\n", "line 1"),
                       (b"clerk,name,windows\n1,A,1\n1,B,2\n", "line 3"),
                       (b"clerk,name,windows\n\n1,,1\n", "line 3"),
                       (b"clerk,name,windows\n1,A,\n", "line 2"),
                       (b"clerk,name,windows\n1,A,W 1\n", "line 2"),
                       (b"", "empty")]:
        with pytest.raises(RosterError, match=where):
            parse_roster(raw, p)


# --- transaction ids -------------------------------------------------------------------------------------


def test_same_txn_twice_is_409(make_hall: Callable[..., Hall]) -> None:
    h = make_hall()
    c = client(h.gw)
    c.sign_in("1", "10001")
    c.sign_in("2", "10002")
    pid = c.open_prompt("1", "T-1", 2)["prompt"]
    before = state(h.gw)
    for window in ("1", "2"):
        with pytest.raises(ApiCallError) as e:
            c.open_prompt(window, "T-1", 2)
        assert e.value.status == 409 and f"prompt {pid}" in str(e.value)
    for bad in ["", "T 1", "T-\n", "交易1", "x" * 65]:
        assert http(h.gw, "POST", "/v1/windows/1/prompt", {"txn": bad, "service": 2})[0] == 400
    assert state(h.gw) == before


def test_txn_once_after_upgrading_a_store_with_duplicates(
        tmp_path: Path, hall_broker: Callable[[Keystore], Mosquitto]) -> None:
    # A database from before: no txn table, the same txn already used twice.
    db = tmp_path / "gw.db"
    Store(db, lambda: T0).close()
    conn = sqlite3.connect(db)
    conn.executescript("DROP TRIGGER prompts_claim_txn; DROP TABLE prompt_txns; DROP TABLE prompt_due;")
    for _ in range(2):
        conn.execute("INSERT INTO prompts (device, window, clerk, service, txn, opened_ms, timeout)"
                     " VALUES (?, '1', '10001', 1, 'OLD-1', ?, 20)", (A, T0))
    conn.commit()
    conn.close()

    ks = make_keystore(devices=1)
    broker = hall_broker(ks)
    roster = tmp_path / "roster.csv"
    write_roster(roster, ROSTER)
    gw = start_gateway(write_config(tmp_path, ks, broker.port, roster_path=roster))
    try:
        c = client(gw)
        c.sign_in("1", "10001")
        with pytest.raises(ApiCallError) as e:
            c.open_prompt("1", "OLD-1", 1)
        assert e.value.status == 409 and "prompt 1" in str(e.value)
        c.open_prompt("1", "NEW-1", 1)
        with pytest.raises(ApiCallError) as e:
            c.open_prompt("1", "NEW-1", 1)
        assert e.value.status == 409
        # The database refuses it too, whoever inserts.
        with pytest.raises(sqlite3.IntegrityError), gw.store.transaction() as conn2:
            conn2.execute("INSERT INTO prompts (device, window, clerk, service, txn, opened_ms, timeout)"
                          " VALUES (?, '1', '10001', 1, 'NEW-1', ?, 20)", (A, T0))
        assert rows(gw, "SELECT txn, count(*) FROM prompts GROUP BY txn ORDER BY txn") == [
            ("NEW-1", 1), ("OLD-1", 2)]
    finally:
        gw.stop()


# --- the prompt rate limit -------------------------------------------------------------------------------


def test_500_prompts_in_a_second(make_hall: Callable[..., Hall]) -> None:
    h = make_hall(clock=True)
    assert h.clock is not None
    c = client(h.gw)
    c.sign_in("1", "10001")
    answers = [http(h.gw, "POST", "/v1/windows/1/prompt", {"txn": f"F-{i}", "service": 1})
               for i in range(500)]
    codes = [s for s, _ in answers]
    assert codes[:3] == [200, 200, 200] and set(codes[3:]) == {429}
    assert rows(h.gw, "SELECT count(*) FROM prompts") == [(3,)]

    req = urllib.request.Request(f"http://127.0.0.1:{h.gw.http_port}/v1/windows/1/prompt", method="POST",
                                 data=json.dumps({"txn": "F-x", "service": 1}).encode(),
                                 headers={"Authorization": f"Bearer {token_of(h.cfg)}"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 429 and e.value.headers["Retry-After"] == "5"

    # The keypad got 3 prompts, so at most 3 no-ratings: one for a prompt never opened is refused.
    assert h.a.wait(lambda: len(h.a.of_type(messages.Prompt)) == 3)
    pids = [p.prompt for p in h.a.of_type(messages.Prompt)]
    for seq, pid in enumerate([*pids, max(pids) + 1], start=1):
        h.a.publish(no_rating(KA, A, seq, prompt=pid))
    assert h.a.wait_acked({1, 2, 3, 4})
    assert rows(h.gw, "SELECT count(*) FROM ratings WHERE kind='no-rating' AND clerk='10001'") == [(3,)]
    assert h.gw.store.quarantine_counts() == {"unknown-prompt": 1}

    # Another window has its own allowance; this one gets one more prompt 5 s later.
    c.sign_in("2", "10002")
    assert c.open_prompt("2", "G-1", 1)["prompt"] > 0
    h.clock.ms += 5000
    c.open_prompt("1", "F-later", 1)
    with pytest.raises(ApiCallError) as e2:
        c.open_prompt("1", "F-later-2", 1)
    assert e2.value.status == 429


# --- read-back --------------------------------------------------------------------------------------------


def test_read_back_open_rated_no_rating_expired(make_hall: Callable[..., Hall]) -> None:
    h = make_hall(clock=True)
    assert h.clock is not None
    c = client(h.gw)
    c.sign_in("1", "10001")
    p1 = c.open_prompt("1", "R-1", 2, timeout=15)["prompt"]
    p2 = c.open_prompt("1", "R-2", 3)["prompt"]
    p3 = c.open_prompt("1", "R-3", 4)["prompt"]
    r = c.prompt_result(p1)
    assert r == {"prompt": p1, "window": "1", "txn": "R-1", "clerk": "10001", "service": 2, "opened_ms": T0,
                 "timeout": 15, "state": "open", "score": None, "scale": None, "rated_ms": None}

    h.a.publish(rating(KA, A, 1, score=1, prompt=p1))
    h.a.publish(no_rating(KA, A, 2, prompt=p2))
    assert h.a.wait_acked({1, 2})
    r = c.prompt_result(p1)
    assert (r["state"], r["score"], r["scale"], r["rated_ms"]) == ("rated", 1, 4, T0)
    assert c.prompt_result(p2)["state"] == "no-rating"
    # The keypad went offline: no outcome after the timeout and the grace.
    assert c.prompt_result(p3)["state"] == "open"
    h.clock.ms += 20_000 + 60_000
    assert c.prompt_result(p3)["state"] == "expired"
    assert c.prompt_result(p2)["state"] == "no-rating"

    # A credential for window 2 only cannot learn that prompt p1 of window 1 exists.
    assert h.cfg.tokens_path is not None
    other = client(h.gw, tokens.issue(h.cfg.tokens_path, "window-2-pc", frozenset({"2"})))
    for pid in (p1, 9999):
        with pytest.raises(ApiCallError) as e:
            other.prompt_result(pid)
        assert e.value.status == 404 and str(e.value) == f"no prompt {pid}"


# --- webhooks ---------------------------------------------------------------------------------------------


class Receiver:
    """A counter system's webhook endpoint: answers each POST with the next status of ``script``."""

    def __init__(self, script: list[int], port: int | None = None) -> None:
        self.script = list(script)
        self.got: list[tuple[int, dict[str, str], bytes]] = []
        self.cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with outer.cond:
                    status = outer.script.pop(0) if outer.script else 200
                    outer.got.append((status, dict(self.headers.items()), body))
                    outer.cond.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port or 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
        return wait_for(self.cond, predicate, timeout)

    def ok(self) -> list[dict[str, Any]]:
        with self.cond:
            return [json.loads(b) for s, _h, b in self.got if 200 <= s < 300]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    want = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, headers[SIGNATURE_HEADER])


def test_webhook_survives_receiver_outage_and_gateway_restart(make_hall: Callable[..., Hall],
                                                               caplog: pytest.LogCaptureFixture) -> None:
    h = make_hall(webhook_retry_s=0.2, webhook_retry_max_s=0.5)
    port = free_port()
    c = client(h.gw)
    for bad in ["ftp://127.0.0.1/x", "http://user:pw@127.0.0.1/x", "http:///x", "javascript:alert(1)",
                "http://127.0.0.1/a b", "http://127.0.0.1/\u202e", "http://127.0.0.1:99999/"]:
        assert http(h.gw, "PUT", "/v1/webhook", {"url": bad})[0] == 400, bad
    assert http(h.gw, "PUT", "/v1/webhook", {"url": f"http://127.0.0.1:{port}/x", "extra": 1})[0] == 400
    assert rows(h.gw, "SELECT count(*) FROM webhooks") == [(0,)]
    reg = c.set_webhook(f"http://127.0.0.1:{port}/hook?pc=3")
    secret = reg["secret"]
    assert len(secret) == 64

    c.sign_in("1", "10001")
    pid = c.open_prompt("1", "W-1", 2)["prompt"]
    h.a.publish(rating(KA, A, 1, score=3, prompt=pid))
    assert h.a.wait_acked({1})
    # Stored with the outcome, in its transaction: the delivery is in the database before anyone answers.
    assert rows(h.gw, "SELECT prompt, state FROM webhook_deliveries") == [(pid, "rated")]

    # The receiver is down (nothing listens on its port) while the gateway restarts, then up but failing
    # twice, then answering.
    h.gw.stop()
    recv = Receiver([503, 500], port=port)
    try:
        h.gw = h.restart()
        assert recv.wait(lambda: bool(recv.ok()))
        failed_then_ok = [s for s, _h, _b in recv.got]
        assert failed_then_ok == [503, 500, 200]
        bodies = {b for _s, _h, b in recv.got}
        assert len(bodies) == 1                         # the same event each time, unchanged
        _status, headers, body = recv.got[-1]
        assert verify(secret, headers, body)
        assert not verify("not-the-secret", headers, body)
        event = json.loads(body)
        want = {"event": "prompt-ended", "hall": "hf01", "prompt": pid, "txn": "W-1", "clerk": "10001",
                "state": "rated", "score": 3, "scale": 4, "window": "1", "service": 2}
        assert {k: event[k] for k in want} == want
        assert headers[DELIVERY_HEADER] == str(event["delivery"])

        # Acknowledged once: the next prompt's event arrives and the first is not sent again.
        c = client(h.gw)
        p2 = c.open_prompt("1", "W-2", 2)["prompt"]
        h.a.publish(no_rating(KA, A, 2, prompt=p2))
        assert recv.wait(lambda: len(recv.ok()) == 2)
        assert [(e["prompt"], e["state"]) for e in recv.ok()] == [(pid, "rated"), (p2, "no-rating")]
        refused = caplog.text.count("Connection refused")    # tries while nothing listened: 0 or more
        # One sender thread records each answer before it sends the next delivery.
        assert rows(h.gw, "SELECT attempts, delivered_ms IS NOT NULL FROM webhook_deliveries WHERE id=?",
                    (event["delivery"],)) == [(refused + 3, 1)]      # refused, 503, 500, 200

        # Deleted: later outcomes are not sent.
        assert c.delete_webhook()["url"] is None
        with pytest.raises(ApiCallError) as e:
            c.delete_webhook()
        assert e.value.status == 404
    finally:
        recv.close()


def test_webhook_for_an_expired_prompt_and_only_own_windows(make_hall: Callable[..., Hall]) -> None:
    h = make_hall(clock=True)
    assert h.clock is not None and h.cfg.tokens_path is not None
    recv_all, recv_2 = Receiver([]), Receiver([])
    try:
        c = client(h.gw)
        c.set_webhook(f"http://127.0.0.1:{recv_all.port}/")
        w2 = client(h.gw, tokens.issue(h.cfg.tokens_path, "window-2-pc", frozenset({"2"})))
        assert w2.set_webhook(f"http://127.0.0.1:{recv_2.port}/")["windows"] == ["2"]
        c.sign_in("1", "10001")
        c.sign_in("2", "10002")
        p1 = c.open_prompt("1", "E-1", 1)["prompt"]
        p2 = w2.open_prompt("2", "E-2", 1)["prompt"]
        h.clock.ms += 20_000 + 60_000        # both keypads offline past timeout + grace
        h.gw.webhooks.wake()
        assert recv_all.wait(lambda: len(recv_all.ok()) == 2)
        assert sorted((e["prompt"], e["state"]) for e in recv_all.ok()) == [(p1, "expired"), (p2, "expired")]
        assert recv_2.wait(lambda: len(recv_2.ok()) == 1)
        assert [e["prompt"] for e in recv_2.ok()] == [p2]

        # The keypad comes back with its no-rating: stored, and announced with its real state.
        h.b.publish(no_rating(KB, B, 1, prompt=p2))
        assert recv_2.wait(lambda: len(recv_2.ok()) == 2)
        assert recv_2.ok()[-1]["state"] == "no-rating"

        # Revoked: that counter PC is sent nothing more, the others carry on.
        tokens.revoke(h.cfg.tokens_path, "window-2-pc")
        p3 = c.open_prompt("2", "E-3", 1)["prompt"]
        h.b.publish(no_rating(KB, B, 2, prompt=p3))
        assert recv_all.wait(lambda: len(recv_all.ok()) == 4)        # p2's no-rating, then p3's
        assert recv_all.ok()[-1]["prompt"] == p3
        assert h.gw.wait_until(lambda: rows(
            h.gw, "SELECT last_error FROM webhook_deliveries WHERE caller='window-2-pc' AND prompt=?",
            (p3,)) == [("credential revoked or unknown: not sent",)], 10)
        assert len(recv_2.got) == 2
    finally:
        recv_all.close()
        recv_2.close()


def test_bad_roster_at_start_refuses_sign_in(tmp_path: Path, hall_broker: Callable[[Keystore], Mosquitto],
                                             caplog: pytest.LogCaptureFixture) -> None:
    ks = make_keystore(devices=1)
    broker = hall_broker(ks)
    roster = tmp_path / "roster.csv"
    roster.write_text("工号,姓名\n10001,张伟\n", encoding="utf-8")     # no windows column
    gw = start_gateway(write_config(tmp_path, ks, broker.port, roster_path=roster))
    try:
        status, answer = http(gw, "POST", "/v1/windows/1/signin", {"clerk": "10001"})
        assert status == 409 and "no clerk roster" in answer["error"] and "line 1" in answer["error"]
        assert "no roster loaded" in caplog.text
        write_roster(roster, ROSTER)                       # fixed: usable at once
        assert http(gw, "POST", "/v1/windows/1/signin", {"clerk": "10001"})[0] == 200
    finally:
        gw.stop()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")   # the injected fault
def test_webhook_sender_death_is_fatal(tmp_path: Path, hall_broker: Callable[[Keystore], Mosquitto],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KILL_ENV, WEBHOOK_PART)       # the sender's thread raises, as a bug in it would
    ks = make_keystore(devices=1)
    broker = hall_broker(ks)
    died: list[BaseException] = []
    gw = Gateway(write_config(tmp_path, ks, broker.port), on_fatal=died.append)
    gw.start()
    try:
        assert gw.failed.wait(10)
        assert WEBHOOK_PART in str(died[0])
    finally:
        gw.stop()


def test_text_checks() -> None:
    p = clerk_pattern()
    assert check_clerk("A-10023", p) == "A-10023"
    assert check_name("  欧阳 娜娜 ") == "欧阳 娜娜"
    invisible = ["\u200e", "\u200f", "\u202a", "\u202d", "\u2066", "\u2069", "\u061c", "\u00ad", "\u2060",
                 "\ue000", "\u2029", "\x7f", "\x85", "\ud800"]
    for ch in invisible:
        with pytest.raises(TextError):
            check_name(f"张{ch}三")
        with pytest.raises(TextError):
            check_clerk(f"1{ch}", clerk_pattern(".+"))      # even under a loose pattern
    for bad in ["", "   ", "张" * 22]:
        with pytest.raises(TextError):
            check_name(bad)
    assert check_txn("T-20261128/0042#a") == "T-20261128/0042#a"
    for bad_txn in ["", " ", "T\t1", "交易", "x" * 65, 7]:
        with pytest.raises(TextError):
            check_txn(bad_txn)
    with pytest.raises(TextError):
        check_clerk("10001\n", clerk_pattern("^[0-9]+$"))     # "$" matches before a final newline; not here
