"""Firmware outbox and counters (firmware/cs/outbox.py, cs/state.py) on the real MicroPython unix port.

- tests/fw/mp_outbox.py: append/ack/pending, full policy, compaction, torn and bad records, temp files,
  seq reservation and epochs; the sender's cursor (in order, once each, after appends, acks, a compaction
  under it and a link drop; no allocation under heap_lock; a drain of 2,100 reads at most 2 records per
  rating); compaction in bounded steps with appends and acks between them and a power cut between any
  two; then 9000 appends, a compaction of all 9000 and their drain inside a 64 KB heap, run as .mpy
  (mpy-cross) the way a device runs it, with the free heap measured before and after. Each on the host
  filesystem and on littlefs (tests/fw/lfsrig.py: a RAM flash, or a flash image file in the 64 KB heap).
- tests/fw/mp_crashloop.py: a keypad storing ratings in a loop is SIGKILLed at seeded random moments (or
  cut mid-record, or mid-compaction, or between two compaction steps) and booted again on the same
  folder, 30 times: every rating reported stored is still there or was acked, no (epoch, seq) is handed
  out twice, every load is clean, and the CPython reference outbox reads the firmware's file to the same
  items. On the host filesystem and on littlefs over a flash image file (a kill mid-way through a write).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mpy import FIRMWARE, FW_TESTS, VECTORS, assert_mpy_ok, micropython

from countersign.common.outbox import Outbox as RefOutbox

SEED = 62
RUNS = 30

Key = tuple[int, int]


def mpy_cross() -> str:
    exe = Path(micropython()).parent / "mpy-cross"
    return str(exe) if exe.exists() else shutil.which("mpy-cross") or "mpy-cross"


def _env(firmware: Path) -> dict[str, str]:
    return dict(os.environ, CS_FIRMWARE=str(firmware), CS_VECTORS=str(VECTORS), CS_FW_TESTS=str(FW_TESTS))


@pytest.mark.parametrize("fs", ["host", "lfs"])
def test_outbox_checks_from_source(tmp_path: Path, fs: str) -> None:
    # "lfs": the same checks on littlefs over a RAM flash (tests/fw/lfsrig.py), the keypad's filesystem.
    out = assert_mpy_ok("mp_outbox.py", str(tmp_path), fs, heap="16M" if fs == "lfs" else None)
    assert re.search(r"passed \d+ checks", out)
    m = re.search(r"drain: (\d+) ratings, (\d+) sent, (\d+) records read", out)
    assert m, out
    made, sent, reads = map(int, m.groups())
    print(m.group(0))
    assert made >= 2100 and sent >= made and reads <= 2 * made


@pytest.mark.parametrize("fs", ["host", "lfsfile"])
def test_outbox_in_a_64k_heap_as_mpy(tmp_path: Path, fs: str) -> None:
    # A 64 KB heap cannot compile these sources on the fly (a device runs .mpy too): compile first.
    # The memory part only ("mem"): the other checks need more room for their own lists of items.
    # "lfsfile": littlefs on a flash image file (a RAM flash would not fit in the heap).
    lib = tmp_path / "lib"
    (lib / "cs").mkdir(parents=True)
    for mod in ("__init__", "outbox", "state"):
        src = FIRMWARE / "cs" / f"{mod}.py"
        subprocess.run([mpy_cross(), "-o", str(lib / "cs" / f"{mod}.mpy"), str(src)], check=True)
    for mod in ("mpyboot", "mp_outbox", "lfsrig"):
        subprocess.run([mpy_cross(), "-o", str(lib / f"{mod}.mpy"), str(FW_TESTS / f"{mod}.py")], check=True)
    data = tmp_path / "data"
    data.mkdir()
    r = subprocess.run([micropython(), "-X", "heapsize=64K", "-m", "mp_outbox", str(data), fs, "mem"],
                       cwd=lib, env=_env(lib), capture_output=True, text=True, timeout=300, check=False)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    m = re.search(r"heap total (\d+) free before (\d+) free with 9000 pending (\d+) free after (\d+)", out)
    assert m, out
    total, before, full, after = map(int, m.groups())
    print(f"64K heap: total {total}, free before {before}, with 9000 pending {full}, after {after}")
    assert total <= 65536
    assert before - full < 2048, "the index of 9000 pending ratings must stay small"
    assert before - after < 1024, "the heap must not grow over 9000 appends and acks"
    assert "ok 9000 appends fit the capacity" in out
    assert "ok a compaction of 9000 pending items needs no second index in the heap" in out
    assert "ok a drain of 9000 reads at most 2 records per rating" in out


def msg(e: int, s: int) -> bytes:
    """The same bytes mp_crashloop.py stores for (epoch, seq)."""
    n = 60 + (s * 13 + e) % 40
    return bytes((s * 31 + e * 7 + i) & 0xFF for i in range(n))


@dataclass
class Boot:
    lines: list[str]
    killed: bool
    load: tuple[int, int, int, int] = (0, 0, 0, 0)
    pending: list[Key] = field(default_factory=list)


def _keys(e: str, seqs: str) -> set[Key]:
    return {(int(e), int(s)) for s in seqs.split(",") if s}


def boot(folder: Path, seed: int, epoch: int, mode: str, kill_after: int, fs: str = "host") -> Boot:
    """One boot; SIGKILL it right after its `kill_after`-th `stored` line (mode "run")."""
    cmd = [micropython(), str(FW_TESTS / "mp_crashloop.py"), str(folder), str(seed), str(epoch), mode, fs]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(FIRMWARE),
                            text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    stored = 0
    killed = False
    try:
        for line in proc.stdout:
            if not line.endswith("\n"):
                break                   # cut by the kill: says nothing
            lines.append(line.rstrip("\n"))
            if line.startswith("stored "):
                stored += 1
                if mode == "run" and stored == kill_after and not killed:
                    proc.kill()         # the process runs on until the signal lands: a random point
                    killed = True
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read() if proc.stderr else ""
    if not killed:
        assert proc.returncode in (0, 9), f"rc {proc.returncode}\n{err}"
        assert lines and lines[-1] in ("end", "tearing", "cut"), f"{lines[-3:]}\n{err}"
    b = Boot(lines, killed)
    assert len(lines) >= 3 and lines[0].startswith("load "), f"{lines[:3]}\n{err}"
    d, torn, bad, comp = map(int, lines[0].split()[1:])
    b.load = (d, torn, bad, comp)
    items = lines[1][len("pending "):].split(",")
    b.pending = [(int(x), int(y)) for x, y in (p.split(":") for p in items if p)]
    assert lines[2] == "msgs ok", "a reloaded message differs from what was stored"
    return b


@pytest.mark.parametrize("fs", ["host", "lfsfile"])
def test_power_cut_loop(tmp_path: Path, fs: str) -> None:
    # "lfsfile": the outbox on littlefs over a flash image file that every flash page write goes to
    # (tests/fw/lfsrig.py), so the SIGKILL can land in the middle of littlefs writing a block.
    rng = random.Random(SEED)
    folder = tmp_path / "dev"
    folder.mkdir()
    taken: set[Key] = set()
    stored: set[Key] = set()
    acking: set[Key] = set()           # ack started (durable or not)
    acked: set[Key] = set()            # ack returned: durable
    last_tear = 0
    modes: list[str] = []
    for run in range(RUNS + 1):
        epoch = 1 if run < 20 else 2
        roll = rng.random()
        if run == RUNS:
            mode = "load"              # the last boot only loads and checks
        elif roll < 0.15:
            mode = f"tear:{rng.randint(0, 40)}:{rng.randint(1, 60)}"
        elif roll < 0.3:
            mode = f"cutcompact:{rng.randint(0, 1)}"
        else:
            mode = "run"
        modes.append(mode.split(":")[0])
        b = boot(folder, SEED * 1000 + run, epoch, mode, rng.randint(1, 120), fs)
        depth, torn, bad, _ = b.load
        pend = set(b.pending)
        # the outbox loads cleanly: no bad record; a torn tail only after a cut mid-record, exactly it
        assert bad == 0, b.lines[0]
        assert torn == last_tear, (run, b.lines[0], last_tear)
        assert depth == len(pend) == len(b.pending), b.lines[:2]
        assert b.pending == sorted(b.pending), "pending is in (epoch, seq) order"
        # nothing reported stored is lost, unless an ack for it was under way
        lost = stored - pend - acking
        assert not lost, f"run {run}: stored ratings missing after the cut: {sorted(lost)}"
        assert not (acked & pend), f"run {run}: durably acked ratings came back: {sorted(acked & pend)}"
        assert pend <= taken, f"run {run}: outbox holds seqs never handed out: {sorted(pend - taken)}"
        boot_line = next((x for x in b.lines if x.startswith(("boot ", "take "))), "")
        if boot_line.startswith("boot "):
            assert int(boot_line.split()[1]) == run + 1, "the boot count counts every boot"
        last_tear = 0
        for line in b.lines[3:]:
            kind, _, rest = line.partition(" ")
            if kind == "take":
                k = (int(rest.split()[0]), int(rest.split()[1]))
                assert k not in taken, f"run {run}: (epoch, seq) {k} handed out twice"
                earlier = [s for (e, s) in taken if e == k[0]]
                assert not earlier or k[1] > max(earlier), f"run {run}: seq went back: {k}"
                taken.add(k)
            elif kind == "stored":
                stored.add((int(rest.split()[0]), int(rest.split()[1])))
            elif kind == "acking":
                acking |= _keys(*rest.split())
            elif kind == "acked":
                acked |= _keys(*rest.split())
            elif kind == "tearing":
                last_tear = int(mode.split(":")[2])
    final = b.pending                  # from the last, load-only boot
    assert {"run", "tear", "cutcompact"} <= set(modes)
    assert sum(1 for m in modes if m == "run") >= 15
    assert len(taken) > 500 and any(e == 2 for e, _ in taken) and (2, 1) in taken
    # The CPython reference outbox reads the firmware's file (same format) to the same items and bytes.
    ref_path = tmp_path / "ref.log"
    shutil.copyfile(folder / "outbox.log", ref_path)
    ref = RefOutbox(ref_path)
    try:
        assert [(i.epoch, i.seq) for i in ref.items()] == final
        assert all(i.data == msg(i.epoch, i.seq) for i in ref.items())
        assert ref.torn_bytes == 0
    finally:
        ref.close()
