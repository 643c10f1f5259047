"""The whole keypad job under the keypad's RAM budget, against the real gateway, in each install mode.

firmware/budget.json gives a heap per install mode (device/bundle.py): the .mpy tree that stock images
run keeps its bytecode in the heap, a ROMFS image keeps it in flash. The simulated keypad boots as on
an esp32 (sim/port/esp32boot.py), which leaves the app exactly that budget. The free heap must stay
flat: what the job uses at the start is what it uses after thousands of ratings. And after a week
offline (2,100 ratings pending) the outbox drains to the gateway in seconds once the link is back.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from countersign.common import bundle
from countersign.sim import fwbench


@pytest.mark.parametrize("mode", bundle.MODES)
def test_whole_job_in_the_heap_budget_and_flat_over_2000_ratings(tmp_path: Path, mode: str) -> None:
    b = fwbench.budgets()
    run = fwbench.run(tmp_path, 2000, mode=mode)
    assert run.heap == bundle.device_heap(mode)
    # Flat: after the first tenth (buffers and the outbox index warmed up) the free heap does not fall.
    assert min([*run.frees[1:], run.end_free]) >= run.frees[0] - int(b["heap_flat_slack"]), run
    # And the budget is not cut so fine that the collector has no room to work in.
    assert min(run.frees) >= int(b["min_free_at_steady_state"]), run


@pytest.mark.parametrize("mode", bundle.MODES)
def test_a_week_offline_drains_in_seconds_reading_each_record_at_most_twice(tmp_path: Path,
                                                                            mode: str) -> None:
    """2,100 ratings made while the hall broker was down (the brief's week offline), then the broker comes
    back: every one reaches the gateway and is acked, reading each outbox record at most twice."""
    run = fwbench.drain(tmp_path, 2100, mode=mode)
    print(f"{mode}: drained in {run.drain_ms} ms, {run.reads_per_rating:.2f} records read per rating, "
          f"free heap {run.free_offline} B offline, lowest {run.free_min} B while draining")
    assert run.heap == bundle.device_heap(mode)
    assert run.stored == 2100, "the gateway holds every rating the keypad made"
    assert run.reads <= 2 * run.ratings, run.reads
    assert run.drain_ms < 60_000, "seconds on the target; a minute only because the machine may be busy"
