"""What a province simulation is asked to run, and what each worker process is given (picklable: spawn).

Why slices of about 25 halls per worker: paho-mqtt's network loop uses ``select()``, which cannot watch
a file descriptor numbered 1024 or above (FD_SETSIZE), whatever RLIMIT_NOFILE says. One hall with 3
keypads holds about 26 descriptors in its worker (gateway 12: two MQTT clients with their wake-up socket
pairs, three SQLite connections with WAL files, the HTTP listener; keypad 4: socket, socket pair,
outbox), so a worker stays well under 1024 with 25 halls and room for the HTTP requests in flight.
``ProvinceSimConfig`` refuses slices that would not fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from countersign.gateway.config import GatewayConfig

from .plan import DayConfig

# What paho's select() loop can watch: descriptors 0..1023. Estimates per part (measured, see above) and
# the head room kept for transient descriptors (HTTP requests, outbox compaction, firmware pipes).
FD_SETSIZE = 1024
FDS_PER_HALL = 14          # gateway 12 + the broker's stderr pipe and its log file
FDS_PER_KEYPAD = 4
FDS_PER_FIRMWARE = 3       # the firmware process's stdout pipe, its console log, the sim-board socket
FDS_BASE = 120


class ProvinceSimError(RuntimeError):
    pass


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
    api_token: str = ""         # the hall's counter-system credential (Chain issues it at set-up)


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
