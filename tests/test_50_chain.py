"""The whole chain on real parts: keypads -> hall mosquitto -> gateway -> provincial mosquitto -> province.

Keypads are the CPython reference device here (the MicroPython firmware joins in a later issue); the
brokers, the gateway, the province and their SQLite files are the real ones.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from countersign.sim.chain import Chain, ChainConfig
from countersign.sim.scenario import ScenarioConfig, run


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    with Chain(ChainConfig(workdir=tmp_path / "chain", devices=2, retry_s=1.0)) as c:
        yield c


def _province_rows(chain: Chain) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(chain.cfg.workdir / "province" / "province.db")
    try:
        return conn.execute("SELECT device, seq, kind, score, hall, window, clerk, service, txn FROM ratings "
                            "ORDER BY device, seq").fetchall()
    finally:
        conn.close()


def test_ratings_reach_the_province_with_clerk_and_service(chain: Chain) -> None:
    chain.sign_in("1", "10001", "张伟")
    chain.sign_in("2", "10002", "王芳")
    rng = random.Random(1)
    for k in range(5):
        chain.serve("hf01-w01", rng, f"A-{k}")
        chain.serve("hf01-w02", rng, f"B-{k}")
    assert chain.wait_settled(60)
    report = chain.reconcile()
    assert report["ratings_made"] == 10
    assert (report["lost"], report["duplicated"], report["invented"], report["altered"]) == (0, 0, 0, 0)
    rows = _province_rows(chain)
    assert len(rows) == 10
    for device, _seq, kind, _score, hall, window, clerk, service, txn in rows:
        assert kind == "rating" and hall == "hf01"
        # Each rating is credited to the clerk signed in at that keypad's window, for its own transaction.
        assert (window, clerk) == ({"hf01-w01": "1", "hf01-w02": "2"}[str(device)],
                                   {"hf01-w01": "10001", "hf01-w02": "10002"}[str(device)])
        assert str(txn).startswith({"hf01-w01": "A-", "hf01-w02": "B-"}[str(device)])
        assert isinstance(service, int) and service > 0
    assert report["prompts_province"] == 10


def test_uplink_outage_backlog_arrives_exactly_once(chain: Chain) -> None:
    run(chain, ScenarioConfig(ratings=40, seed=3, ignore_rate=0.0, uplink_outage=True))
    assert chain.wait_settled(90)
    report = chain.reconcile()
    assert report["ratings_made"] >= 38          # a double press never makes a second rating
    assert report["received_province"] == report["ratings_made"]
    assert (report["lost"], report["duplicated"], report["invented"], report["altered"]) == (0, 0, 0, 0)


def test_gateway_restart_while_customers_rate(chain: Chain) -> None:
    """Stop the gateway mid-run (keypads keep rating into their outboxes), start it again: all arrive once."""
    chain.sign_in("1", "10001", "张伟")
    rng = random.Random(5)
    for k in range(3):
        chain.serve("hf01-w01", rng, f"A-{k}")
    # The prompts are opened through the gateway, so take a prompt now and rate while it is down.
    prompt_ready = chain.devices["hf01-w01"]
    chain.open_prompt("1", "A-3", 2)
    assert prompt_ready.wait_for(lambda: prompt_ready.state == "prompt_open", 10)
    assert chain.gateway is not None
    chain.stop_gateway()
    res = prompt_ready.press(4)
    assert res == "rated" and prompt_ready.outbox_depth() >= 1
    with chain.ledger.lock:
        chain.ledger.ratings[("hf01-w01", 1, res.seq or 0)] = 4
    chain.start_gateway()
    assert chain.wait_settled(60)
    report = chain.reconcile()
    assert report["ratings_made"] == 4
    assert (report["lost"], report["duplicated"]) == (0, 0)


def test_two_halls_two_embedded_gateways_one_province(tmp_path: Path) -> None:
    """Several gateways run in one process (as the province simulation needs), each with its own broker,
    database and HTTP port; the province keeps every rating under the hall it came from."""
    with Chain(ChainConfig(workdir=tmp_path / "chain2", halls=2, devices=2, retry_s=1.0)) as chain:
        assert sorted(chain.halls) == ["hf01", "hf02"]
        ports = {h.gateway.http_port for h in chain.halls.values() if h.gateway is not None}
        assert len(ports) == 2
        for hall in chain.halls:
            chain.sign_in("1", f"{hall}-c1", "张伟", hall=hall)
            chain.sign_in("2", f"{hall}-c2", "王芳", hall=hall)
        rng = random.Random(11)
        for k in range(3):
            for dev in chain.device_ids:
                chain.serve(dev, rng, f"{dev}-T{k}")
        assert chain.wait_settled(60)
        report = chain.reconcile()
        assert report["ratings_made"] == 12 and report["received_province"] == 12
        assert (report["lost"], report["duplicated"], report["invented"], report["altered"]) == (0, 0, 0, 0)
        for device, _seq, _kind, _score, hall, window, clerk, _service, _txn in _province_rows(chain):
            assert str(device).startswith(f"{hall}-w")
            assert clerk == f"{hall}-c{window}"
