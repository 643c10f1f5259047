"""The whole keypad job under the keypad's RAM budget, against the real gateway.

The firmware's ROM image sits in the unix port's heap (it is flash on a keypad), so the heap is the
budget of firmware/budget.json plus the image (sim/bundle.py). The free heap must stay flat: what the job
uses at the start is what it uses after thousands of ratings.
"""

from __future__ import annotations

from pathlib import Path

from countersign.sim import fwbench


def test_whole_job_in_the_heap_budget_and_flat_over_2000_ratings(tmp_path: Path) -> None:
    b = fwbench.budgets()
    run = fwbench.run(tmp_path, 2000)
    # Flat: after the first tenth (buffers and the outbox index warmed up) the free heap does not fall.
    assert min([*run.frees[1:], run.end_free]) >= run.frees[0] - b["heap_flat_slack"], run
    # And the budget is not cut so fine that the collector has no room to work in.
    assert min(run.frees) >= b["min_free_at_steady_state"], run
