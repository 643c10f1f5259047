"""Gateway configuration: one dataclass, loaded from TOML, passed to every part (no module-level state)."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from countersign.common.clock import wall_ms
from countersign.protocol import topics

from .errors import ConfigError
from .hours import BusinessHours, zone
from .textcheck import DEFAULT_CLERK_PATTERN, TextError, clerk_pattern

__all__ = ["ConfigError", "GatewayConfig"]


@dataclass
class GatewayConfig:
    hall: str
    db_path: Path
    keystore_path: Path
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    gateway_password: str = ""
    # Uplink to the provincial broker; uplink_host None = no forwarding (ratings stay queued in the DB).
    uplink_host: str | None = None
    uplink_port: int = 1883
    uplink_password: str = ""
    signing_key_path: Path | None = None      # Ed25519 seed, 64 hex digits (keystore.save_signing_key)
    province_public_key: str = ""             # 64 hex digits: verifies the province's batch acks
    http_bind: str = "127.0.0.1"
    http_port: int = 0                        # 0 = pick a free port (tests, several gateways per process)
    # Counter-system credentials (tokens.py); None = none configured, every API call is refused (401).
    tokens_path: Path | None = None
    http_cert: Path | None = None             # TLS on the API when cert and key are both set
    http_key: Path | None = None
    http_max_connections: int = 64            # beyond it the oldest idle connection goes, or a 503
    http_header_timeout_s: float = 10.0       # a request must be complete this long after it starts
    http_keep_alive_s: float = 5.0
    group_max: int = 256                      # messages per group commit
    batch_size: int = 500                     # entries per signed uplink batch
    retry_s: float = 10.0
    backlog_threshold: int = 10_000
    report_every_s: float = 300.0             # keypad figures / backlog to the province at most this often
    storage_min_free_bytes: int = 200 * 1024 * 1024
    prompt_timeout_default: int = 20
    prompt_timeout_min: int = 10
    prompt_timeout_max: int = 30
    # Quarantined messages kept whole per source (device, or topic when no device is known); beyond it,
    # one in quarantine_sample is kept and the rest only counted, so a flood cannot fill the disk.
    quarantine_keep: int = 1000
    quarantine_sample: int = 100
    # The counter operations (counter.py): the clerk roster, the prompt rate limit, webhook retries.
    roster_path: Path | None = None           # [roster] file; None: every sign-in is refused (409)
    clerk_pattern: str = DEFAULT_CLERK_PATTERN  # a 工号, matched whole
    prompt_burst: int = 3                     # prompts a window may open at once, then...
    prompt_interval_s: float = 5.0            # ...one per this many seconds (429 beyond)
    prompt_grace_s: float = 60.0              # after a prompt's timeout, until it reads back "expired"
    webhook_retry_s: float = 1.0              # first retry of an unacknowledged webhook delivery, doubling...
    webhook_retry_max_s: float = 300.0        # ...up to this
    mqtt_client_id: str = topics.GATEWAY_USER
    # The hall page and alarms (page.py, alarms.py, notify.py).
    timezone: str = "Asia/Shanghai"           # the hall's local day ("today") and business hours
    hours: BusinessHours = field(default_factory=BusinessHours)
    users_path: Path | None = None            # hall-manager accounts (users.py); None: the page shows none
    alarm_notify: tuple[str, ...] = ()        # apprise URLs every alarm raise and clear is pushed to
    heartbeat_s: int = 60                     # the keypads' heartbeat period (firmware config heartbeat_s)
    alarm_check_s: float = 5.0                # how often absence (offline, silent) is looked for
    silent_minutes: int = 30                  # open hours, prompts opened, no outcome for this long: silent
    outbox_free_percent: int = 10             # a keypad's outbox with less free than this: alarm
    notify_retry_s: float = 5.0               # first retry of an undelivered notification, doubling...
    notify_retry_max_s: float = 600.0         # ...up to this
    now_ms: Callable[[], int] = field(default=wall_ms, repr=False)

    def __post_init__(self) -> None:
        try:
            topics.check_id(self.hall, "hall id")
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if not 10 <= self.prompt_timeout_min <= self.prompt_timeout_default <= self.prompt_timeout_max <= 300:
            raise ConfigError("prompt timeouts must satisfy 10 <= min <= default <= max <= 300")
        if not 1 <= self.group_max <= 10_000:
            raise ConfigError("group_max must be 1..10000")
        if self.http_max_connections < 1:
            raise ConfigError("http.max_connections must be at least 1")
        if self.quarantine_keep < 0 or self.quarantine_sample < 1:
            raise ConfigError("quarantine_keep must be >= 0 and quarantine_sample >= 1")
        zone(self.timezone)
        if self.prompt_burst < 1:
            raise ConfigError("tuning.prompt_burst must be at least 1")
        try:
            clerk_pattern(self.clerk_pattern)
        except TextError as exc:
            raise ConfigError(f"roster.{exc}") from exc
        if self.heartbeat_s < 1 or self.silent_minutes < 1 or not 0 <= self.outbox_free_percent <= 100:
            raise ConfigError("alarms: heartbeat_s and silent_minutes >= 1, outbox_free_percent 0..100")
        if self.uplink_host is not None:
            if self.signing_key_path is None:
                raise ConfigError("an uplink needs uplink.signing_key")
            try:
                if len(bytes.fromhex(self.province_public_key)) != 32:
                    raise ValueError("not 32 bytes")
            except ValueError as exc:
                raise ConfigError("uplink.province_public_key must be 64 hex digits") from exc

    @property
    def forwarding(self) -> bool:
        return self.uplink_host is not None

    @classmethod
    def load(cls, path: str | Path) -> GatewayConfig:
        """Read the TOML file (see gateway.example.toml); relative paths are relative to the file."""
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config {p}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config {p} is not valid TOML: {exc}") from exc
        return cls.from_dict(data, base=p.parent)

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Path = Path(".")) -> GatewayConfig:
        r = _Reader(data, base)
        kw: dict[str, Any] = {
            "hall": r.text("hall", required=True),
            "db_path": r.path("db", required=True),
            "keystore_path": r.path("keystore", required=True),
        }
        b = r.section("broker")
        kw.update(broker_host=b.text("host", "127.0.0.1"), broker_port=b.port("port", 1883),
                  gateway_password=b.secret("password"))
        u = r.section("uplink")
        if u.data:
            kw.update(uplink_host=u.text("host", required=True), uplink_port=u.port("port", 1883),
                      uplink_password=u.secret("password"),
                      signing_key_path=u.path("signing_key", required=True),
                      province_public_key=u.text("province_public_key", required=True))
        h = r.section("http")
        kw.update(http_bind=h.text("bind", "127.0.0.1"), http_port=h.port("port", 8080, allow_zero=True))
        for key, name in (("tokens", "tokens_path"), ("cert", "http_cert"), ("key", "http_key")):
            if key in h.data:
                kw[name] = h.path(key)
        if ("cert" in h.data) != ("key" in h.data):
            raise ConfigError("http.cert and http.key go together")
        if "max_connections" in h.data:
            kw["http_max_connections"] = h.integer("max_connections")
        for key in ("header_timeout_s", "keep_alive_s"):
            if key in h.data:
                kw[f"http_{key}"] = h.number(key)
        t = r.section("tuning")
        for name in ("group_max", "batch_size", "backlog_threshold", "storage_min_free_bytes",
                     "prompt_timeout_default", "prompt_timeout_min", "prompt_timeout_max", "quarantine_keep",
                     "quarantine_sample"):
            if name in t.data:
                kw[name] = t.integer(name)
        if "retry_s" in t.data:
            kw["retry_s"] = t.number("retry_s")
        if "prompt_burst" in t.data:
            kw["prompt_burst"] = t.integer("prompt_burst")
        for name in ("prompt_interval_s", "prompt_grace_s", "webhook_retry_s", "webhook_retry_max_s"):
            if name in t.data:
                kw[name] = t.number(name)
        ro = r.section("roster")
        if "file" in ro.data:
            kw["roster_path"] = ro.path("file")
        if "clerk_pattern" in ro.data:
            kw["clerk_pattern"] = ro.text("clerk_pattern")
        kw.update(_page_keys(r))
        for rd in (r, b, u, h, t, ro, r.section("page"), r.section("hours"), r.section("alarms")):
            rd.check_unknown()
        return cls(**kw)


_KNOWN = {
    "": {"hall", "db", "keystore", "broker", "uplink", "http", "tuning", "timezone", "page", "hours",
         "alarms", "roster"},
    "roster": {"file", "clerk_pattern"},
    "page": {"users"},
    "hours": {"days", "open", "close", "closed_dates"},
    "alarms": {"notify", "heartbeat_s", "check_s", "silent_minutes", "outbox_free_percent", "retry_s",
               "retry_max_s"},
    "broker": {"host", "port", "password", "password_file"},
    "uplink": {"host", "port", "password", "password_file", "signing_key", "province_public_key"},
    "http": {"bind", "port", "tokens", "cert", "key", "max_connections", "header_timeout_s", "keep_alive_s"},
    "tuning": {"group_max", "batch_size", "retry_s", "backlog_threshold", "storage_min_free_bytes",
               "prompt_timeout_default", "prompt_timeout_min", "prompt_timeout_max", "quarantine_keep",
               "quarantine_sample", "prompt_burst", "prompt_interval_s", "prompt_grace_s", "webhook_retry_s",
               "webhook_retry_max_s"},
}


def _page_keys(r: _Reader) -> dict[str, Any]:
    """``timezone``, ``[page]``, ``[hours]`` and ``[alarms]`` -> GatewayConfig keyword arguments."""
    kw: dict[str, Any] = {}
    if "timezone" in r.data:
        kw["timezone"] = r.text("timezone")
    pg, hr, al = r.section("page"), r.section("hours"), r.section("alarms")
    if "users" in pg.data:
        kw["users_path"] = pg.path("users")
    if hr.data:
        dates = hr._get("closed_dates", list, [], False)
        if not all(isinstance(d, str) for d in dates):
            raise ConfigError("hours.closed_dates must be a list of dates like \"2026-10-01\"")
        kw["hours"] = BusinessHours.parse(hr.text("days", "mon-sat"), hr.text("open", "08:30"),
                                          hr.text("close", "17:30"), dates)
    notify = al._get("notify", list, [], False)
    if not all(isinstance(u, str) and "://" in u for u in notify):
        raise ConfigError("alarms.notify must be a list of apprise URLs like \"json://host:port/path\"")
    kw["alarm_notify"] = tuple(notify)
    for key, name in (("heartbeat_s", "heartbeat_s"), ("silent_minutes", "silent_minutes"),
                      ("outbox_free_percent", "outbox_free_percent")):
        if key in al.data:
            kw[name] = al.integer(key)
    for key, name in (("check_s", "alarm_check_s"), ("retry_s", "notify_retry_s"),
                      ("retry_max_s", "notify_retry_max_s")):
        if key in al.data:
            kw[name] = al.number(key)
    return kw


class _Reader:
    """Typed access to one TOML table with error messages that name the key."""

    def __init__(self, data: Any, base: Path, name: str = "") -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"[{name}] must be a table")
        self.data: dict[str, Any] = data
        self.base, self.name = base, name

    def _key(self, key: str) -> str:
        return f"{self.name}.{key}" if self.name else key

    def section(self, name: str) -> _Reader:
        return _Reader(self.data.get(name, {}), self.base, name)

    def check_unknown(self) -> None:
        extra = set(self.data) - _KNOWN[self.name]
        if extra:
            raise ConfigError(f"unknown config key(s): {', '.join(self._key(k) for k in sorted(extra))}")

    def _get(self, key: str, typ: type | tuple[type, ...], default: Any, required: bool) -> Any:
        if key not in self.data:
            if required:
                raise ConfigError(f"config key {self._key(key)} is required")
            return default
        v = self.data[key]
        if not isinstance(v, typ) or isinstance(v, bool):
            raise ConfigError(f"config key {self._key(key)} has the wrong type ({type(v).__name__})")
        return v

    def text(self, key: str, default: str = "", required: bool = False) -> str:
        v: str = self._get(key, str, default, required)
        return v

    def integer(self, key: str) -> int:
        v: int = self._get(key, int, 0, True)
        if v < 0:
            raise ConfigError(f"config key {self._key(key)} must not be negative")
        return v

    def number(self, key: str) -> float:
        v: float = float(self._get(key, (int, float), 0, True))
        if v <= 0:
            raise ConfigError(f"config key {self._key(key)} must be positive")
        return v

    def port(self, key: str, default: int, allow_zero: bool = False) -> int:
        v: int = self._get(key, int, default, False)
        if not (0 if allow_zero else 1) <= v <= 65535:
            raise ConfigError(f"config key {self._key(key)} must be a TCP port")
        return v

    def path(self, key: str, required: bool = False) -> Path:
        v = self.text(key, "", required)
        return self.base / v

    def secret(self, key: str) -> str:
        """``password`` inline or ``password_file`` (first line); the file form keeps secrets out of it."""
        if "password_file" in self.data:
            pf = self.path("password_file")
            try:
                return pf.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"cannot read {self._key('password_file')} {pf}: {exc}") from exc
        return self.text(key)
