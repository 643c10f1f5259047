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

    [[notify]]                         # alerts pushed through apprise (see notify.py); one table per target
    url = "json://host:8080/alerts"    # or mailto://..., wecombot://..., dingtalk://...
                                       # or: url_file = "wecom.url" (the URL, a secret, in a 0600 file)
    scope = "hall:hf01"                # or "city:合肥" or "province": which halls' alerts it receives
    levels = [0, 1, 2]                 # which escalation levels (0 hall, 1 city, 2 province) it receives

    notify_retry_s = 5                 # first retry of an undelivered alert, doubling ...
    notify_retry_max_s = 600           # ... up to this

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
from .scope import Scope

__all__ = ["ConfigError", "NotifyTarget", "ProvinceConfig", "database_and_zone", "parse_notify", "read_toml",
           "worker_username"]


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


LEVELS = (0, 1, 2)


@dataclass(frozen=True)
class NotifyTarget:
    """One apprise URL and whose alerts it receives. ``url`` holds secrets: never log it (safe_url)."""

    url: str = field(repr=False)
    scope: Scope = field(default_factory=lambda: Scope("province"))
    levels: tuple[int, ...] = LEVELS


def _scope(text: object, where: str) -> Scope:
    if not isinstance(text, str):
        raise ConfigError(f"{where}: scope must be text: \"province\", \"city:<城市>\" or \"hall:<hall id>\"")
    if text == "province":
        return Scope("province")
    role, _, value = text.partition(":")
    if role not in ("city", "hall") or not value.strip():
        raise ConfigError(f"{where}: scope must be \"province\", \"city:<城市>\" or \"hall:<hall id>\","
                          f" not {text[:60]!r}")
    return Scope(role, value.strip())  # type: ignore[arg-type]


def parse_notify(items: object, base: Path = Path(".")) -> tuple[NotifyTarget, ...]:
    """The ``[[notify]]`` tables, checked: a URL apprise-shaped (scheme://...), read from ``url_file`` if
    given (a file only its owner may read, since the URL carries tokens), a scope, levels of 0..2."""
    if items is None:
        return ()
    if not isinstance(items, list):
        raise ConfigError("notify must be a list of tables: [[notify]] url = \"json://host/path\" ...")
    got: list[NotifyTarget] = []
    for n, item in enumerate(items, 1):
        where = f"[[notify]] #{n}"
        if not isinstance(item, dict):
            raise ConfigError(f"{where} must be a table")
        unknown = set(item) - {"url", "url_file", "scope", "levels"}
        if unknown:
            raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} (url, url_file, scope, levels)")
        if ("url" in item) == ("url_file" in item):
            raise ConfigError(f"{where} needs exactly one of url and url_file")
        if "url_file" in item:
            path = base / str(item["url_file"])
            try:
                mode = path.stat().st_mode
                url = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"{where}: cannot read url_file {path}: {exc.strerror}") from exc
            if mode & 0o077:
                raise ConfigError(f"{where}: url_file {path} must be readable by its owner only (chmod 600)")
        else:
            url = item["url"]
        if not isinstance(url, str) or "://" not in url or url.split("://", 1)[0] == "":
            raise ConfigError(f"{where}: url must be an apprise URL like \"json://host:port/path\"")
        levels = item.get("levels", list(LEVELS))
        if (not isinstance(levels, list) or not levels
                or not all(isinstance(v, int) and not isinstance(v, bool) and v in LEVELS for v in levels)):
            raise ConfigError(f"{where}: levels must be a non-empty list of 0 (hall), 1 (city), 2 (province)")
        target = NotifyTarget(url, _scope(item.get("scope", "province"), where), tuple(sorted(set(levels))))
        if any(t.url == url for t in got):
            raise ConfigError(f"{where}: the same URL is configured twice")
        got.append(target)
    return tuple(got)


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
    notify: tuple[NotifyTarget, ...] = ()
    notify_retry_s: float = 5.0
    notify_retry_max_s: float = 600.0
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
        if not 0 < self.notify_retry_s <= self.notify_retry_max_s <= 86_400:
            raise ConfigError("notify_retry_s must be > 0 and <= notify_retry_max_s (at most 86400)")

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
        notify = parse_notify(data.get("notify"), base)

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
                       timezone=tz, notify=notify,
                       notify_retry_s=float(data.get("notify_retry_s", 5.0)),
                       notify_retry_max_s=float(data.get("notify_retry_max_s", 600.0)))
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"bad province config value: {exc}") from exc
