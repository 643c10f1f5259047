"""The gateway as its own process (`countersign gateway run`), so a fault can be a real SIGKILL.

Its clock can be made to jump with libfaketime (Debian's `faketime` package): the process starts with
LD_PRELOAD and reads its offset from a file on every call, so writing a new offset to that file moves
the gateway's wall clock at once, as an NTP step would, without any hook in the gateway's own code.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from countersign.gateway.apiclient import ApiCallError, CounterClient
from countersign.gateway.config import GatewayConfig

from .proc import end

# The multithreaded build: with the plain one, a gateway thread reading the clock while another does now
# and then gets the real time instead of the shifted one (a prompt opened a day before the keypad's clock,
# which the keypad drops as expired), besides being twenty times slower under contention.
_LIBFAKETIME = ("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
                "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
                "/usr/lib/faketime/libfaketimeMT.so.1")


class GatewayProcessError(RuntimeError):
    pass


def libfaketime() -> str | None:
    return next((p for p in _LIBFAKETIME if Path(p).exists()), None)


def write_config(cfg: GatewayConfig, path: Path, http_port: int) -> None:
    pw = path.parent / "gateway-password"
    pw.write_text(cfg.gateway_password)
    lines = [f'hall = "{cfg.hall}"', f'db = "{cfg.db_path}"', f'keystore = "{cfg.keystore_path}"', "",
             "[broker]", f'host = "{cfg.broker_host}"', f"port = {cfg.broker_port}",
             f'password_file = "{pw}"', "", "[http]", f'bind = "{cfg.http_bind}"', f"port = {http_port}"]
    if cfg.tokens_path is not None:
        lines.append(f'tokens = "{cfg.tokens_path}"')
    lines.append("")
    if cfg.roster_path is not None:
        lines += ["[roster]", f'file = "{cfg.roster_path}"', ""]
    if cfg.users_path is not None:
        lines += ["[page]", f'users = "{cfg.users_path}"', ""]
    if cfg.uplink_host is not None:
        up = path.parent / "uplink-password"
        up.write_text(cfg.uplink_password)
        lines += ["[uplink]", f'host = "{cfg.uplink_host}"', f"port = {cfg.uplink_port}",
                  f'password_file = "{up}"', f'signing_key = "{cfg.signing_key_path}"',
                  f'province_public_key = "{cfg.province_public_key}"', ""]
    lines += ["[tuning]", f"retry_s = {cfg.retry_s}", f"batch_size = {cfg.batch_size}",
              f"prompt_timeout_min = {cfg.prompt_timeout_min}", f"prompt_burst = {cfg.prompt_burst}",
              f"prompt_interval_s = {cfg.prompt_interval_s}", ""]
    path.write_text("\n".join(lines))


class GatewayProcess:
    """Start/kill/restart `countersign gateway run`; the same HTTP API and database as the embedded one."""

    def __init__(self, cfg: GatewayConfig, folder: Path, http_port: int, clock_jumps: bool = False,
                 token: str = "", extra_env: dict[str, str] | None = None) -> None:
        """``token``: a credential of the gateway's ``cfg.tokens_path``, for ``status()``. ``extra_env``:
        test hooks (COUNTERSIGN_TEST_KILL=...) for every start of this gateway."""
        self.cfg, self.folder, self.http_port = cfg, folder, http_port
        self.extra_env = dict(extra_env or {})
        self._token = token
        folder.mkdir(parents=True, exist_ok=True)
        self.config_path = folder / "gateway.toml"
        write_config(cfg, self.config_path, http_port)
        self.proc: subprocess.Popen[str] | None = None
        self.log_path = folder / "gateway.log"
        self._ready = threading.Event()
        self.offset_file: Path | None = None
        if clock_jumps:
            if libfaketime() is None:
                raise GatewayProcessError("clock jumps need libfaketime (Debian package faketime)")
            self.offset_file = folder / "clock-offset"
            if not self.offset_file.exists():     # a jump persists across restarts, as a system clock's
                self.offset_file.write_text("+0s\n")

    def start(self, timeout: float = 20.0) -> GatewayProcess:
        env = {**os.environ, **self.extra_env}
        main = "countersign.cli"
        if self.offset_file is not None:
            # Monotonic time stays real (an NTP step does not move it); faketime_run explains the rest.
            env.update(LD_PRELOAD=libfaketime() or "", FAKETIME_TIMESTAMP_FILE=str(self.offset_file),
                       FAKETIME_NO_CACHE="1", FAKETIME_DONT_FAKE_MONOTONIC="1")
            main = "countersign.sim.faketime_run"
        self._ready.clear()
        self.proc = subprocess.Popen([sys.executable, "-m", main, "gateway", "run", "--config",
                                      str(self.config_path)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=env)
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True).start()
        if not self._ready.wait(timeout) or self.proc.poll() is not None:
            tail = self.log_path.read_text()[-2000:] if self.log_path.exists() else ""
            self.kill()
            raise GatewayProcessError(f"gateway {self.cfg.hall} did not start:\n{tail}")
        return self

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        ready = re.compile(rf"gateway {re.escape(self.cfg.hall)} ready http=(\d+)")
        with open(self.log_path, "a", encoding="utf-8") as log:
            for line in proc.stderr:
                log.write(line)
                log.flush()
                if ready.search(line):
                    self._ready.set()
        self._ready.set()

    def jump_clock(self, seconds: float) -> None:
        """Step the gateway's wall clock by ``seconds`` (relative to real time), at once."""
        if self.offset_file is None:
            raise GatewayProcessError("this gateway was started without clock jumps")
        # Replaced in one rename: libfaketime re-reads the file on every clock call, and a half-written
        # (truncated) one would read as no offset at all.
        tmp = self.offset_file.with_name(self.offset_file.name + ".new")
        tmp.write_text(f"{seconds:+.0f}s\n")
        tmp.replace(self.offset_file)

    def kill(self) -> None:
        """Power cut: SIGKILL."""
        end(self.proc, signal.SIGKILL)
        self.proc = None

    def stop(self) -> None:
        end(self.proc, grace=20)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def exit_code(self) -> int | None:
        """How the process ended (None: it runs, or was never started or was killed by us)."""
        return None if self.proc is None else self.proc.poll()

    def status(self) -> dict[str, Any]:
        return CounterClient(f"http://127.0.0.1:{self.http_port}", self._token).status()

    def backlog(self) -> int:
        return int(self.status()["backlog"])

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Re-check ``predicate`` until true. Another process gives us no event to wait on, so this polls
        its status API (five times a second); a dead gateway ends the wait at once."""
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while True:
            try:
                if predicate():
                    return True
            except (OSError, ApiCallError):       # no answer: it may be restarting, or dead
                if not self.running:
                    return False
            if time.monotonic() >= deadline:
                return False
            pause.wait(0.2)
