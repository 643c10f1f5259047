"""One or more halls end to end: province broker + receiver, per hall a broker + gateway, and keypads.

Used by the end-to-end tests, ``countersign sim chain``, ``countersign sim hall`` (``make demo``), the
province simulation's set-up and the benchmark. Every part is the real one (mosquitto processes, the
gateway and province with their SQLite files, keypads speaking the protocol over MQTT). A keypad is the
CPython reference device, or the real firmware on the MicroPython unix port for the first
``ChainConfig.firmware`` windows of each hall; scenarios reach either through ``keypad(dev)``, the one
keypad interface (``keypad.py``), and serve customers with the one routine (``customer.py``).
"""

from __future__ import annotations

import random
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from countersign.gateway import tokens
from countersign.gateway.apiclient import ApiCallError, CounterClient
from countersign.gateway.brokerconf import write_broker_files
from countersign.gateway.config import GatewayConfig
from countersign.gateway.gateway import Gateway
from countersign.gateway.roster import write_roster
from countersign.gateway.users import Users
from countersign.protocol.keystore import (
    DeviceKey,
    Keystore,
    new_signing_key,
    public_bytes,
    save_signing_key,
    write_atomic,
)
from countersign.province.brokerconf import write_province_broker_files
from countersign.province.config import ProvinceConfig
from countersign.province.db import Database
from countersign.province.province import Province
from countersign.sim.broker import Mosquitto, free_port, run_as_clause
from countersign.sim.devclock import Scheduler
from countersign.sim.fwdevice import FirmwareConfig, FirmwareDevice
from countersign.sim.gwprocess import GatewayProcess
from countersign.sim.refdevice import DeviceConfig, RefDevice

from . import customer
from .keypad import Keypad
from .ledger import Ledger
from .plan import CLERK_NAMES, Txn, chain_txn

PAGE_USER = "demo"      # the hall-page account a demo hall gets (ChainConfig.hall_page)

# The chain's customers wait 10 s for a prompt or a rating, and for a walk-away's no-rating until the
# prompt (10 s) has certainly expired.
PATIENCE = customer.Patience(prompt_s=10, rating_s=10, walkaway_s=40)


@dataclass
class ChainConfig:
    workdir: Path
    hall: str = "hf01"          # the hall id when there is one hall; with several: hf01, hf02, ...
    halls: int = 1
    devices: int = 4            # keypads per hall
    epoch: int = 1
    province_workers: int = 2
    retry_s: float = 5.0
    batch_size: int = 500
    heartbeat_s: float = 30.0
    firmware: int = 0           # this many keypads per hall run the real firmware on MicroPython
    gateway_process: bool = False   # run each gateway as `countersign gateway run` (real SIGKILL faults)
    clock_jumps: bool = False       # with gateway_process: libfaketime, so the gateway clock can jump
    console: str = "pipe"           # firmware keypads' console: "pipe", or "pty" (a virtual USB serial cable)
    hall_page: bool = False         # a hall-manager account for the page (scrypt: not for every test hall)

    def hall_ids(self) -> list[str]:
        return [self.hall] if self.halls == 1 else [f"hf{n:02d}" for n in range(1, self.halls + 1)]



def roster_rows(hall: str, number: int, windows: int) -> list[tuple[str, str, None]]:
    """A hall's clerk roster, as the business system would export it: the clerks the simulators and
    tests sign in, each allowed at every window. Per window w (index i = w - 1): ``10001 + i`` with
    CLERK_NAMES[i] (``sim hall``, the chain tests), ``<hall>-cw`` likewise (several halls), and the
    province simulation's ``NNNww`` (hall number, window) with CLERK_NAMES[(number + w) % n]."""
    n = len(CLERK_NAMES)
    out: list[tuple[str, str, None]] = []
    # Room for windows a test provisions later (a new keypad at window 5 or 6 of a 2-window hall).
    for i in range(max(windows, 8)):
        w = i + 1
        out += [(f"{10001 + i}", CLERK_NAMES[i % n], None), (f"{hall}-c{w}", CLERK_NAMES[i % n], None),
                (f"{number:03d}{w:02d}", CLERK_NAMES[(number + w) % n], None)]
    return out


@dataclass
class Hall:
    """One hall's own parts: keystore, broker, gateway (embedded: several gateways run in one process)."""

    hall: str
    dir: Path
    keystore: Keystore
    keystore_path: Path
    signing_key_path: Path
    gateway_public: bytes
    gateway_password: str
    uplink_password: str
    port: int
    broker: Mosquitto
    api_token: str = ""                        # the hall's counter system's credential (every window)
    gateway: Gateway | GatewayProcess | None = None
    http_port: int = 0

    @property
    def db_path(self) -> Path:
        return self.dir / "gateway" / "gateway.db"

    @property
    def tokens_path(self) -> Path:
        return self.dir / "gateway" / "tokens.json"

    @property
    def token_path(self) -> Path:
        """The counter system's token (0600), as `gateway token issue --out` writes it: for curl."""
        return self.dir / "gateway" / "counter.token"

    @property
    def roster_path(self) -> Path:
        return self.dir / "gateway" / "roster.csv"

    @property
    def users_path(self) -> Path:
        return self.dir / "gateway" / "hall-users.json"

    @property
    def page_password_path(self) -> Path:
        """The demo hall manager's password (0600): shown by its path, never printed."""
        return self.dir / "gateway" / "hall-page.password"


class Chain:
    """Start/stop the whole chain; each part can also be stopped and restarted for fault tests."""

    def __init__(self, cfg: ChainConfig) -> None:
        self.cfg = cfg
        w = cfg.workdir
        w.mkdir(parents=True, exist_ok=True)
        prov_key = new_signing_key()
        self.prov_key_path = w / "province" / "signing.key"
        save_signing_key(self.prov_key_path, prov_key)
        self.province_public = public_bytes(prov_key)
        self.registry = Keystore()
        self._ports: set[int] = set()
        self.halls: dict[str, Hall] = {}
        self.hall_of: dict[str, str] = {}          # device id -> hall id
        for number, hall in enumerate(cfg.hall_ids(), start=1):
            self.halls[hall] = self._make_hall(hall, number, w / "halls" / hall if cfg.halls > 1 else w)
        self.registry_path = w / "province" / "registry.json"
        self.registry.save(self.registry_path)
        self.province_password = secrets.token_urlsafe(16)
        self.prov_port = self.port()
        prov_files = write_province_broker_files(
            w / "province-broker", self.registry, {h.hall: h.uplink_password for h in self.halls.values()},
            self.province_password, port=self.prov_port, bind="127.0.0.1", run_as=run_as_clause(),
            workers=cfg.province_workers)
        self.province_broker = Mosquitto(prov_files.conf, self.prov_port)
        self.scheduler = Scheduler("chain-devices")
        self.province: Province | None = None
        self.devices: dict[str, RefDevice] = {}
        self.fw: dict[str, FirmwareDevice] = {}
        self.fw_ids = {f"{h}-w{i:02d}" for h in self.halls for i in range(1, cfg.firmware + 1)}
        self.ledger = Ledger()

    def port(self) -> int:
        """A free port none of this chain's parts has drawn yet: ports are picked before anything listens
        on them, so with hundreds of halls two draws would otherwise meet."""
        while True:
            p = free_port()
            if p not in self._ports:
                self._ports.add(p)
                return p

    def _make_hall(self, hall: str, number: int, d: Path) -> Hall:
        ks = Keystore(hall=hall)
        for i in range(1, self.cfg.devices + 1):
            dev = f"{hall}-w{i:02d}"
            key = secrets.token_bytes(32)
            ks.add_device(dev, DeviceKey(key, epoch=self.cfg.epoch, window=str(i), hall=hall))
            self.hall_of[dev] = hall
            self.registry.devices[dev] = ks.devices[dev]
        ks_path = d / "gateway" / "keystore.json"
        ks.save(ks_path)
        gw_key = new_signing_key()
        key_path = d / "gateway" / "signing.key"
        save_signing_key(key_path, gw_key)
        self.registry.halls[hall] = public_bytes(gw_key)
        gw_password = secrets.token_urlsafe(16)
        port = self.port()
        files = write_broker_files(d / "hall-broker", ks, gw_password, port=port, bind="127.0.0.1",
                                   run_as=run_as_clause())
        h = Hall(hall, d, ks, ks_path, key_path, public_bytes(gw_key), gw_password,
                 secrets.token_urlsafe(16), port, Mosquitto(files.conf, port))
        # Set-up issues the counter system's credential, as a technician does with `gateway token issue`.
        h.api_token = tokens.issue(h.tokens_path, f"{hall}-counter", None)
        write_atomic(h.token_path, h.api_token + "\n", mode=0o600)
        write_roster(h.roster_path, roster_rows(hall, number, self.cfg.devices))
        if self.cfg.hall_page:
            password = secrets.token_urlsafe(12)
            Users(h.users_path).add(PAGE_USER, password)
            write_atomic(h.page_password_path, password + "\n", mode=0o600)
        return h

    # The first hall's parts, for the common one-hall case.
    @property
    def first(self) -> Hall:
        return next(iter(self.halls.values()))

    @property
    def hall(self) -> str:
        return self.first.hall

    @property
    def keystore(self) -> Keystore:
        return self.first.keystore

    @property
    def hall_port(self) -> int:
        return self.first.port

    @property
    def hall_broker(self) -> Mosquitto:
        return self.first.broker

    @property
    def gateway(self) -> Gateway | GatewayProcess | None:
        return self.first.gateway

    @property
    def device_ids(self) -> list[str]:
        return list(self.hall_of)

    # -- parts -------------------------------------------------------------------------------------
    def gateway_config(self, hall: str | None = None) -> GatewayConfig:
        h = self.halls[hall or self.hall]
        return GatewayConfig(hall=h.hall, db_path=h.db_path, keystore_path=h.keystore_path,
                             broker_port=h.port, gateway_password=h.gateway_password, uplink_host="127.0.0.1",
                             uplink_port=self.prov_port, uplink_password=h.uplink_password,
                             signing_key_path=h.signing_key_path,
                             province_public_key=self.province_public.hex(),
                             retry_s=self.cfg.retry_s, batch_size=self.cfg.batch_size,
                             prompt_timeout_min=10, tokens_path=h.tokens_path, roster_path=h.roster_path,
                             users_path=h.users_path if self.cfg.hall_page else None,
                             # Simulated customers come faster than real ones (accelerated days, tests
                             # back to back): the per-window limit is for a runaway counter system, and
                             # test_2a tests it; here it must not refuse the simulation's own pace.
                             prompt_burst=1000, prompt_interval_s=0.01)

    def start_gateway(self, hall: str | None = None) -> Gateway | GatewayProcess:
        h = self.halls[hall or self.hall]
        if self.cfg.gateway_process:
            if not h.http_port:
                h.http_port = self.port()
            gp = GatewayProcess(self.gateway_config(h.hall), h.dir / "gateway", h.http_port,
                                clock_jumps=self.cfg.clock_jumps, token=h.api_token)
            h.gateway = gp.start()
            return gp
        gw = Gateway(self.gateway_config(h.hall))
        gw.start()
        h.gateway = gw
        return gw

    def stop_gateway(self, hall: str | None = None) -> None:
        h = self.halls[hall or self.hall]
        if h.gateway is not None:
            h.gateway.stop()
            h.gateway = None

    def kill_gateway(self, hall: str | None = None) -> None:
        """Power cut at the gateway: SIGKILL when it is a process, an abrupt stop when embedded."""
        h = self.halls[hall or self.hall]
        if isinstance(h.gateway, GatewayProcess):
            h.gateway.kill()
            h.gateway = None
        else:
            self.stop_gateway(h.hall)

    def start_province(self) -> Province:
        w = self.cfg.workdir
        self.province = Province(ProvinceConfig(
            database=Database(str(w / "province" / "province.db")), registry_path=self.registry_path,
            signing_key_path=self.prov_key_path, broker_port=self.prov_port,
            password=self.province_password, workers=self.cfg.province_workers)).start()
        return self.province

    def device_config(self, dev: str) -> DeviceConfig:
        h = self.halls[self.hall_of[dev]]
        dk = h.keystore.devices[dev]
        return DeviceConfig(device_id=dev, key=dk.key, epoch=dk.epoch, host="127.0.0.1", port=h.port,
                            state_dir=self.cfg.workdir / "devices" / dev, scheduler=self.scheduler,
                            heartbeat_s=self.cfg.heartbeat_s, ack_timeout_s=5.0)

    def start_device(self, dev: str) -> RefDevice | FirmwareDevice:
        if dev in self.fw_ids:
            return self.start_firmware(dev)
        d = RefDevice(self.device_config(dev)).start()
        self.devices[dev] = d
        return d

    def firmware_config(self, dev: str) -> FirmwareConfig:
        h = self.halls[self.hall_of[dev]]
        dk = h.keystore.devices[dev]
        return FirmwareConfig(dev, dk.key, self.cfg.workdir / "keypads" / dev, h.port, self.port(),
                              epoch=dk.epoch, hall=h.hall, window=dk.window, scale=dk.scale,
                              heartbeat_s=int(self.cfg.heartbeat_s), console=self.cfg.console)

    def start_firmware(self, dev: str) -> FirmwareDevice:
        fw = self.fw.get(dev) or FirmwareDevice(self.firmware_config(dev))
        self.fw[dev] = fw
        mark = fw.mark()
        fw.start()
        if fw.wait_line(r"SIM LISTEN", 20, start=mark) is None:
            raise RuntimeError(f"{dev}: the firmware did not start:\n" + "\n".join(fw.lines[mark:]))
        return fw

    def start(self, devices: bool = True) -> Chain:
        self.province_broker.start()
        self.start_province()
        for h in self.halls.values():
            h.broker.start()
            self.start_gateway(h.hall)
        if devices:
            for dev in self.device_ids:
                self.start_device(dev)
        return self

    def stop(self) -> None:
        for d in self.devices.values():
            d.stop()
        self.devices.clear()
        for f in self.fw.values():
            f.stop()
        for h in self.halls.values():
            self.stop_gateway(h.hall)
        if self.province is not None:
            self.province.stop()
            self.province = None
        for h in self.halls.values():
            h.broker.stop()
        self.province_broker.stop()
        self.scheduler.close()

    def __enter__(self) -> Chain:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the counter system, through each gateway's real HTTP API -------------------------------------
    def api(self, method: str, path: str, body: dict[str, Any] | None = None,
            hall: str | None = None) -> tuple[int, dict[str, Any]]:
        try:
            out = self.client(hall).call(method, path, body)
        except ApiCallError as e:
            return e.status, {"error": str(e)}
        return 200, out if isinstance(out, dict) else {}

    def client(self, hall: str | None = None) -> CounterClient:
        """The hall's counter system: its gateway's API with the credential issued at set-up."""
        h = self.halls[hall or self.hall]
        if h.gateway is None:
            raise RuntimeError("gateway is not running")
        return CounterClient(f"http://127.0.0.1:{h.gateway.http_port}", h.api_token)

    def sign_in(self, window: str, clerk: str, name: str, hall: str | None = None) -> None:
        code, body = self.api("POST", f"/v1/windows/{window}/signin", {"clerk": clerk, "name": name}, hall)
        if code != 200:
            raise RuntimeError(f"sign-in failed: {code} {body}")

    def open_prompt(self, window: str, txn: str, service: int, timeout: int = 10,
                    hall: str | None = None) -> int:
        code, body = self.api("POST", f"/v1/windows/{window}/prompt",
                              {"txn": txn, "service": service, "timeout": timeout}, hall)
        if code != 200:
            raise RuntimeError(f"prompt failed: {code} {body}")
        self.ledger.add(prompts=1)
        return int(body["prompt"])

    # -- customers -------------------------------------------------------------------------------
    def keypad(self, dev: str) -> Keypad:
        """The keypad at ``dev``'s window, reference or firmware."""
        if dev in self.fw:
            return self.fw[dev]
        return self.devices[dev]

    def keypads(self) -> list[Keypad]:
        return [*self.devices.values(), *self.fw.values()]

    def serve(self, dev: str, rng: random.Random, txn: str, *, ignore: bool = False,
              press_twice: bool = False) -> customer.Served:
        """One transaction at a window: prompt -> customer presses (or not) -> wait for the outcome; the
        customer is drawn from ``rng``."""
        return self.serve_txn(dev, chain_txn(rng, ignore, press_twice), txn)

    def serve_txn(self, dev: str, t: Txn, txn: str) -> customer.Served:
        hall = self.hall_of[dev]
        window = self.halls[hall].keystore.devices[dev].window

        def open_prompt(planned: Txn, tid: str) -> int:
            return self.open_prompt(window, tid, planned.service, hall=hall)

        served = customer.serve(self.keypad(dev), t, txn, open_prompt, self.ledger, PATIENCE)
        if served is customer.Served.UNDELIVERED:
            raise RuntimeError(f"{dev}: the prompt for {txn} did not reach the keypad")
        return served

    def wait_settled(self, timeout: float = 120.0) -> bool:
        """Every keypad's outbox empty and every gateway's backlog to the province drained."""
        if any(isinstance(h.gateway, GatewayProcess) and not h.gateway.running for h in self.halls.values()):
            return False        # a gateway process that died cannot drain anything: no use waiting
        for kp in self.keypads():
            if not kp.wait_settled(timeout):
                return False
        for h in self.halls.values():
            gw = h.gateway
            if gw is None or not gw.wait_until(lambda gw=gw: gw.backlog() == 0, timeout):  # type: ignore[misc]
                return False
        return True

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
        gw_rows: list[tuple[Any, ...]] = []
        quarantined: dict[str, int] = {}
        for h in self.halls.values():
            with self._db(h.db_path) as g:
                gw_rows += g.execute("SELECT device, epoch, seq, kind, score FROM ratings").fetchall()
                for reason, n in g.execute("SELECT reason, COUNT(*) FROM quarantine GROUP BY reason"):
                    quarantined[reason] = quarantined.get(reason, 0) + n
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
