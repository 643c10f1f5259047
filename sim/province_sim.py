"""A whole province on one machine: about 300 halls and 900 keypads, an accelerated business day.

Shape (measured on the 2-core reference machine, see ``countersign sim province`` in the README):

- the parent process (this module) builds every hall's files with ``Chain`` (keystores, broker configs,
  signing keys, the province registry), runs the provincial mosquitto and the province receiver, samples
  resources (``resources``) and reconciles at the end exactly as ``Chain.reconcile`` does
  (``province_report``);
- worker processes (multiprocessing, spawn; ``province_worker``) each run a slice of halls (sized in
  ``province_config``): per hall its own mosquitto, its embedded gateway and its keypads. Everything
  talks over real loopback MQTT and HTTP.

The day: each keypad serves ``per_device`` customers back to back, as fast as its window can go. Each
transaction is drawn from the seed and the keypad's id alone (``plan.day_plan``), so the same seed gives
the same presses whatever the slicing into workers and the threads' interleaving: a prompt opened through
the gateway's HTTP API (or, for some, the keypad's invite key), one press, sometimes a second press
(ignored) and sometimes a customer who walks away (the next prompt replaces the open one and the keypad
sends a no-rating).
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from countersign.gateway.brokerconf import write_broker_files

from . import province_report
from .broker import Mosquitto, free_port, run_as_clause
from .chain import Chain, ChainConfig
from .fwdevice import DEFAULT_BUNDLE
from .plan import DayConfig, Txn, day_plan, plan_digest
from .province_config import DeviceSpec, HallSpec, ProvinceSimConfig, ProvinceSimError, WorkerSpec
from .province_report import ok, summary
from .province_worker import worker_main
from .resources import ResourceSampler, raise_nofile


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
            halls.append(HallSpec(h.hall, number, h.broker.conf, h.port, gcfg, devs, h.api_token))
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
            report = province_report.build(
                cfg, chain, self.firmware_ids(chain), len(self.procs), ready, rated, settled,
                province_report.Timing(setup_s=setup_s, t_go=t_go, go_wall_ms=go_wall_ms, t_end=t_end))
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


__all__ = ["DayConfig", "ProvinceSim", "ProvinceSimConfig", "ProvinceSimError", "ResourceSampler", "Txn",
           "day_plan", "ok", "plan_digest", "summary", "worker_main"]
