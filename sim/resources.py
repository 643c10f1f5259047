"""What a simulation costs: the file-descriptor limit it needs and its processes' resources from /proc.

``ResourceSampler`` samples this process and all its descendants (workers, brokers, firmware keypads):
processes, threads, RSS, PSS and CPU seconds, kept as peaks per kind of process.
"""

from __future__ import annotations

import os
import resource
import threading
from pathlib import Path
from typing import Any


def raise_nofile(want: int = 4096) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE towards ``want`` (never above the hard limit); returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft, hard


def fd_peak() -> int:
    return max((int(x) for x in os.listdir("/proc/self/fd")), default=0)


def _read_proc(pid: int) -> tuple[int, str, float] | None:
    """(ppid, name, cpu seconds) of a process, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = raw[raw.index("(") + 1:raw.rindex(")")]
    f = raw[raw.rindex(")") + 2:].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(f[1]), name, (int(f[11]) + int(f[12])) / tck


def _status(pid: int) -> tuple[int, int]:
    rss = threads = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    except OSError:
        pass
    return rss, threads


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class ResourceSampler:
    """Samples this process and all its descendants from /proc: processes, threads, RSS, PSS, CPU."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.root = os.getpid()
        self.peak = {"processes": 0, "threads": 0, "rss_mb": 0.0, "pss_mb": 0.0}
        self.peak_by_kind: dict[str, dict[str, float]] = {}
        self.cpu: dict[int, tuple[str, float]] = {}     # last CPU seconds seen per pid (exited ones too)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resource-sampler", daemon=True)
        self._lock = threading.Lock()

    def start(self) -> ResourceSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                info = _read_proc(int(entry))
                if info is not None:
                    children.setdefault(info[0], []).append(int(entry))
        out, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo += children.get(pid, [])
        return out

    def sample(self, pss: bool = True) -> None:
        kinds: dict[str, dict[str, float]] = {}
        tot = {"processes": 0, "threads": 0, "rss_mb": 0.0, "pss_mb": 0.0}
        for pid in self.tree():
            info = _read_proc(pid)
            if info is None:
                continue
            _ppid, name, cpu = info
            kind = "mosquitto" if name.startswith("mosquitto") else (
                "micropython" if name.startswith("micropython") else "python")
            rss, threads = _status(pid)
            p = _pss_kb(pid) if pss else 0
            with self._lock:
                self.cpu[pid] = (kind, cpu)
            k = kinds.setdefault(kind, {"processes": 0, "threads": 0, "rss_mb": 0.0, "pss_mb": 0.0,
                                        "max_rss_mb": 0.0})
            for d in (k, tot):
                d["processes"] += 1
                d["threads"] += threads
                d["rss_mb"] += rss / 1024
                d["pss_mb"] += p / 1024
            k["max_rss_mb"] = max(k["max_rss_mb"], rss / 1024)
        with self._lock:
            for key, v in tot.items():
                self.peak[key] = max(self.peak[key], v)
            for kind, vals in kinds.items():
                pk = self.peak_by_kind.setdefault(kind, dict.fromkeys(vals, 0.0))
                for key, v in vals.items():
                    pk[key] = max(pk[key], v)

    def report(self) -> dict[str, Any]:
        with self._lock:
            cpu_by: dict[str, float] = {}
            for kind, c in self.cpu.values():
                cpu_by[kind] = cpu_by.get(kind, 0.0) + c
            return {"peak": {k: round(v, 1) for k, v in self.peak.items()},
                    "peak_by_kind": {k: {n: round(v, 1) for n, v in d.items()}
                                     for k, d in self.peak_by_kind.items()},
                    "cpu_s": {k: round(v, 1) for k, v in cpu_by.items()},
                    "cpu_s_total": round(sum(cpu_by.values()), 1)}
