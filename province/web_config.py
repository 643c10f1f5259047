"""The platform web application's configuration: the province TOML's ``database`` (or ``db``),
``timezone`` and its ``[web]`` table. The receiver's keys (registry, signing key, broker) are not needed
to serve pages, so the web app reads only these and runs where the receiver does not.

Example::

    database = "postgresql://countersign@db.example/province"
    timezone = "Asia/Shanghai"

    [web]
    bind = "127.0.0.1"                 # behind the utility's reverse proxy (TLS there)
    port = 8470
    secret_file = "web.secret"         # the session cookies' signing key, created 0600 if missing
    session_hours = 8                  # a session ends this long after the log-in, whatever happens
    idle_minutes = 30                  # ... or after this long without a request made by the person
    https_only = false                 # true: cookies only over HTTPS (set it behind a TLS proxy)

Relative paths are taken from the config file's folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from countersign.common import webauth

from .config import database_and_zone, read_toml
from .db import Database
from .errors import ConfigError
from .period import DEFAULT_TZ

__all__ = ["WebConfig", "session_secret"]



@dataclass
class WebConfig:
    database: Database
    secret_file: Path
    timezone: str = DEFAULT_TZ
    bind: str = "127.0.0.1"
    port: int = 8470
    session_hours: float = 8.0
    idle_minutes: float = 30.0
    https_only: bool = False
    tz: ZoneInfo = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.database = Database.of(self.database)
        try:
            self.tz = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(f"unknown timezone {self.timezone!r}") from exc
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"[web] port must be 0..65535, got {self.port}")
        if not 0 < self.session_hours <= 24 * 7:
            raise ConfigError(f"[web] session_hours must be more than 0 and at most 168,"
                              f" got {self.session_hours}")
        if not 0 < self.idle_minutes <= self.session_hours * 60:
            raise ConfigError("[web] idle_minutes must be more than 0 and at most session_hours")

    @classmethod
    def load(cls, path: str | Path) -> WebConfig:
        data, base = read_toml(path)
        return cls.from_dict(data, base=base)

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Path = Path(".")) -> WebConfig:
        database, tz = database_and_zone(data, base)
        web = data.get("web", {})
        if not isinstance(web, dict):
            raise ConfigError("[web] must be a table")
        unknown = set(web) - {"bind", "port", "secret_file", "session_hours", "idle_minutes", "https_only"}
        if unknown:
            raise ConfigError(f"unknown key(s) in [web]: {', '.join(sorted(unknown))}")
        try:
            return cls(database=database, timezone=tz,
                       secret_file=base / str(web.get("secret_file", "web.secret")),
                       bind=str(web.get("bind", "127.0.0.1")), port=_int(web.get("port", 8470), "port"),
                       session_hours=_num(web.get("session_hours", 8), "session_hours"),
                       idle_minutes=_num(web.get("idle_minutes", 30), "idle_minutes"),
                       https_only=_bool(web.get("https_only", False), "https_only"))
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"bad [web] value: {exc}") from exc


def _int(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"[web] {name} must be an integer, got {v!r}")
    return v


def _num(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ConfigError(f"[web] {name} must be a number, got {v!r}")
    return float(v)


def _bool(v: Any, name: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"[web] {name} must be true or false, got {v!r}")
    return v


def session_secret(path: Path) -> bytes:
    """The cookie-signing key, created (0600) on first use, so sessions outlive a restart."""
    try:
        return webauth.session_secret(path, "platform's session secret")
    except webauth.SessionSecretError as exc:
        raise ConfigError(str(exc)) from exc
