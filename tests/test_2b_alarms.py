"""Alarms that reach a person: raised once from the store, pushed through apprise to a real local HTTP
receiver (json://), retried while it is down, cleared when the cause goes; business hours; restarts."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from conftest import device_key, make_keystore
from gw_helpers import Device, rating, rows, start_gateway, write_config

from countersign.gateway.gateway import Gateway
from countersign.gateway.hours import BusinessHours
from countersign.gateway.store import Store
from countersign.protocol import cose, messages
from countersign.protocol.context import Context
from countersign.protocol.keystore import Keystore
from countersign.sim.broker import Mosquitto, free_port

A, KA = "hf01-w01", device_key(1)
SHANGHAI = ZoneInfo("Asia/Shanghai")


class Clock:
    """The wall clock plus an offset the test moves forward (heartbeat periods pass at once)."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self.offset_ms = 0 if start is None else int(start.timestamp() * 1000) - int(time.time() * 1000)

    def __call__(self) -> int:
        return int(time.time() * 1000) + self.offset_ms

    def advance(self, seconds: float) -> None:
        self.offset_ms += int(seconds * 1000)


class Receiver:
    """A webhook receiver on a fixed port that can be started late (apprise's json:// posts here)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.got: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with outer.cond:
                    outer.got.append(json.loads(body))
                    outer.cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def wait(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self.got):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True


def eventually(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    """For state the gateway's own threads change with no event to wait on (alarm passes, retries)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            return False
        pause.wait(0.05)
    return True


def health(device: str, key: bytes, nonce: int, *, stuck: int = 0, outbox: int = 0,
           outbox_free: int = 100) -> bytes:
    payload = messages.Heartbeat(epoch=1, boot=1, nonce=nonce, fw="1.2.0", reset=1, heap=40000, outbox=outbox,
                                 outbox_free=outbox_free, uptime=5, rssi=-50, ignored=0, stuck=stuck,
                                 time=None).encode()
    return cose.mac0_encode(key, device.encode(), payload)


def open_alarms(gw: Gateway, kind: str) -> list[dict[str, Any]]:
    return [a for a in gw.store.open_alarms() if a["kind"] == kind]


@pytest.fixture
def hall(tmp_path: Path, hall_broker: Callable[[Keystore], Mosquitto]) -> Iterator[dict[str, Any]]:
    ks = make_keystore(devices=1)
    broker = hall_broker(ks)
    started: list[Any] = []

    def gateway(clock: Clock, **extra: Any) -> Gateway:
        extra.setdefault("alarm_check_s", 0.2)
        extra.setdefault("heartbeat_s", 1)
        cfg = write_config(tmp_path, ks, broker.port, now_ms=clock, notify_retry_s=0.2,
                           notify_retry_max_s=1.0, **extra)
        gw = start_gateway(cfg)
        started.append(gw)
        return gw

    def device() -> Device:
        d = Device(broker.port, A, KA).start()
        started.append(d)
        return d

    yield {"gateway": gateway, "device": device, "tmp": tmp_path}
    for part in reversed(started):
        part.stop()


def test_offline_raised_once_pushed_through_a_late_receiver_cleared_and_pushed(
        hall: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    port = free_port()
    receiver = Receiver(port)      # not listening yet: the first pushes are refused
    clock = Clock()
    # a second target that never answers must not hold up the first
    dead = f"json://127.0.0.1:{free_port()}/never"
    gw: Gateway = hall["gateway"](clock, heartbeat_s=2, alarm_notify=(
        f"json://hook:s3cret-token@127.0.0.1:{port}/hook", dead))
    dev: Device = hall["device"]()
    try:
        dev.publish(health(A, KA, 1))
        assert gw.wait_until(lambda: gw.store.devices().get(A, {}).get("online") is True, 10)
        assert open_alarms(gw, "offline") == []

        clock.advance(7)     # more than 3 heartbeat periods of 2 s with nothing from the keypad
        assert eventually(lambda: len(open_alarms(gw, "offline")) == 1)
        # the receiver is down: the push is retried (with backoff), and the alarm is not raised again
        assert eventually(lambda: bool(rows(gw, "SELECT 1 FROM notify_deliveries WHERE tries >= 2"
                                                " AND sent_ms IS NULL")))
        assert len(rows(gw, "SELECT id FROM alarms WHERE kind='offline'")) == 1

        receiver.start()
        assert receiver.wait(lambda got: len(got) >= 1)
        first = receiver.got[0]
        assert "键盘离线" in first["title"] and A in first["title"] and first["type"] == "failure"

        dev.publish(health(A, KA, 2))      # the keypad is back
        assert eventually(lambda: open_alarms(gw, "offline") == [])
        assert receiver.wait(lambda got: len(got) >= 2)
        second = receiver.got[1]
        assert "已恢复" in second["title"] and A in second["title"] and second["type"] == "success"
        (cleared,) = rows(gw, "SELECT cleared_ms FROM alarms WHERE kind='offline'")
        assert cleared[0] is not None
        assert len(receiver.got) == 2      # each event pushed once, not again once delivered
        # the target that never answers still holds both events, retrying; the status says so
        assert gw.status()["notifications_pending"] == 2
        assert 'countersign_gateway_notifications_pending{hall="hf01"} 2' in gw.metrics()
        assert "s3cret-token" not in caplog.text      # a URL's secret is never logged
        assert "json://127.0.0.1" in caplog.text       # its scheme and host are
    finally:
        receiver.stop()


def test_last_will_raises_offline_at_once(hall: dict[str, Any]) -> None:
    gw: Gateway = hall["gateway"](Clock())
    dev: Device = hall["device"]()
    dev.publish(health(A, KA, 1))
    assert gw.wait_until(lambda: gw.store.devices().get(A, {}).get("online") is True, 10)
    dev.publish(b"", topic=f"cs/1/d/{A}/will")
    assert eventually(lambda: len(open_alarms(gw, "offline")) == 1)
    assert "last will" in open_alarms(gw, "offline")[0]["detail"]


def _silent_keypad(gw: Gateway, dev: Device, clock: Clock) -> None:
    """Three prompts opened at window 1 that end with nothing from the keypad, which still heartbeats."""
    dev.publish(health(A, KA, 1))
    assert gw.wait_until(lambda: gw.store.devices().get(A, {}).get("online") is True, 10)
    with gw.store.transaction() as c:
        for i in range(3):
            gw.store.insert_prompt(c, A, Context("1", "10001", 1, f"t-{i}", clock(), "张三"), 10)
    clock.advance(25)             # past each prompt's 10 s timeout and the grace for its no-rating
    dev.publish(health(A, KA, 2))
    assert gw.wait_until(lambda: gw.store.devices().get(A, {}).get("last_seen_ms", 0) >= clock() - 5000, 10)


@pytest.mark.parametrize(("when", "raised"), [
    (dt.datetime(2026, 12, 2, 10, 0, tzinfo=SHANGHAI), True),     # a Wednesday morning: open
    (dt.datetime(2026, 12, 2, 20, 0, tzinfo=SHANGHAI), False),    # that evening: closed
    (dt.datetime(2026, 12, 6, 10, 0, tzinfo=SHANGHAI), False),    # a Sunday (hours are mon-sat)
    (dt.datetime(2026, 10, 1, 10, 0, tzinfo=SHANGHAI), False),    # a closed date (National Day)
])
def test_silent_keypad_alarmed_only_in_business_hours(hall: dict[str, Any], when: dt.datetime,
                                                      raised: bool) -> None:
    clock = Clock(when)
    hours = BusinessHours.parse("mon-sat", "08:30", "17:30", ["2026-10-01"])
    # heartbeat_s: the 25 s the clock jumps must not make the keypad offline meanwhile
    gw: Gateway = hall["gateway"](clock, hours=hours, silent_minutes=1, heartbeat_s=600)
    dev: Device = hall["device"]()
    _silent_keypad(gw, dev, clock)
    gw.alarms.check()
    silent = open_alarms(gw, "silent")
    assert [a["device"] for a in silent] == ([A] if raised else [])
    assert open_alarms(gw, "offline") == []
    if raised:
        assert "3 prompts" in silent[0]["detail"]
        dev.publish(rating(KA, A, 1))          # the keypad rates again: silent no more
        assert dev.wait_acked({1})
        assert eventually(lambda: open_alarms(gw, "silent") == [])


def test_stuck_key_and_outbox_nearly_full_raised_once_and_cleared(hall: dict[str, Any]) -> None:
    gw: Gateway = hall["gateway"](Clock(), heartbeat_s=600)
    dev: Device = hall["device"]()
    dev.publish(health(A, KA, 1, stuck=0b100, outbox=95, outbox_free=5))
    assert eventually(lambda: len(open_alarms(gw, "stuck-key")) == 1
                      and len(open_alarms(gw, "outbox-full")) == 1)
    assert "key(s) 3" in open_alarms(gw, "stuck-key")[0]["detail"]
    dev.publish(health(A, KA, 2, stuck=0b100, outbox=96, outbox_free=4))
    assert gw.wait_until(lambda: (gw.store.devices()[A]["last"] or {}).get("nonce") == 2, 10)
    gw.alarms.check()
    assert len(rows(gw, "SELECT id FROM alarms WHERE kind IN ('stuck-key', 'outbox-full')")) == 2
    dev.publish(health(A, KA, 3))
    assert eventually(lambda: open_alarms(gw, "stuck-key") == [] and open_alarms(gw, "outbox-full") == [])


def test_counters_and_alarm_state_survive_a_restart(hall: dict[str, Any]) -> None:
    clock = Clock()
    gw: Gateway = hall["gateway"](clock, heartbeat_s=600)     # no offline alarm coming and going meanwhile
    dev: Device = hall["device"]()
    for seq in (1, 2):
        dev.publish(rating(KA, A, seq))
    dev.publish(rating(KA, A, 1))                       # a duplicate
    dev.publish(b"\xff not cbor")                        # rejected
    dev.publish(health(A, KA, 1, stuck=1))
    assert gw.wait_until(lambda: gw.stats().get("rejected") == 1
                         and gw.stats().get("duplicates") == 1 and gw.stats().get("health") == 1, 10)
    assert eventually(lambda: len(open_alarms(gw, "stuck-key")) == 1)
    with gw.store.transaction() as c:
        assert Store.ack_alarm(c, open_alarms(gw, "stuck-key")[0]["id"], clock(), "wang")
    before_counts, before_status = gw.stats(), gw.status()
    before_alarms = gw.store.open_alarms()
    assert before_counts["stored"] == 2
    gw.stop()

    gw2: Gateway = hall["gateway"](clock, heartbeat_s=600)
    assert gw2.stats() == before_counts
    st = gw2.status()
    assert (st["counts"], st["rejected"]) == (before_status["counts"], before_status["rejected"])
    assert gw2.store.open_alarms() == before_alarms
    assert before_alarms[0]["acked_by"] == "wang"
    dev.publish(rating(KA, A, 3))
    assert gw2.wait_until(lambda: gw2.stats().get("stored") == 3, 10)


def test_an_older_database_gets_the_alarm_columns(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE alarms (id INTEGER PRIMARY KEY, ms INTEGER NOT NULL, kind TEXT NOT NULL,"
                  " device TEXT, detail TEXT NOT NULL, cleared_ms INTEGER)")
        c.execute("INSERT INTO alarms (ms, kind, device, detail) VALUES (1, 'storage', NULL, 'low')")
    c.close()
    store = Store(db, lambda: 5)
    try:
        assert [(a["kind"], a["acked_by"]) for a in store.open_alarms()] == [("storage", None)]
        with store.transaction() as t:
            assert Store.ack_alarm(t, store.open_alarms()[0]["id"], 5, "li")
            assert not Store.ack_alarm(t, 999, 5, "li")
        assert store.open_alarms()[0]["acked_by"] == "li"
    finally:
        store.close()


def test_hours_timezone_and_alarms_config_checked() -> None:
    from countersign.gateway.config import GatewayConfig
    from countersign.gateway.errors import ConfigError

    base = {"hall": "hf01", "db": "gw.db", "keystore": "ks.json"}
    cfg = GatewayConfig.from_dict({**base, "timezone": "Asia/Urumqi", "page": {"users": "u.json"},
                                   "hours": {"days": "mon-fri,sun", "open": "09:00", "close": "17:00",
                                             "closed_dates": ["2026-10-01"]},
                                   "alarms": {"notify": ["json://127.0.0.1:9/h"], "heartbeat_s": 30,
                                              "silent_minutes": 45, "outbox_free_percent": 20}},
                                  base=Path("/etc/countersign"))
    assert cfg.users_path == Path("/etc/countersign/u.json") and cfg.alarm_notify == ("json://127.0.0.1:9/h",)
    assert cfg.hours.days == frozenset({0, 1, 2, 3, 4, 6})
    assert (cfg.heartbeat_s, cfg.silent_minutes) == (30, 45)
    assert cfg.hours.is_open(dt.datetime(2026, 12, 6, 9, 0))          # a Sunday
    assert not cfg.hours.is_open(dt.datetime(2026, 12, 5, 9, 0))      # a Saturday
    for bad, words in (({"timezone": "Mars/Olympus"}, "time zone"),
                       ({"hours": {"days": "mon-xyz"}}, "hours.days"),
                       ({"hours": {"open": "18:00"}}, "before"), ({"hours": {"open": "8h"}}, "hours.open"),
                       ({"hours": {"closed_dates": ["1 Oct"]}}, "closed_dates"),
                       ({"alarms": {"notify": "json://x"}}, "alarms.notify"),
                       ({"alarms": {"notify": ["not a url"]}}, "apprise"),
                       ({"alarms": {"pager": 1}}, "alarms.pager"), ({"page": {"user": "x"}}, "page.user")):
        with pytest.raises(ConfigError, match=words):
            GatewayConfig.from_dict({**base, **bad})
