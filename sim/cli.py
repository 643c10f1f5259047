"""`countersign sim ...`: simulated halls for CI, the demo and the technicians' bench."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from .chain import Chain, ChainConfig
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
    c.set_defaults(func=_chain)


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
        with Chain(ChainConfig(workdir=workdir, devices=args.devices, retry_s=2.0)) as chain:
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
        print(summary(report))
        if args.report_json:
            args.report_json.write_text(json.dumps(report, indent=1, ensure_ascii=False, default=str) + "\n")
        bad = report["lost"] or report["duplicated"] or report["invented"] or report["altered"] or not settled
        return 1 if bad else 0
