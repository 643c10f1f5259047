"""One hall end to end on CPython: province broker + receiver, hall broker + gateway, reference keypads.

Used by the end-to-end tests, ``countersign sim chain`` (today's ``make demo``) and the benchmark. Every
part is the real one (mosquitto processes, the gateway and province objects with their SQLite files,
keypads speaking the protocol over MQTT); only the keypads are the CPython reference device rather than
MicroPython firmware.
"""

from __future__ import annotations

import json
import random
import secrets
import sqlite3
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from countersign.gateway.brokerconf import write_broker_files
from countersign.gateway.config import GatewayConfig
from countersign.gateway.gateway import Gateway
from countersign.protocol import messages
from countersign.protocol.keystore import (
    DeviceKey,
    Keystore,
    new_signing_key,
    public_bytes,
    save_signing_key,
)
from countersign.province.brokerconf import write_province_broker_files
from countersign.province.config import ProvinceConfig
from countersign.province.province import Province
from countersign.sim.broker import Mosquitto, free_port, run_as_clause
from countersign.sim.devclock import Scheduler
from countersign.sim.refdevice import DeviceConfig, Outcome, RefDevice, State

# A realistic service mix for a business hall (bill payment dominates, complaints are rare).
SERVICE_MIX = {messages.Service.BILL_PAYMENT: 45, messages.Service.ENQUIRY: 25,
               messages.Service.NEW_CONNECTION: 12, messages.Service.CHANGE: 8, messages.Service.METER: 6,
               messages.Service.COMPLAINT: 4}
# Score distribution on the 4-key scale, best first: most customers are satisfied.
SCORE_MIX_4 = {4: 70, 3: 20, 2: 7, 1: 3}


@dataclass
class ChainConfig:
    workdir: Path
    hall: str = "hf01"
    devices: int = 4
    epoch: int = 1
    province_workers: int = 2
    retry_s: float = 5.0
    batch_size: int = 500
    heartbeat_s: float = 30.0


@dataclass
class Ledger:
    """What the keypads did, as the simulator saw it: the truth the stores are reconciled against."""

    ratings: dict[tuple[str, int, int], int] = field(default_factory=dict)     # (dev, epoch, seq) -> score
    no_ratings: set[tuple[str, int, int]] = field(default_factory=set)
    prompts: int = 0
    presses: int = 0
    ignored: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Chain:
    """Start/stop the whole chain; each part can also be stopped and restarted for fault tests."""

    def __init__(self, cfg: ChainConfig) -> None:
        self.cfg = cfg
        w = cfg.workdir
        w.mkdir(parents=True, exist_ok=True)
        self.hall = cfg.hall
        self.keystore = Keystore(hall=cfg.hall)
        self.device_ids = [f"{cfg.hall}-w{i:02d}" for i in range(1, cfg.devices + 1)]
        for i, dev in enumerate(self.device_ids, 1):
            self.keystore.add_device(dev, DeviceKey(secrets.token_bytes(32), epoch=cfg.epoch, window=str(i),
                                                    hall=cfg.hall))
        self.keystore_path = w / "gateway" / "keystore.json"
        self.keystore.save(self.keystore_path)
        gw_key, prov_key = new_signing_key(), new_signing_key()
        self.gw_key_path, self.prov_key_path = w / "gateway" / "signing.key", w / "province" / "signing.key"
        save_signing_key(self.gw_key_path, gw_key)
        save_signing_key(self.prov_key_path, prov_key)
        self.gateway_public, self.province_public = public_bytes(gw_key), public_bytes(prov_key)
        self.registry = Keystore(devices=dict(self.keystore.devices), halls={cfg.hall: self.gateway_public})
        self.registry_path = w / "province" / "registry.json"
        self.registry.save(self.registry_path)
        self.gateway_password = secrets.token_urlsafe(16)
        self.uplink_password = secrets.token_urlsafe(16)
        self.province_password = secrets.token_urlsafe(16)
        self.hall_port, self.prov_port = free_port(), free_port()
        hall_files = write_broker_files(w / "hall-broker", self.keystore, self.gateway_password,
                                        port=self.hall_port, bind="127.0.0.1", run_as=run_as_clause())
        prov_files = write_province_broker_files(
            w / "province-broker", self.registry, {cfg.hall: self.uplink_password}, self.province_password,
            port=self.prov_port, bind="127.0.0.1", run_as=run_as_clause(), workers=cfg.province_workers)
        self.hall_broker = Mosquitto(hall_files.conf, self.hall_port)
        self.province_broker = Mosquitto(prov_files.conf, self.prov_port)
        self.scheduler = Scheduler("chain-devices")
        self.gateway: Gateway | None = None
        self.province: Province | None = None
        self.devices: dict[str, RefDevice] = {}
        self.ledger = Ledger()

    # -- parts -------------------------------------------------------------------------------------
    def gateway_config(self) -> GatewayConfig:
        w = self.cfg.workdir
        return GatewayConfig(hall=self.hall, db_path=w / "gateway" / "gateway.db",
                             keystore_path=self.keystore_path, broker_port=self.hall_port,
                             gateway_password=self.gateway_password, uplink_host="127.0.0.1",
                             uplink_port=self.prov_port, uplink_password=self.uplink_password,
                             signing_key_path=self.gw_key_path,
                             province_public_key=self.province_public.hex(),
                             retry_s=self.cfg.retry_s, batch_size=self.cfg.batch_size,
                             prompt_timeout_min=10)

    def start_gateway(self) -> Gateway:
        self.gateway = Gateway(self.gateway_config())
        self.gateway.start()
        return self.gateway

    def start_province(self) -> Province:
        w = self.cfg.workdir
        self.province = Province(ProvinceConfig(
            db_path=w / "province" / "province.db", registry_path=self.registry_path,
            signing_key_path=self.prov_key_path, broker_port=self.prov_port,
            password=self.province_password, workers=self.cfg.province_workers)).start()
        return self.province

    def device_config(self, dev: str) -> DeviceConfig:
        dk = self.keystore.devices[dev]
        return DeviceConfig(device_id=dev, key=dk.key, epoch=dk.epoch, host="127.0.0.1", port=self.hall_port,
                            state_dir=self.cfg.workdir / "devices" / dev, scheduler=self.scheduler,
                            heartbeat_s=self.cfg.heartbeat_s, ack_timeout_s=5.0)

    def start_device(self, dev: str) -> RefDevice:
        d = RefDevice(self.device_config(dev)).start()
        self.devices[dev] = d
        return d

    def start(self) -> Chain:
        self.province_broker.start()
        self.start_province()
        self.hall_broker.start()
        self.start_gateway()
        for dev in self.device_ids:
            self.start_device(dev)
        return self

    def stop(self) -> None:
        for d in self.devices.values():
            d.stop()
        self.devices.clear()
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway = None
        if self.province is not None:
            self.province.stop()
            self.province = None
        self.hall_broker.stop()
        self.province_broker.stop()
        self.scheduler.close()

    def __enter__(self) -> Chain:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the counter system, through the gateway's real HTTP API --------------------------------------
    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        if self.gateway is None:
            raise RuntimeError("gateway is not running")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.gateway.http_port}{path}", data=data,
                                     method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def sign_in(self, window: str, clerk: str, name: str) -> None:
        code, body = self.api("POST", f"/v1/windows/{window}/signin", {"clerk": clerk, "name": name})
        if code != 200:
            raise RuntimeError(f"sign-in failed: {code} {body}")

    def open_prompt(self, window: str, txn: str, service: int, timeout: int = 10) -> int:
        code, body = self.api("POST", f"/v1/windows/{window}/prompt",
                              {"txn": txn, "service": service, "timeout": timeout})
        if code != 200:
            raise RuntimeError(f"prompt failed: {code} {body}")
        with self.ledger.lock:
            self.ledger.prompts += 1
        return int(body["prompt"])

    # -- customers -------------------------------------------------------------------------------
    def serve(self, dev: str, rng: random.Random, txn: str, *, ignore: bool = False,
              press_twice: bool = False) -> None:
        """One transaction at a window: prompt -> customer presses (or not) -> wait for the outcome."""
        window = self.keystore.devices[dev].window
        device = self.devices[dev]
        service = rng.choices(list(SERVICE_MIX), weights=list(SERVICE_MIX.values()))[0]
        pid = self.open_prompt(window, txn, int(service))
        if not device.wait_for(lambda: device.prompt_id == pid and device.state == State.PROMPT_OPEN, 10):
            raise RuntimeError(f"{dev}: prompt {pid} did not reach the keypad")
        if ignore:   # the customer walks away: the keypad sends a no-rating when the prompt expires
            device.wait_for(lambda: device.state != State.PROMPT_OPEN, 40)
            return
        score = rng.choices(list(SCORE_MIX_4), weights=list(SCORE_MIX_4.values()))[0]
        res = device.press(score)
        with self.ledger.lock:
            self.ledger.presses += 1
            if res.outcome == Outcome.RATED and res.seq is not None:
                self.ledger.ratings[(dev, device.cfg.epoch, res.seq)] = score
        if press_twice:
            again = device.press(rng.randint(1, 4))
            with self.ledger.lock:
                self.ledger.presses += 1
                self.ledger.ignored += again.outcome != Outcome.RATED

    def wait_settled(self, timeout: float = 120.0) -> bool:
        """Every keypad's outbox empty and the gateway's backlog to the province drained."""
        for d in self.devices.values():
            if not d.wait_for(lambda d=d: d.outbox_depth() == 0, timeout):   # type: ignore[misc]
                return False
        gw = self.gateway
        return gw is not None and gw.wait_until(lambda: gw.backlog() == 0, timeout)

    # -- reconciliation -----------------------------------------------------------------------------
    @contextmanager
    def _db(self, path: Path) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            yield conn
        finally:
            conn.close()

    def reconcile(self) -> dict[str, Any]:
        """Per-hop counts and what was lost, duplicated, invented or altered (0 is the only good value)."""
        w = self.cfg.workdir
        with self._db(w / "gateway" / "gateway.db") as g:
            gw_rows = g.execute("SELECT device, epoch, seq, kind, score FROM ratings").fetchall()
            quarantined = dict(g.execute(
                "SELECT reason, COUNT(*) FROM quarantine GROUP BY reason").fetchall())
        with self._db(w / "province" / "province.db") as p:
            pr_rows = p.execute("SELECT device, epoch, seq, kind, score FROM ratings").fetchall()
            pr_prompts = p.execute("SELECT COUNT(*) FROM prompts").fetchone()[0]
            per_prompt = p.execute("SELECT COUNT(*) FROM (SELECT hall, prompt FROM ratings WHERE prompt > 0 "
                                   "GROUP BY hall, prompt HAVING COUNT(*) > 1)").fetchone()[0]
        made = self.ledger.ratings
        gw_ratings = {(d, e, s): sc for d, e, s, k, sc in gw_rows if k == "rating"}
        pr_ratings = {(d, e, s): sc for d, e, s, k, sc in pr_rows if k == "rating"}
        pr_keys = [(d, e, s) for d, e, s, _k, _sc in pr_rows]
        return {
            "presses": self.ledger.presses,
            "prompts": self.ledger.prompts,
            "ratings_made": len(made),
            "no_ratings_gateway": sum(1 for r in gw_rows if r[3] == "no-rating"),
            "stored_gateway": len(gw_ratings),
            "received_province": len(pr_ratings),
            "prompts_province": pr_prompts,
            "lost": len(set(made) - set(pr_ratings)),
            "lost_at_gateway": len(set(made) - set(gw_ratings)),
            "duplicated": (len(pr_keys) - len(set(pr_keys))) + per_prompt,
            "invented": len(set(pr_ratings) - set(made)),
            "altered": sum(1 for k, sc in made.items() if k in pr_ratings and pr_ratings[k] != sc),
            "rejected": quarantined,
        }
