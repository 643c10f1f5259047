"""Gateway store: dedup inside the insert's transaction, conflicting duplicates, quarantine, durability."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from conftest import device_key
from gw_helpers import rating

from countersign.gateway.store import RatingRecord, Store, digest
from countersign.protocol.context import Context
from countersign.protocol.outcome import Outcome

DEV = "hf01-w01"


def record(seq: int, msg: bytes, epoch: int = 1) -> RatingRecord:
    return RatingRecord(device=DEV, epoch=epoch, seq=seq, kind="rating", score=4, scale=4, prompt=0,
                        press_time=None, mono_ms=1, boot=1, delay_ms=10, received_ms=1000,
                        ctx=Context(window="1", clerk="10023", service=0, txn=None, prompt_ms=None,
                                    clerk_name=None), msg=msg)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "gw.db", lambda: 1000)
    yield s
    s.close()


def test_pragmas_are_durable(store: Store) -> None:
    with store.read() as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert c.execute("PRAGMA synchronous").fetchone()[0] == 2   # FULL


def test_dedup_in_one_transaction_and_across_reopen(store: Store, tmp_path: Path) -> None:
    m1 = rating(device_key(1), DEV, 1)
    with store.transaction() as c:
        assert store.store_rating(c, record(1, m1)) is Outcome.STORED
        # the same key again inside the same transaction is already seen
        assert store.store_rating(c, record(1, m1)) is Outcome.DUPLICATE
        # same seq, other epoch: a different rating (a re-flashed device)
        assert store.store_rating(c, record(1, rating(device_key(1), DEV, 1, epoch=2), epoch=2)) \
            is Outcome.STORED
    store.close()
    again = Store(tmp_path / "gw.db", lambda: 1000)
    with again.transaction() as c:
        assert again.store_rating(c, record(1, m1)) is Outcome.DUPLICATE
    assert again.count_ratings() == 2
    # the UNIQUE constraint is the last line of defence even for a caller that skips the check
    with pytest.raises(sqlite3.IntegrityError), again.read() as c:
        c.execute("INSERT INTO ratings SELECT * FROM ratings LIMIT 1")
    again.close()


def test_rolled_back_transaction_stores_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction() as c:
        store.store_rating(c, record(1, rating(device_key(1), DEV, 1)))
        raise RuntimeError("crash before commit")
    assert store.count_ratings() == 0
    with store.read() as c:   # nothing queued for the province either
        assert c.execute("SELECT count(*) FROM uplink_entries").fetchone()[0] == 0


def test_conflicting_duplicate_keeps_the_original(store: Store) -> None:
    original = rating(device_key(1), DEV, 7, score=4)
    other = rating(device_key(1), DEV, 7, score=1)
    with store.transaction() as c:
        assert store.store_rating(c, record(7, original)) is Outcome.STORED
    with store.transaction() as c:
        assert store.store_rating(c, record(7, other)) is Outcome.CONFLICT
    with store.read() as c:
        assert c.execute("SELECT msg, digest FROM ratings WHERE seq=7").fetchall() == \
            [(original, digest(original))]


def test_quarantine_and_alarms(store: Store) -> None:
    with store.transaction() as c:
        Store.quarantine(c, 5, "cs/1/d/hf01-w01/up", DEV, "bad-mac", "MAC does not verify", b"\xd1junk")
        Store.quarantine(c, 6, "cs/1/d/hf01-w01/up", DEV, "bad-mac", "MAC does not verify", b"\xd1junk2")
        assert Store.raise_alarm(c, 5, "storage", None, "low", once=True)
        assert not Store.raise_alarm(c, 6, "storage", None, "low", once=True)
        assert Store.raise_alarm(c, 6, "security", DEV, "conflict")
    assert store.quarantine_counts() == {"bad-mac": 2}
    assert [a["kind"] for a in store.open_alarms()] == ["storage", "security"]
    with store.transaction() as c:
        assert Store.clear_alarms(c, 9, "storage") == 1
    assert [a["kind"] for a in store.open_alarms()] == ["security"]
    with store.read() as c:
        payload, dg = c.execute("SELECT payload, digest FROM quarantine ORDER BY id LIMIT 1").fetchone()
    assert payload == b"\xd1junk" and dg == digest(b"\xd1junk")


def test_quarantine_bounded_per_source(store: Store) -> None:
    """A flood from one credential: every message counted, 10 kept whole then one in 5, payloads cut."""
    firsts = []
    with store.transaction() as c:
        for i in range(100):
            firsts.append(Store.quarantine(c, i, "cs/1/d/hf01-w01/up", DEV, "bad-mac", "x", bytes(5000),
                                           keep=10, sample=5))
        # another source is not held back by the first one's flood
        Store.quarantine(c, 200, "cs/1/d/hf01-w02/up", "hf01-w02", "bad-mac", "x", b"junk", keep=10, sample=5)
    assert firsts.index(True) == 10 and firsts.count(True) == 1, "the 11th is the first over the cap"
    assert store.quarantine_counts() == {"bad-mac": 101}
    with store.read() as c:
        kept = c.execute("SELECT count(*), max(length(payload)) FROM quarantine WHERE device=?",
                         (DEV,)).fetchone()
        other = c.execute("SELECT count(*) FROM quarantine WHERE device='hf01-w02'").fetchone()
        (dg,) = c.execute("SELECT digest FROM quarantine LIMIT 1").fetchone()
    assert kept == (10 + 90 // 5, 1024) and other == (1,)
    assert dg == digest(bytes(5000)), "the digest is of the whole payload"


def test_forward_queue_written_with_the_rating(store: Store) -> None:
    m = rating(device_key(1), DEV, 3)
    with store.transaction() as c:
        store.store_rating(c, record(3, m))
        store.store_rating(c, record(3, m))
    with store.read() as c:
        assert c.execute("SELECT count(*) FROM uplink_entries").fetchone()[0] == 1


def test_config_load_and_clear_errors(tmp_path: Path) -> None:
    from countersign.gateway.config import ConfigError, GatewayConfig

    example = Path(__file__).resolve().parent.parent / "gateway" / "gateway.example.toml"
    (tmp_path / "up").write_text("secret\n")
    text = example.read_text(encoding="utf-8").replace('"/etc/countersign/uplink-password"', '"up"') \
        .replace('"/etc/countersign/gateway-password"', '"up"')
    (tmp_path / "gw.toml").write_text(text, encoding="utf-8")
    cfg = GatewayConfig.load(tmp_path / "gw.toml")
    assert cfg.hall == "hf01" and cfg.forwarding and cfg.uplink_password == "secret"
    assert cfg.group_max == 256 and cfg.prompt_timeout_default == 20
    # Every table the example documents is read (a key misspelt in it would be refused above).
    assert cfg.tokens_path is not None and cfg.roster_path is not None and cfg.users_path is not None
    assert cfg.timezone == "Asia/Shanghai" and cfg.alarm_notify and cfg.hours is not None
    bad = {
        'db = "x.db"\nkeystore = "k.json"\n': "hall is required",
        'hall = "HF 01"\ndb = "x.db"\nkeystore = "k.json"\n': "hall id",
        'hall = "hf01"\ndb = "x.db"\nkeystore = "k.json"\n[http]\nport = "80"\n':
            "http.port has the wrong type",
        'hall = "hf01"\ndb = "x.db"\nkeystore = "k.json"\ncolour = 1\n': "unknown config key(s): colour",
        'hall = "hf01"\ndb = "x.db"\nkeystore = "k.json"\n[uplink]\nhost = "p"\n': "uplink.signing_key",
        'hall = "hf01"\ndb = "x.db"\nkeystore = "k.json"\n[broker]\npassword_file = "nope"\n': "cannot read",
        'hall = "hf01"\nhall = "hf02"\n': "not valid TOML",
    }
    for body, message in bad.items():
        (tmp_path / "bad.toml").write_text(body, encoding="utf-8")
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            GatewayConfig.load(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match="cannot read config"):
        GatewayConfig.load(tmp_path / "missing.toml")
