"""Test helpers for the provincial receiver: a registry, a real broker from the generated config, signed
batches of real device ratings, and a hall gateway client that collects the province's signed acks."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from countersign.common.mqtt import Handlers, Options, make_client
from countersign.protocol import batch, cose, messages, topics
from countersign.protocol.context import Context
from countersign.protocol.keystore import DeviceKey, Keystore, new_signing_key, public_bytes, save_signing_key
from countersign.province.brokerconf import write_province_broker_files
from countersign.province.config import ProvinceConfig
from countersign.province.db import Database
from countersign.province.province import Province
from countersign.sim.broker import Mosquitto, free_port, run_as_clause

PROVINCE_PASSWORD = "test-province-password"
HALLS = ("hf01", "hf02")


def hall_password(hall: str) -> str:
    return f"pw-{hall}"


def dev_key(hall_index: int, n: int) -> bytes:
    """Deterministic, distinct per (hall, device)."""
    return bytes([(hall_index * 16 + n) % 256]) * 32


@dataclass
class World:
    """Registry, keys, a running provincial broker; provinces started on it are stopped by close()."""

    root: Path
    registry: Keystore
    gateway_keys: dict[str, Ed25519PrivateKey]
    province_key: Ed25519PrivateKey
    broker: Mosquitto
    port: int
    registry_path: Path
    key_path: Path
    provinces: list[Province] = field(default_factory=list)
    clients: list[HallClient] = field(default_factory=list)

    def config(self, db: str | Database = "province.db", workers: int = 1) -> ProvinceConfig:
        database = db if isinstance(db, Database) else Database(str(self.root / db))
        return ProvinceConfig(database=database, registry_path=self.registry_path,
                              signing_key_path=self.key_path, broker_host="127.0.0.1", broker_port=self.port,
                              username="province", password=PROVINCE_PASSWORD, workers=workers)

    def province(self, db: str | Database = "province.db", workers: int = 1) -> Province:
        p = Province(self.config(db, workers)).start()
        self.provinces.append(p)
        return p

    def hall_client(self, hall: str, username: str | None = None) -> HallClient:
        c = HallClient(self, hall, username or hall)
        self.clients.append(c)
        return c

    def device_key(self, device: str) -> bytes:
        return self.registry.devices[device].key

    def close(self) -> None:
        for c in self.clients:
            c.close()
        for p in self.provinces:
            p.stop()
        self.broker.stop()


def make_registry(root: Path, devices_per_hall: int = 3, scales: dict[str, int] | None = None
                  ) -> tuple[Keystore, dict[str, Ed25519PrivateKey], Ed25519PrivateKey]:
    """Registry (saved as root/registry.json), gateway signing keys, province key (root/province.key)."""
    scales = scales or {}
    registry = Keystore()
    gateway_keys: dict[str, Ed25519PrivateKey] = {}
    for hi, hall in enumerate(HALLS, start=1):
        gk = new_signing_key()
        gateway_keys[hall] = gk
        registry.halls[hall] = public_bytes(gk)
        for n in range(1, devices_per_hall + 1):
            device = f"{hall}-w{n:02d}"
            registry.add_device(device, DeviceKey(dev_key(hi, n), epoch=1, window=str(n),
                                                  scale=scales.get(hall, 4), hall=hall))
    registry.save(root / "registry.json")
    province_key = new_signing_key()
    save_signing_key(root / "province.key", province_key)
    return registry, gateway_keys, province_key


def make_world(root: Path, devices_per_hall: int = 3, scales: dict[str, int] | None = None,
               workers: int = 4) -> World:
    registry, gateway_keys, province_key = make_registry(root, devices_per_hall, scales)
    port = free_port()
    files = write_province_broker_files(root / "broker", registry, {h: hall_password(h) for h in HALLS},
                                        PROVINCE_PASSWORD, port=port, bind="127.0.0.1",
                                        run_as=run_as_clause(), workers=workers)
    broker = Mosquitto(files.conf, port).start()
    return World(root, registry, gateway_keys, province_key, broker, port, root / "registry.json",
                 root / "province.key")


def rating(key: bytes, device: str, seq: int, score: int = 4, *, scale: int = 4, epoch: int = 1,
           prompt: int = 0, time_s: int | None = 1_700_000_000) -> bytes:
    msg = messages.Rating(epoch=epoch, seq=seq, score=score, scale=scale, prompt=prompt, time=time_s,
                          mono=1000 + seq, delay=1500, boot=1)
    return cose.mac0_encode(key, device.encode(), msg.encode())


def no_rating(key: bytes, device: str, seq: int, *, epoch: int = 1, prompt: int = 0,
              time_s: int | None = 1_700_000_000) -> bytes:
    msg = messages.NoRating(epoch=epoch, seq=seq, prompt=prompt, time=time_s, mono=1000 + seq, delay=20_000,
                            boot=1)
    return cose.mac0_encode(key, device.encode(), msg.encode())


def entry(msg: bytes, *, window: str = "1", clerk: str | None = "c001", service: int = 2,
          txn: str | None = "t1", received_ms: int = 1_700_000_000_500,
          prompt_ms: int | None = 1_700_000_000_000) -> batch.DeviceEntry:
    return batch.DeviceEntry(msg, received_ms, Context(window, clerk, service, txn, prompt_ms))


def signed_batch(key: Ed25519PrivateKey, hall: str, batch_id: int, entries: list[batch.Entry],
                 *, kid: str | None = None, body_hall: str | None = None) -> bytes:
    b = batch.Batch(body_hall or hall, batch_id, 1_700_000_001_000, entries)
    return cose.sign1_encode(key, (kid or hall).encode(), b.encode())


def wait_until(cond: threading.Condition, pred: Callable[[], bool], timeout: float = 10.0) -> bool:
    with cond:
        return cond.wait_for(pred, timeout)


class HallClient:
    """A paho client logged in as a hall gateway: publishes batches, collects verified acks."""

    def __init__(self, world: World, hall: str, username: str, password: str | None = None) -> None:
        self.hall = hall
        self._pub = world.province_key.public_key()
        self.cond = threading.Condition()
        self.acks: list[tuple[bytes, batch.BatchAck]] = []
        self.bad_acks = 0
        self.connected = threading.Event()
        self.denied: list[int] = []
        # paho's own reconnect delays (1 to 120 s), not jittered: try_publish sets its own.
        self.client = make_client(
            Options(client_id=username, username=username, password=password or hall_password(username),
                    reconnect_min_s=1, reconnect_max_s=120, jitter=False),
            Handlers(connected=self._on_connect, refused=self._on_refused,
                     subscribed=lambda _ok, _reasons: self.connected.set(),
                     published=lambda _mid: self._notify(), disconnected=self._on_disconnect,
                     message=self._on_message))
        self.disconnected = False
        self.refused = False
        self.client.connect("127.0.0.1", world.port)
        self.client.loop_start()
        if not self.connected.wait(5) or self.refused:
            self.close()
            raise RuntimeError(f"hall client {username} could not connect")

    def _on_refused(self, _reason: str) -> None:
        self.refused = True
        self.connected.set()
        self.client.disconnect()

    def _on_connect(self, _session_present: bool) -> None:
        self.client.subscribe(topics.hall_ack(self.hall), qos=1)

    def _notify(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def _on_disconnect(self, _reason: str | None) -> None:
        with self.cond:
            self.disconnected = True
            self.cond.notify_all()

    def _on_message(self, msg: mqtt.MQTTMessage) -> None:
        data = bytes(msg.payload)
        with self.cond:
            try:
                v = cose.sign1_verify(data, lambda kid: self._pub if kid == b"province" else None,
                                      expected_kid=b"province")
                self.acks.append((data, batch.decode_batch_ack(v.payload)))
            except ValueError:
                self.bad_acks += 1
            self.cond.notify_all()

    def publish(self, topic_hall: str, payload: bytes) -> None:
        info = self.client.publish(topics.hall_batch(topic_hall), payload, qos=1)
        info.wait_for_publish(10)

    def try_publish(self, topic_hall: str, payload: bytes) -> bool:
        """Publish QoS1; True once PUBACKed, False if the broker closed the connection instead."""
        self.client.reconnect_delay_set(60, 60)    # stay disconnected so the outcome is visible
        info = self.client.publish(topics.hall_batch(topic_hall), payload, qos=1)
        if not wait_until(self.cond, lambda: info.is_published() or self.disconnected):
            raise AssertionError("neither PUBACK nor disconnect")
        return info.is_published()

    def wait_acks(self, n: int, timeout: float = 10.0) -> list[tuple[bytes, batch.BatchAck]]:
        if not wait_until(self.cond, lambda: len(self.acks) >= n, timeout):
            raise AssertionError(f"expected {n} acks for {self.hall}, got {len(self.acks)}")
        with self.cond:
            return list(self.acks)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
