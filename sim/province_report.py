"""The province simulation's report: the workers' ledgers merged and reconciled as ``Chain.reconcile``
does, per hall (made / stored at the gateway / at the province, and any rating under the wrong hall), the
digests that tie a run to its seed, and the summary the CLI prints."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from dataclasses import dataclass
from typing import Any

from .chain import Chain
from .ledger import losses
from .plan import day_plan, plan_digest
from .province_config import ProvinceSimConfig


@dataclass(frozen=True)
class Timing:
    setup_s: float          # from the start until every worker was ready
    t_go: float             # monotonic, when the workers were told to go
    go_wall_ms: int         # ... in wall-clock ms (the province's stored_ms are wall-clock)
    t_end: float            # monotonic, when the last worker had settled


def build(cfg: ProvinceSimConfig, chain: Chain, firmware_ids: list[str], workers: int, ready: dict[int, Any],
          rated: dict[int, Any], settled: dict[int, Any], timing: Timing) -> dict[str, Any]:
    lg = chain.ledger
    gw: dict[str, int] = {}
    dv: dict[str, int] = {}
    stuck: list[str] = []
    for s in settled.values():
        lg.merge(s["ledger"])
        for k, v in s["gateway"].items():
            gw[k] = gw.get(k, 0) + v
        for k, v in s["devices"].items():
            dv[k] = dv.get(k, 0) + v
        stuck += s["stuck"]
    rec = chain.reconcile()
    per_hall, misattributed, last_ms = _per_hall(cfg, chain)
    rated_at = max(r["at"] for r in rated.values())
    day_s = timing.t_end - timing.t_go
    e2e_s = max((last_ms - timing.go_wall_ms) / 1000, 1e-3) if last_ms else day_s
    fw = set(firmware_ids)
    rec.update({
        "halls": cfg.halls, "keypads": cfg.halls * cfg.devices,
        "firmware_keypads": cfg.firmware, "workers": workers,
        "seed": cfg.day.seed, "per_device": cfg.day.per_device,
        "plan_digest": plan_digest({d: day_plan(cfg.day.seed, d, cfg.day, invite=d not in fw)
                                    for d in chain.device_ids}),
        "ratings_digest": _ratings_digest(lg.ratings),
        "transactions": lg.transactions, "walkaways": lg.walkaways,
        "invites": lg.invites, "ignored_presses": lg.ignored,
        "misattributed": misattributed,
        "halls_complete": sum(1 for v in per_hall.values() if v["made"] == v["province"] and v["ok"]),
        "per_hall": per_hall,
        "settled": not stuck, "stuck": stuck[:20],
        "setup_s": round(timing.setup_s, 1), "rating_phase_s": round(rated_at - timing.t_go, 1),
        "day_wall_s": round(day_s, 1), "last_province_store_s": round(e2e_s, 1),
        "throughput_per_s": round(rec["received_province"] / e2e_s, 1),
        "gateway_totals": gw, "device_totals": dv,
        "worker_start": {i: r for i, r in sorted(ready.items())},
        "worker_fd_max": max(s["fd_max"] for s in settled.values()),
        "scheduler_errors": sum(s["scheduler_errors"] for s in settled.values()),
    })
    return dict(rec)


def _per_hall(cfg: ProvinceSimConfig, chain: Chain) -> tuple[dict[str, dict[str, Any]], int, int]:
    """Ratings per hall made / stored at the gateway / at the province, and any under the wrong hall."""
    made: dict[str, int] = {}
    for dev, _e, _s in chain.ledger.ratings:
        made[chain.hall_of[dev]] = made.get(chain.hall_of[dev], 0) + 1
    out = {h: {"made": made.get(h, 0), "gateway": 0, "province": 0, "ok": True} for h in chain.halls}
    for h in chain.halls.values():
        conn = sqlite3.connect(f"file:{h.db_path}?mode=ro", uri=True)
        try:
            out[h.hall]["gateway"] = conn.execute(
                "SELECT COUNT(*) FROM ratings WHERE kind = 'rating'").fetchone()[0]
        finally:
            conn.close()
    conn = sqlite3.connect(f"file:{cfg.workdir / 'province' / 'province.db'}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT hall, device, COUNT(*) FROM ratings WHERE kind = 'rating' "
                            "GROUP BY hall, device").fetchall()
        last = conn.execute("SELECT MAX(stored_ms) FROM ratings").fetchone()[0] or 0
    finally:
        conn.close()
    wrong = 0
    for hall, dev, n in rows:
        right = chain.hall_of.get(dev)
        if right != hall:
            wrong += n
            if hall in out:
                out[hall]["ok"] = False
            continue
        out[hall]["province"] += n
    return out, wrong, int(last)


def _ratings_digest(ratings: dict[tuple[str, int, int], int]) -> str:
    h = hashlib.sha256()
    for (dev, epoch, seq), score in sorted(ratings.items()):
        h.update(f"{dev},{epoch},{seq},{score};".encode())
    return h.hexdigest()[:16]


def ok(report: dict[str, Any]) -> bool:
    keys = ("lost", "duplicated", "invented", "altered", "misattributed")
    return (all(report.get(k, 1) == 0 for k in keys) and bool(report.get("settled"))
            and not report.get("errors"))


def summary(r: dict[str, Any]) -> str:
    res = r.get("resources", {})
    peak = res.get("peak", {})
    kinds = res.get("peak_by_kind", {})
    procs = ", ".join(f"{int(v['processes'])} {k}" for k, v in sorted(kinds.items()))
    lines = [
        f"province: {r['halls']} halls, {r['keypads']} keypads ({r['firmware_keypads']} on MicroPython), "
        f"{r['workers']} worker processes, seed {r['seed']} (plan {r['plan_digest']})",
        f"transactions {r['transactions']}  presses {r['presses']}  prompts {r['prompts']} "
        f"(+{r['invites']} by invite key)  walk-aways {r['walkaways']}  ratings made {r['ratings_made']}",
        f"stored at gateways {r['stored_gateway']} (+{r['no_ratings_gateway']} no-ratings)  "
        f"received by province {r['received_province']}  prompts at province {r['prompts_province']}",
        f"{losses(r)}  under the wrong hall {r['misattributed']}  "
        f"halls complete {r['halls_complete']}/{r['halls']}",
        f"rejected {r['rejected'] or 'none'}  "
        f"settled {'yes' if r['settled'] else 'NO: ' + '; '.join(r['stuck'])}",
        f"wall: set-up {r['setup_s']} s, day {r['day_wall_s']} s (presses done {r['rating_phase_s']} s, "
        f"last rating at the province {r['last_province_store_s']} s)",
        f"throughput {r['throughput_per_s']} ratings/s end to end",
        f"resources: peak {int(peak.get('processes', 0))} processes ({procs}), "
        f"{int(peak.get('threads', 0))} threads, RSS {peak.get('rss_mb', 0):.0f} MB "
        f"(PSS {peak.get('pss_mb', 0):.0f} MB), CPU {res.get('cpu_s_total', 0)} s "
        f"({res.get('cpu_utilisation', 0):.0%} of {os.cpu_count()} cores), "
        f"max fd in a worker {r['worker_fd_max']}",
    ]
    if r.get("errors"):
        lines.append("errors: " + r["errors"][0].strip().splitlines()[-1])
    return "\n".join(lines)
