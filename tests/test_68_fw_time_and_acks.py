"""The firmware end to end on two rules of the brief: a rating made while the keypad's clock is unknown is
marked so (never given a made-up time), and a forged ack deletes nothing from the outbox."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from countersign.common.mqtt import Handlers, Options, make_client
from countersign.protocol import cose, messages, topics
from countersign.sim.chain import Chain, ChainConfig


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    c = Chain(ChainConfig(workdir=tmp_path / "chain", devices=1, firmware=1, retry_s=1.0))
    try:
        yield c
    finally:
        c.stop()


def _rows(chain: Chain) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(chain.halls[chain.hall].db_path)
    try:
        return conn.execute("SELECT seq, kind, press_time, received_ms, clerk FROM ratings "
                            "ORDER BY seq").fetchall()
    finally:
        conn.close()


def test_rating_before_any_time_sync_is_stored_with_time_unknown(chain: Chain) -> None:
    """The keypad boots before its hall's gateway has ever connected, so its hello reaches no one and no
    time sync comes back. The clerk signs in (the gateway sends the session, not the time), opens the
    rating with the invite key, the customer presses: the rating is stored with press time NULL (and the
    gateway's own receive time), never a guessed date."""
    chain.province_broker.start()
    chain.start_province()
    chain.hall_broker.start()
    dev = chain.device_ids[0]
    fw = chain.start_firmware(dev)
    assert fw.wait_line(r"CS:LINK up", 20)          # its hello went to a broker with no subscriber
    chain.start_gateway()
    chain.sign_in("1", "10001", "张伟")
    assert fw.wait_line(r"CS:SESSION clerk=10001", 10)
    mark = fw.mark()
    fw.tap("i")
    assert fw.wait_line(r"CS:INVITE", 10, start=mark), fw.lines[mark:]
    fw.tap(3)
    m = fw.wait_line(r"CS:RATED seq=(\d+)", 5, start=mark)
    assert m, fw.lines[mark:]
    assert fw.count(r"CS:TIME") == 0, "the keypad had no time when the customer pressed"
    seq = int(m.group(1))
    assert fw.wait_until(lambda _l: seq in fw.seqs("STORED"), 20)
    [(row_seq, kind, press_time, received_ms, clerk)] = _rows(chain)
    assert (row_seq, kind, clerk) == (seq, "rating", "10001")
    assert press_time is None and isinstance(received_ms, int) and received_ms > 0


def test_forged_ack_deletes_nothing_and_a_true_ack_does(chain: Chain) -> None:
    chain.start(devices=False)
    dev = chain.device_ids[0]
    fw = chain.start_firmware(dev)
    assert fw.wait_line(r"CS:LINK up", 20)
    chain.sign_in("1", "10001", "张伟")
    assert fw.wait_line(r"CS:TIME", 10)
    assert fw.wait_line(r"CS:SESSION clerk=10001", 10)
    # Stop the gateway so the rating stays in the outbox, unacked.
    chain.stop_gateway()
    mark = fw.mark()
    fw.tap("i")
    assert fw.wait_line(r"CS:INVITE", 5, start=mark)
    fw.tap(4)
    m = fw.wait_line(r"CS:RATED seq=(\d+)", 5, start=mark)
    assert m
    seq = int(m.group(1))
    # Someone on the hall LAN who knows the topic but not the key publishes an ack for that seq.
    h = chain.halls[chain.hall]
    forged = cose.mac0_encode(b"\x42" * 32, dev.encode(), messages.Ack(epoch=1, seqs=(seq,)).encode())
    sent = threading.Event()
    c = make_client(Options(client_id=topics.GATEWAY_USER, username=topics.GATEWAY_USER,
                            password=h.gateway_password, reconnect_min_s=1, reconnect_max_s=120,
                            jitter=False),
                    Handlers(published=lambda _mid: sent.set()))
    c.connect("127.0.0.1", h.port)
    c.loop_start()
    try:
        c.publish(topics.device_down(dev), forged, qos=1)
        assert sent.wait(10)
        assert fw.wait_line(r"CS:BADDOWN bad-mac", 10, start=mark), fw.lines[mark:]
    finally:
        c.loop_stop()
        c.disconnect()
    assert seq not in fw.seqs("STORED")             # nothing was deleted on a forged ack
    chain.start_gateway()                           # the real gateway stores it and acks with the key
    assert fw.wait_until(lambda _l: seq in fw.seqs("STORED"), 30)
    assert [r[0] for r in _rows(chain)] == [seq]
