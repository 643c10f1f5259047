"""The platform over a simulated run's database, for ``make demo``: the halls the run's ratings name
entered in the halls table when missing, one demo account per role, the app on a free port.

The accounts' passwords are random and written to one 0600 file beside the database, never printed (the
demo prints the URL, the user names and the file). Everything it changes is audited as "demo".
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from countersign.common.clock import wall_ms
from countersign.protocol.keystore import write_atomic

from . import audit, users
from .db import Database
from .migrations import upgrade
from .period import DEFAULT_TZ
from .web import PlatformServer, create_app
from .web_config import WebConfig

__all__ = ["DEMO_CITY", "DemoPlatform", "serve_demo"]

DEMO_CITY = "演示市"
ACTOR = "demo"


@dataclass
class DemoPlatform:
    server: PlatformServer
    logins: list[tuple[str, str, str | None]]     # (user name, role, scope)
    password_file: Path
    database: Database

    @property
    def url(self) -> str:
        return self.server.url + "/"

    def lines(self) -> list[str]:
        """What the demo prints: the URL and the log-ins (passwords by their file, never printed), and
        what the supervision loop made of the run's ratings so far."""
        who = ", ".join(f"{u} ({r}{' ' + s if s else ''})" for u, r, s in self.logins)
        return [f"platform: {self.url}  log-ins: {who}",
                f"platform passwords: {self.password_file} (0600)",
                self.supervision_line()]

    def supervision_line(self) -> str:
        with self.database.connect() as conn:
            alerts = int(conn.scalar("SELECT COUNT(*) FROM alerts"))
            cases = int(conn.scalar("SELECT COUNT(*) FROM cases"))
            waiting = int(conn.scalar("SELECT COUNT(*) FROM supervision_queue"))
        more = f" ({waiting} ratings still queued)" if waiting else ""
        return (f"supervision: {alerts} alerts at {self.url}alerts, {cases} cases at {self.url}cases{more}")

    def stop(self) -> None:
        self.server.stop()


def serve_demo(database: Database | str | Path, folder: Path, *, timezone: str = DEFAULT_TZ,
               bind: str = "127.0.0.1", port: int = 0, now_ms: Callable[[], int] = wall_ms) -> DemoPlatform:
    """Serve the platform over ``database`` (a run's province database); ``folder`` takes the session
    key and the passwords file. Safe to call again on the same database (accounts get new passwords)."""
    db = Database.of(database)
    cfg = WebConfig(database=db, secret_file=folder / "platform-web.secret", timezone=timezone, bind=bind,
                    port=port)
    upgrade(db, cfg.tz)
    now = now_ms()
    with db.connect() as conn:
        with conn.transaction():
            named = {r[0] for r in conn.all("SELECT hall FROM halls")}
            for (hall,) in conn.all("SELECT DISTINCT hall FROM ratings ORDER BY hall"):
                if hall not in named:
                    conn.execute("INSERT INTO halls (hall, name, city) VALUES (?, ?, ?)",
                                 (hall, f"{hall} 营业厅", DEMO_CITY))
                    audit.record(conn, ACTOR, "hall.add", hall, {"city": DEMO_CITY}, now)
        first = conn.scalar("SELECT hall FROM halls ORDER BY hall")
        city = conn.scalar("SELECT city FROM halls WHERE hall = ?", (first,)) if first else None
        wanted: list[tuple[str, str, str | None]] = [("demo-province", "province", None)]
        if first is not None:
            wanted += [("demo-city", "city", city), ("demo-hall", "hall", first)]
        lines = []
        for username, role, scope in wanted:
            password = secrets.token_urlsafe(12)
            if conn.scalar("SELECT 1 FROM users WHERE username = ?", (username,)) is None:
                users.add(conn, username, f"演示 {role}", password, role, scope, actor=ACTOR, now_ms=now)
            else:
                users.passwd(conn, username, password, actor=ACTOR, now_ms=now)
            lines.append(f"{username} {password}")
    password_file = folder / "platform-logins.txt"
    write_atomic(password_file, "\n".join(lines) + "\n", 0o600)
    server = PlatformServer(create_app(cfg, now_ms=now_ms, upgrade=False), bind, port).start()
    return DemoPlatform(server, wanted, password_file, db)
