"""A rejected entry never stops the rest of its batch at the province: each kind of malformed
entry inside a validly signed batch is rejected with a reason, the good entries around it are stored,
and the receiver goes on serving the next batch. Through province.receiver.process_message on a real
store (the worker's processing thread runs exactly this per batch), plus a hypothesis fuzz of entries.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from province_helpers import dev_key, entry, make_registry, rating, signed_batch

from countersign.protocol import batch, cose
from countersign.province import receiver
from countersign.province import store as pst
from countersign.province.db import Database
from countersign.province.migrations import upgrade

REPRODUCER = bytes.fromhex(
    "d1844da20448686630312d773031f505a05822aa0001010102182a03040404051903e9061a6774ae20071a004fdf8708190dac"
    "090758209816dbcc5374c9f0e727863d69e7eacb540f670f6fe9b1f99f71401c0e444202")


def _malformed(key: bytes) -> dict[str, bytes]:
    good = rating(key, "hf01-w01", 900)
    flipped = bytearray(good)
    flipped[-1] ^= 1
    return {
        "tag 18 over a map (peek_kid KeyError)": b"\xd2\xa0",
        "tag 17 over a map": b"\xd1\xa1\x01\x40",
        "true as a header key": REPRODUCER,
        "bad MAC": bytes(flipped),
        "truncated": good[:-5],
        "trailing byte": good + b"\x00",
        "empty": b"",
        "garbage": b"\xff\x00\x13",
        "another hall's device": rating(dev_key(2, 1), "hf02-w01", 901),
        "unknown device": rating(bytes(32), "hf01-w99", 902),
    }


class Province:
    def __init__(self, root: Path, db: Database) -> None:
        self.registry, self.gateway_keys, self.key = make_registry(root)
        upgrade(db)
        self.conn = db.connect()
        self.next_batch = 1
        self.next_seq = 1

    def seq(self) -> int:
        self.next_seq += 1
        return self.next_seq

    def send(self, entries: list[batch.Entry]) -> receiver.Result:
        s = pst.Store(self.conn, 1_700_000_002_000)
        s.begin()
        payload = signed_batch(self.gateway_keys["hf01"], "hf01", self.next_batch, entries)
        self.next_batch += 1
        res = receiver.process_message(s, self.registry, self.key, "cs/1/h/hf01/batch", payload)
        s.commit()
        return res

    def stored(self) -> int:
        return int(self.conn.scalar("SELECT count(*) FROM ratings"))


@pytest.mark.parametrize("kind", list(_malformed(dev_key(1, 1))))
def test_a_malformed_entry_is_rejected_and_the_rest_stored(tmp_path: Path, province_db: Database,
                                                           kind: str) -> None:
    p = Province(tmp_path, province_db)
    key = dev_key(1, 1)
    bad = _malformed(key)[kind]
    res = p.send([entry(rating(key, "hf01-w01", 1)), entry(bad), entry(rating(key, "hf01-w01", 2))])
    assert res.ack is not None
    ack = batch.decode_batch_ack(cose.sign1_verify(res.ack, lambda _k: p.key.public_key()).payload)
    if kind == "unknown device":
        # Kept as held (its enrollment may come), so stored in the ack's sense, yet no rating counts it.
        assert ack.stored == 3 and ack.rejected == [] and res.held == {"unknown-device": 1}, ack
    else:
        assert ack.stored == 2 and [i for i, _r in ack.rejected] == [1], ack
    assert p.stored() == 2
    # and the receiver still serves the next batch
    res2 = p.send([entry(rating(key, "hf01-w01", 3))])
    assert res2.counts["stored"] == 1 and p.stored() == 3


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.one_of(st.binary(max_size=120), st.sampled_from(list(_malformed(dev_key(1, 1)).values()))),
                min_size=1, max_size=4))
def test_fuzzed_entries_never_stop_a_batch(tmp_path: Path, province_db: Database, msgs: list[bytes]) -> None:
    # One province for every example (a database per example would make the PostgreSQL run crawl); each
    # example's good rating has a new seq, so it is stored, not a duplicate of the last example's.
    p = _PROVINCES.get(province_db.url) or _PROVINCES.setdefault(province_db.url,
                                                                  Province(tmp_path, province_db))
    key = dev_key(1, 1)
    before = p.stored()
    res = p.send([entry(m) for m in msgs] + [entry(rating(key, "hf01-w01", p.seq()))])
    assert res.counts["stored"] == 1 and p.stored() == before + 1
    # Every bad entry is accounted for: rejected, or (an unknown device's) held, or a copy of one held.
    assert res.counts["rejected"] + res.counts["held"] + res.counts["duplicates"] == len(msgs)


_PROVINCES: dict[str, Province] = {}
