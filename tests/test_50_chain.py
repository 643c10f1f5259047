"""The whole chain on real parts: keypads -> hall mosquitto -> gateway -> provincial mosquitto -> province.

One suite over both keypads, as cbor2 runs one suite over its C and Python implementations: the CPython
reference keypad (``ref``) and the real firmware on the MicroPython unix port in its heap budget
(``fw``), both driven through the one keypad interface (``sim/keypad.py``). The brokers, the gateway,
the province and their SQLite files are the real ones. The last two tests need what only the firmware
has (its console, its invite key on a cut link, power cuts of a process) and run on it alone.
"""

from __future__ import annotations

import random
import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from countersign.sim.chain import Chain, ChainConfig
from countersign.sim.scenario import ScenarioConfig, run

KEYPADS = ["ref", "fw"]


@pytest.fixture(params=KEYPADS)
def keypads(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _config(workdir: Path, keypads: str, **kw: int) -> ChainConfig:
    # firmware: this many keypads per hall run the firmware, here all of them.
    return ChainConfig(workdir=workdir, retry_s=1.0, firmware=2 if keypads == "fw" else 0,
                       **{"devices": 2, **kw})


@pytest.fixture
def chain(tmp_path: Path, keypads: str) -> Iterator[Chain]:
    with Chain(_config(tmp_path / "chain", keypads)) as c:
        yield c


def _province_rows(chain: Chain) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(chain.cfg.workdir / "province" / "province.db")
    try:
        return conn.execute("SELECT device, seq, kind, score, hall, window, clerk, service, txn FROM ratings "
                            "ORDER BY device, seq").fetchall()
    finally:
        conn.close()


def _gateway_rows(chain: Chain, dev: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(chain.halls[chain.hall].db_path)
    try:
        return conn.execute("SELECT seq, kind, score, window, clerk, service, txn, press_time FROM ratings "
                            "WHERE device = ? ORDER BY id", (dev,)).fetchall()
    finally:
        conn.close()


def test_ratings_reach_the_province_with_clerk_and_service(chain: Chain) -> None:
    for kp in chain.keypads():
        assert kp.wait_connected(20), kp.device_id
    chain.sign_in("1", "10001", "张伟")
    chain.sign_in("2", "10002", "王芳")
    rng = random.Random(1)
    for k in range(5):
        chain.serve("hf01-w01", rng, f"A-{k}")
        chain.serve("hf01-w02", rng, f"B-{k}")
    assert chain.wait_settled(60)
    report = chain.reconcile()
    assert report["ratings_made"] == 10 and report["received_province"] == 10
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
    for dev, clerk in (("hf01-w01", "10001"), ("hf01-w02", "10002")):
        gw_rows = _gateway_rows(chain, dev)
        assert len(gw_rows) == 5
        for _seq, kind, _score, window, row_clerk, service, _txn, press_time in gw_rows:
            assert kind == "rating" and row_clerk == clerk and window == dev[-1]
            assert isinstance(service, int) and service > 0
            assert isinstance(press_time, int)       # the keypad had its time from the gateway


def test_no_rating_when_the_customer_walks_away(chain: Chain) -> None:
    chain.sign_in("1", "10001", "张伟")
    chain.serve("hf01-w01", random.Random(1), "T-walk", ignore=True)
    assert chain.wait_settled(30)
    rows = _gateway_rows(chain, "hf01-w01")
    assert [r[1] for r in rows] == ["no-rating"] and rows[0][2] is None


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
    kp = chain.keypad("hf01-w01")
    since = kp.mark()
    pid = chain.open_prompt("1", "A-3", 2)
    assert kp.wait_prompt(pid, 10, since)
    assert chain.gateway is not None
    chain.stop_gateway()
    since = kp.mark()
    assert kp.tap(4)
    rated = kp.wait_rated(10, since)
    assert rated is not None and rated.score == 4 and kp.outbox_depth() >= 1
    chain.ledger.rated("hf01-w01", 1, rated.seq, 4)
    chain.start_gateway()
    assert chain.wait_settled(60)
    report = chain.reconcile()
    assert report["ratings_made"] == 4
    assert (report["lost"], report["duplicated"]) == (0, 0)


def test_two_halls_two_embedded_gateways_one_province(tmp_path: Path, keypads: str) -> None:
    """Several gateways run in one process (as the province simulation needs), each with its own broker,
    database and HTTP port; the province keeps every rating under the hall it came from."""
    with Chain(_config(tmp_path / "chain2", keypads, halls=2)) as chain:
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


@pytest.mark.parametrize("keypads", ["fw"], indirect=True)
def test_broker_down_for_a_minute_while_customers_keep_rating(chain: Chain) -> None:
    """The hall broker is stopped for 60 s; customers keep rating (the clerk's invite key opens each
    prompt, as no prompt can come from the gateway); afterwards every rating arrives, in seq order."""
    chain.sign_in("1", "10001", "张伟")
    fw = chain.fw["hf01-w01"]
    assert fw.wait_line(r"CS:TIME", 10)
    assert fw.wait_clerk("10001", 10)       # the invite key needs the clerk on the keypad
    chain.hall_broker.stop()
    assert fw.wait_line(r"CS:LINK down", 30)
    pace = threading.Event()            # never set: its timeout paces the customers over the minute
    seqs = []
    for k in range(20):
        seqs.append(fw.invite_and_rate(1 + k % 4))
        pace.wait(3.0)
    assert not fw.seqs("STORED") & set(seqs)       # nothing could have been acked while down
    chain.hall_broker.start()
    assert fw.wait_until(lambda _l: set(seqs) <= fw.seqs("STORED"), 60), "not every rating was acked"
    got = [r[0] for r in _gateway_rows(chain, "hf01-w01") if r[1] == "rating"]
    assert got == seqs                              # all of them, once each, in the order they were made


@pytest.mark.parametrize("keypads", ["fw"], indirect=True)
def test_power_cut_at_random_points_loses_nothing(chain: Chain) -> None:
    """SIGKILL the keypad at seeded random moments of its write path, many times: after restarts no
    rating is lost, none is counted twice and no seq is ever reused."""
    chain.sign_in("1", "10001", "张伟")
    fw = chain.fw["hf01-w01"]
    rng = random.Random(66)
    boot = 0                                  # console index where the current boot began
    for _ in range(12):
        # Each boot: linked, and told by the gateway who is signed in (the invite key needs it).
        assert fw.wait_connected(20, since=boot)
        assert fw.wait_clerk("10001", 20, since=boot)
        mark = fw.mark()
        fw.tap("i")
        fw.wait_line(r"CS:INVITE", 5, start=mark)
        fw.tap(rng.randint(1, 4))
        # Cut the power a random few milliseconds after the press: during the outbox write, between
        # the write and the publish, or while the ack is on its way.
        threading.Event().wait(rng.uniform(0.0, 0.15))
        fw.power_cut()
        boot = fw.mark()
        chain.start_firmware("hf01-w01")
    rated = [int(m) for line in fw.lines for m in re.findall(r"CS:RATED seq=(\d+)", line)]
    assert len(rated) == len(set(rated)), f"a seq was used twice: {rated}"
    # A cut can also land after an ack is durable in the outbox and before its CS:STORED line, so the
    # console is not the judge of "acked": the gateway holds every rating, and the keypad, booted once
    # more, has nothing left to send (what it still holds it sends and gets acked).
    gw = chain.gateway
    assert gw is not None
    assert gw.wait_until(lambda: set(rated) <= {r[0] for r in _gateway_rows(chain, "hf01-w01")}, 60), \
        "some rating never reached the gateway"
    fw.power_cut()
    boot = fw.mark()
    chain.start_firmware("hf01-w01")
    m = fw.wait_line(r"CS:PROVISIONED .* outbox=(\d+)", 20, start=boot)
    assert m is not None, fw.lines[boot:]
    left = int(m.group(1))
    assert fw.wait_until(lambda lines: sum(1 for x in lines[boot:] if "CS:STORED" in x) >= left, 60), \
        "a rating left in the outbox was never acked"
    got = [r[0] for r in _gateway_rows(chain, "hf01-w01")]
    assert len(got) == len(set(got)), f"a rating counted twice: {got}"
    assert set(rated) <= set(got), f"ratings lost: {sorted(set(rated) - set(got))}"   # every one it took
    # A rating is durable before its console line: a cut between the two leaves a stored rating the
    # console never showed, which must still arrive (at most one per cut, never a seq it printed).
    assert len(set(got) - set(rated)) <= 12, (got, rated)
    conn = sqlite3.connect(chain.halls[chain.hall].db_path)
    try:
        conflicts = conn.execute("SELECT COUNT(*) FROM quarantine WHERE reason = 'conflicting-duplicate'"
                                 ).fetchone()[0]
    finally:
        conn.close()
    assert conflicts == 0
