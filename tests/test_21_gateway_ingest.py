"""Gateway ingest through a real mosquitto: store + MACed ack, dedup, and strict rejection of bad input."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cbor2
import pytest
from conftest import device_key, make_keystore
from gw_helpers import Device, hello, rating, rows, start_gateway, write_config

from countersign.gateway.config import GatewayConfig
from countersign.gateway.gateway import Gateway
from countersign.protocol import cbor, cose, limits, messages, topics
from countersign.protocol.keystore import DeviceKey, Keystore
from countersign.sim.broker import Mosquitto

A, B, C = "hf01-w01", "hf01-w02", "hf01-w03"   # C is in the broker's password file, not the keystore
KA, KB, KC = device_key(1), device_key(2), device_key(3)


@pytest.fixture
def setup(tmp_path: Path, hall_broker: Callable[[Keystore], Mosquitto]) -> Iterator[dict[str, object]]:
    gw_ks = make_keystore(devices=2)
    broker_ks = make_keystore(devices=2)
    broker_ks.add_device(C, DeviceKey(KC, window="3", hall="hf01"))
    broker = hall_broker(broker_ks)
    cfg = write_config(tmp_path, gw_ks, broker.port)
    gw = start_gateway(cfg)
    devs = {d: Device(broker.port, d, k).start() for d, k in ((A, KA), (B, KB), (C, KC))}
    state: dict[str, object] = {"gw": gw, "cfg": cfg, "devs": devs}
    yield state
    for d in devs.values():
        d.stop()
    g = state["gw"]
    assert isinstance(g, Gateway)
    g.stop()


@contextmanager
def own_gateway(cfg: GatewayConfig, broker: Mosquitto) -> Iterator[tuple[Gateway, Device]]:
    """A gateway of its own config on ``broker``, with keypad A connected; both stopped afterwards."""
    gw = start_gateway(cfg)
    a = Device(broker.port, A, KA).start()
    try:
        yield gw, a
    finally:
        a.stop()
        gw.stop()


def stored(gw: Gateway) -> list[tuple[object, ...]]:
    return rows(gw, "SELECT device, epoch, seq, score FROM ratings ORDER BY device, seq")


def test_rating_stored_and_mac_acked_duplicate_acked_twice(setup: dict[str, object]) -> None:
    gw, devs = setup["gw"], setup["devs"]
    assert isinstance(gw, Gateway) and isinstance(devs, dict)
    a: Device = devs[A]
    msg = rating(KA, A, 1, score=3)
    a.publish(msg)
    assert a.wait_acked({1})
    assert stored(gw) == [(A, 1, 1, 3)]
    (orig,) = rows(gw, "SELECT msg, window, clerk, service, press_time FROM ratings")
    assert orig == (msg, "1", None, 0, 1_700_000_000)
    a.publish(msg)          # a QoS1 redelivery or a device re-publish after reconnect
    assert a.wait(lambda: a.acked_seqs() == [1, 1])
    assert stored(gw) == [(A, 1, 1, 3)]
    assert gw.stats()["duplicates"] == 1
    # acks are MACed with A's key only: B saw nothing of them
    assert devs[B].acked_seqs() == [] and a.bad_down == 0


def test_hello_gets_time_sync_and_session_will_marks_offline(setup: dict[str, object]) -> None:
    gw, devs = setup["gw"], setup["devs"]
    assert isinstance(gw, Gateway) and isinstance(devs, dict)
    a: Device = devs[A]
    a.publish(hello(KA, A, nonce=4242, outbox=3, stuck=2))
    assert a.wait(lambda: bool(a.of_type(messages.TimeSync)) and bool(a.of_type(messages.Session)))
    ts = a.of_type(messages.TimeSync)[0]
    assert ts.nonce == 4242 and abs(ts.now_ms - gw.cfg.now_ms()) < 60_000
    assert a.of_type(messages.Session)[0].clerk is None
    st = gw.status()["devices"][A]
    assert st["online"] and st["outbox"] == 3 and st["stuck_keys"] == 2 and st["firmware"] == "1.0.0"
    a.publish(b"gone", topic=topics.device_will(A))
    assert gw.wait_until(lambda: not gw.status()["devices"][A]["online"], 10)


def _indefinite_payload() -> bytes:
    good = messages.Rating(1, 20, 4, 4, 0, None, 1, 1, 1).encode()
    assert 0xA0 <= good[0] < 0xB7      # a map of fewer than 23 entries: a one-byte head
    return b"\xbf" + good[1:] + b"\xff"


def _duplicate_key_payload() -> bytes:
    good = messages.Rating(1, 21, 4, 4, 0, None, 1, 1, 1).encode()
    return bytes([good[0] + 1]) + good[1:] + b"\x02\x18\x63"     # key 2 (seq) again, value 99


def bad_messages() -> list[tuple[str, str, bytes]]:
    """(expected reason, publishing device, message) - each published by a device on its own topic."""
    good = rating(KA, A, 30)
    out = [
        ("bad-mac", A, rating(device_key(99), A, 11)),                     # forged: wrong key
        ("kid-mismatch", A, rating(KA, A, 12, kid=B)),                     # A claims to be B
        ("kid-mismatch", A, rating(KB, B, 13)),                            # B's genuine message, via A
        ("unknown-device", C, rating(KC, C, 14)),                          # in the broker, not the keystore
        ("bad-field", A, rating(KA, A, 15, score=5, scale=4)),             # score out of its scale
        ("wrong-scale", A, rating(KA, A, 16, score=5, scale=5)),           # A is registered with 4 keys
        ("unknown-epoch", A, rating(KA, A, 17, epoch=2)),                  # newer epoch than the keystore
        ("truncated", A, good[:-5]),
        ("trailing-bytes", A, good + b"\x00"),
        ("indefinite-length", A, cose.mac0_encode(KA, A.encode(), _indefinite_payload())),
        ("indefinite-length", A, b"\xd1\x9f" + good[2:] + b"\xff"),        # indefinite COSE array
        ("duplicate-key", A, cose.mac0_encode(KA, A.encode(), _duplicate_key_payload())),
        ("oversized", A, good + b"\x00" * 300),
        ("bad-type", A, cose.mac0_encode(KA, A.encode(), messages.Ack(1, (1,)).encode())),  # downlink type
        ("malformed-cbor", A, b"\xd1\x1c"),                                # reserved additional info
    ]
    assert cbor.dumps(cbor.loads(good, max_size=256, max_depth=4, max_items=64, allowed_tags=(17,))) == good
    return out


def test_bad_input_quarantined_nothing_stored_not_redelivered(setup: dict[str, object]) -> None:
    gw, devs, cfg = setup["gw"], setup["devs"], setup["cfg"]
    assert isinstance(gw, Gateway) and isinstance(devs, dict)
    bad = bad_messages()
    for _reason, dev, msg in bad:
        devs[dev].publish(msg)
    # a good rating after them: bad input must not delay or block it
    devs[A].publish(rating(KA, A, 1))
    assert devs[A].wait_acked({1})
    assert gw.wait_until(lambda: sum(gw.store.quarantine_counts().values()) == len(bad), 10)
    expected: dict[str, int] = {}
    for reason, _d, _m in bad:
        expected[reason] = expected.get(reason, 0) + 1
    assert gw.store.quarantine_counts() == expected
    assert {k: v for k, v in gw.stats().items() if k.startswith("rejected:")} == \
        {f"rejected:{k}": v for k, v in expected.items()}
    assert stored(gw) == [(A, 1, 1, 4)]
    q = rows(gw, "SELECT reason, device, payload FROM quarantine ORDER BY id")
    assert [(r, p) for r, _d, p in q] == [(r, m) for r, _d, m in bad]
    assert ("unknown-device", C) in [(r, d) for r, d, _p in q]
    # none of the bad ones was acked to anyone
    assert devs[A].acked_seqs() == [1] and devs[C].acked_seqs() == []

    # restart the gateway: the broker must not redeliver any of them (they were PUBACKed)
    gw.stop()
    gw2 = start_gateway(cfg)  # type: ignore[arg-type]
    setup["gw"] = gw2
    devs[A].publish(rating(KA, A, 2))
    assert devs[A].wait_acked({1, 2})
    # the counters carry on from the first run's (stats.py keeps them in the database)
    assert gw2.wait_until(lambda: gw2.stats().get("stored") == 2, 10)
    assert gw2.stats().get("rejected", 0) == len(bad)
    assert sum(gw2.store.quarantine_counts().values()) == len(bad)
    # a replay of an old, genuine message after the restart: acked again, stored once
    devs[A].publish(rating(KA, A, 1))
    assert devs[A].wait(lambda: devs[A].acked_seqs().count(1) == 2)
    assert stored(gw2) == [(A, 1, 1, 4), (A, 1, 2, 4)]


def test_conflicting_duplicate_raises_security_alarm(setup: dict[str, object]) -> None:
    gw, devs = setup["gw"], setup["devs"]
    assert isinstance(gw, Gateway) and isinstance(devs, dict)
    a: Device = devs[A]
    a.publish(rating(KA, A, 5, score=4))
    assert a.wait_acked({5})
    a.publish(rating(KA, A, 5, score=1))
    assert gw.wait_until(lambda: gw.store.quarantine_counts() == {"conflicting-duplicate": 1}, 10)
    assert stored(gw) == [(A, 1, 5, 4)]
    alarms = gw.store.open_alarms()
    assert [(al["kind"], al["device"]) for al in alarms] == [("security", A)]


def test_storage_alarm_raised_and_ratings_still_kept(tmp_path: Path,
                                                     hall_broker: Callable[[Keystore], Mosquitto]) -> None:
    ks = make_keystore(devices=1)
    broker = hall_broker(ks)
    # a threshold no disk meets: the alarm is raised at start-up, and nothing is refused or dropped
    cfg = write_config(tmp_path, ks, broker.port, storage_min_free_bytes=2**62)
    with own_gateway(cfg, broker) as (gw, a):
        assert [al["kind"] for al in gw.status()["alarms"]] == ["storage"]
        a.publish(rating(KA, A, 1))
        assert a.wait_acked({1})
        assert stored(gw) == [(A, 1, 1, 4)]
        assert [al["kind"] for al in gw.store.open_alarms()] == ["storage"]   # raised once, not per commit


def test_no_downlink_over_the_keypads_limit(setup: dict[str, object]) -> None:
    """An ack that would not fit the keypad's 300-byte packet is split; every downlink fits."""
    gw, devs = setup["gw"], setup["devs"]
    assert isinstance(gw, Gateway) and isinstance(devs, dict)
    a: Device = devs[A]
    got: list[int] = []
    sizes = a.client.on_message

    def measure(client: object, userdata: object, msg: Any) -> None:
        got.append(2 + len(msg.topic) + 2 + len(msg.payload))
        assert sizes is not None
        sizes(client, userdata, msg)

    a.client.on_message = measure
    # 64 seqs near the top of u32 (5 bytes each): one ack of them would be ~400 bytes.
    seqs = tuple(range(2**32 - 64, 2**32))
    assert gw.ingest.send(A, messages.Ack(1, seqs))
    assert a.wait_acked(set(seqs)), "every seq acked, in acks that fit"
    assert sorted(a.acked_seqs()) == list(seqs)
    assert len(got) > 1 and max(got) <= limits.MAX_DOWNLINK_PACKET, got
    # A single seq cannot be split: it fits, so it is sent whole.
    assert gw.ingest.send(A, messages.Ack(1, (2**32 - 1,)))


def test_firmware_takes_the_downlink_limit_the_gateway_keeps() -> None:
    app = (Path(__file__).resolve().parent.parent / "firmware" / "cs" / "app.py").read_text()
    m = re.search(r"^_MAX_DOWN = const\((\d+)\)", app, re.M)
    assert m and int(m.group(1)) == limits.MAX_DOWNLINK_PACKET


def test_quarantine_flood_is_bounded_and_good_ratings_still_count(tmp_path: Path,
                                                                  hall_broker: Callable[[Keystore], Mosquitto]
                                                                  ) -> None:
    ks = make_keystore(devices=1)
    broker = hall_broker(ks)
    cfg = write_config(tmp_path, ks, broker.port, quarantine_keep=50, quarantine_sample=10)
    with own_gateway(cfg, broker) as (gw, a):
        forged = rating(KB, A, 999)            # A's id, another key: bad MAC
        for i in range(300):
            a.publish(forged)
            if i % 30 == 0:
                a.publish(rating(KA, A, 1 + i // 30))
        assert a.wait_acked(set(range(1, 11)))
        assert gw.wait_until(lambda: gw.store.quarantine_counts().get("bad-mac") == 300, 20)
        assert [r[2] for r in stored(gw)] == list(range(1, 11)), "no good rating lost in the flood"
        (kept,) = rows(gw, "SELECT count(*) FROM quarantine")
        assert kept == (50 + 250 // 10,)
        floods = [al for al in gw.store.open_alarms() if al["kind"] == "quarantine-flood"]
        assert len(floods) == 1 and floods[0]["device"] == A, floods


def test_heartbeat_reports_discarded_downlinks(setup: dict[str, object]) -> None:
    gw, devs = setup["gw"], setup["devs"]
    assert isinstance(gw, Gateway) and isinstance(devs, dict)
    hb = messages.Heartbeat(epoch=1, boot=1, nonce=5, fw="1.0.0", reset=1, heap=40000, outbox=0,
                            outbox_free=100, uptime=5, rssi=-50, ignored=0, stuck=0, time=None, bad_down=3)
    assert messages.decode_payload(hb.encode()) == hb
    plain = messages.Heartbeat(**{**hb.__dict__, "bad_down": None})
    assert 27 not in cbor2.loads(plain.encode()) and cbor2.loads(hb.encode())[27] == 3
    devs[A].publish(cose.mac0_encode(KA, A.encode(), hb.encode()))
    assert gw.wait_until(lambda: gw.status()["devices"][A]["bad_downlinks"] == 3, 10)
    assert gw.status()["devices"][B]["bad_downlinks"] == 0
