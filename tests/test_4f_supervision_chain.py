"""The supervision loop on the whole chain (issue 13's first test): a customer presses 不满意 on a
simulated keypad; through the hall's mosquitto, the gateway, the provincial mosquitto and the receiver,
the rating is an alert at the province within seconds and a case in the hall manager's list on the
platform. Real brokers, gateway, receiver and SQLite files (sim/chain.py); the keypad is the CPython
reference keypad, pressed by the simulator's customer."""

from __future__ import annotations

import time
from pathlib import Path

from platform_helpers import PASSWORD, Client

from countersign.common.clock import wall_ms
from countersign.province import users
from countersign.province.db import Database
from countersign.province.web import PlatformServer, create_app
from countersign.province.web_config import WebConfig
from countersign.sim.chain import Chain, ChainConfig
from countersign.sim.plan import Txn

WITHIN_S = 10.0     # "within seconds": the press to the alert, the brokers' and gateway's hops included


def test_a_dissatisfied_press_is_an_alert_in_seconds_and_a_case_on_the_managers_list(tmp_path: Path) -> None:
    with Chain(ChainConfig(workdir=tmp_path / "chain", retry_s=1.0, devices=1)) as chain:
        (kp,) = chain.keypads()
        assert kp.wait_connected(20)
        chain.sign_in("1", "10001", "张伟")
        assert chain.province is not None
        supervisor = chain.province.supervisor
        db = Database(str(chain.cfg.workdir / "province" / "province.db"))

        pressed = time.monotonic()
        chain.serve_txn(kp.device_id, Txn("prompt", 1, 2, False, 1), "BAD-1")   # 1 = 不满意 on 4 keys
        alert = None
        while alert is None and time.monotonic() - pressed < WITHIN_S:
            # Each pass of the receiver's supervisor is an event; look after each one.
            supervisor.wait_passes(supervisor.passes + 1, WITHIN_S)
            with db.connect() as conn:
                alert = conn.one("SELECT a.id, a.hall, a.detail, r.clerk, r.txn, r.score FROM alerts a"
                                 " JOIN ratings r ON r.id = a.rating WHERE a.kind = 'dissatisfied'")
        took = time.monotonic() - pressed
        assert alert is not None, f"no alert {WITHIN_S} s after the press"
        print(f"press -> alert at the province: {took:.2f} s")
        _aid, hall, _detail, clerk, txn, score = alert
        assert (hall, clerk, txn, score) == ("hf01", "10001", "BAD-1", 1)

        # The hall manager's list on the platform over the province's database.
        with db.connect() as conn:
            conn.execute("INSERT INTO halls (hall, name, city) VALUES ('hf01', '合肥庐阳营业厅', '合肥市')")
            users.add(conn, "mgr-hf01", "厅长", PASSWORD, "hall", "hf01", actor="test", now_ms=wall_ms())
        cfg = WebConfig(database=db, secret_file=tmp_path / "web.secret", timezone="Asia/Shanghai", port=0)
        server = PlatformServer(create_app(cfg), "127.0.0.1", 0).start()
        try:
            client = Client(server.url)
            assert client.log_in("mgr-hf01") == 303
            status, page, _ = client.get("/cases")
            assert status == 200
            with db.connect() as conn:
                (case,) = conn.all("SELECT c.id FROM cases c JOIN ratings r ON r.id = c.rating"
                                   " WHERE r.txn = 'BAD-1' AND c.state = 'notified'")
            assert f'id="case-{case[0]}"' in page and "10001" in page
            status, page, _ = client.get("/alerts")
            assert status == 200 and "不满意" in page
        finally:
            server.stop()
