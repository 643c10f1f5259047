"""The real firmware on the MicroPython unix port (64 KB heap budget), with a real mosquitto, the real
gateway and province: ratings stored with their context, a broker outage, power cuts at random points."""

from __future__ import annotations

import random
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from countersign.sim.chain import Chain, ChainConfig


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    c = Chain(ChainConfig(workdir=tmp_path / "chain", devices=2, firmware=2, retry_s=1.0))
    c.start(devices=False)
    try:
        for dev in c.device_ids:
            c.start_firmware(dev)
        yield c
    finally:
        c.stop()


def _gateway_rows(chain: Chain, dev: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(chain.halls[chain.hall].db_path)
    try:
        return conn.execute("SELECT seq, kind, score, window, clerk, service, txn, press_time FROM ratings "
                            "WHERE device = ? ORDER BY id", (dev,)).fetchall()
    finally:
        conn.close()




def test_firmware_ratings_reach_gateway_and_province_with_context(chain: Chain) -> None:
    chain.sign_in("1", "10001", "张伟")
    chain.sign_in("2", "10002", "王芳")
    rng = random.Random(2)
    for k in range(3):
        for dev in chain.device_ids:
            chain.serve(dev, rng, f"{dev}-T{k}")
    assert chain.wait_settled(60)
    report = chain.reconcile()
    assert report["ratings_made"] == 6 and report["received_province"] == 6
    assert (report["lost"], report["duplicated"], report["invented"], report["altered"]) == (0, 0, 0, 0)
    for dev, clerk in (("hf01-w01", "10001"), ("hf01-w02", "10002")):
        rows = _gateway_rows(chain, dev)
        assert len(rows) == 3
        for _seq, kind, _score, window, row_clerk, service, txn, press_time in rows:
            assert kind == "rating" and row_clerk == clerk and window == dev[-1]
            assert isinstance(service, int) and service > 0 and str(txn).startswith(dev)
            assert isinstance(press_time, int)       # the keypad had its time from the gateway


def test_no_rating_when_the_customer_walks_away(chain: Chain) -> None:
    chain.sign_in("1", "10001", "张伟")
    chain.serve("hf01-w01", random.Random(1), "T-walk", ignore=True)
    assert chain.wait_settled(30)
    rows = _gateway_rows(chain, "hf01-w01")
    assert [r[1] for r in rows] == ["no-rating"] and rows[0][2] is None


def test_broker_down_for_a_minute_while_customers_keep_rating(chain: Chain) -> None:
    """The hall broker is stopped for 60 s; customers keep rating (the clerk's invite key opens each
    prompt, as no prompt can come from the gateway); afterwards every rating arrives, in seq order."""
    chain.sign_in("1", "10001", "张伟")
    fw = chain.fw["hf01-w01"]
    assert fw.wait_line(r"CS:TIME", 10)
    assert fw.wait_line(r"CS:SESSION clerk=10001", 10)   # the invite key needs the clerk on the keypad
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


def test_power_cut_at_random_points_loses_nothing(chain: Chain) -> None:
    """SIGKILL the keypad at seeded random moments of its write path, many times: after restarts no
    rating is lost, none is counted twice and no seq is ever reused."""
    chain.sign_in("1", "10001", "张伟")
    fw = chain.fw["hf01-w01"]
    rng = random.Random(66)
    boot = 0                                  # console index where the current boot began
    for _ in range(12):
        # Each boot: linked, and told by the gateway who is signed in (the invite key needs it).
        assert fw.wait_line(r"CS:LINK up", 20, start=boot)
        assert fw.wait_line(r"CS:SESSION clerk=10001", 20, start=boot)
        mark = fw.mark()
        fw.tap("i")
        fw.wait_line(r"CS:INVITE", 5, start=mark)
        fw.tap(rng.randint(1, 4))
        # Cut the power a random few milliseconds after the press: during the outbox write, between
        # the write and the publish, or while the ack is on its way.
        threading.Event().wait(rng.uniform(0.0, 0.15))
        fw.kill()
        boot = fw.mark()
        chain.start_firmware("hf01-w01")
    rated = [int(m) for line in fw.lines for m in __import__("re").findall(r"CS:RATED seq=(\d+)", line)]
    assert len(rated) == len(set(rated)), f"a seq was used twice: {rated}"
    # A cut can also land after an ack is durable in the outbox and before its CS:STORED line, so the
    # console is not the judge of "acked": the gateway holds every rating, and the keypad, booted once
    # more, has nothing left to send (what it still holds it sends and gets acked).
    gw = chain.gateway
    assert gw is not None
    assert gw.wait_until(lambda: set(rated) <= {r[0] for r in _gateway_rows(chain, "hf01-w01")}, 60), \
        "some rating never reached the gateway"
    fw.kill()
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
