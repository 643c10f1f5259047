"""The whole keypad job under the keypad's RAM budget, against the real gateway, in each install mode.

firmware/budget.json gives a heap per install mode (device/bundle.py): the .mpy tree that stock images
run keeps its bytecode in the heap, a ROMFS image keeps it in flash. The simulated keypad boots as on
an esp32 (sim/port/esp32boot.py), which leaves the app exactly that budget. The free heap must stay
flat: what the job uses at the start is what it uses after thousands of ratings.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from countersign.device import bundle
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
