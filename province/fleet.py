"""The keypad fleet as the province knows it: each keypad's last status forwarded by its hall gateway
(keypad_status), the registered keypads that never reported one (devices), and the halls whose gateway
holds a backlog of ratings not yet at the province (gateway_status).

Offline keypads come first, the longest silent at the top: that is the list a hall manager works
through. A keypad's status is the gateway's last word on it; when that word itself is old (the gateway
stopped reporting) the row says so, since "online" an hour ago is not "online".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .db import Conn
from .export import Column, Table
from .scope import Scope

__all__ = ["STALE_MS", "Backlog", "Fleet", "Keypad", "fleet", "fleet_tables"]

# A gateway reports its keypads every minute or so; three quarters of an hour without a report is a
# gateway (or its uplink) that stopped, whatever the last report said.
STALE_MS = 45 * 60 * 1000


@dataclass(frozen=True)
class Keypad:
    device: str
    hall: str
    hall_name: str
    window: str | None          # from the registry (devices); None if only the gateway knows it
    seen_ms: int | None         # None: registered, never reported
    online: bool | None
    stale: bool                 # the last report is older than STALE_MS
    fw: str | None
    reset_cause: str | None
    free_heap: int | None
    outbox: int | None
    rssi: int | None
    stuck_keys: str | None
    reported_ms: int | None
    revoked: bool

    @property
    def state(self) -> str:
        if self.seen_ms is None:
            return "从未上报 never reported"
        if self.stale:
            return "状态过期 status stale"
        return "在线 online" if self.online else "离线 offline"

    @property
    def down(self) -> bool:
        """Needs someone's attention: offline, stale or silent since registration."""
        return self.seen_ms is None or self.stale or not self.online


@dataclass(frozen=True)
class Backlog:
    hall: str
    hall_name: str
    backlog: int
    oldest_ms: int | None
    reported_ms: int
    age_ms: int | None          # now - oldest_ms: how long the oldest waiting rating has waited


@dataclass(frozen=True)
class Fleet:
    keypads: list[Keypad]       # offline/stale first (longest silent first), then online; never-reported last
    backlogs: list[Backlog]     # longest-waiting first

    @property
    def never_reported(self) -> list[Keypad]:
        return [k for k in self.keypads if k.seen_ms is None]

    @property
    def offline(self) -> list[Keypad]:
        return [k for k in self.keypads if k.seen_ms is not None and k.down]


def fleet(conn: Conn, scope: Scope, now_ms: int, hall: str | None = None) -> Fleet:
    names = dict(conn.all("SELECT hall, name FROM halls"))
    where_s, args_s = scope.sql("s.hall")
    where_d, args_d = scope.sql("d.hall")
    if hall is not None:
        where_s += " AND s.hall = ?"
        args_s.append(hall)
        where_d += " AND d.hall = ?"
        args_d.append(hall)
    reported = conn.all(
        'SELECT s.device, s.hall, d."window", s.seen_ms, s.online, s.fw, s.reset_cause, s.free_heap,'
        " s.outbox, s.rssi, s.stuck_keys, s.reported_ms, d.revoked"
        f" FROM keypad_status s LEFT JOIN devices d ON d.device = s.device WHERE 1 = 1{where_s}", args_s)
    silent = conn.all(
        'SELECT d.device, d.hall, d."window", d.revoked FROM devices d'
        " LEFT JOIN keypad_status s ON s.device = d.device"
        f" WHERE s.device IS NULL{where_d}", args_d)
    pads = [Keypad(dev, h, str(names.get(h, h)), win, seen, bool(on), now_ms - rep > STALE_MS, fw, rc, heap,
                   ob, rssi, stuck, rep, bool(rev))
            for dev, h, win, seen, on, fw, rc, heap, ob, rssi, stuck, rep, rev in reported]
    pads.sort(key=lambda k: (not k.down, (k.seen_ms or 0) if k.down else -(k.seen_ms or 0), k.hall, k.device))
    never = sorted((Keypad(dev, h, str(names.get(h, h)), win, None, None, False, None, None, None, None, None,
                           None, None, bool(rev)) for dev, h, win, rev in silent),
                   key=lambda k: (k.hall, k.device))
    where_g, args_g = scope.sql("hall")
    if hall is not None:
        where_g += " AND hall = ?"
        args_g.append(hall)
    backlogs = [Backlog(h, str(names.get(h, h)), n, oldest, rep, None if oldest is None else now_ms - oldest)
                for h, n, oldest, rep in conn.all(
                    "SELECT hall, backlog, oldest_ms, reported_ms FROM gateway_status"
                    f" WHERE backlog > 0{where_g}", args_g)]
    backlogs.sort(key=lambda b: (-(b.age_ms or 0), -b.backlog, b.hall))
    return Fleet(pads + never, backlogs)


KEYPAD_COLUMNS = [
    Column("state", "状态 State"),
    Column("hall", "营业厅 Hall"),
    Column("hall_name", "名称 Name"),
    Column("window", "窗口 Window"),
    Column("device", "评价器 Keypad"),
    Column("seen", "最后在线 Last seen", "time"),
    Column("fw", "固件 Firmware"),
    Column("reset_cause", "复位原因 Reset cause"),
    Column("free_heap", "空闲内存 Free heap", "int"),
    Column("outbox", "待发 Outbox", "int"),
    Column("rssi", "信号 RSSI", "int"),
    Column("stuck_keys", "卡键 Stuck keys"),
    Column("reported", "上报时间 Reported", "time"),
]
BACKLOG_COLUMNS = [
    Column("hall", "营业厅 Hall"),
    Column("hall_name", "名称 Name"),
    Column("backlog", "积压 Backlog", "int"),
    Column("oldest", "最早 Oldest waiting", "time"),
    Column("age_min", "等待分钟 Waiting (min)", "int"),
    Column("reported", "上报时间 Reported", "time"),
]


def keypad_row(k: Keypad, fmt: Callable[[int], str]) -> dict[str, Any]:
    """``fmt``: ms -> the text a person reads (the page's and export's time format)."""
    return {"state": k.state + (" (已吊销 revoked)" if k.revoked else ""), "hall": k.hall,
            "hall_name": k.hall_name, "window": k.window, "device": k.device,
            "seen": None if k.seen_ms is None else fmt(k.seen_ms), "fw": k.fw, "reset_cause": k.reset_cause,
            "free_heap": k.free_heap, "outbox": k.outbox, "rssi": k.rssi, "stuck_keys": k.stuck_keys,
            "reported": None if k.reported_ms is None else fmt(k.reported_ms)}


def backlog_row(b: Backlog, fmt: Callable[[int], str]) -> dict[str, Any]:
    return {"hall": b.hall, "hall_name": b.hall_name, "backlog": b.backlog,
            "oldest": None if b.oldest_ms is None else fmt(b.oldest_ms),
            "age_min": None if b.age_ms is None else b.age_ms // 60000, "reported": fmt(b.reported_ms)}


def fleet_tables(f: Fleet, fmt: Callable[[int], str], meta: dict[str, str]) -> tuple[Table, Table]:
    return (Table("fleet-keypads", "评价器状态 Keypad fleet", KEYPAD_COLUMNS,
                  [keypad_row(k, fmt) for k in f.keypads], dict(meta)),
            Table("fleet-backlogs", "网关积压 Gateway backlogs", BACKLOG_COLUMNS,
                  [backlog_row(b, fmt) for b in f.backlogs], dict(meta)))
