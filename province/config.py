"""The provincial receiver's configuration, loaded from a TOML file.

Example::

    database = "province.db"           # an SQLite file (WAL, synchronous=FULL) or postgresql://user@host/db
                                       # (the older key ``db = "file.db"`` is still read)
    timezone = "Asia/Shanghai"         # the province's zone: the day a rating counts on
    registry = "registry.json"         # Keystore JSON: halls (gateway Ed25519 keys) and devices
    signing_key = "province.key"       # the province's Ed25519 seed (hex); acks are signed, kid "province"
    workers = 2                        # MQTT workers sharing $share/province/cs/1/h/+/batch
    first_worker = 1                   # this receiver's workers are <username>-<first_worker> ...: a second
                                       # receiver process (another host) on the same database takes the next
                                       # numbers (broker-config --workers covers all of them)

    [broker]
    host = "127.0.0.1"
    port = 1883
    username = "province"              # worker n logs in as "<username>-<n>" (see brokerconf.py)
    password_file = "province.pass"    # or: password = "..."

Relative paths are taken from the config file's folder, so a config folder can be moved as a whole.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from countersign.common.clock import wall_ms

from .db import Database
from .errors import ConfigError
from .period import DEFAULT_TZ

__all__ = ["ConfigError", "ProvinceConfig", "database_and_zone", "read_toml", "worker_username"]


def read_toml(path: str | Path) -> tuple[dict[str, Any], Path]:
    """The province TOML file's tables, and the folder its relative paths are taken from."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8")), path.parent
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read province config {path}: {exc}") from exc


def database_and_zone(data: dict[str, Any], base: Path) -> tuple[Database, str]:
    """``database`` (or the older ``db``) and ``timezone``: the receiver and the web app read the same
    keys. A URL is kept as it is; a path is taken from the config file's folder like the other paths."""
    if "database" in data and "db" in data:
        raise ConfigError("config has both 'database' and 'db'; keep 'database'")
    url = data.get("database", data.get("db"))
    if not isinstance(url, str) or not url:
        raise ConfigError("config needs 'database' (an SQLite path or a postgresql:// URL)")
    database = Database(url)
    if database.dialect == "sqlite" and not url.startswith("sqlite://"):
        database = Database(str(base / url))
    tz = data.get("timezone", DEFAULT_TZ)
    if not isinstance(tz, str):
        raise ConfigError("timezone must be text, e.g. \"Asia/Shanghai\"")
    return database, tz


def worker_username(base: str, n: int) -> str:
    """Broker username (and client id) of worker ``n`` (1-based)."""
    return f"{base}-{n}"


@dataclass
class ProvinceConfig:
    database: Database
    registry_path: Path
    signing_key_path: Path
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    username: str = "province"
    password: str = ""
    workers: int = 2
    first_worker: int = 1
    # Batches taken into one SQLite transaction at most: one fsync for many batches (group commit).
    max_group: int = 32
    timezone: str = DEFAULT_TZ
    now_ms: Callable[[], int] = field(default=wall_ms)
    tz: ZoneInfo = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.database = Database.of(self.database)
        try:
            self.tz = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(f"unknown timezone {self.timezone!r}") from exc
        if not 1 <= self.workers <= 64:
            raise ConfigError(f"workers must be 1..64, got {self.workers}")
        if not 1 <= self.first_worker <= 1000:
            raise ConfigError(f"first_worker must be 1..1000, got {self.first_worker}")
        if not 1 <= self.max_group <= 1000:
            raise ConfigError(f"max_group must be 1..1000, got {self.max_group}")

    @property
    def db_path(self) -> Path:
        """The SQLite file (an error on PostgreSQL): what tools that read the file directly need."""
        return self.database.path

    def worker_usernames(self) -> list[str]:
        return [worker_username(self.username, n)
                for n in range(self.first_worker, self.first_worker + self.workers)]

    @classmethod
    def load(cls, path: str | Path) -> ProvinceConfig:
        data, base = read_toml(path)
        return cls.from_dict(data, base=base)

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Path = Path(".")) -> ProvinceConfig:
        def req_path(key: str) -> Path:
            v = data.get(key)
            if not isinstance(v, str) or not v:
                raise ConfigError(f"config needs '{key}' (a path)")
            return base / v

        database, tz = database_and_zone(data, base)

        broker = data.get("broker", {})
        if not isinstance(broker, dict):
            raise ConfigError("[broker] must be a table")
        password = broker.get("password", "")
        if "password_file" in broker:
            try:
                password = (base / str(broker["password_file"])).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"cannot read broker password file: {exc}") from exc
        if not isinstance(password, str):
            raise ConfigError("broker password must be text")
        try:
            return cls(database=database, registry_path=req_path("registry"),
                       signing_key_path=req_path("signing_key"),
                       broker_host=str(broker.get("host", "127.0.0.1")),
                       broker_port=int(broker.get("port", 1883)),
                       username=str(broker.get("username", "province")), password=password,
                       workers=int(data.get("workers", 2)), first_worker=int(data.get("first_worker", 1)),
                       max_group=int(data.get("max_group", 32)),
                       timezone=tz)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"bad province config value: {exc}") from exc
