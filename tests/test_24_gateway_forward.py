"""Store-and-forward to the province: a real provincial mosquitto, a scripted province peer, real SQLite.

The peer logs in as user ``province``, verifies every batch's Ed25519 signature with the hall's public
key, decodes it, records every delivery, and answers (or, as scripted, stays silent, forges, or rejects).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import device_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from countersign.common.brokerconf import password_hash
from countersign.common.db import open_db
from countersign.common.mqtt import Handlers, Options, make_client
from countersign.gateway import forward
from countersign.gateway import store as gw_store
from countersign.protocol import batch, cose, keystore, messages, topics
from countersign.protocol.context import Context
from countersign.protocol.errors import ProtocolError
from countersign.sim.broker import Mosquitto, free_port, run_as_clause

HALL = "hf01"
HALL_PASSWORD = "test-hall-uplink-password"
PROVINCE_PASSWORD = "test-province-password"
DEVICE = f"{HALL}-w01"
WAIT = 20.0   # generous upper bound for any one wait; a passing test never waits this long


# ---- the provincial broker ------------------------------------------------------------------------------

def write_province_broker(folder: Path, port: int, halls: dict[str, str]) -> Path:
    """A minimal provincial broker config: hall users may only publish their batches and read their acks."""
    folder.mkdir(parents=True, exist_ok=True)
    passwd = folder / "passwd"
    acl = folder / "acl"
    users = {**halls, "province": PROVINCE_PASSWORD}
    passwd.write_text("".join(f"{u}:{password_hash(p)}\n" for u, p in users.items()))
    p = topics.PREFIX
    acl.write_text("\n".join([
        f"pattern write {p}/h/%u/batch",
        f"pattern read {p}/h/%u/ack",
        "user province",
        f"topic read {p}/h/+/batch",
        f"topic write {p}/h/+/ack",
        "",
    ]))
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous false", f"password_file {passwd}",
             f"acl_file {acl}", "use_username_as_clientid true", "max_queued_messages 0",
             # Sessions survive a broker restart (saved on SIGTERM), so a batch resent on reconnect
             # reaches the peer even if the peer has not reconnected yet.
             "persistence true", f"persistence_location {folder}/"]
    run_as = run_as_clause()
    if run_as:
        lines.append(f"user {run_as}")
    conf = folder / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


class Uplink:
    """The provincial broker, restartable on the same port (an uplink outage)."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.conf = write_province_broker(folder, self.port, {HALL: HALL_PASSWORD})
        self.broker: Mosquitto | None = None

    def start(self) -> None:
        self.broker = Mosquitto(self.conf, self.port).start()

    def stop(self) -> None:
        if self.broker is not None:
            self.broker.stop()
            self.broker = None


# ---- the scripted province peer -------------------------------------------------------------------------

@dataclass
class Delivery:
    batch_id: int
    signed: bytes
    batch: batch.Batch


@dataclass
class ProvincePeer:
    port: int
    hall_keys: dict[str, Ed25519PublicKey]
    key: Ed25519PrivateKey
    mode: str = "ack"       # ack | silent | forged | reject-first
    deliveries: list[Delivery] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        # Back within 0.5 s of a broker restart, exactly (the tests time the resends): no jitter.
        self.client = make_client(
            Options(client_id="province", username="province", password=PROVINCE_PASSWORD,
                    clean_session=False, reconnect_min_s=0.1, reconnect_max_s=0.5, jitter=False),
            Handlers(connected=lambda _present: self.client.subscribe(topics.HALL_BATCH_FILTER, qos=1),
                     message=self._on_message))

    def start(self) -> ProvincePeer:
        self.client.connect_async("127.0.0.1", self.port)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, msg: mqtt.MQTTMessage) -> None:
        _, hall, _ = topics.parse(msg.topic)
        data = bytes(msg.payload)
        try:
            v = cose.sign1_verify(data, lambda kid: self.hall_keys.get(kid.decode()),
                                  expected_kid=hall.encode())
            b = batch.decode_batch(v.payload)
            if b.hall != hall:
                raise ValueError("batch hall differs from its topic")
        except (ProtocolError, ValueError) as exc:
            with self.cond:
                self.bad.append(str(exc))
                self.cond.notify_all()
            return
        with self.cond:
            self.deliveries.append(Delivery(b.batch, data, b))
            mode = self.mode
            self.cond.notify_all()
        self._answer(self.client, hall, b, mode)

    def _answer(self, client: mqtt.Client, hall: str, b: batch.Batch, mode: str) -> None:
        n = len(b.entries)
        if mode == "silent":
            return
        if mode == "forged":
            ack = batch.BatchAck(hall, b.batch, n, 0).encode()
            other_hall = batch.BatchAck("hf99", b.batch, n, 0).encode()
            # signed by someone else's key, signed properly but for another hall, and plain garbage
            for data in (cose.sign1_encode(keystore.new_signing_key(), b"province", ack),
                         cose.sign1_encode(self.key, b"province", other_hall),
                         b"\xd2\x84garbage"):
                client.publish(topics.hall_ack(hall), data, qos=1)
            return
        rejected = [(0, "bad-mac")] if mode == "reject-first" else []
        good = batch.BatchAck(hall, b.batch, n - len(rejected), 0, rejected)
        client.publish(topics.hall_ack(hall), cose.sign1_encode(self.key, b"province", good.encode()), qos=1)

    def set_mode(self, mode: str) -> None:
        with self.cond:
            self.mode = mode

    def wait(self, pred: Callable[[ProvincePeer], bool], timeout: float = WAIT) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: pred(self), timeout)

    def by_batch(self) -> dict[int, list[bytes]]:
        """batch id -> the signed bytes of every delivery of it."""
        with self.cond:
            out: dict[int, list[bytes]] = {}
            for d in self.deliveries:
                out.setdefault(d.batch_id, []).append(d.signed)
            return out

    def entry_msgs(self) -> list[bytes]:
        """Device COSE bytes of every entry of every distinct batch (a resent batch counted once)."""
        with self.cond:
            seen: dict[int, batch.Batch] = {}
            for d in self.deliveries:
                seen.setdefault(d.batch_id, d.batch)
        return [e.msg for b in seen.values() for e in b.entries if isinstance(e, batch.DeviceEntry)]


# ---- the gateway side -----------------------------------------------------------------------------------

def rating_entry(seq: int) -> batch.DeviceEntry:
    """A real device rating (COSE_Mac0 with the device's key) with the context the gateway adds."""
    r = messages.Rating(epoch=1, seq=seq, score=1 + seq % 4, scale=4, prompt=seq, time=1_700_000_000 + seq,
                        mono=seq * 1000, delay=1500, boot=1)
    msg = cose.mac0_encode(device_key(1), DEVICE.encode(), r.encode())
    return batch.DeviceEntry(msg, 1_700_000_000_000 + seq,
                             Context("1", "10023", 2, f"T-{seq}", 1_700_000_000_000 + seq - 5000))


@dataclass
class Alarms:
    items: list[tuple[str, str]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def __call__(self, kind: str, detail: str) -> None:
        with self.cond:
            self.items.append((kind, detail))
            self.cond.notify_all()

    def wait(self, kind: str, timeout: float = WAIT) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: any(k == kind for k, _ in self.items), timeout)

    def kinds(self) -> list[str]:
        with self.cond:
            return [k for k, _ in self.items]


@dataclass
class Env:
    tmp: Path
    uplink: Uplink
    peer: ProvincePeer
    cfg: forward.ForwarderConfig
    alarms: Alarms
    started: list[forward.Forwarder] = field(default_factory=list)

    def forwarder(self) -> forward.Forwarder:
        f = forward.Forwarder(self.cfg)
        f.start()
        self.started.append(f)
        return f

    def enqueue(self, entries: list[batch.DeviceEntry], fwd: forward.Forwarder | None = None,
                per_txn: int = 50) -> None:
        """Commit entries as the gateway does (enqueue inside its transaction), waking the forwarder."""
        conn = open_db(self.cfg.db_path)
        try:
            for i in range(0, len(entries), per_txn):
                conn.execute("BEGIN IMMEDIATE")
                for e in entries[i : i + per_txn]:
                    gw_store.enqueue(conn, e)
                conn.execute("COMMIT")
                if fwd is not None:
                    fwd.wake()
        finally:
            conn.close()

    def db(self, sql: str, *args: Any) -> list[Any]:
        conn = sqlite3.connect(self.cfg.db_path)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    uplink = Uplink(tmp_path / "province-broker")
    uplink.start()
    hall_key = keystore.new_signing_key()
    keystore.save_signing_key(tmp_path / "hall.key", hall_key)
    province_key = keystore.new_signing_key()
    peer = ProvincePeer(uplink.port, {HALL: hall_key.public_key()}, province_key).start()
    db_path = tmp_path / "gateway.db"
    conn = open_db(db_path)
    gw_store.init_uplink_schema(conn)
    conn.close()
    alarms = Alarms()
    cfg = forward.ForwarderConfig(
        db_path=db_path, hall=HALL, signing_key_path=tmp_path / "hall.key",
        province_public_key=keystore.public_bytes(province_key), uplink_host="127.0.0.1",
        uplink_port=uplink.port, uplink_password=HALL_PASSWORD, batch_size=100, retry_s=0.5,
        backlog_threshold=1000, on_alarm=alarms, reconnect_min_s=0.1, reconnect_max_s=0.5)
    e = Env(tmp_path, uplink, peer, cfg, alarms)
    yield e
    for f in e.started:
        f.stop()
    peer.stop()
    uplink.stop()


def backlog_is(n: int) -> Callable[[forward.Forwarder], bool]:
    return lambda f: f.backlog() == n


def assert_each_entry_once(env: Env, sent: list[batch.DeviceEntry]) -> None:
    got = env.peer.entry_msgs()
    assert sorted(got) == sorted(e.msg for e in sent), "every entry exactly once across distinct batches"
    assert len(set(got)) == len(got)


def assert_resends_identical(env: Env) -> dict[int, list[bytes]]:
    by_batch = env.peer.by_batch()
    for bid, copies in by_batch.items():
        assert len(set(copies)) == 1, f"batch {bid} was re-sent with different bytes"
    return by_batch


# ---- tests ----------------------------------------------------------------------------------------------

def test_batches_signed_complete_and_acked(env: Env) -> None:
    fwd = env.forwarder()
    entries = [rating_entry(s) for s in range(1, 451)]
    env.enqueue(entries, fwd)
    assert fwd.wait_until(backlog_is(0), WAIT), fwd.stats()

    assert env.peer.bad == []                          # every batch verified with the hall's key
    by_batch = assert_resends_identical(env)
    assert len(by_batch) >= 5                          # batch_size 100: at least 5 batches
    assert all(len(d.batch.entries) <= 100 for d in env.peer.deliveries)
    assert_each_entry_once(env, entries)
    # context and device bytes arrive unchanged (the province re-verifies the device MAC)
    got = {e.msg: e for d in env.peer.deliveries for e in d.batch.entries if isinstance(e, batch.DeviceEntry)}
    for e in entries:
        assert got[e.msg] == e
        v = cose.mac0_verify(got[e.msg].msg, lambda kid: device_key(1), expected_kid=DEVICE.encode())
        assert messages.decode_payload(v.payload).seq == int(e.ctx.txn[2:])  # type: ignore[index, attr-defined]
    rows = env.db("SELECT id, acked_ms, stored, dups, rejected, entries FROM batches")
    assert {r[0] for r in rows} == set(by_batch)
    assert all(r[1] is not None and r[2] == r[5] and r[3] == 0 and r[4] == "[]" for r in rows)
    s = fwd.stats()
    assert s["batches_acked"] == len(rows) and s["entries_acked"] == 450 and s["acks_bad"] == 0
    assert "backlog" not in env.alarms.kinds()


def test_prompt_entries_and_rolled_back_entries(env: Env) -> None:
    fwd = env.forwarder()
    conn = open_db(env.cfg.db_path)
    conn.execute("BEGIN IMMEDIATE")
    gw_store.enqueue(conn, rating_entry(99))
    conn.execute("ROLLBACK")                           # a rating that was never committed is never sent
    conn.execute("BEGIN IMMEDIATE")
    prompt = batch.PromptEntry(7, DEVICE, Context("1", "10023", 2, "T-7", 1_700_000_000_000), 20)
    gw_store.enqueue(conn, prompt)
    gw_store.enqueue(conn, rating_entry(1))
    conn.execute("COMMIT")
    conn.close()
    fwd.wake()
    assert fwd.wait_until(backlog_is(0), WAIT)
    got = [e for d in env.peer.deliveries for e in d.batch.entries]
    assert got == [prompt, rating_entry(1)]            # oldest first, the rolled-back one absent


def test_uplink_outage_loses_nothing(env: Env) -> None:
    env.cfg.backlog_threshold = 20
    env.cfg.retry_s = 60.0                             # only the reconnect itself can trigger the resend
    fwd = env.forwarder()
    env.peer.set_mode("silent")                        # the province takes the batch but never acks
    first = [rating_entry(s) for s in range(1, 6)]
    env.enqueue(first, fwd)
    assert env.peer.wait(lambda p: len(p.deliveries) >= 1)
    first_id = env.peer.deliveries[0].batch_id

    env.uplink.stop()                                  # outage; ratings keep coming
    assert fwd.wait_until(lambda f: not f.connected, WAIT)
    more = [rating_entry(s) for s in range(6, 60)]
    env.enqueue(more, fwd, per_txn=3)
    assert env.alarms.wait("backlog"), env.alarms.kinds()
    assert fwd.backlog() == 59

    env.uplink.start()                                 # same port: paho reconnects by itself
    env.peer.set_mode("ack")
    assert fwd.wait_until(backlog_is(0), WAIT), fwd.stats()
    assert env.alarms.wait("backlog-cleared")
    assert env.alarms.kinds() == ["backlog", "backlog-cleared"]

    by_batch = assert_resends_identical(env)           # resends are byte-identical
    assert len(by_batch[first_id]) >= 2                # the unacked batch was sent again after reconnect
    assert_each_entry_once(env, first + more)
    assert fwd.stats()["batches_resent"] >= 1
    assert env.db("SELECT count(*) FROM batches WHERE acked_ms IS NULL") == [(0,)]


def test_forged_acks_are_ignored(env: Env) -> None:
    fwd = env.forwarder()
    env.peer.set_mode("forged")
    entries = [rating_entry(s) for s in range(1, 4)]
    env.enqueue(entries, fwd)
    # the batch is re-sent after retry_s because none of the forged acks counted
    assert env.peer.wait(lambda p: len(p.deliveries) >= 2)
    assert fwd.wait_until(lambda f: f.stats()["acks_bad"] >= 2 and f.stats()["acks_wrong_hall"] >= 1, WAIT)
    assert fwd.backlog() == 3
    assert env.db("SELECT acked_ms FROM batches") == [(None,)]
    assert fwd.stats()["batches_acked"] == 0

    env.peer.set_mode("ack")                           # a good ack later clears it
    assert fwd.wait_until(backlog_is(0), WAIT)
    assert len(env.peer.by_batch()) == 1
    assert_resends_identical(env)
    assert_each_entry_once(env, entries)


def test_restart_resends_unacked(env: Env) -> None:
    env.cfg.retry_s = 60.0                             # the new process resends at once, not on a timer
    fwd1 = env.forwarder()
    env.peer.set_mode("silent")
    first = [rating_entry(s) for s in range(1, 5)]
    env.enqueue(first, fwd1)
    assert env.peer.wait(lambda p: len(p.deliveries) >= 1)
    first_id = env.peer.deliveries[0].batch_id
    fwd1.stop()
    env.started.remove(fwd1)

    later = [rating_entry(s) for s in range(5, 8)]
    env.enqueue(later)                                 # committed while no forwarder runs
    env.peer.set_mode("ack")
    fwd2 = env.forwarder()
    assert fwd2.wait_until(backlog_is(0), WAIT), fwd2.stats()
    by_batch = assert_resends_identical(env)
    assert len(by_batch[first_id]) >= 2
    assert fwd2.stats()["batches_resent"] >= 1
    assert_each_entry_once(env, first + later)


def test_province_rejection_raises_alarm(env: Env) -> None:
    fwd = env.forwarder()
    env.peer.set_mode("reject-first")
    env.enqueue([rating_entry(1), rating_entry(2)], fwd)
    assert fwd.wait_until(backlog_is(0), WAIT)         # the batch is acked: the province has decided
    assert env.alarms.wait("province-rejected")
    detail = next(d for k, d in env.alarms.items if k == "province-rejected")
    assert DEVICE in detail and "bad-mac" in detail
    assert env.db("SELECT stored, rejected FROM batches") == [(1, '[[0, "bad-mac"]]')]


def test_batch_ids_follow_the_clock(env: Env) -> None:
    # A replaced database must not reuse batch ids the province has already acked (it dedups on them).
    env.cfg.now_ms = lambda: 1_800_000_000_000
    fwd = env.forwarder()
    env.enqueue([rating_entry(1)], fwd)
    assert fwd.wait_until(backlog_is(0), WAIT)
    env.enqueue([rating_entry(2)], fwd)
    assert fwd.wait_until(backlog_is(0), WAIT)
    assert env.db("SELECT id FROM batches ORDER BY id") == [(1_800_000_000_000,), (1_800_000_000_001,)]


def test_config_is_checked(env: Env) -> None:
    bad = forward.ForwarderConfig(**{**env.cfg.__dict__, "batch_size": 5000})
    with pytest.raises(ValueError):
        forward.Forwarder(bad)
    raw = env.cfg.province_public_key
    assert isinstance(raw, bytes)
    hexkey = forward.ForwarderConfig(**{**env.cfg.__dict__, "province_public_key": raw.hex()})
    forward.Forwarder(hexkey)                          # the gateway's config holds the key as hex


def test_week_backlog_drains_in_seconds(env: Env) -> None:
    """A week of a busy hall's ratings (20,000) queued during an outage reaches the province quickly."""
    env.cfg.batch_size = 500
    env.cfg.backlog_threshold = 10_000
    entries = [rating_entry(s) for s in range(1, 20_001)]
    env.enqueue(entries, per_txn=1000)                 # committed while the forwarder is down
    t0 = time.monotonic()
    fwd = env.forwarder()
    assert fwd.wait_until(backlog_is(0), 60.0), fwd.stats()
    elapsed = time.monotonic() - t0
    print(f"\n20000 entries drained in {elapsed:.2f}s ({20000 / elapsed:.0f} entries/s)")
    assert_each_entry_once(env, entries)
    assert env.alarms.kinds() == ["backlog", "backlog-cleared"]
    assert elapsed < 30.0
