"""A burst of 20,000 ratings from 20 devices through the shipped broker config: all stored, none twice,
every device acked for all its seqs (mosquitto's default queue limit would silently drop most of them)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import device_key, make_keystore
from gw_helpers import Device, rating, rows, start_gateway, write_config

from countersign.protocol.keystore import Keystore
from countersign.sim.broker import Mosquitto

DEVICES = 20
PER_DEVICE = 1000


@pytest.mark.slow
def test_burst_20000_ratings(tmp_path: Path, hall_broker: Callable[[Keystore], Mosquitto]) -> None:
    ks = make_keystore(devices=DEVICES)
    broker = hall_broker(ks)
    gw = start_gateway(write_config(tmp_path, ks, broker.port))
    devs = [Device(broker.port, f"hf01-w{i:02d}", device_key(i)).start() for i in range(1, DEVICES + 1)]
    try:
        msgs = [[rating(d.key, d.device, seq, score=1 + seq % 4) for seq in range(1, PER_DEVICE + 1)]
                for d in devs]
        t0 = time.monotonic()
        infos = []
        for seq in range(PER_DEVICE):           # interleaved, as fast as paho takes them, QoS1
            for d, m in zip(devs, msgs, strict=True):
                infos.append(d.client.publish(f"cs/1/d/{d.device}/up", m[seq], qos=1))
        for d in devs:
            assert d.wait(lambda d=d: len(d.acked) >= PER_DEVICE, timeout=50), \
                f"{d.device}: {len(d.acked)} acked"
        elapsed = time.monotonic() - t0
        for d in devs:
            assert d.acked == {(1, s) for s in range(1, PER_DEVICE + 1)}
        assert all(i.is_published() for i in infos)
        total = DEVICES * PER_DEVICE
        assert rows(gw, "SELECT count(*), count(DISTINCT device || ':' || seq) FROM ratings") \
            == [(total, total)]
        per_dev = dict(rows(gw, "SELECT device, count(*) FROM ratings GROUP BY device"))
        assert per_dev == {d.device: PER_DEVICE for d in devs}
        # every stored rating is queued for the province, once
        assert rows(gw, "SELECT count(*) FROM uplink_entries") == [(total,)]
        st = gw.stats()
        assert st["stored"] == total and st.get("rejected", 0) == 0
        print(f"burst: {total} ratings in {elapsed:.1f}s = {total / elapsed:.0f}/s, "
              f"{st['group_commits']} group commits")
    finally:
        for d in devs:
            d.stop()
        gw.stop()
