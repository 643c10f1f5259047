"""`countersign sim hall`: one business hall on real parts, with a counter system, customers and faults.

Real mosquitto brokers (hall and province), the real gateway as its own process (so a power cut is a
SIGKILL and its clock can jump), the real province receiver, and keypads running the real firmware on
the MicroPython unix port. The virtual counter system signs clerks in and out (with breaks) and opens a
prompt per transaction through the gateway's HTTP API, with a realistic service mix; virtual customers
press after a human delay, some walk away, some press twice; a child mashes keys between prompts.

Everything random is drawn up front from ``--seed`` (each window's customers, the child's taps, the
fault schedule), so two runs with the same seed make the same presses. Time is accelerated: human delays
and service times are divided by ``--accel``.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from countersign.province.report import build_report

from . import customer
from .capture import Capture, attach_to_chain, enable_observer, header_for
from .chain import PAGE_USER, Chain, ChainConfig
from .gwprocess import GatewayProcess
from .keypad import Keypad
from .ledger import losses
from .oracle import ExceptionLog, Undelivered, fault_windows, problems, uncaught_in_files, unexplained
from .plan import CLERK_NAMES, SCORE_MIX_4, HallMix, Txn, hall_plan

FAULT_KINDS = ("hall-broker-down", "uplink-down", "gateway-power-cut", "keypad-power-cut",
               "gateway-clock-jump")


@dataclass
class HallConfig:
    workdir: Path
    devices: int = 4
    duration_s: float = 30.0
    accel: float = 60.0             # business time runs this many times faster than real time
    seed: int = 7
    faults: int = 3                 # faults drawn at random from the seed (0: none)
    fault_kinds: tuple[str, ...] = FAULT_KINDS
    ignore_rate: float = 0.05       # customers who walk away (a no-rating when the prompt expires)
    double_rate: float = 0.05       # customers who press twice (the second press is ignored)
    break_rate: float = 0.03        # after a transaction the clerk takes a break (signs out, back later)
    child_rate: float = 0.05        # between transactions a child mashes keys (ignored: no prompt open)
    score_mix: dict[int, int] = field(default_factory=lambda: dict(SCORE_MIX_4))
    prompt_timeout: int = 10
    capture: Path | None = None


@dataclass
class Fault:
    at_s: float                     # seconds after the start
    kind: str
    target: str = ""                # keypad id for keypad-power-cut
    length_s: float = 0.0           # outage length for the *-down kinds
    jump_s: int = 0                 # for gateway-clock-jump


def plan_customers(rng: random.Random, cfg: HallConfig, n: int) -> list[Txn]:
    return hall_plan(rng, HallMix(cfg.score_mix, cfg.ignore_rate, cfg.double_rate, cfg.break_rate,
                                  cfg.child_rate), n)


def plan_faults(rng: random.Random, cfg: HallConfig, devices: list[str]) -> list[Fault]:
    faults = []
    for i in range(cfg.faults):
        kind = cfg.fault_kinds[i % len(cfg.fault_kinds)] if i < len(cfg.fault_kinds) else \
            rng.choice(cfg.fault_kinds)
        # Spread over the middle of the run, so every fault is recovered from before the end.
        at = cfg.duration_s * (0.15 + 0.6 * (i + rng.random()) / max(cfg.faults, 1))
        faults.append(Fault(at, kind, target=rng.choice(devices) if kind == "keypad-power-cut" else "",
                            length_s=min(8.0, cfg.duration_s * 0.1) if kind.endswith("-down") else 0.0,
                            jump_s=rng.choice((-3600, 3600, 86400)) if kind == "gateway-clock-jump" else 0))
    return sorted(faults, key=lambda f: f.at_s)


class HallRun:
    def __init__(self, cfg: HallConfig) -> None:
        self.cfg = cfg
        self.chain = Chain(ChainConfig(workdir=cfg.workdir, devices=cfg.devices, firmware=cfg.devices,
                                       retry_s=1.0, gateway_process=True, console="pty", hall_page=True,
                                       clock_jumps="gateway-clock-jump" in cfg.fault_kinds))
        rng = random.Random(cfg.seed)
        # A window serves about one customer per (service + human delay) business seconds.
        per_window = max(3, int(cfg.duration_s * cfg.accel / 170))
        self.plans = {dev: plan_customers(random.Random(rng.randrange(1 << 30)), cfg, per_window)
                      for dev in self.chain.device_ids}
        self.faults = plan_faults(random.Random(rng.randrange(1 << 30)), cfg, self.chain.device_ids)
        self.faults_done: list[dict[str, Any]] = []
        self.stop = threading.Event()
        # Customers wait 10 s for the prompt and the rating, and a walk-away's prompt to expire.
        self.patience = customer.Patience(prompt_s=10, rating_s=10, walkaway_s=cfg.prompt_timeout + 10)
        self.errors: list[BaseException] = []
        self.t0 = time.monotonic()
        # Prompts asked for and never shown on the keypad, and prompts the counter system could not open
        # (or the invite key did not): each a failure unless a fault under way explains it.
        self.undelivered: list[Undelivered] = []
        self.no_prompt: list[Undelivered] = []
        self.exceptions = ExceptionLog()

    # -- the counter system at one window ------------------------------------------------------------
    def _pace(self, business_s: float) -> None:
        self.stop.wait(business_s / self.cfg.accel)

    def _window(self, dev: str, i: int) -> None:
        ch = self.chain
        kp = ch.keypad(dev)
        window = ch.keystore.devices[dev].window
        clerk, name = f"{10001 + i}", CLERK_NAMES[i % len(CLERK_NAMES)]
        # Quiet, as after a break: a gateway that refuses it shows up as prompts it could not open.
        self._api_quiet("POST", f"/v1/windows/{window}/signin", {"clerk": clerk, "name": name})

        def open_prompt(t: Txn, tid: str) -> int | None:
            return self._open_prompt(window, t, tid)

        for k, c in enumerate(self.plans[dev]):
            # Every planned customer is served (the plan is sized to the duration): cutting at a wall-clock
            # deadline would make a slower machine press fewer keys for the same seed.
            if self.stop.is_set():
                break
            self._pace(c.service_s)
            start = time.monotonic() - self.t0
            served = customer.serve(kp, c, f"{dev}-T{k:05d}", open_prompt, ch.ledger, self.patience,
                                    self._pace)
            if served in (customer.Served.UNDELIVERED, customer.Served.NO_PROMPT):
                missed = Undelivered(dev, start, time.monotonic() - self.t0)
                (self.undelivered if served is customer.Served.UNDELIVERED else self.no_prompt).append(missed)
            since = kp.mark()
            for key in c.child_taps:            # between customers: no prompt open, never a rating ...
                self._tap(kp, key)
            if c.child_taps and served is customer.Served.NO_PROMPT:
                # ... unless the counter system got no answer while the gateway did open the prompt (it
                # went down before replying): the child's key then rates it, a rating the keypad really
                # made and the ledger must know, or the province's copy reads as invented.
                rated = kp.wait_rated(1.0, since)
                if rated is not None:
                    ch.ledger.rated(kp.device_id, kp.epoch, rated.seq, rated.score)
                ch.ledger.add(child_taps=1)
            if c.brk:
                ch.ledger.add(breaks=1)
                self._api_quiet("POST", f"/v1/windows/{window}/signout", {})
                self._pace(600)
                self._api_quiet("POST", f"/v1/windows/{window}/signin", {"clerk": clerk, "name": name})

    def _api_quiet(self, method: str, path: str, body: dict[str, Any]) -> int | None:
        """The counter system's call; while the gateway is down (a fault) it fails and is not retried."""
        try:
            return self.chain.api(method, path, body)[0]
        except (OSError, RuntimeError):
            return None

    def _tap(self, kp: Keypad, key: int | str) -> None:
        if kp.tap(key):                         # a keypad that is off (a power-cut fault) feels nothing
            self.chain.ledger.add(taps=1)

    def _open_prompt(self, window: str, t: Txn, tid: str) -> int | None:
        """The counter system opens the prompt; with the gateway down (a fault) there is none."""
        try:
            code, body = self.chain.api("POST", f"/v1/windows/{window}/prompt",
                                        {"txn": tid, "service": t.service,
                                         "timeout": self.cfg.prompt_timeout})
        except (OSError, RuntimeError):
            return None
        if code != 200:
            return None
        self.chain.ledger.add(prompts=1)
        return int(body["prompt"])

    # -- faults ------------------------------------------------------------------------------------
    def _faults(self, t0: float) -> None:
        ch = self.chain
        for f in self.faults:
            if self.stop.wait(max(0.0, t0 + f.at_s - time.monotonic())):
                return
            rec = {"at_s": round(time.monotonic() - t0, 1), "kind": f.kind}
            if f.kind == "hall-broker-down":
                ch.hall_broker.stop()
                self.stop.wait(f.length_s)
                ch.hall_broker.start()
                rec["length_s"] = f.length_s
            elif f.kind == "uplink-down":
                ch.province_broker.stop()
                self.stop.wait(f.length_s)
                ch.province_broker.start()
                rec["length_s"] = f.length_s
            elif f.kind == "gateway-power-cut":
                ch.kill_gateway()
                ch.start_gateway()
            elif f.kind == "keypad-power-cut":
                ch.keypad(f.target).power_cut()
                ch.start_firmware(f.target)
                rec["keypad"] = f.target
            elif f.kind == "gateway-clock-jump":
                gw = ch.gateway
                if gw is not None and hasattr(gw, "jump_clock"):
                    gw.jump_clock(f.jump_s)
                rec["jump_s"] = f.jump_s
            rec["end_s"] = round(time.monotonic() - t0, 1)
            self.faults_done.append(rec)

    # -- the run -------------------------------------------------------------------------------------
    def run(self, progress: Callable[[float], None] | None = None,
            hold: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """``hold(report)`` runs after the verdict with the hall still up (the demo serves its page)."""
        cfg, ch = self.cfg, self.chain
        capture = None
        observer = None
        if cfg.capture is not None:
            observer = enable_observer(ch)       # a read-only broker user for the capture, this run only
        with self.exceptions:
            return self._run(progress, capture, observer, hold)

    def page(self) -> dict[str, str]:
        """Where the hall page is and how to log in (the password by its file: never printed)."""
        h = self.chain.first
        return {"url": f"http://127.0.0.1:{h.http_port}/", "user": PAGE_USER,
                "password_file": str(h.page_password_path), "api_token_file": str(h.token_path),
                "province_db": str(self.chain.cfg.workdir / "province" / "province.db"),
                "province_dir": str(self.chain.cfg.workdir / "province")}

    def _run(self, progress: Callable[[float], None] | None, capture: Capture | None,
             observer: Any, hold: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
        cfg, ch = self.cfg, self.chain
        ch.start(devices=False)
        try:
            if cfg.capture is not None and observer is not None:
                capture = Capture(cfg.capture, header_for(ch))
                attach_to_chain(capture, ch, observer)
            for dev in ch.device_ids:
                ch.start_firmware(dev)
            t0 = self.t0 = time.monotonic()
            threads = [threading.Thread(target=self._guard, args=(self._window, dev, i),
                                        daemon=True) for i, dev in enumerate(ch.device_ids)]
            threads.append(threading.Thread(target=self._guard, args=(self._faults, t0), daemon=True))
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads[:-1]):
                threads[0].join(0.5)
                if progress is not None:
                    progress(min(1.0, (time.monotonic() - t0) / cfg.duration_s))
            threads[-1].join()
            if self.errors:
                raise RuntimeError(f"simulation failed: {self.errors[0]!r}") from self.errors[0]
            settled = ch.wait_settled(120)
            report = self._report(settled, time.monotonic() - t0)
            if hold is not None:
                hold(report)
        finally:
            self.stop.set()
            if capture is not None:
                capture.close()
            ch.stop()
        return report

    def _guard(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except BaseException as exc:
            self.errors.append(exc)
            self.stop.set()

    def _report(self, settled: bool, elapsed: float) -> dict[str, Any]:
        ch = self.chain
        r = ch.reconcile()
        cut = {f["keypad"] for f in self.faults_done if f["kind"] == "keypad-power-cut"}
        # A power cut can land after a rating is on flash but before the keypad printed it: the province
        # then holds a rating (with a valid keypad MAC) the console never showed. Not invented: unlogged.
        rated_markers = {(d, fw.cfg.epoch, s) for d, fw in ch.fw.items() for s in fw.seqs("RATED")}
        with sqlite3.connect(f"file:{ch.cfg.workdir / 'province' / 'province.db'}?mode=ro", uri=True) as p:
            prov = {(d, e, s) for d, e, s in p.execute(
                "SELECT device, epoch, seq FROM ratings WHERE kind = 'rating'")}
            figures = build_report(p, groupings=("clerk", "service"))
        unlogged = {k for k in prov - rated_markers if k[0] in cut}
        r["invented"] -= len(unlogged)
        r["unlogged_after_power_cut"] = len(unlogged)
        c = ch.ledger
        windows = fault_windows(self.faults_done)
        undelivered = unexplained(self.undelivered, windows)
        no_prompt = unexplained(self.no_prompt, windows)
        w = ch.cfg.workdir
        uncaught = uncaught_in_files([*w.rglob("gateway.log"), *w.rglob("console.log")], w)
        if self.exceptions.errors:
            uncaught["the simulator's process (province)"] = list(self.exceptions.errors)
        found = problems(ratings_made=r["ratings_made"], undelivered=undelivered, uncaught_by_source=uncaught,
                         losses={k: r[k] for k in ("lost", "duplicated", "invented", "altered")},
                         settled=settled)
        if no_prompt:
            found.append(f"{len(no_prompt)} prompt(s) the counter system could not open with no fault to "
                         f"explain them (first: {no_prompt[0].keypad} at {no_prompt[0].start_s:.1f} s)")
        gw = ch.gateway
        if isinstance(gw, GatewayProcess) and not gw.running:
            found.append(f"the gateway was not running at the end (exit code {gw.exit_code})")
        return {
            "ok": not found, "problems": found,
            "seed": self.cfg.seed, "devices": self.cfg.devices, "duration_s": self.cfg.duration_s,
            "accel": self.cfg.accel, "elapsed_s": round(elapsed, 1), "settled": settled,
            "hops": {"taps": c.taps, "transactions": c.transactions, "prompts": c.prompts,
                     "prompts_undelivered": c.prompts_undelivered,
                     "ratings": r["ratings_made"], "no_ratings": r["no_ratings_gateway"],
                     "stored_gateway": r["stored_gateway"], "received_province": r["received_province"],
                     "prompts_province": r["prompts_province"]},
            "lost": r["lost"], "duplicated": r["duplicated"], "invented": r["invented"],
            "altered": r["altered"], "unlogged_after_power_cut": r["unlogged_after_power_cut"],
            "rejected": r["rejected"], "child_taps": c.child_taps, "breaks": c.breaks,
            "faults": self.faults_done, "total": figures["total"], "by_clerk": figures["groups"]["clerk"],
            "by_service": figures["groups"]["service"],
            "undelivered_unexplained": len(undelivered), "no_prompt_unexplained": len(no_prompt),
            "uncaught": uncaught,
        }


def summary(rep: dict[str, Any]) -> str:
    h = rep["hops"]
    lines = [
        f"hall run: {rep['devices']} keypads, {rep['duration_s']} s x{rep['accel']:g}, seed {rep['seed']}, "
        f"{rep['elapsed_s']} s wall",
        f"taps {h['taps']} (child {rep['child_taps']})  transactions {h['transactions']}  "
        f"prompts {h['prompts']} (undelivered {h['prompts_undelivered']})  breaks {rep['breaks']}",
        f"ratings {h['ratings']}  no-ratings {h['no_ratings']}  stored at gateway {h['stored_gateway']}  "
        f"received by province {h['received_province']}",
        f"{losses(rep)}  (unlogged after a power cut {rep['unlogged_after_power_cut']})",
        f"rejected {rep['rejected'] or 'none'}",
        "faults: " + (", ".join(f"{f['kind']}@{f['at_s']}s" for f in rep["faults"]) or "none"),
        "result: ok" if rep["ok"] else "result: FAILED: " + "; ".join(rep["problems"]),
    ]

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.0f}%"

    # Per clerk and per service item, as the province reports them (满意率 / 参评率).
    for title, key, rows in (("clerk", "label", rep.get("by_clerk") or []),
                             ("service item", "service_name", rep.get("by_service") or [])):
        lines.append(f"by {title}: " + "; ".join(
            f"{g[key]} {g['ratings']} rated, satisfied {pct(g['satisfaction_rate'])}, "
            f"participation {pct(g['participation_rate'])}" for g in rows))
    return "\n".join(lines)


def write_report(rep: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(rep, indent=1, ensure_ascii=False, default=str) + "\n")
