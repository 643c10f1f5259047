"""The CPython reference keypad against a real mosquitto and a scripted gateway peer, and its outbox."""

from __future__ import annotations

import json
import random
import shutil
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_keystore
from refdev_helpers import Peer, device_config

from countersign.common.outbox import Outbox, OutboxFull
from countersign.protocol import cose, messages
from countersign.protocol.keystore import Keystore
from countersign.protocol.messages import Heartbeat, Hello, NoRating, Rating, TimeSync
from countersign.sim.broker import Mosquitto
from countersign.sim.devclock import Scheduler
from countersign.sim.refdevice import PressOutcome, RefDevice, State

DEV = "hf01-w01"
DEV2 = "hf01-w02"
T = 10.0    # generous wait limit; every wait returns as soon as its condition holds


# -- fixtures ------------------------------------------------------------------------------------------

class Hall:
    def __init__(self, ks: Keystore, broker: Mosquitto, peer: Peer, root: Path, sched: Scheduler) -> None:
        self.ks, self.broker, self.peer, self.root, self.sched = ks, broker, peer, root, sched
        self.devices: list[RefDevice] = []

    def device(self, name: str = DEV, *, connect: bool = True, **kw: Any) -> RefDevice:
        kw.setdefault("scheduler", self.sched)
        kw.setdefault("ack_timeout_s", 5.0)
        cfg = device_config(self.ks, name, self.broker.port, self.root / name, **kw)
        d = RefDevice(cfg).start()
        self.devices.append(d)
        if connect:
            assert d.wait_for(lambda: d.connected, T), "device did not connect"
            # The Hello reaches the peer after the subscription is in place, so downlinks now arrive.
            assert self.peer.wait(lambda: any(h.boot == d.boot for h in self.peer.of(name, Hello)), T)
        return d


@pytest.fixture
def hall(hall_broker: Callable[[Keystore], Mosquitto], tmp_path: Path) -> Iterator[Hall]:
    ks = make_keystore(devices=3)
    broker = hall_broker(ks)
    peer = Peer(ks, broker.port).start()
    sched = Scheduler("test-devices")
    h = Hall(ks, broker, peer, tmp_path, sched)
    yield h
    for d in h.devices:
        d.stop()
    peer.stop()
    sched.close()


def open_prompt(hall: Hall, dev: RefDevice, prompt_id: int, timeout: int = 20, **kw: Any) -> None:
    hall.peer.prompt(dev.cfg.device_id, prompt_id, timeout, **kw)
    assert dev.wait_for(lambda: dev.prompt_id == prompt_id, T)


def on_disk(dev: RefDevice, tmp: Path) -> list[int]:
    """Seqs in a copy of the device's outbox file: what would survive if power failed right now."""
    copy = tmp / f"copy-{random.getrandbits(32)}.log"
    shutil.copyfile(dev.cfg.state_dir / "outbox.log", copy)
    ob = Outbox(copy)
    seqs = [i.seq for i in ob.items()]
    ob.close()
    return seqs


# -- rating flow ---------------------------------------------------------------------------------------

def test_press_is_on_disk_before_press_returns_then_acked(hall: Hall, tmp_path: Path) -> None:
    stored: list[int] = []
    hall.peer.auto_ack = False
    dev = hall.device(on_stored=stored.append)
    open_prompt(hall, dev, 7)
    r = dev.press(3)
    assert r.outcome == PressOutcome.RATED and r == "rated" and r.seq == 1
    assert on_disk(dev, tmp_path) == [1]                 # durable before the customer is thanked
    assert dev.outbox_depth() == 1
    assert dev.press(4) == "ignored"                      # one rating per prompt
    assert dev.state == State.RATED

    assert hall.peer.wait(lambda: len(hall.peer.of(DEV, Rating)) == 1, T)
    rating = hall.peer.of(DEV, Rating)[0]
    assert (rating.epoch, rating.seq, rating.score, rating.scale, rating.prompt) == (1, 1, 3, 4, 7)
    assert rating.boot == 1 and rating.delay >= 0

    hall.peer.ack(DEV, 1, [1])
    assert dev.wait_for(lambda: dev.outbox_depth() == 0, T)
    assert stored == [1] and dev.acked_seqs() == [1]
    assert on_disk(dev, tmp_path) == []
    s = dev.stats()
    assert (s["presses"], s["ratings"], s["ignored"], s["acked"]) == (2, 1, 1, 1)


def test_prompt_expires_into_a_no_rating(hall: Hall) -> None:
    dev = hall.device()
    open_prompt(hall, dev, 3, timeout=1)
    assert dev.wait_for(lambda: dev.state == State.EXPIRED, T)
    assert hall.peer.wait(lambda: len(hall.peer.of(DEV, NoRating)) == 1, T)
    nr = hall.peer.of(DEV, NoRating)[0]
    assert (nr.seq, nr.prompt) == (1, 3) and nr.delay >= 1000
    assert dev.wait_for(lambda: dev.outbox_depth() == 0, T)   # acked like a rating
    assert dev.press(2) == "no-prompt"                        # the window is closed
    assert not hall.peer.of(DEV, Rating)
    assert dev.stats()["no_ratings"] == 1


def test_press_without_prompt_is_not_a_rating_and_is_reported(hall: Hall) -> None:
    dev = hall.device(heartbeat_s=0.3)
    assert dev.press(1) == "no-prompt"
    assert dev.press(4) == "no-prompt"
    assert dev.outbox_depth() == 0 and dev.stats()["ignored"] == 2
    assert hall.peer.wait(lambda: any(h.ignored == 2 for h in hall.peer.of(DEV, Heartbeat)), T)
    hb = hall.peer.of(DEV, Heartbeat)[-1]
    assert (hb.fw, hb.reset, hb.heap, hb.rssi, hb.outbox, hb.outbox_free, hb.stuck) == \
        ("ref-0.1.0", 1, 0, None, 0, 9000, 0)
    nonces = [h.nonce for h in hall.peer.of(DEV, Hello)]
    assert len(set(nonces)) == len(nonces)                    # a fresh nonce every time
    assert not hall.peer.of(DEV, Rating)


def test_invite_key_opens_prompt_zero_only_with_a_clerk(hall: Hall) -> None:
    dev = hall.device()
    assert not dev.invite()                                   # window closed: nobody to rate
    hall.peer.session(DEV, "1001", "王芳")
    assert dev.wait_for(lambda: dev.clerk == "1001", T)
    assert dev.invite()
    assert dev.state == State.PROMPT_OPEN
    assert not dev.invite()                                   # already open, not yet rated
    assert dev.press(4) == "rated"
    assert dev.prompt_id is None and dev.state == State.RATED
    assert hall.peer.wait(lambda: len(hall.peer.of(DEV, Rating)) == 1, T)
    assert hall.peer.of(DEV, Rating)[0].prompt == 0
    hall.peer.session(DEV, None)
    assert dev.wait_for(lambda: dev.clerk is None, T)

    off = hall.device(DEV2, invite_key=False)
    hall.peer.session(DEV2, "1002")
    assert off.wait_for(lambda: off.clerk == "1002", T)
    assert not off.invite()


def test_newer_prompt_replaces_an_unrated_one_and_old_prompts_are_ignored(hall: Hall) -> None:
    dev = hall.device()
    open_prompt(hall, dev, 5)
    open_prompt(hall, dev, 6)
    assert hall.peer.wait(lambda: len(hall.peer.of(DEV, NoRating)) == 1, T)
    assert hall.peer.of(DEV, NoRating)[0].prompt == 5
    assert dev.press(2).seq == 2
    hall.peer.prompt(DEV, 4)                                   # older than the last one seen
    assert dev.wait_for(lambda: dev.stats()["stale_prompts"] == 1, T)
    assert dev.state == State.RATED
    # With the clock set (the peer answered the Hello), a prompt whose window closed long ago (queued
    # at the broker while the device was away) is not opened; a recent one is.
    assert dev.wait_for(lambda: dev.now() is not None, T)
    now = dev.now() or 0
    hall.peer.prompt(DEV, 10, timeout=20, time=now - 100)
    assert dev.wait_for(lambda: dev.stats()["stale_prompts"] == 2, T)
    assert dev.state == State.RATED
    open_prompt(hall, dev, 11, timeout=20, time=now - 5)


# -- time ----------------------------------------------------------------------------------------------

def test_time_unknown_until_a_timesync_that_echoes_the_nonce(hall: Hall) -> None:
    hall.peer.auto_time = False
    dev = hall.device()
    open_prompt(hall, dev, 1)
    dev.press(3)
    assert hall.peer.wait(lambda: len(hall.peer.of(DEV, Rating)) == 1, T)
    assert hall.peer.of(DEV, Rating)[0].time is None           # never a made-up time
    assert dev.now() is None

    nonce = hall.peer.of(DEV, Hello)[-1].nonce
    hall.peer.send(DEV, TimeSync(now_ms=1_800_000_000_000, nonce=(nonce + 1) & 0xFFFFFFFF))
    assert dev.wait_for(lambda: dev.stats()["bad_downlink"] == 1, T)
    assert dev.now() is None                                   # wrong nonce: refused

    hall.peer.send(DEV, TimeSync(now_ms=1_800_000_000_000, nonce=nonce))
    assert dev.wait_for(lambda: dev.now() is not None, T)
    assert 1_800_000_000 <= (dev.now() or 0) <= 1_800_000_000 + 5

    hall.peer.send(DEV, TimeSync(now_ms=1_900_000_000_000, nonce=nonce))   # replay of a used nonce
    assert dev.wait_for(lambda: dev.stats()["bad_downlink"] == 2, T)
    assert (dev.now() or 0) < 1_900_000_000

    open_prompt(hall, dev, 2)
    dev.press(4)
    assert hall.peer.wait(lambda: len(hall.peer.of(DEV, Rating)) == 2, T)
    assert 1_800_000_000 <= (hall.peer.of(DEV, Rating)[1].time or 0) <= 1_800_000_000 + 5


# -- forged and malformed downlinks --------------------------------------------------------------------

def test_forged_or_malformed_downlink_changes_nothing(hall: Hall) -> None:
    hall.peer.auto_ack = False
    dev = hall.device()
    open_prompt(hall, dev, 1)
    seq = dev.press(3).seq
    assert seq == 1
    hall.peer.ack(DEV, 1, [1], key=bytes(32))                  # MAC with the wrong key
    other = hall.ks.devices[DEV2].key
    hall.peer.send_raw(DEV, cose.mac0_encode(other, DEV2.encode(), messages.Ack(1, (1,)).encode()))
    hall.peer.send_raw(DEV, b"\xd1\x84garbage")
    hall.peer.send_raw(DEV, cose.mac0_encode(hall.ks.devices[DEV].key, DEV.encode(), b"\xa1\x00\x01"))
    assert dev.wait_for(lambda: dev.stats()["bad_downlink"] == 4, T)
    hall.peer.ack(DEV, 2, [1])                                 # genuine MAC, another epoch
    hall.peer.prompt(DEV, 9)                                   # a marker: downlinks arrive in order
    assert dev.wait_for(lambda: dev.state == State.PROMPT_OPEN, T)
    assert dev.outbox_depth() == 1 and dev.stats()["acked"] == 0

    hall.peer.ack(DEV, 1, [1])
    assert dev.wait_for(lambda: dev.outbox_depth() == 0, T)


def test_unacked_record_is_resent_after_the_ack_timeout(hall: Hall) -> None:
    hall.peer.auto_ack = False
    dev = hall.device(ack_timeout_s=0.3)
    open_prompt(hall, dev, 1)
    dev.press(2)
    assert hall.peer.wait(lambda: hall.peer.dup >= 1, T)      # the same bytes again, not a new rating
    hall.peer.auto_ack = True
    assert dev.wait_for(lambda: dev.outbox_depth() == 0, T)
    assert dev.stats()["resent"] >= 1 and not hall.peer.conflicts


# -- outage and power cuts -----------------------------------------------------------------------------

def test_broker_outage_presses_continue_then_all_delivered_in_order(hall: Hall) -> None:
    dev = hall.device()
    hall.peer.session(DEV, "1001")
    assert dev.wait_for(lambda: dev.clerk == "1001", T)
    hall.broker.stop()
    assert dev.wait_for(lambda: not dev.connected, T)
    seqs = []
    for score in (1, 2, 3, 4, 4):
        assert dev.invite()
        r = dev.press(score)
        assert r == "rated"
        seqs.append(r.seq)
        assert dev.press(score) == "ignored"
    assert dev.outbox_depth() == 5
    hall.broker.start()
    assert dev.wait_for(lambda: dev.outbox_depth() == 0, 30)
    assert hall.peer.stored_seqs(DEV) == seqs == sorted(seqs)
    assert not hall.peer.conflicts


def test_power_cut_anywhere_never_reuses_a_seq_and_loses_nothing(hall: Hall) -> None:
    rnd = random.Random(20240601)
    made: list[int] = []
    prompt_id = 0
    state_dir = hall.root / DEV
    boots = 12
    for boot in range(1, boots + 1):
        hall.peer.auto_ack = True
        point = rnd.choice(["at-start", "prompt-open", "after-press", "before-ack", "after-ack", "torn"])
        dev = hall.device(connect=point != "at-start", ack_timeout_s=30)
        assert dev.boot == boot
        if point != "at-start":
            for _ in range(rnd.randint(1, 3)):
                hall.peer.auto_ack = point != "before-ack"
                prompt_id += 1
                open_prompt(hall, dev, prompt_id)
                if point == "prompt-open":
                    break
                r = dev.press(rnd.randint(1, 4))
                assert r == "rated"
                assert r.seq is not None
                made.append(r.seq)
            if point == "after-ack":
                assert dev.wait_for(lambda d=dev: d.outbox_depth() == 0, T)
        dev.power_cut()
        if point == "torn":
            # The cut came in the middle of writing the next record: half of it is on disk.
            with open(state_dir / "outbox.log", "ab") as f:
                f.write(struct.pack(">BH", 1, 80) + b"\x00" * 20)

    hall.peer.auto_ack = True
    last = hall.device()
    assert last.boot == boots + 1
    assert last.wait_for(lambda: last.outbox_depth() == 0, T)
    assert len(made) == len(set(made)) and made == sorted(made)   # seqs only ever go up
    stored = {s for d, e, s in hall.peer.stored if d == DEV and e == 1}
    assert set(made) <= stored                                     # every rating reached the gateway
    assert not hall.peer.conflicts                                 # no (dev, epoch, seq) with two payloads
    st = json.loads((state_dir / "state.json").read_text())
    assert st["boot"] == boots + 1 and st["reserved"] >= max(made)


def test_power_cut_writes_nothing_and_will_fires(hall: Hall) -> None:
    wills: list[bytes] = []
    got = threading.Event()

    def on_will(client: Any, userdata: Any, m: Any) -> None:
        wills.append(bytes(m.payload))
        got.set()

    hall.peer.client.message_callback_add("cs/1/d/+/will", on_will)
    hall.peer.client.subscribe("cs/1/d/+/will", qos=1)
    hall.peer.auto_ack = False
    dev = hall.device()
    open_prompt(hall, dev, 1)
    dev.press(1)
    files = {p.name: p.read_bytes() for p in (hall.root / DEV).iterdir()}
    dev.power_cut()
    assert got.wait(T) and wills == [b""]      # dropped without DISCONNECT: the broker's will
    assert dev.press(2) == "off"
    hall.peer.ack(DEV, 1, [1])        # queued by the broker for the (dead) session: nothing may change
    assert {p.name: p.read_bytes() for p in (hall.root / DEV).iterdir()} == files


# -- outbox unit tests ---------------------------------------------------------------------------------

def test_outbox_survives_reload_and_discards_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "ob.log"
    ob = Outbox(path)
    for s in (1, 2, 3):
        ob.append(1, s, bytes([s]) * 40)
    ob.ack(1, [2])
    ob.close()
    good = path.read_bytes()
    for cut in (1, 3, 10, 46):                                  # torn inside the next record
        rec = struct.pack(">BH", 1, 46) + struct.pack(">HI", 1, 4) + b"\x04" * 40 + b"\x00\x00\x00\x00"
        path.write_bytes(good + rec[:cut])
        ob2 = Outbox(path)
        assert [(i.seq, i.data) for i in ob2.items()] == [(1, b"\x01" * 40), (3, b"\x03" * 40)]
        assert ob2.torn_bytes in (0, cut) and ob2.torn_bytes == (cut if cut else 0)
        ob2.append(1, 4, b"\x04")                              # appends after the good part
        ob2.close()
        assert [i.seq for i in Outbox(path).items()] == [1, 3, 4]
        path.write_bytes(good)
    # A last record whose CRC does not match (bit flip while being written) is discarded too.
    bad = bytearray(good)
    bad[-1] ^= 0xFF
    path.write_bytes(bytes(bad))
    ob3 = Outbox(path)
    assert [i.seq for i in ob3.items()] == [1, 2, 3]           # the ack record was the torn one
    ob3.close()


def test_outbox_compaction_keeps_every_unacked_item(tmp_path: Path) -> None:
    path = tmp_path / "ob.log"
    ob = Outbox(path, compact_min=16)
    for s in range(1, 101):
        ob.append(1, s, b"r%03d" % s)
    size_before = path.stat().st_size
    for s in range(1, 101):
        if s % 10:
            ob.ack(1, [s])
    assert ob.compactions >= 1
    keep = [s for s in range(1, 101) if s % 10 == 0]
    assert [i.seq for i in ob.items()] == keep
    ob.close()
    assert path.stat().st_size < size_before
    assert [(i.seq, i.data) for i in Outbox(path).items()] == [(s, b"r%03d" % s) for s in keep]
    # A crash during compaction leaves a temp file beside an intact log: it is ignored and removed.
    (tmp_path / ".ob.log.compact").write_bytes(b"\x01\x00")
    assert [i.seq for i in Outbox(path).items()] == keep
    assert not (tmp_path / ".ob.log.compact").exists()


def test_outbox_full_refuses_and_never_overwrites(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "ob.log", capacity=3)
    for s in (1, 2, 3):
        ob.append(1, s, b"x")
    assert ob.full and ob.free == 0
    with pytest.raises(OutboxFull):
        ob.append(1, 4, b"y")
    assert [i.seq for i in ob.items()] == [1, 2, 3]
    assert ob.ack(1, [2, 99]) == [2]                           # unknown seqs are no-ops
    ob.append(1, 4, b"y")
    assert [i.seq for i in ob.items()] == [1, 3, 4]
    ob.close()


def test_device_with_full_outbox_refuses_the_press(hall: Hall) -> None:
    hall.peer.auto_ack = False
    dev = hall.device(outbox_capacity=2)
    for pid in (1, 2):
        open_prompt(hall, dev, pid)
        assert dev.press(3) == "rated"
    open_prompt(hall, dev, 3)
    assert dev.press(3) == "full"
    assert dev.outbox_seqs() == [1, 2] and dev.state == State.PROMPT_OPEN
    hall.peer.ack(DEV, 1, [1])
    assert dev.wait_for(lambda: dev.outbox_depth() == 1, T)
    assert dev.press(3) == "rated"
