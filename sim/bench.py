"""`make bench`: gateway ingest against plain MQTT pass-through, on the same broker config, in one run.

Both measurements use the hall broker config the gateway generates (per-device passwords, ACLs,
unlimited queues) and the same publishers: D keypads' credentials, N signed ratings of realistic size.

- pass-through: a plain paho QoS1 subscriber (as the gateway user) receives the ratings; the clock stops
  at the last one received.
- gateway ingest: the real Gateway receives them (verify + dedup + durable SQLite commit with
  synchronous=FULL + MACed ack back to each keypad); the clock stops at the last ack a keypad receives.

The brief's target is a ratio (gateway / pass-through) of at least 0.5.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from countersign.common import bundle
from countersign.common.mqtt import Handlers, Options, make_client
from countersign.gateway.brokerconf import write_broker_files
from countersign.gateway.config import GatewayConfig
from countersign.gateway.gateway import Gateway
from countersign.protocol import cose, messages, topics
from countersign.protocol.keystore import DeviceKey, Keystore, mqtt_password
from countersign.sim import fwbench
from countersign.sim.broker import Mosquitto, free_port, run_as_clause
from countersign.sim.chain import Chain, ChainConfig
from countersign.sim.loadgen import Counter, Publisher, run_publishers

GW_PASSWORD = "bench-gateway"


def _keystore(devices: int) -> Keystore:
    ks = Keystore(hall="bench")
    for i in range(devices):
        ks.add_device(f"bench-w{i:03d}",
                      DeviceKey(bytes([i + 1]) * 32, epoch=1, window=str(i + 1), hall="bench"))
    return ks


def _ratings(ks: Keystore, per_device: int) -> dict[str, list[bytes]]:
    now = int(time.time())
    out: dict[str, list[bytes]] = {}
    for dev, dk in ks.devices.items():
        out[dev] = [cose.mac0_encode(dk.key, dev.encode(), messages.Rating(
            epoch=1, seq=s, score=1 + s % 4, scale=4, prompt=0, time=now, mono=1000 * s, delay=3000,
            boot=1).encode()) for s in range(1, per_device + 1)]
    return out


def _broker(work: Path, ks: Keystore, name: str) -> Mosquitto:
    port = free_port()
    files = write_broker_files(work / name, ks, GW_PASSWORD, port=port, bind="127.0.0.1",
                               run_as=run_as_clause(), persistence=False)
    return Mosquitto(files.conf, port).start()


def passthrough(work: Path, ks: Keystore, msgs: dict[str, list[bytes]], timeout: float) -> dict[str, Any]:
    total = sum(len(v) for v in msgs.values())
    broker = _broker(work, ks, "broker-passthrough")
    got = Counter()
    subscribed = threading.Event()

    def on_connect(_session_present: bool) -> None:
        sub.subscribe(topics.DEVICE_UP_FILTER, qos=1)

    # A plain QoS 1 subscriber (the broker acks for it): the broker's own rate, no gateway behind it.
    # paho's own reconnect backoff (1 s to 120 s): the run is one connection.
    sub = make_client(
        Options(client_id=topics.GATEWAY_USER, username=topics.GATEWAY_USER, password=GW_PASSWORD,
                reconnect_min_s=1, reconnect_max_s=120, jitter=False),
        Handlers(connected=on_connect, subscribed=lambda _ok, _rcs: subscribed.set(),
                 message=lambda _m: got.add()))
    try:
        sub.connect("127.0.0.1", broker.port)
        sub.loop_start()
        if not subscribed.wait(10):
            raise TimeoutError("pass-through subscriber did not subscribe")
        pubs = [Publisher("127.0.0.1", broker.port, dev, mqtt_password(ks.devices[dev].key),
                          topics.device_up(dev), payloads) for dev, payloads in msgs.items()]
        start = run_publishers(pubs)
        ok = got.wait_for(total, timeout)
        elapsed = time.perf_counter() - start
        for p in pubs:
            p.close()
    finally:
        sub.loop_stop()
        sub.disconnect()
        broker.stop()
    return {"messages": total, "received": got.value, "complete": ok, "seconds": round(elapsed, 3),
            "rate": round(got.value / elapsed, 1)}


def gateway_ingest(work: Path, ks: Keystore, msgs: dict[str, list[bytes]], timeout: float) -> dict[str, Any]:
    total = sum(len(v) for v in msgs.values())
    broker = _broker(work, ks, "broker-gateway")
    ks_path = work / "gateway-keystore.json"
    ks.save(ks_path)
    gw = Gateway(GatewayConfig(hall="bench", db_path=work / "bench-gateway.db", keystore_path=ks_path,
                               broker_port=broker.port, gateway_password=GW_PASSWORD))
    acked = Counter()

    def on_ack_for(dev: str, key: bytes) -> Any:
        def on_reply(data: bytes) -> None:
            try:
                v = cose.mac0_verify(data, lambda kid: key, expected_kid=dev.encode())
                m = messages.decode_payload(v.payload, messages.DEVICE_DOWN)
            except ValueError:
                return
            if isinstance(m, messages.Ack):
                acked.add(len(m.seqs))
        return on_reply

    try:
        gw.start()
        pubs = [Publisher("127.0.0.1", broker.port, dev, mqtt_password(ks.devices[dev].key),
                          topics.device_up(dev), payloads, reply_topic=topics.device_down(dev),
                          on_reply=on_ack_for(dev, ks.devices[dev].key)) for dev, payloads in msgs.items()]
        start = run_publishers(pubs)
        ok = acked.wait_for(total, timeout)
        elapsed = time.perf_counter() - start
        for p in pubs:
            p.close()
        stats = gw.stats()
    finally:
        gw.stop()
        broker.stop()
    return {"messages": total, "acked": acked.value, "complete": ok, "seconds": round(elapsed, 3),
            "rate": round(acked.value / elapsed, 1), "gateway_stats": stats}


def press_to_stored(work: Path, presses: int) -> dict[str, Any]:
    """Reference keypad -> real gateway: key press to outbox commit (fsync) and to the verified ack."""
    commit_ms: list[float] = []
    stored_ms: list[float] = []
    with Chain(ChainConfig(workdir=work / "latency", devices=1, retry_s=1.0)) as chain:
        chain.sign_in("1", "10001", "张伟")
        dev = chain.devices[chain.device_ids[0]]
        for k in range(presses):
            pid = chain.open_prompt("1", f"L-{k}", 2)
            if not dev.wait_for(lambda: dev.prompt_id == pid and dev.state == "prompt_open", 10):  # noqa: B023 -- waited on within this iteration
                raise TimeoutError("prompt did not reach the keypad")
            t0 = time.perf_counter()
            res = dev.press(4)
            t1 = time.perf_counter()
            if res.seq is None or not dev.wait_for(lambda: res.seq in dev.acked_seqs(), 10):  # noqa: B023 -- waited on within this iteration
                raise TimeoutError("no ack for the rating")
            t2 = time.perf_counter()
            commit_ms.append((t1 - t0) * 1000)
            stored_ms.append((t2 - t0) * 1000)

    def pct(xs: list[float], q: float) -> float:
        xs = sorted(xs)
        return round(xs[min(len(xs) - 1, int(q * len(xs)))], 2)

    return {"presses": presses, "commit_p50_ms": pct(commit_ms, 0.5), "commit_p99_ms": pct(commit_ms, 0.99),
            "stored_p50_ms": pct(stored_ms, 0.5), "stored_p99_ms": pct(stored_ms, 0.99)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--per-device", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--presses", type=int, default=300, help="presses for the latency figure")
    ap.add_argument("--fw-ratings", type=int, default=10_000,
                    help="ratings for the firmware heap run (0: skip the firmware figures)")
    ap.add_argument("--drain-ratings", type=int, default=2100,
                    help="pending ratings for the firmware drain run (a week offline; 0: skip it)")
    ap.add_argument("--json", type=Path, help="write (merge) the figures into this JSON file")
    args = ap.parse_args(argv)
    ks = _keystore(args.devices)
    msgs = _ratings(ks, args.per_device)
    size = len(next(iter(msgs.values()))[0])
    with tempfile.TemporaryDirectory(prefix="countersign-bench-") as tmp:
        work = Path(tmp)
        base = passthrough(work, ks, msgs, args.timeout)
        ing = gateway_ingest(work, ks, msgs, args.timeout)
        lat = press_to_stored(work, args.presses)
        fws = [fwbench.run(work / f"fw-{mode}", args.fw_ratings, mode=mode)
               for mode in bundle.MODES] if args.fw_ratings else []
        drains = [fwbench.drain(work / f"drain-{mode}", args.drain_ratings, mode=mode)
                  for mode in bundle.MODES] if args.drain_ratings else []
    ratio = ing["rate"] / base["rate"] if base["rate"] else 0.0
    print(f"signed rating on the wire: {size} bytes")
    print(f"plain paho QoS1 pass-through: {base['rate']:>9.0f} msg/s ({base['received']}/{base['messages']} "
          f"in {base['seconds']} s)")
    print(f"gateway ingest (verify+dedup+commit+ack): {ing['rate']:>9.0f} msg/s ({ing['acked']}/"
          f"{ing['messages']} acked in {ing['seconds']} s)")
    print(f"ratio gateway/pass-through: {ratio:.2f} (target >= 0.5)")
    print(f"reference keypad, {lat['presses']} presses: press -> outbox commit "
          f"p50 {lat['commit_p50_ms']} ms, p99 {lat['commit_p99_ms']} ms")
    print(f"reference keypad: press -> 'stored' (gateway ack) p50 {lat['stored_p50_ms']} ms, "
          f"p99 {lat['stored_p99_ms']} ms (target p99 < 50)")
    fw_json: dict[str, Any] | None = None
    what = {"mpy": ".mpy tree on the filesystem (stock image)", "romfs": "ROMFS image (custom image)"}
    for fw in fws:
        b = fwbench.budgets()
        print(f"firmware as a {what[fw.mode]}, {fw.ratings} ratings on MicroPython (unix port, 64-bit), "
              f"heap budget {fw.heap} B (target {b['target_heap']}): free at start {fw.start_free} B, at end "
              f"{fw.end_free} B, lowest {min(fw.frees)} B, peak used {fw.peak_used} B; {fw.image_bytes} B "
              "of flash")
        print(f"firmware ({fw.mode}): press -> outbox commit p50 {fw.commit_us[0] / 1000:.2f} ms, p99 "
              f"{fw.commit_us[1] / 1000:.2f} ms; press -> 'stored' p50 {fw.stored_us[0] / 1000:.2f} ms, "
              f"p99 {fw.stored_us[1] / 1000:.2f} ms (target p99 < 50)")
        fw_json = fw_json or {"rating_wire_bytes": size, "target_heap": b["target_heap"], "modes": {}}
        fw_json["modes"][fw.mode] = {
            "ratings": fw.ratings, "heap_budget": fw.heap, "free_start": fw.start_free,
            "free_end": fw.end_free, "free_samples": fw.frees, "peak_used": fw.peak_used,
            "flash_bytes": fw.image_bytes, "commit_us_p50_p99_max": fw.commit_us,
            "stored_us_p50_p99_max": fw.stored_us}
    for d in drains:
        print(f"firmware drain ({d.mode}): {d.ratings} pending ratings acked in {d.drain_ms / 1000:.1f} s "
              f"after the link came up, {d.reads_per_rating:.2f} records read per rating "
              f"(target < 5 s, <= 2); free heap {d.free_offline} B with them pending, lowest {d.free_min} B "
              "while draining")
        fw_json = fw_json or {"rating_wire_bytes": size, "modes": {}}
        fw_json.setdefault("drain", {})[d.mode] = {
            "ratings": d.ratings, "stored": d.stored, "heap_budget": d.heap, "drain_ms": d.drain_ms,
            "rated_offline_ms": d.rated_ms, "records_read": d.reads,
            "records_read_per_rating": round(d.reads_per_rating, 3), "compactions": d.compactions,
            "free_offline": d.free_offline, "free_min": d.free_min}
    if args.json:
        existing: dict[str, Any] = {}
        if args.json.exists():
            try:
                existing = json.loads(args.json.read_text())
            except json.JSONDecodeError:
                existing = {}
        existing["gateway"] = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": platform.node(),
                               "rating_wire_bytes": size, "passthrough": base, "ingest": ing,
                               "ratio": round(ratio, 3), "press_latency": lat}
        if fw_json is not None:
            existing["firmware"] = fw_json
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(existing, indent=1, default=str) + "\n")
    return 0 if base["complete"] and ing["complete"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
