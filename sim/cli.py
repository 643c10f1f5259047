"""`countersign sim ...`: simulated halls for CI, the demo and the technicians' bench."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from .capture import start_captured
from .chain import Chain, ChainConfig
from .hall import FAULT_KINDS, HallConfig, HallRun, write_report
from .hall import summary as hall_summary
from .scenario import ScenarioConfig, run, summary


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="sim_cmd", required=True, metavar="SCENARIO")
    c = sub.add_parser("chain", help="one hall end to end with CPython reference keypads")
    c.add_argument("--devices", type=int, default=4)
    c.add_argument("--ratings", type=int, default=200, help="transactions in all")
    c.add_argument("--seed", type=int, default=7)
    c.add_argument("--uplink-outage", action="store_true", help="cut the provincial link mid-run")
    c.add_argument("--workdir", type=Path, help="keep brokers' configs, databases and logs here")
    c.add_argument("--report-json", type=Path)
    c.add_argument("--capture", type=Path, metavar="FILE",
                   help="every MQTT message of both brokers plus the run's keys, JSON lines "
                        "(re-verify: .venv-xcheck/bin/python tests/xcheck_capture.py FILE)")
    c.set_defaults(func=_chain)
    p = sub.add_parser("province", help="a whole province (300 halls, 900 keypads), an accelerated day")
    p.add_argument("--halls", type=int, default=300)
    p.add_argument("--devices", type=int, default=3, help="keypads per hall")
    p.add_argument("--per-device", type=int, default=30, help="customers each keypad serves")
    p.add_argument("--seed", type=int, default=7, help="the same seed gives the same presses")
    p.add_argument("--firmware", type=int, default=0, metavar="N",
                   help="run N of the keypads as real MicroPython firmware processes")
    p.add_argument("--workers", type=int, default=0, help="worker processes (default: one per 25 halls)")
    p.add_argument("--concurrency", type=int, default=8, help="customers served at once per worker")
    p.add_argument("--workdir", type=Path, help="keep brokers' configs, databases and logs here")
    p.add_argument("--report-json", type=Path)
    p.set_defaults(func=_province)

    h = sub.add_parser("hall", help="one hall on real parts: firmware keypads, gateway process, faults")
    h.add_argument("--devices", type=int, default=4, help="keypads (real MicroPython firmware)")
    h.add_argument("--duration", type=float, default=30.0, help="seconds of wall time")
    h.add_argument("--accel", type=float, default=60.0, help="business time runs this much faster")
    h.add_argument("--seed", type=int, default=7)
    h.add_argument("--faults", type=int, default=3, help="faults drawn from the seed (0: none)")
    h.add_argument("--fault-kinds", default=",".join(FAULT_KINDS),
                   help=f"comma-separated subset of: {', '.join(FAULT_KINDS)}")
    h.add_argument("--scores", default="70,20,7,3",
                   help="customers' score mix on the 4-key scale, best first "
                        "(weights of 非常满意,满意,基本满意,不满意)")
    h.add_argument("--capture", type=Path, help="write every MQTT message seen (JSON lines) here")
    h.add_argument("--report-json", type=Path)
    h.add_argument("--workdir", type=Path, help="keep configs, databases, consoles and logs here")
    h.add_argument("--serve", action="store_true",
                   help="after the verdict keep the hall up and serve its page until Ctrl-C (make demo)")
    h.set_defaults(func=_hall)


def _progress(n: int, total: int) -> None:
    width = 40
    filled = width * n // max(total, 1)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {n}/{total} transactions")
    if n == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _chain(args: argparse.Namespace) -> int:
    if not args.verbose:   # the report is the output; the parts' INFO logs would bury it
        logging.getLogger().setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="countersign-chain-") as tmp:
        workdir = args.workdir or Path(tmp)
        chain = Chain(ChainConfig(workdir=workdir, devices=args.devices, retry_s=2.0))
        capture = start_captured(chain, args.capture) if args.capture else None
        if capture is None:
            chain.start()
        try:
            http = chain.gateway.http_port if chain.gateway else "-"
            print(f"hall {chain.hall}: {args.devices} keypads, gateway http port {http}, "
                  f"hall broker :{chain.hall_port}, provincial broker :{chain.prov_port}")
            run(chain, ScenarioConfig(ratings=args.ratings, seed=args.seed, uplink_outage=args.uplink_outage),
                progress=_progress if sys.stderr.isatty() else None)
            settled = chain.wait_settled(120)
            report = chain.reconcile()
            report["settled"] = settled
            if chain.province is not None:
                report["province_stats"] = chain.province.stats()
        finally:
            chain.stop()
            if capture is not None:
                capture.close()
        print(summary(report))
        if args.report_json:
            args.report_json.write_text(json.dumps(report, indent=1, ensure_ascii=False, default=str) + "\n")
        bad = report["lost"] or report["duplicated"] or report["invented"] or report["altered"] or not settled
        return 1 if bad else 0


def _bar(frac: float) -> None:
    _progress(int(frac * 100), 100)


def _hall(args: argparse.Namespace) -> int:
    if not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)
    kinds = tuple(k for k in args.fault_kinds.split(",") if k)
    bad = set(kinds) - set(FAULT_KINDS)
    if bad:
        print(f"countersign sim hall: unknown fault kind(s): {', '.join(sorted(bad))}", file=sys.stderr)
        return 2
    try:
        weights = [int(w) for w in args.scores.split(",")]
        if len(weights) != 4 or min(weights) < 0 or sum(weights) == 0:
            raise ValueError
    except ValueError:
        print("countersign sim hall: --scores takes 4 non-negative weights, best first", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="countersign-hall-") as tmp:
        mix = dict(zip((4, 3, 2, 1), weights, strict=True))
        cfg = HallConfig(score_mix=mix, workdir=args.workdir or Path(tmp), devices=args.devices,
                         duration_s=args.duration, accel=args.accel, seed=args.seed, faults=args.faults,
                         fault_kinds=kinds or FAULT_KINDS, capture=args.capture)
        run = HallRun(cfg)
        rep = run.run(progress=_bar if sys.stderr.isatty() else None,
                      hold=(lambda r: _serve(r, run.page())) if args.serve else None)
    if not args.serve:
        print(hall_summary(rep))
    if args.report_json:
        write_report(rep, args.report_json)
    return 0 if rep["ok"] else 1     # the oracle's verdict (sim/oracle.py), losses and settling included


def _serve(rep: dict[str, Any], page: dict[str, str]) -> None:
    """The demo's end: the verdict, then the hall page and the provincial platform with this run's data
    until Ctrl-C."""
    from countersign.province.web_demo import serve_demo

    print(hall_summary(rep), flush=True)
    platform = serve_demo(Path(page["province_db"]), Path(page["province_dir"]))
    print(f"\nhall page: {page['url']}  log-in: {page['user']}, password in {page['password_file']}\n"
          f"counter API token: {page['api_token_file']}\n" + "\n".join(platform.lines()) + "\n"
          "serving until Ctrl-C (make demo DEMO_EXIT=1 ends at once)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        # A second Ctrl-C (or the terminal's to the whole group) must not cut the teardown short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("stopping the hall", flush=True)
    finally:
        platform.stop()


def _province(args: argparse.Namespace) -> int:
    from .province_sim import DayConfig, ProvinceSim, ProvinceSimConfig, ProvinceSimError
    from .province_sim import summary as province_summary

    if not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="countersign-province-") as tmp:
        workdir = args.workdir or Path(tmp)
        try:
            cfg = ProvinceSimConfig(workdir=workdir, halls=args.halls, devices=args.devices,
                                    day=DayConfig(per_device=args.per_device, seed=args.seed),
                                    workers=args.workers, firmware=args.firmware,
                                    concurrency=args.concurrency)
            sim = ProvinceSim(cfg, progress=_progress if sys.stderr.isatty() else None)
        except ValueError as exc:
            print(f"countersign sim province: {exc}", file=sys.stderr)
            return 2
        print(f"province: {cfg.halls} halls x {cfg.devices} keypads, {cfg.worker_count()} worker processes, "
              f"{cfg.halls * cfg.devices * cfg.day.per_device} customers"
              + (f"; work folder {workdir}" if args.workdir else ""), flush=True)
        try:
            report = sim.run()
        except ProvinceSimError as exc:
            print(f"countersign sim province: {exc}", file=sys.stderr)
            return 1
    print(province_summary(report))
    if args.report_json:
        args.report_json.write_text(json.dumps(report, indent=1, ensure_ascii=False, default=str) + "\n")
    return 0 if report["ok"] else 1
