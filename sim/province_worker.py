"""One worker process of the province simulation: its slice of halls, their day, settling, its ledger.

Per hall its own mosquitto (as in production, every hall has its own broker), its embedded ``Gateway``
and its keypads (``RefDevice`` sharing one ``Scheduler``; optionally some real MicroPython firmware
processes). Each keypad's customers are served by the one customer routine (``customer.serve``) from the
keypad's ``day_plan``; a cap on the customers served at once keeps the load under what the cores do.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from countersign.gateway.apiclient import ApiCallError, CounterClient
from countersign.gateway.gateway import Gateway

from . import customer
from .broker import Mosquitto
from .devclock import Scheduler
from .fwdevice import FirmwareConfig, FirmwareDevice
from .keypad import Keypad
from .ledger import Ledger
from .plan import CLERK_NAMES, Txn, day_plan
from .province_config import DeviceSpec, HallSpec, ProvinceSimError, WorkerSpec
from .refdevice import DeviceConfig, RefDevice
from .resources import fd_peak, raise_nofile

# Back to back customers: a walk-away's prompt is left for the next one to replace (a no-rating then).
PATIENCE = customer.Patience(prompt_s=30, rating_s=30, walkaway_s=None)


def _api(client: CounterClient, method: str, path: str,
         body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    try:
        out = client.call(method, path, body)
    except ApiCallError as e:
        return e.status, {"error": str(e)}
    return 200, out if isinstance(out, dict) else {}


class Slice:
    """One worker's halls: brokers, embedded gateways, keypads, the customers, settling."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.scheduler = Scheduler(f"province-sim-{spec.index}")
        self.brokers: list[Mosquitto] = []
        self.gateways: dict[str, Gateway] = {}
        self.keypads: dict[str, Keypad] = {}
        self.ref: dict[str, RefDevice] = {}       # the reference keypads, whose counters the report sums
        self.hall_of: dict[str, HallSpec] = {}
        self.spec_of: dict[str, DeviceSpec] = {}
        self.ledger = Ledger()
        self.errors: list[str] = []
        self._gate = threading.BoundedSemaphore(spec.concurrency)

    # lifecycle
    def start(self) -> None:
        for h in self.spec.halls:
            self.brokers.append(Mosquitto(h.broker_conf, h.broker_port).start())
            gw = Gateway(h.gateway)
            gw.start()
            self.gateways[h.hall] = gw
        for h in self.spec.halls:
            for d in h.devices:
                self.hall_of[d.device_id] = h
                self.spec_of[d.device_id] = d
                if d.firmware_port:
                    self.keypads[d.device_id] = self._start_firmware(h, d)
                else:
                    rd = RefDevice(DeviceConfig(
                        device_id=d.device_id, key=d.key, epoch=d.epoch, host="127.0.0.1", port=h.broker_port,
                        state_dir=self.spec.workdir / "devices" / d.device_id, scheduler=self.scheduler,
                        heartbeat_s=self.spec.heartbeat_s, ack_timeout_s=10.0)).start()
                    self.ref[d.device_id] = self.keypads[d.device_id] = rd
        deadline = time.monotonic() + 60
        for dev, kp in self.keypads.items():
            if not kp.wait_connected(max(0.1, deadline - time.monotonic())):
                raise ProvinceSimError(f"{dev} did not connect to its hall broker")
        self._sign_in_all()

    def _start_firmware(self, h: HallSpec, d: DeviceSpec) -> FirmwareDevice:
        fw = FirmwareDevice(FirmwareConfig(d.device_id, d.key, self.spec.workdir / "keypads" / d.device_id,
                                           h.broker_port, d.firmware_port, epoch=d.epoch, hall=h.hall,
                                           window=d.window, heartbeat_s=int(self.spec.heartbeat_s)))
        fw.start()
        if fw.wait_line(r"SIM LISTEN", 30) is None:
            tail = "\n".join(fw.lines[-20:])
            raise ProvinceSimError(f"{d.device_id}: the firmware did not start:\n{tail}")
        return fw

    @staticmethod
    def _invites(d: DeviceSpec) -> bool:
        """Whether this keypad's plan uses the invite key (the firmware keypads' plans do not)."""
        return d.firmware_port == 0

    def _client(self, h: HallSpec) -> CounterClient:
        return CounterClient(f"http://127.0.0.1:{self.gateways[h.hall].http_port}", h.api_token, timeout=30)

    def _clerk(self, h: HallSpec, window: str) -> str:
        return f"{h.number:03d}{int(window):02d}"

    def _sign_in_all(self) -> None:
        """Every window's clerk signs in; waits until each keypad that uses its invite key shows its clerk."""
        for attempt in range(3):
            missing: list[str] = []
            for h in self.spec.halls:
                api = self._client(h)
                for d in h.devices:
                    kp = self.keypads[d.device_id]
                    clerk = self._clerk(h, d.window)
                    if attempt and (not self._invites(d) or kp.wait_clerk(clerk, 0)):
                        continue
                    name = CLERK_NAMES[(h.number + int(d.window)) % len(CLERK_NAMES)]
                    code, body = _api(api, "POST", f"/v1/windows/{d.window}/signin",
                                      {"clerk": clerk, "name": name})
                    if code != 200:
                        raise ProvinceSimError(f"{h.hall} window {d.window}: sign-in failed: {code} {body}")
            for h in self.spec.halls:
                for d in h.devices:
                    # The Session message can race the keypad's first SUBSCRIBE; signed in again if so.
                    kp = self.keypads[d.device_id]
                    if self._invites(d) and not kp.wait_clerk(self._clerk(h, d.window), 5):
                        missing.append(d.device_id)
            if not missing:
                return
        raise ProvinceSimError(f"keypads never showed their clerk: {missing[:5]}")

    def stop(self) -> None:
        for kp in self.keypads.values():
            kp.stop()
        for gw in self.gateways.values():
            gw.stop()
        for b in self.brokers:
            b.stop()
        self.scheduler.close()

    # the day
    def run_day(self, progress: Callable[[int], None]) -> None:
        threads = [threading.Thread(target=self._window, args=(dev,), name=f"customers-{dev}", daemon=True)
                   for dev in self.hall_of]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(1.0)
                progress(self.ledger.transactions)
        progress(self.ledger.transactions)

    def _window(self, dev: str) -> None:
        h, spec, kp = self.hall_of[dev], self.spec_of[dev], self.keypads[dev]
        api = self._client(h)

        def open_prompt(txn: Txn, tid: str) -> int:
            code, body = _api(api, "POST", f"/v1/windows/{spec.window}/prompt",
                              {"txn": tid, "service": txn.service, "timeout": self.spec.day.prompt_timeout})
            if code != 200:
                raise ProvinceSimError(f"{h.hall} window {spec.window}: prompt failed: {code} {body}")
            self.ledger.add(prompts=1)
            return int(body["prompt"])

        plan = day_plan(self.spec.day.seed, dev, self.spec.day, invite=self._invites(spec))
        try:
            for k, txn in enumerate(plan):
                with self._gate:    # the semaphore wakes waiters in order: the windows take turns
                    served = customer.serve(kp, txn, f"{dev}-T{k:05d}", open_prompt, self.ledger, PATIENCE)
                if served is customer.Served.NO_PROMPT:
                    raise ProvinceSimError(f"{dev}: the invite key did not open a prompt")
                if served is customer.Served.UNDELIVERED:
                    raise ProvinceSimError(f"{dev}: the prompt for {dev}-T{k:05d} did not reach the keypad")
                if served is customer.Served.UNRATED:
                    raise ProvinceSimError(f"{dev}: the press of {dev}-T{k:05d} made no rating")
        except Exception:   # reported to the parent, which fails the run; the other windows go on
            with self.ledger.lock:
                self.errors.append(f"{dev}: {traceback.format_exc()}")

    def settle(self, timeout: float) -> list[str]:
        """Wait until every keypad's outbox is empty and every gateway's backlog is 0; what is not."""
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(0.1, deadline - time.monotonic())

        stuck: list[str] = []
        for dev, kp in self.keypads.items():
            if not kp.wait_settled(left()):
                stuck.append(f"{dev}: outbox {kp.outbox_depth()}")
        for hall, gw in self.gateways.items():
            fwd = gw.forwarder
            ok = (fwd.wait_until(lambda f: f.backlog() == 0, left()) if fwd is not None
                  else gw.wait_until(lambda gw=gw: gw.backlog() == 0, left()))  # type: ignore[misc]
            if not ok:
                stuck.append(f"{hall}: backlog {gw.backlog()}")
        return stuck

    def gateway_totals(self) -> dict[str, int]:
        tot: dict[str, int] = {}
        for gw in self.gateways.values():
            for k, v in gw.stats().items():
                tot[k] = tot.get(k, 0) + v
        return tot

    def device_totals(self) -> dict[str, int]:
        tot: dict[str, int] = {}
        for rd in self.ref.values():
            for k, v in rd.stats().items():
                tot[k] = tot.get(k, 0) + int(v)
        return tot


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """Entry point of a worker process: start, wait for "go", run the day, settle, report, stop."""
    spec.log_path.parent.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING, filename=spec.log_path,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)
    raise_nofile()
    sl = Slice(spec)
    try:
        t0 = time.monotonic()
        sl.start()
        conn.send(("ready", {"start_s": time.monotonic() - t0, "fd_max": fd_peak(),
                             "threads": threading.active_count()}))
        msg = conn.recv()
        if msg[0] != "go":
            return
        last = [0.0]

        def progress(n: int) -> None:
            now = time.monotonic()
            if now - last[0] >= 1.0:
                last[0] = now
                conn.send(("progress", n))

        sl.run_day(progress)
        conn.send(("progress", sl.ledger.transactions))
        if sl.errors:
            conn.send(("error", "\n".join(sl.errors[:3])))
        conn.send(("rated", {"at": time.monotonic(), "fd_max": fd_peak(),
                             "threads": threading.active_count()}))
        stuck = sl.settle(spec.settle_timeout)
        conn.send(("settled", {
            "at": time.monotonic(), "stuck": stuck, "ledger": sl.ledger.snapshot(),
            "gateway": sl.gateway_totals(), "devices": sl.device_totals(),
            "scheduler_errors": sl.scheduler.errors, "fd_max": fd_peak()}))
        conn.recv()     # "stop": the parent has taken its last resource sample
    except Exception:   # sent to the parent, which fails the run with it
        with contextlib.suppress(OSError):
            conn.send(("error", traceback.format_exc()))
    finally:
        sl.stop()
        with contextlib.suppress(OSError):
            conn.send(("stopped", {}))
        conn.close()
