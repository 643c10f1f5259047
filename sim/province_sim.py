"""A whole province on one machine: about 300 halls and 900 keypads, an accelerated business day.

Shape (measured on the 2-core reference machine, see ``countersign sim province`` in the README):

- the parent process builds every hall's files with ``Chain`` (keystores, broker configs, signing keys,
  the province registry), runs the provincial mosquitto and the province receiver, samples resources and
  reconciles at the end exactly as ``Chain.reconcile`` does;
- worker processes (multiprocessing, spawn) each run a slice of halls: per hall its own mosquitto (as in
  production, every hall has its own broker: about 1-2 MB proportional memory and no measurable idle CPU
  each), its embedded ``Gateway`` and its keypads (``RefDevice`` sharing one ``Scheduler``; optionally
  some real MicroPython firmware processes). Everything talks over real loopback MQTT and HTTP.

Why slices of about 25 halls: paho-mqtt's network loop uses ``select()``, which cannot watch a file
descriptor numbered 1024 or above (FD_SETSIZE), whatever RLIMIT_NOFILE says. One hall with 3 keypads
holds about 26 descriptors in its worker (gateway 12: two MQTT clients with their wake-up socket pairs,
three SQLite connections with WAL files, the HTTP listener; keypad 4: socket, socket pair, outbox), so a
worker stays well under 1024 with 25 halls and room for the HTTP requests in flight. ``ProvinceSimConfig``
refuses slices that would not fit.

The day: each keypad serves ``per_device`` customers back to back, as fast as its window can go. Each
transaction is drawn from the seed and the keypad's id alone (``day_plan``), so the same seed gives the
same presses whatever the slicing into workers and the threads' interleaving: a prompt opened through
the gateway's HTTP API (or, for some, the keypad's invite key), one press, sometimes a second press
(ignored) and sometimes a customer who walks away (the next prompt replaces the open one and the keypad
sends a no-rating).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import multiprocessing
import os
import random
import resource
import sqlite3
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from countersign.gateway.brokerconf import write_broker_files
from countersign.gateway.config import GatewayConfig
from countersign.gateway.gateway import Gateway
from countersign.sim.broker import Mosquitto, free_port, run_as_clause
from countersign.sim.chain import SCORE_MIX_4, SERVICE_MIX, Chain, ChainConfig
from countersign.sim.devclock import Scheduler
from countersign.sim.fwdevice import DEFAULT_BUNDLE, FirmwareConfig, FirmwareDevice
from countersign.sim.refdevice import DeviceConfig, Outcome, RefDevice

log = logging.getLogger(__name__)

CLERK_NAMES = ["张伟", "王芳", "李娜", "刘洋", "陈静", "杨磊", "赵敏", "黄强", "周丽", "吴军"]
# What paho's select() loop can watch: descriptors 0..1023. Estimates per part (measured, see above) and
# the head room kept for transient descriptors (HTTP requests, outbox compaction, firmware pipes).
FD_SETSIZE = 1024
FDS_PER_HALL = 14          # gateway 12 + the broker's stderr pipe and its log file
FDS_PER_KEYPAD = 4
FDS_PER_FIRMWARE = 3       # the firmware process's stdout pipe, its console log, the sim-board socket
FDS_BASE = 120


class ProvinceSimError(RuntimeError):
    pass


# -- the day's plan ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Txn:
    """One customer at one window."""

    mode: str           # "prompt" (opened via the gateway's API), "invite" (invite key), "walkaway"
    score: int          # the key pressed (unused for a walk-away)
    service: int        # service item of an API prompt
    twice: bool         # the customer presses a second key (ignored by the keypad)
    again: int          # ... this one


@dataclass(frozen=True)
class DayConfig:
    per_device: int = 30            # customers per keypad
    seed: int = 7
    walkaway_rate: float = 0.03     # customers who do not rate: a no-rating when the next prompt opens
    double_rate: float = 0.05       # customers who press twice
    invite_rate: float = 0.10       # transactions opened by the keypad's invite key instead of the API
    prompt_timeout: int = 20        # seconds; only the last open prompt of a keypad could reach it


def day_plan(seed: int, device: str, day: DayConfig, invite: bool = True) -> list[Txn]:
    """The customers of one keypad, drawn from ``seed`` and the keypad id only (reproducible anywhere)."""
    rng = random.Random(f"countersign-day/{seed}/{device}")
    services, sweights = list(SERVICE_MIX), list(SERVICE_MIX.values())
    scores, kweights = list(SCORE_MIX_4), list(SCORE_MIX_4.values())
    out: list[Txn] = []
    for k in range(day.per_device):
        r = rng.random()
        last = k == day.per_device - 1
        prev_walk = bool(out) and out[-1].mode == "walkaway"
        if r < day.walkaway_rate and not last:
            # The last customer always rates, so no prompt is left open to expire after the day.
            mode = "walkaway"
        elif r < day.walkaway_rate + day.invite_rate and invite and not prev_walk:
            # The invite key does nothing while a prompt is open (a walk-away's), so after one the counter
            # system opens the next prompt.
            mode = "invite"
        else:
            mode = "prompt"
        score = rng.choices(scores, weights=kweights)[0]
        service = int(rng.choices(services, weights=sweights)[0])
        twice = rng.random() < day.double_rate
        again = rng.randint(1, 4)
        out.append(Txn(mode, score, service, twice and mode != "walkaway", again))
    return out


def plan_digest(plans: dict[str, list[Txn]]) -> str:
    h = hashlib.sha256()
    for dev in sorted(plans):
        h.update(dev.encode())
        for t in plans[dev]:
            h.update(f"|{t.mode},{t.score},{t.service},{int(t.twice)},{t.again}".encode())
    return h.hexdigest()[:16]


# -- what a worker gets (picklable: spawn) ----------------------------------------------------------------

@dataclass(frozen=True)
class DeviceSpec:
    device_id: str
    key: bytes
    epoch: int
    window: str
    firmware_port: int = 0      # > 0: runs the real firmware on MicroPython, key taps on this port


@dataclass(frozen=True)
class HallSpec:
    hall: str
    number: int                 # 1-based, for clerk ids
    broker_conf: Path
    broker_port: int
    gateway: GatewayConfig
    devices: tuple[DeviceSpec, ...]


@dataclass(frozen=True)
class WorkerSpec:
    index: int
    workdir: Path
    halls: tuple[HallSpec, ...]
    day: DayConfig
    heartbeat_s: float
    settle_timeout: float
    log_path: Path
    concurrency: int = 8


@dataclass
class ProvinceSimConfig:
    workdir: Path
    halls: int = 300
    devices: int = 3                # keypads per hall
    day: DayConfig = field(default_factory=DayConfig)
    workers: int = 0                # worker processes; 0 = ceil(halls / halls_per_worker)
    halls_per_worker: int = 25
    # Customers being served at once in one worker. Every keypad still serves all its customers; the
    # cap keeps the load just under what the two cores do (measured: 900 windows all at once drove
    # request latencies past the keypads' 10 s ack timeout and the HTTP timeout, and resends then ate
    # the CPU; about 8 per worker kept every latency far below those timeouts).
    concurrency: int = 8
    firmware: int = 0               # this many keypads (spread over the halls) run the real firmware
    province_workers: int = 2
    retry_s: float = 10.0
    heartbeat_s: float = 60.0
    settle_timeout: float = 600.0
    start_timeout: float = 180.0

    def worker_count(self) -> int:
        n = self.workers or math.ceil(self.halls / self.halls_per_worker)
        return max(1, min(n, self.halls))

    def check(self) -> None:
        if self.halls < 1 or self.devices < 1 or self.day.per_device < 1 or self.concurrency < 1:
            raise ValueError("halls, devices, per_device and concurrency must be at least 1")
        if self.halls > 999 or self.devices > 99:
            raise ValueError("at most 999 halls of at most 99 keypads")
        if not 0 <= self.firmware <= self.halls * self.devices:
            raise ValueError("firmware must be 0..halls*devices")
        per = math.ceil(self.halls / self.worker_count())
        fw_per = math.ceil(self.firmware / self.worker_count())
        fds = FDS_BASE + per * (FDS_PER_HALL + self.devices * FDS_PER_KEYPAD) + fw_per * FDS_PER_FIRMWARE
        if fds >= FD_SETSIZE - 64:
            raise ValueError(
                f"{per} halls of {self.devices} keypads in one worker need about {fds} file descriptors; "
                f"paho's select() loop cannot watch descriptors >= {FD_SETSIZE}: use more workers")


# -- worker side -----------------------------------------------------------------------------------------

def raise_nofile(want: int = 4096) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE towards ``want`` (never above the hard limit); returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft, hard


@dataclass
class _Ledger:
    ratings: list[tuple[str, int, int, int]] = field(default_factory=list)   # device, epoch, seq, score
    prompts: int = 0
    presses: int = 0
    ignored: int = 0
    walkaways: int = 0
    invites: int = 0
    done: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


# A direct opener: a developer's HTTP proxy must not swallow calls to the local API. Built once (stateless,
# shared by the threads of a worker: building one per request costs more than the request).
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _api(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with _DIRECT.open(req, timeout=30) as r:
            return int(r.status), json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return int(e.code), json.loads(e.read() or b"{}")


class _Slice:
    """One worker's halls: brokers, embedded gateways, keypads, the customers, settling."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.scheduler = Scheduler(f"province-sim-{spec.index}")
        self.brokers: list[Mosquitto] = []
        self.gateways: dict[str, Gateway] = {}
        self.devices: dict[str, RefDevice] = {}
        self.fw: dict[str, FirmwareDevice] = {}
        self.hall_of: dict[str, HallSpec] = {}
        self.ledger = _Ledger()
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
                if d.firmware_port:
                    self._start_firmware(h, d)
                else:
                    self.devices[d.device_id] = RefDevice(DeviceConfig(
                        device_id=d.device_id, key=d.key, epoch=d.epoch, host="127.0.0.1", port=h.broker_port,
                        state_dir=self.spec.workdir / "devices" / d.device_id, scheduler=self.scheduler,
                        heartbeat_s=self.spec.heartbeat_s, ack_timeout_s=10.0)).start()
        deadline = time.monotonic() + 60
        for dev, rd in self.devices.items():
            if not rd.wait_for(lambda rd=rd: rd.connected, max(0.1, deadline - time.monotonic())):  # type: ignore[misc]
                raise ProvinceSimError(f"{dev} did not connect to its hall broker")
        self._sign_in_all()

    def _start_firmware(self, h: HallSpec, d: DeviceSpec) -> None:
        fw = FirmwareDevice(FirmwareConfig(d.device_id, d.key, self.spec.workdir / "keypads" / d.device_id,
                                           h.broker_port, d.firmware_port, epoch=d.epoch, hall=h.hall,
                                           window=d.window, heartbeat_s=int(self.spec.heartbeat_s)))
        fw.start()
        if fw.wait_line(r"SIM LISTEN", 30) is None:
            tail = "\n".join(fw.lines[-20:])
            raise ProvinceSimError(f"{d.device_id}: the firmware did not start:\n{tail}")
        if fw.wait_line(r"CS:LINK up", 30) is None:
            raise ProvinceSimError(f"{d.device_id}: the firmware did not reach its hall broker")
        self.fw[d.device_id] = fw

    def _clerk(self, h: HallSpec, window: str) -> str:
        return f"{h.number:03d}{int(window):02d}"

    def _sign_in_all(self) -> None:
        """Every window's clerk signs in; waits until each reference keypad shows its clerk."""
        for attempt in range(3):
            missing: list[str] = []
            for h in self.spec.halls:
                port = self.gateways[h.hall].http_port
                for d in h.devices:
                    rd = self.devices.get(d.device_id)
                    clerk = self._clerk(h, d.window)
                    if attempt and (rd is None or rd.clerk == clerk):
                        continue
                    name = CLERK_NAMES[(h.number + int(d.window)) % len(CLERK_NAMES)]
                    code, body = _api(port, "POST", f"/v1/windows/{d.window}/signin",
                                      {"clerk": clerk, "name": name})
                    if code != 200:
                        raise ProvinceSimError(f"{h.hall} window {d.window}: sign-in failed: {code} {body}")
            for h in self.spec.halls:
                for d in h.devices:
                    rd = self.devices.get(d.device_id)
                    clerk = self._clerk(h, d.window)
                    # The Session message can race the keypad's first SUBSCRIBE; signed in again if so.
                    if rd is not None and not rd.wait_for(lambda rd=rd, c=clerk: rd.clerk == c, 5):  # type: ignore[misc]
                        missing.append(d.device_id)
            if not missing:
                return
        raise ProvinceSimError(f"keypads never showed their clerk: {missing[:5]}")

    def stop(self) -> None:
        for d in self.devices.values():
            d.stop()
        for f in self.fw.values():
            f.kill()
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
                with self.ledger.lock:
                    done = self.ledger.done
                progress(done)
        with self.ledger.lock:
            progress(self.ledger.done)

    def _window(self, dev: str) -> None:
        h = self.hall_of[dev]
        spec = next(d for d in h.devices if d.device_id == dev)
        fw = spec.firmware_port > 0
        plan = day_plan(self.spec.day.seed, dev, self.spec.day, invite=not fw)
        try:
            for k, txn in enumerate(plan):
                tid = f"{dev}-T{k:05d}"
                with self._gate:    # the semaphore wakes waiters in order: the windows take turns
                    if fw:
                        self._serve_firmware(h, spec, txn, tid)
                    else:
                        self._serve(h, spec, txn, tid)
                with self.ledger.lock:
                    self.ledger.done += 1
        except Exception:   # reported to the parent, which fails the run; the other windows go on
            with self.ledger.lock:
                self.errors.append(f"{dev}: {traceback.format_exc()}")

    def _open_prompt(self, h: HallSpec, window: str, txn: Txn, tid: str) -> int:
        code, body = _api(self.gateways[h.hall].http_port, "POST", f"/v1/windows/{window}/prompt",
                          {"txn": tid, "service": txn.service, "timeout": self.spec.day.prompt_timeout})
        if code != 200:
            raise ProvinceSimError(f"{h.hall} window {window}: prompt failed: {code} {body}")
        with self.ledger.lock:
            self.ledger.prompts += 1
        return int(body["prompt"])

    def _serve(self, h: HallSpec, spec: DeviceSpec, txn: Txn, tid: str) -> None:
        rd = self.devices[spec.device_id]
        if txn.mode == "invite":
            if not rd.invite():
                raise ProvinceSimError(f"{spec.device_id}: the invite key did not open a prompt")
            with self.ledger.lock:
                self.ledger.invites += 1
        else:
            pid = self._open_prompt(h, spec.window, txn, tid)
            if not rd.wait_for(lambda: rd.prompt_id == pid, 30):
                raise ProvinceSimError(f"{spec.device_id}: prompt {pid} did not reach the keypad")
            if txn.mode == "walkaway":
                with self.ledger.lock:
                    self.ledger.walkaways += 1
                return
        res = rd.press(txn.score)
        if res.outcome != Outcome.RATED or res.seq is None:
            raise ProvinceSimError(f"{spec.device_id}: press gave {res.outcome}")
        with self.ledger.lock:
            self.ledger.presses += 1
            self.ledger.ratings.append((spec.device_id, spec.epoch, res.seq, txn.score))
        if txn.twice:
            again = rd.press(txn.again)
            with self.ledger.lock:
                self.ledger.presses += 1
                self.ledger.ignored += again.outcome != Outcome.RATED

    def _serve_firmware(self, h: HallSpec, spec: DeviceSpec, txn: Txn, tid: str) -> None:
        fw = self.fw[spec.device_id]
        mark = fw.mark()
        pid = self._open_prompt(h, spec.window, txn, tid)
        if fw.wait_line(rf"CS:PROMPT id={pid}\b", 30, start=mark) is None:
            raise ProvinceSimError(f"{spec.device_id}: prompt {pid} did not reach the firmware keypad")
        if txn.mode == "walkaway":
            with self.ledger.lock:
                self.ledger.walkaways += 1
            return
        mark = fw.mark()
        fw.tap(txn.score)
        m = fw.wait_line(r"CS:RATED seq=(\d+) score=(\d+)", 30, start=mark)
        if m is None:
            raise ProvinceSimError(f"{spec.device_id}: the firmware did not rate prompt {pid}")
        with self.ledger.lock:
            self.ledger.presses += 1
            self.ledger.ratings.append((spec.device_id, spec.epoch, int(m.group(1)), int(m.group(2))))
        if txn.twice:
            fw.tap(txn.again)
            with self.ledger.lock:
                self.ledger.presses += 1
                self.ledger.ignored += 1

    def settle(self, timeout: float) -> list[str]:
        """Wait until every keypad's outbox is empty and every gateway's backlog is 0; what is not."""
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(0.1, deadline - time.monotonic())

        stuck: list[str] = []
        for dev, rd in self.devices.items():
            if not rd.wait_for(lambda rd=rd: rd.outbox_depth() == 0, left()):  # type: ignore[misc]
                stuck.append(f"{dev}: outbox {rd.outbox_depth()}")
        for dev, f in self.fw.items():
            if not f.wait_until(lambda _lines, f=f: f.settled(), left()):  # type: ignore[misc]
                stuck.append(f"{dev}: firmware outbox not acked")
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
        for rd in self.devices.values():
            for k, v in rd.stats().items():
                tot[k] = tot.get(k, 0) + int(v)
        return tot


def _fd_peak() -> int:
    return max((int(x) for x in os.listdir("/proc/self/fd")), default=0)


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """Entry point of a worker process: start, wait for "go", run the day, settle, report, stop."""
    spec.log_path.parent.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING, filename=spec.log_path,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)
    raise_nofile()
    sl = _Slice(spec)
    try:
        t0 = time.monotonic()
        sl.start()
        conn.send(("ready", {"start_s": time.monotonic() - t0, "fd_max": _fd_peak(),
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
        conn.send(("progress", sl.ledger.done))
        if sl.errors:
            conn.send(("error", "\n".join(sl.errors[:3])))
        conn.send(("rated", {"at": time.monotonic(), "fd_max": _fd_peak(),
                             "threads": threading.active_count()}))
        stuck = sl.settle(spec.settle_timeout)
        lg = sl.ledger
        conn.send(("settled", {
            "at": time.monotonic(), "stuck": stuck, "ratings": lg.ratings, "prompts": lg.prompts,
            "presses": lg.presses, "ignored": lg.ignored, "walkaways": lg.walkaways, "invites": lg.invites,
            "transactions": lg.done, "gateway": sl.gateway_totals(), "devices": sl.device_totals(),
            "scheduler_errors": sl.scheduler.errors, "fd_max": _fd_peak()}))
        conn.recv()     # "stop": the parent has taken its last resource sample
    except Exception:
        with contextlib.suppress(OSError):
            conn.send(("error", traceback.format_exc()))
    finally:
        sl.stop()
        with contextlib.suppress(OSError):
            conn.send(("stopped", {}))
        conn.close()


# -- resources ---------------------------------------------------------------------------------------------

def _read_proc(pid: int) -> tuple[int, str, float] | None:
    """(ppid, name, cpu seconds) of a process, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = raw[raw.index("(") + 1:raw.rindex(")")]
    f = raw[raw.rindex(")") + 2:].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(f[1]), name, (int(f[11]) + int(f[12])) / tck


def _status(pid: int) -> tuple[int, int]:
    rss = threads = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    except OSError:
        pass
    return rss, threads


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class ResourceSampler:
    """Samples this process and all its descendants from /proc: processes, threads, RSS, PSS, CPU."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.root = os.getpid()
        self.peak = {"processes": 0, "threads": 0, "rss_mb": 0.0, "pss_mb": 0.0}
        self.peak_by_kind: dict[str, dict[str, float]] = {}
        self.cpu: dict[int, tuple[str, float]] = {}     # last CPU seconds seen per pid (exited ones too)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resource-sampler", daemon=True)
        self._lock = threading.Lock()

    def start(self) -> ResourceSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                info = _read_proc(int(entry))
                if info is not None:
                    children.setdefault(info[0], []).append(int(entry))
        out, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo += children.get(pid, [])
        return out

    def sample(self, pss: bool = True) -> None:
        kinds: dict[str, dict[str, float]] = {}
        tot = {"processes": 0, "threads": 0, "rss_mb": 0.0, "pss_mb": 0.0}
        for pid in self.tree():
            info = _read_proc(pid)
            if info is None:
                continue
            _ppid, name, cpu = info
            kind = "mosquitto" if name.startswith("mosquitto") else (
                "micropython" if name.startswith("micropython") else "python")
            rss, threads = _status(pid)
            p = _pss_kb(pid) if pss else 0
            with self._lock:
                self.cpu[pid] = (kind, cpu)
            k = kinds.setdefault(kind, {"processes": 0, "threads": 0, "rss_mb": 0.0, "pss_mb": 0.0,
                                        "max_rss_mb": 0.0})
            for d in (k, tot):
                d["processes"] += 1
                d["threads"] += threads
                d["rss_mb"] += rss / 1024
                d["pss_mb"] += p / 1024
            k["max_rss_mb"] = max(k["max_rss_mb"], rss / 1024)
        with self._lock:
            for key, v in tot.items():
                self.peak[key] = max(self.peak[key], v)
            for kind, vals in kinds.items():
                pk = self.peak_by_kind.setdefault(kind, dict.fromkeys(vals, 0.0))
                for key, v in vals.items():
                    pk[key] = max(pk[key], v)

    def report(self) -> dict[str, Any]:
        with self._lock:
            cpu_by: dict[str, float] = {}
            for kind, c in self.cpu.values():
                cpu_by[kind] = cpu_by.get(kind, 0.0) + c
            return {"peak": {k: round(v, 1) for k, v in self.peak.items()},
                    "peak_by_kind": {k: {n: round(v, 1) for n, v in d.items()}
                                     for k, d in self.peak_by_kind.items()},
                    "cpu_s": {k: round(v, 1) for k, v in cpu_by.items()},
                    "cpu_s_total": round(sum(cpu_by.values()), 1)}


# -- parent ------------------------------------------------------------------------------------------------

def _distinct_ports(n: int, taken: set[int]) -> list[int]:
    out: list[int] = []
    while len(out) < n:
        p = free_port()
        if p not in taken:
            taken.add(p)
            out.append(p)
    return out


class ProvinceSim:
    """Build the province, run the day in worker processes, reconcile; ``run()`` returns the report."""

    def __init__(self, cfg: ProvinceSimConfig, progress: Callable[[int, int], None] | None = None) -> None:
        cfg.check()
        self.cfg = cfg
        self.progress = progress
        self.chain: Chain | None = None
        self.procs: list[multiprocessing.process.BaseProcess] = []
        self.conns: list[Connection] = []
        self.errors: list[str] = []

    # set-up ----------------------------------------------------------------------------------------
    def _build(self) -> Chain:
        cfg = self.cfg
        chain = Chain(ChainConfig(workdir=cfg.workdir, halls=cfg.halls, devices=cfg.devices,
                                  province_workers=cfg.province_workers, retry_s=cfg.retry_s,
                                  heartbeat_s=cfg.heartbeat_s))
        # Chain draws each hall's broker port with free_port() before any broker listens, so with
        # hundreds of halls two can draw the same port (about 2 pairs expected at 300): redraw those.
        taken = {chain.prov_port}
        for h in chain.halls.values():
            if h.port in taken:
                h.port = _distinct_ports(1, taken)[0]
                files = write_broker_files(h.dir / "hall-broker", h.keystore, h.gateway_password,
                                           port=h.port, bind="127.0.0.1", run_as=run_as_clause())
                h.broker = Mosquitto(files.conf, h.port)
            taken.add(h.port)
        self._taken = taken
        return chain

    def firmware_ids(self, chain: Chain) -> list[str]:
        """Which keypads run the firmware: spread over the halls (hence over the workers)."""
        halls = list(chain.halls)
        n, out = self.cfg.firmware, list[str]()
        for w in range(1, self.cfg.devices + 1):
            left = n - len(out)
            if left <= 0:
                break
            take = min(left, len(halls))
            out += [f"{halls[(i * len(halls)) // take]}-w{w:02d}" for i in range(take)]
        return out

    def worker_specs(self, chain: Chain) -> list[WorkerSpec]:
        cfg = self.cfg
        fw_ids = self.firmware_ids(chain)
        fw_ports = dict(zip(fw_ids, _distinct_ports(len(fw_ids), self._taken), strict=True))
        halls: list[HallSpec] = []
        for number, h in enumerate(chain.halls.values(), start=1):
            gcfg = chain.gateway_config(h.hall)
            gcfg.prompt_timeout_default = cfg.day.prompt_timeout
            devs = tuple(DeviceSpec(dev, dk.key, dk.epoch, dk.window, fw_ports.get(dev, 0))
                         for dev, dk in sorted(h.keystore.devices.items()))
            halls.append(HallSpec(h.hall, number, h.broker.conf, h.port, gcfg, devs))
        n = cfg.worker_count()
        per = math.ceil(len(halls) / n)
        slices = [halls[i:i + per] for i in range(0, len(halls), per)]
        return [WorkerSpec(i, cfg.workdir, tuple(s), cfg.day, cfg.heartbeat_s, cfg.settle_timeout,
                           cfg.workdir / "logs" / f"worker-{i:02d}.log", cfg.concurrency)
                for i, s in enumerate(slices)]

    # messages from workers ------------------------------------------------------------------------
    def _collect(self, kind: str, timeout: float, progress: dict[int, int] | None = None) -> dict[int, Any]:
        got: dict[int, Any] = {}
        deadline = time.monotonic() + timeout
        by_conn = {id(c): i for i, c in enumerate(self.conns)}
        live = {i for i, p in enumerate(self.procs)}
        while len(got) < len(live):
            left = deadline - time.monotonic()
            if left <= 0:
                late = sorted(live - set(got))
                raise ProvinceSimError(f"workers {late} sent no {kind!r} in {timeout:.0f}s")
            waiting = [c for i, c in enumerate(self.conns) if i not in got]
            ready = wait(waiting + [self.procs[i].sentinel for i in live if i not in got], min(left, 1.0))
            for r in ready:
                if not isinstance(r, Connection):
                    dead = [i for i in live if i not in got and not self.procs[i].is_alive()
                            and not self.conns[i].poll()]
                    if dead:
                        raise ProvinceSimError(f"worker(s) {dead} died; see {self.cfg.workdir / 'logs'}")
                    continue
                i = by_conn[id(r)]
                try:
                    m = r.recv()
                except EOFError as exc:
                    raise ProvinceSimError(f"worker {i} ended before {kind!r}") from exc
                if m[0] == "progress" and progress is not None:
                    progress[i] = m[1]
                    if self.progress is not None:
                        self.progress(sum(progress.values()), self.total_txns)
                elif m[0] == "error":
                    # Recorded (the run then fails) but not fatal: the others finish and reconcile.
                    self.errors.append(f"worker {i}: {m[1]}")
                    if kind == "ready":
                        raise ProvinceSimError(f"worker {i} failed to start:\n{m[1]}")
                elif m[0] == "stopped":
                    raise ProvinceSimError(f"worker {i} stopped before {kind!r}: {self.errors[-1:]}")
                elif m[0] == kind:
                    got[i] = m[1]
        return got

    @property
    def total_txns(self) -> int:
        return self.cfg.halls * self.cfg.devices * self.cfg.day.per_device

    # the run ------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        nofile = raise_nofile()
        t_start = time.monotonic()
        sampler = ResourceSampler().start()
        chain = self.chain = self._build()
        specs = self.worker_specs(chain)
        if cfg.firmware:
            from countersign.common import bundle
            bundle.build("sim", DEFAULT_BUNDLE)    # once here, not in every worker
        report: dict[str, Any] = {}
        try:
            chain.province_broker.start()
            chain.start_province()
            ctx = multiprocessing.get_context("spawn")
            for s in specs:
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=worker_main, args=(s, child), name=f"province-sim-{s.index}")
                proc.start()
                child.close()
                self.procs.append(proc)
                self.conns.append(parent)
            ready = self._collect("ready", cfg.start_timeout)
            t_go = time.monotonic()
            go_wall_ms = time.time_ns() // 1_000_000
            setup_s = t_go - t_start
            for c in self.conns:
                c.send(("go",))
            progress: dict[int, int] = {}
            rated = self._collect("rated", cfg.settle_timeout * 4, progress)
            settled = self._collect("settled", cfg.settle_timeout + 60, progress)
            t_end = max(s["at"] for s in settled.values())
            sampler.sample()
            report = self._report(chain, ready, rated, settled, t_go, go_wall_ms, t_end, setup_s)
            report["resources"] = sampler.report()
            report["resources"]["nofile_soft_hard"] = list(nofile)
            report["resources"]["cpu_utilisation"] = round(
                report["resources"]["cpu_s_total"] / max(t_end - t_start, 1e-6) / (os.cpu_count() or 1), 2)
            if chain.province is not None:
                report["province_stats"] = chain.province.stats()
        finally:
            for c in self.conns:
                with contextlib.suppress(OSError):
                    c.send(("stop",))
            for p in self.procs:
                p.join(60)
                if p.is_alive():
                    p.kill()
                    p.join(10)
            sampler.stop()
            chain.stop()
        report["errors"] = self.errors
        report["ok"] = ok(report)
        return report

    def _report(self, chain: Chain, ready: dict[int, Any], rated: dict[int, Any], settled: dict[int, Any],
                t_go: float, go_wall_ms: int, t_end: float, setup_s: float) -> dict[str, Any]:
        lg = chain.ledger
        totals = dict.fromkeys(("prompts", "presses", "ignored", "walkaways", "invites", "transactions"), 0)
        gw: dict[str, int] = {}
        dv: dict[str, int] = {}
        stuck: list[str] = []
        for s in settled.values():
            for dev, epoch, seq, score in s["ratings"]:
                lg.ratings[(dev, epoch, seq)] = score
            for k in totals:
                totals[k] += s[k]
            for k, v in s["gateway"].items():
                gw[k] = gw.get(k, 0) + v
            for k, v in s["devices"].items():
                dv[k] = dv.get(k, 0) + v
            stuck += s["stuck"]
        lg.prompts, lg.presses, lg.ignored = totals["prompts"], totals["presses"], totals["ignored"]
        rec = chain.reconcile()
        per_hall, misattributed, last_ms = self._per_hall(chain)
        rated_at = max(r["at"] for r in rated.values())
        day_s = t_end - t_go
        e2e_s = max((last_ms - go_wall_ms) / 1000, 1e-3) if last_ms else day_s
        rec.update({
            "halls": self.cfg.halls, "keypads": self.cfg.halls * self.cfg.devices,
            "firmware_keypads": self.cfg.firmware, "workers": len(self.procs),
            "seed": self.cfg.day.seed, "per_device": self.cfg.day.per_device,
            "plan_digest": plan_digest({d: day_plan(self.cfg.day.seed, d, self.cfg.day,
                                                    invite=d not in set(self.firmware_ids(chain)))
                                        for d in chain.device_ids}),
            "ratings_digest": _ratings_digest(lg.ratings),
            "transactions": totals["transactions"], "walkaways": totals["walkaways"],
            "invites": totals["invites"], "ignored_presses": totals["ignored"],
            "misattributed": misattributed,
            "halls_complete": sum(1 for v in per_hall.values() if v["made"] == v["province"] and v["ok"]),
            "per_hall": per_hall,
            "settled": not stuck, "stuck": stuck[:20],
            "setup_s": round(setup_s, 1), "rating_phase_s": round(rated_at - t_go, 1),
            "day_wall_s": round(day_s, 1), "last_province_store_s": round(e2e_s, 1),
            "throughput_per_s": round(rec["received_province"] / e2e_s, 1),
            "gateway_totals": gw, "device_totals": dv,
            "worker_start": {i: r for i, r in sorted(ready.items())},
            "worker_fd_max": max(s["fd_max"] for s in settled.values()),
            "scheduler_errors": sum(s["scheduler_errors"] for s in settled.values()),
        })
        return dict(rec)

    def _per_hall(self, chain: Chain) -> tuple[dict[str, dict[str, Any]], int, int]:
        """Ratings per hall made / stored at the gateway / at the province, and any under the wrong hall."""
        made: dict[str, int] = {}
        for dev, _e, _s in chain.ledger.ratings:
            made[chain.hall_of[dev]] = made.get(chain.hall_of[dev], 0) + 1
        out = {h: {"made": made.get(h, 0), "gateway": 0, "province": 0, "ok": True} for h in chain.halls}
        for h in chain.halls.values():
            conn = sqlite3.connect(f"file:{h.db_path}?mode=ro", uri=True)
            try:
                out[h.hall]["gateway"] = conn.execute(
                    "SELECT COUNT(*) FROM ratings WHERE kind = 'rating'").fetchone()[0]
            finally:
                conn.close()
        conn = sqlite3.connect(f"file:{self.cfg.workdir / 'province' / 'province.db'}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT hall, device, COUNT(*) FROM ratings WHERE kind = 'rating' "
                                "GROUP BY hall, device").fetchall()
            last = conn.execute("SELECT MAX(stored_ms) FROM ratings").fetchone()[0] or 0
        finally:
            conn.close()
        wrong = 0
        for hall, dev, n in rows:
            right = chain.hall_of.get(dev)
            if right != hall:
                wrong += n
                if hall in out:
                    out[hall]["ok"] = False
                continue
            out[hall]["province"] += n
        return out, wrong, int(last)


def _ratings_digest(ratings: dict[tuple[str, int, int], int]) -> str:
    h = hashlib.sha256()
    for (dev, epoch, seq), score in sorted(ratings.items()):
        h.update(f"{dev},{epoch},{seq},{score};".encode())
    return h.hexdigest()[:16]


def ok(report: dict[str, Any]) -> bool:
    keys = ("lost", "duplicated", "invented", "altered", "misattributed")
    return (all(report.get(k, 1) == 0 for k in keys) and bool(report.get("settled"))
            and not report.get("errors"))


def summary(r: dict[str, Any]) -> str:
    res = r.get("resources", {})
    peak = res.get("peak", {})
    kinds = res.get("peak_by_kind", {})
    procs = ", ".join(f"{int(v['processes'])} {k}" for k, v in sorted(kinds.items()))
    lines = [
        f"province: {r['halls']} halls, {r['keypads']} keypads ({r['firmware_keypads']} on MicroPython), "
        f"{r['workers']} worker processes, seed {r['seed']} (plan {r['plan_digest']})",
        f"transactions {r['transactions']}  presses {r['presses']}  prompts {r['prompts']} "
        f"(+{r['invites']} by invite key)  walk-aways {r['walkaways']}  ratings made {r['ratings_made']}",
        f"stored at gateways {r['stored_gateway']} (+{r['no_ratings_gateway']} no-ratings)  "
        f"received by province {r['received_province']}  prompts at province {r['prompts_province']}",
        f"lost {r['lost']}  duplicated {r['duplicated']}  invented {r['invented']}  altered {r['altered']}  "
        f"under the wrong hall {r['misattributed']}  halls complete {r['halls_complete']}/{r['halls']}",
        f"rejected {r['rejected'] or 'none'}  "
        f"settled {'yes' if r['settled'] else 'NO: ' + '; '.join(r['stuck'])}",
        f"wall: set-up {r['setup_s']} s, day {r['day_wall_s']} s (presses done {r['rating_phase_s']} s, "
        f"last rating at the province {r['last_province_store_s']} s)",
        f"throughput {r['throughput_per_s']} ratings/s end to end",
        f"resources: peak {int(peak.get('processes', 0))} processes ({procs}), "
        f"{int(peak.get('threads', 0))} threads, RSS {peak.get('rss_mb', 0):.0f} MB "
        f"(PSS {peak.get('pss_mb', 0):.0f} MB), CPU {res.get('cpu_s_total', 0)} s "
        f"({res.get('cpu_utilisation', 0):.0%} of {os.cpu_count()} cores), "
        f"max fd in a worker {r['worker_fd_max']}",
    ]
    if r.get("errors"):
        lines.append("errors: " + r["errors"][0].strip().splitlines()[-1])
    return "\n".join(lines)


__all__ = ["DayConfig", "ProvinceSim", "ProvinceSimConfig", "ResourceSampler", "Txn", "day_plan",
           "ok", "summary", "worker_main"]
