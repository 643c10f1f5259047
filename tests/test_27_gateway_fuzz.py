"""The gateway's whole verify-and-store path under fuzzed input (hypothesis, seeded in `make test`).

Groups of messages, each a valid rating, a valid hello, a valid rating with bytes changed, or random
bytes, on valid or invalid topics, go through `Ingest._process` exactly as a group from the broker does,
into a real SQLite store. Whatever the input: nothing raises (no input can end the ingest thread), every
message is either stored or quarantined, every stored rating carries a MAC that verifies with its
keypad's key, and every unchanged valid rating in a group is stored however bad its neighbours.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import paho.mqtt.client as mqtt
from conftest import device_key, make_keystore
from gw_helpers import hello, rating, write_config
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from countersign.gateway.ingest import Ingest
from countersign.gateway.stats import Stats
from countersign.gateway.store import Store
from countersign.protocol import cose, topics

DEVS = ("hf01-w01", "hf01-w02")
KEYS = {d: device_key(i + 1) for i, d in enumerate(DEVS)}
_seq = itertools.count(1)


def _message(topic: str, payload: bytes) -> mqtt.MQTTMessage:
    m = mqtt.MQTTMessage(mid=0, topic=topic.encode())
    m.payload = payload
    m.qos = 0           # no broker here: nothing to PUBACK
    return m


Item = tuple[str, str, int, list[tuple[int, int]], bytes, str]


@st.composite
def item(draw: st.DrawFn) -> Item:
    """What one message is to be: (kind, device, score or nonce, byte changes, random bytes, bad topic).
    Sequence numbers are given when the group is built, so every valid rating is a new one."""
    return (draw(st.sampled_from(("rating", "hello", "mutated", "random", "bad-topic"))),
            draw(st.sampled_from(DEVS)), draw(st.integers(1, 4)),
            draw(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4)),
            draw(st.binary(max_size=300)),
            draw(st.sampled_from(("cs/1/d/{}/down", "cs/1/d//up", "cs/1/d/{}/up/x", "cs/1/h/hf01/batch",
                                  "junk"))))


def build(it: Item) -> tuple[str, bytes, int | None]:
    """-> (topic, payload, seq of a valid rating or None)."""
    kind, dev, n, changes, junk, bad_topic = it
    topic = topics.device_up(dev)
    if kind == "rating":
        seq = next(_seq)
        return topic, rating(KEYS[dev], dev, seq, score=n), seq
    if kind == "hello":
        return topic, hello(KEYS[dev], dev, nonce=n), None
    if kind == "mutated":
        m = bytearray(rating(KEYS[dev], dev, next(_seq)))
        for pos, byte in changes:
            m[pos % len(m)] = byte
        return topic, bytes(m), None
    return (bad_topic.format(dev) if kind == "bad-topic" else topic), junk, None


def test_verify_and_store_path_under_fuzz(tmp_path: Path) -> None:
    ks = make_keystore(devices=2)
    cfg = write_config(tmp_path, ks, broker_port=1)     # never connected: _process is driven directly
    store = Store(cfg.db_path, cfg.now_ms)
    fatal: list[BaseException] = []
    ingest = Ingest(cfg, store, lambda: ks, Stats(), lambda: None, fatal.append)
    groups = 0

    @seed(20261202)
    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(st.lists(item(), min_size=1, max_size=24))
    def one_group(items: list[Item]) -> None:
        nonlocal groups
        group = [build(it) for it in items]
        ingest._process([_message(t, p) for t, p, _s in group])
        groups += 1
        with store.read() as c:
            stored = {(d, s) for d, s in c.execute("SELECT device, seq FROM ratings")}
        for t, _p, s in group:
            if s is not None:
                assert (topics.parse(t)[1], s) in stored, "a valid rating lost among bad neighbours"

    one_group()
    assert not fatal and groups >= 100
    with store.read() as c:
        for dev, msg in c.execute("SELECT device, msg FROM ratings"):
            v = cose.mac0_verify(msg, lambda kid: KEYS.get(kid.decode()), expected_kid=dev.encode())
            assert v.payload
        counted = c.execute("SELECT count(*) FROM ratings").fetchone()[0]
    q = sum(store.quarantine_counts().values())
    assert counted > 0 and q > 0, (counted, q)
    store.close()
