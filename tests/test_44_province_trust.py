"""The receiver trusts a hall gateway no further than it must (issue 12, deliverable 7): batches crafted
with a hall's real signing key that bind a rating to another clerk than its prompt was opened for, two
ratings to one prompt, or another window's rating to a prompt. Each is held with its reason, the good
entries beside them are stored, one alarm per batch; an outcome whose prompt record has not come yet
waits for it. On SQLite and on PostgreSQL, through a running receiver and a real broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from province_helpers import World, entry, make_world, no_rating, rating, signed_batch

from countersign.protocol import batch
from countersign.protocol.context import Context
from countersign.province.db import Database
from countersign.province.province import Province
from countersign.province.report import build_report

OPENED_MS = 1_700_000_000_000


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = make_world(tmp_path)
    yield w
    w.close()


def prompt(n: int, device: str = "hf01-w01", window: str = "1", clerk: str = "A-001", service: int = 2
           ) -> batch.PromptEntry:
    return batch.PromptEntry(n, device, Context(window, clerk, service, f"T{n}", OPENED_MS), 20)


def outcome(w: World, device: str, seq: int, prompt_id: int, *, window: str = "1", clerk: str = "A-001",
            service: int = 2, txn: str | None = None, score: int = 4) -> batch.DeviceEntry:
    msg = rating(w.device_key(device), device, seq, score, prompt=prompt_id)
    return entry(msg, window=window, clerk=clerk, service=service, txn=txn or f"T{prompt_id}")


def q(db: Database, sql: str, *args: object) -> list[tuple[Any, ...]]:
    with db.connect() as conn:
        return [tuple(r) for r in conn.all(sql, args)]


class Hall:
    def __init__(self, w: World, db: Database) -> None:
        self.w, self.db = w, db
        self.p: Province = w.province(db)
        self.client = w.hall_client("hf01")
        self.sent = 0

    def send(self, batch_id: int, entries: list[batch.Entry]) -> batch.BatchAck:
        self.client.publish("hf01", signed_batch(self.w.gateway_keys["hf01"], "hf01", batch_id, entries))
        self.sent += 1
        return self.client.wait_acks(self.sent)[-1][1]


def test_a_rating_bound_to_another_clerk_than_its_prompt_is_held_with_the_reason(
        world: World, province_db: Database) -> None:
    h = Hall(world, province_db)
    ack = h.send(1, [
        prompt(700), prompt(701),
        outcome(world, "hf01-w01", 1, 700, clerk="Z-999"),     # the gateway's lie: stored under Z-999
        outcome(world, "hf01-w01", 2, 701),                    # a good neighbour
    ])
    # Both kept (the gateway may forget them), nothing rejected: the held one is the province's to judge.
    assert (ack.stored, ack.duplicates, ack.rejected) == (4, 0, [])
    assert q(province_db, "SELECT seq, clerk FROM ratings") == [(2, "A-001")]
    assert q(province_db, "SELECT seq, prompt, clerk, reason, detail, state FROM held") == [
        (1, 700, "Z-999", "prompt-mismatch", "clerk Z-999 but prompt 700 was opened for A-001", "held")]
    assert q(province_db, "SELECT kind, hall, batch_id FROM alarms") == [("held-entries", "hf01", 1)]
    assert h.p.stats()["held_by_reason"] == {"prompt-mismatch": 1}
    # Counted nowhere: the report knows one rating, by A-001.
    with province_db.connect() as conn:
        report = build_report(conn, ("clerk",))
    assert [(g["clerk"], g["ratings"]) for g in report["groups"]["clerk"]] == [("A-001", 1)]
    assert report["total"]["ratings"] == 1


def test_two_ratings_for_one_prompt_and_another_windows_rating_are_held_one_alarm_per_batch(
        world: World, province_db: Database) -> None:
    h = Hall(world, province_db)
    ack = h.send(1, [
        prompt(702), prompt(703), prompt(704, device="hf01-w02", window="2", clerk="B-002"),
        outcome(world, "hf01-w01", 1, 702),                              # the prompt's one outcome
        outcome(world, "hf01-w01", 2, 702, score=1),                     # a second one for it
        outcome(world, "hf01-w02", 1, 703),                              # window 2 rates window 1
        outcome(world, "hf01-w02", 2, 704, window="2", clerk="B-002"),   # good
        entry(no_rating(world.device_key("hf01-w01"), "hf01-w01", 3, prompt=703), txn="T703", clerk="A-001"),
    ])
    assert (ack.stored, ack.rejected) == (8, [])
    assert q(province_db, "SELECT device, seq, prompt FROM ratings ORDER BY device, seq") == [
        ("hf01-w01", 1, 702), ("hf01-w01", 3, 703), ("hf01-w02", 2, 704)]
    held = q(province_db, "SELECT device, seq, reason, detail FROM held ORDER BY id")
    assert [(d, s, r) for d, s, r, _ in held] == [("hf01-w01", 2, "prompt-reused"),
                                                 ("hf01-w02", 1, "prompt-mismatch")]
    assert "hf01-w01 epoch 1 seq 1" in held[0][3]
    assert held[1][3] == "device hf01-w02 but prompt 703 was opened for hf01-w01"
    # One alarm for the batch, saying what it held.
    [(kind, batch_id, detail)] = q(province_db, "SELECT kind, batch_id, detail FROM alarms")
    assert (kind, batch_id) == ("held-entries", 1)
    assert "held 2: prompt-mismatch 1, prompt-reused 1" in detail
    # A later batch with another outcome for prompt 702 is held too: one outcome per prompt, ever.
    ack2 = h.send(2, [outcome(world, "hf01-w01", 4, 702), outcome(world, "hf01-w01", 5, 0, txn="-")])
    assert (ack2.stored, ack2.rejected) == (2, [])
    assert q(province_db, "SELECT seq, reason FROM held WHERE batch_id = 2") == [(4, "prompt-reused")]
    assert q(province_db, "SELECT seq FROM ratings WHERE batch_id = 2") == [(5,)]    # invite key: own prompt
    assert q(province_db, "SELECT COUNT(*) FROM alarms WHERE batch_id = 2") == [(1,)]
    # The same held bytes again (a gateway re-queued them): a duplicate, kept once.
    ack3 = h.send(3, [outcome(world, "hf01-w01", 4, 702)])
    assert (ack3.stored, ack3.duplicates) == (0, 1)
    assert q(province_db, "SELECT COUNT(*) FROM held") == [(3,)]


def test_an_outcome_waits_for_its_prompt_record_and_is_counted_when_it_comes(
        world: World, province_db: Database) -> None:
    h = Hall(world, province_db)
    # Batches can arrive out of order (several in flight, several workers): the ratings come first.
    ack = h.send(2, [outcome(world, "hf01-w01", 1, 900), outcome(world, "hf01-w01", 2, 901, clerk="Z-999")])
    assert (ack.stored, ack.rejected) == (2, [])
    assert q(province_db, "SELECT seq, reason FROM held ORDER BY seq") == [(1, "no-prompt-record"),
                                                                           (2, "no-prompt-record")]
    assert q(province_db, "SELECT COUNT(*) FROM ratings") == [(0,)]
    assert q(province_db, "SELECT COUNT(*) FROM alarms") == [(0,)]     # a wait is no finding
    # The records come: 900 matches (counted now), 901 was opened for A-001 (held as a mismatch, alarmed).
    h.send(1, [prompt(900), prompt(901)])
    assert q(province_db, "SELECT seq, clerk, prompt FROM ratings") == [(1, "A-001", 900)]
    assert q(province_db, "SELECT seq, reason, state, rating_id IS NOT NULL FROM held ORDER BY seq") == [
        (1, "no-prompt-record", "released", 1), (2, "prompt-mismatch", "held", 0)]
    assert q(province_db, "SELECT kind, batch_id FROM alarms") == [("held-entries", 2)]


def test_the_same_key_with_other_bytes_among_held_ratings_is_a_conflict_alarm(
        world: World, province_db: Database) -> None:
    h = Hall(world, province_db)
    unknown = b"\x42" * 32
    first = rating(unknown, "hf01-w77", 5, 4)
    other = rating(unknown, "hf01-w77", 5, 1)
    assert h.send(1, [entry(first)]).stored == 1
    ack = h.send(2, [entry(other)])
    assert (ack.stored, ack.rejected) == (0, [(0, "conflicting-duplicate")])
    assert q(province_db, "SELECT seq, score, reason, cose FROM held") == [(5, 4, "unknown-device", first)]
    assert ("conflicting-rating", "hf01-w77") in q(province_db, "SELECT kind, device FROM alarms")
