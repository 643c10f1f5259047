"""The whole keypad job under the keypad's RAM budget (64 KB heap), against the real gateway.

The firmware's ROM image sits in the unix port's heap (it is flash on a keypad), so the heap is the
64 KB budget plus the image (sim/bundle.py). The free heap must stay flat: what the job uses at the
start is what it uses after thousands of ratings.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from countersign.sim import bundle
from countersign.sim.chain import Chain, ChainConfig
from countersign.sim.fwdevice import FirmwareDevice, micropython_exe

ROOT = Path(__file__).resolve().parent.parent


BUDGET = json.loads((ROOT / "firmware" / "budget.json").read_text())


def budget_output(tmp: Path, n: int) -> str:
    c = Chain(ChainConfig(workdir=tmp / "chain", devices=1, firmware=1, retry_s=1.0))
    c.start(devices=False)
    try:
        c.sign_in("1", "10001", "张伟")
        dev = c.device_ids[0]
        fw = FirmwareDevice(c.firmware_config(dev))
        fw.cfg.write()
        fw.install()
        driver = fw.cfg.folder / "budget.mpy"
        subprocess.run([bundle.mpy_cross_exe(), "-o", str(driver), str(ROOT / "firmware/bench/budget.py")],
                       check=True)
        heap = bundle.heap_for(fw.cfg.folder / bundle.IMAGE, BUDGET["heap"])
        r = subprocess.run([micropython_exe(), "-X", f"heapsize={heap}", "-c", "import budget"],
                           cwd=fw.cfg.folder, capture_output=True, text=True, timeout=600, check=False,
                           env={**os.environ, "CS_BUDGET_N": str(n)})
        return r.stdout + r.stderr
    finally:
        c.stop()


def test_whole_job_in_the_heap_budget_and_flat_over_2000_ratings(tmp_path: Path) -> None:
    out = budget_output(tmp_path, 2000)
    assert "BUDGET done 2000" in out, out[-3000:]
    frees = [int(m) for m in re.findall(r"BUDGET at \d+ (\d+)", out)]
    start = int(re.search(r"BUDGET start (\d+)", out).group(1))  # type: ignore[union-attr]
    end = int(re.search(r"BUDGET end (\d+)", out).group(1))  # type: ignore[union-attr]
    # Flat: after the first tenth (buffers and the outbox index warmed up) the free heap does not fall.
    assert min([*frees[1:], end]) >= frees[0] - BUDGET["heap_flat_slack"], (start, frees, end)
    # And the budget is not cut so fine that the collector has no room to work in.
    assert min(frees) >= BUDGET["min_free_at_steady_state"], (start, frees, end)
