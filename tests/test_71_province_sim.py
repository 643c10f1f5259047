"""`countersign sim province`: many halls in worker processes, one province, reconciled end to end.

The real parts throughout: a mosquitto per hall, embedded gateways with their SQLite files, reference
keypads (and one real MicroPython firmware keypad in the CLI run), the provincial broker and receiver.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from countersign.province.report import build_report
from countersign.sim.fwdevice import micropython_exe
from countersign.sim.province_sim import DayConfig, ProvinceSim, ProvinceSimConfig, day_plan


def test_day_plan_is_drawn_from_seed_and_keypad_only() -> None:
    day = DayConfig(per_device=200, seed=11)
    a = day_plan(11, "hf07-w02", day)
    assert a == day_plan(11, "hf07-w02", day)                 # same seed, same presses, in any process
    assert a != day_plan(12, "hf07-w02", DayConfig(per_device=200, seed=12))
    assert a != day_plan(11, "hf07-w03", day)
    modes = [t.mode for t in a]
    assert {"prompt", "invite", "walkaway"} <= set(modes)
    assert modes[-1] != "walkaway"                              # no prompt left open after the day
    # The invite key does nothing while a walk-away's prompt is still open: never planned there.
    assert all(not (p == "walkaway" and n == "invite") for p, n in itertools.pairwise(modes))
    assert all(1 <= t.score <= 4 for t in a)
    assert "invite" not in {t.mode for t in day_plan(11, "hf07-w02", day, invite=False)}


def _province_ratings(workdir: Path) -> list[tuple[str, str, str, str | None]]:
    conn = sqlite3.connect(workdir / "province" / "province.db")
    try:
        return conn.execute("SELECT hall, device, window, clerk FROM ratings "
                            "WHERE kind = 'rating'").fetchall()
    finally:
        conn.close()


def test_small_province_reconciles_every_hall(tmp_path: Path) -> None:
    cfg = ProvinceSimConfig(workdir=tmp_path / "prov", halls=10, devices=3, day=DayConfig(per_device=4),
                            workers=2, retry_s=2.0)
    report = ProvinceSim(cfg).run()
    assert report["errors"] == [] and report["settled"] and report["ok"]
    assert report["workers"] == 2
    assert (report["lost"], report["duplicated"], report["invented"], report["altered"]) == (0, 0, 0, 0)
    assert report["misattributed"] == 0 and report["halls_complete"] == 10
    assert report["transactions"] == 10 * 3 * 4
    assert report["ratings_made"] == report["stored_gateway"] == report["received_province"]
    assert report["ratings_made"] >= 10 * 3 * 4 - report["walkaways"]
    assert report["prompts_province"] == report["prompts"]
    rows = _province_ratings(cfg.workdir)
    assert len(rows) == report["ratings_made"]
    per_hall: dict[str, int] = {}
    for hall, device, window, clerk in rows:
        # Each rating is at the province under its own keypad's hall, window and that window's clerk.
        assert device.startswith(f"{hall}-w") and device.endswith(f"w{int(window):02d}")
        assert clerk is not None and clerk.endswith(f"{int(window):02d}")
        per_hall[hall] = per_hall.get(hall, 0) + 1
    assert sorted(per_hall) == [f"hf{n:02d}" for n in range(1, 11)]
    for hall, figures in report["per_hall"].items():
        assert figures["made"] == figures["gateway"] == figures["province"] == per_hall[hall]
    # 参评率 never above 100 %: every invite-key outcome opened a prompt too (a run gave 108 % before).
    conn = sqlite3.connect(cfg.workdir / "province" / "province.db")
    try:
        invited = conn.execute("SELECT COUNT(*) FROM ratings WHERE prompt = 0").fetchone()[0]
        figures = build_report(conn, ("hall", "clerk", "device"))
    finally:
        conn.close()
    assert invited > 0, "the day plan has invite-key ratings"
    assert figures["total"]["prompts"] == report["prompts_province"] + invited
    groups = [figures["total"], *(g for gs in figures["groups"].values() for g in gs)]
    assert all(g["participation_rate"] is None or g["participation_rate"] <= 1 for g in groups)
    assert figures["total"]["ratings"] == report["ratings_made"]
    res = report["resources"]
    assert res["peak_by_kind"]["mosquitto"]["processes"] == 11     # a broker per hall + the province's
    assert res["peak"]["threads"] > 0 and res["peak"]["rss_mb"] > 0
    assert report["throughput_per_s"] > 0


def test_cli_prints_the_figures_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    firmware = 1 if Path(micropython_exe()).exists() else 0
    cmd = [sys.executable, "-m", "countersign.cli", "sim", "province", "--halls", "4", "--devices", "2",
           "--per-device", "3", "--workers", "2", "--firmware", str(firmware), "--seed", "5",
           "--workdir", str(tmp_path / "w"), "--report-json", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    text = p.stdout
    assert "lost 0  duplicated 0  invented 0  altered 0  under the wrong hall 0  halls complete 4/4" in text
    assert "ratings/s end to end" in text and "peak" in text and "threads" in text and "RSS" in text
    report = json.loads(out.read_text())
    assert report["ok"] and report["halls"] == 4 and report["keypads"] == 8
    assert report["firmware_keypads"] == firmware
    assert report["received_province"] == report["ratings_made"] > 0
    if firmware:
        # The firmware keypad (the first window of the first hall) rated, and its ratings arrived.
        halls = {d for _h, d, _w, _c in _province_ratings(tmp_path / "w")}
        assert "hf01-w01" in halls
    # A bad option is a clear error, not a traceback.
    bad = subprocess.run([*cmd[:5], "--halls", "2", "--devices", "0"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "at least 1" in bad.stderr
