"""Run the keypad's whole job (firmware/bench/budget.py) on the MicroPython unix port against the real
gateway, under a heap budget; parse its heap and latency figures. Used by test_67 and `make bench`."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import bundle
from .chain import Chain, ChainConfig
from .fwdevice import FirmwareDevice, micropython_exe

ROOT = Path(__file__).resolve().parent.parent
DRIVER = ROOT / "firmware" / "bench" / "budget.py"
budgets = bundle.budgets


@dataclass
class BudgetRun:
    ratings: int
    heap: int                       # the budget the job ran in (the ROM image came on top)
    image_bytes: int
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


def run(workdir: Path, ratings: int, heap: int | None = None, timeout: float = 1200) -> BudgetRun:
    heap = heap or budgets()["heap"]
    c = Chain(ChainConfig(workdir=workdir / "chain", devices=1, firmware=1, retry_s=1.0))
    c.start(devices=False)
    try:
        c.sign_in("1", "10001", "张伟")
        fw = FirmwareDevice(c.firmware_config(c.device_ids[0]))
        fw.cfg.write()
        fw.install()
        # Compiled, as a keypad runs code: compiling from source needs more RAM than the budget.
        subprocess.run([bundle.mpy_cross_exe(), "-o", str(fw.cfg.folder / "budget.mpy"), str(DRIVER)],
                       check=True)
        image = fw.cfg.folder / bundle.IMAGE
        r = subprocess.run([micropython_exe(), "-X", f"heapsize={bundle.heap_for(image, heap)}", "-c",
                            "import budget"], cwd=fw.cfg.folder, capture_output=True, text=True,
                           timeout=timeout, check=False, env={**os.environ, "CS_BUDGET_N": str(ratings)})
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
    return BudgetRun(ratings, heap, image.stat().st_size, int(one(r"BUDGET start (\d+)").group(1)),
                     [int(m) for m in re.findall(r"BUDGET at \d+ (\d+)", out)],
                     int(one(r"BUDGET end (\d+)").group(1)), lat[0], lat[1], out)  # type: ignore[arg-type]
