"""The hall managers' accounts for the hall page: a JSON file (0600) of scrypt password hashes.

Written by ``countersign gateway user add|remove`` (write_atomic: readers see the old file or the new),
re-read by the running gateway when it changes, so an account added or removed takes effect without a
restart. Log-in failures are limited per account (``LoginLimiter``): guessing a password from the hall
LAN costs minutes per handful of tries.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from countersign.common import webauth
from countersign.protocol.keystore import write_atomic

from .errors import GatewayError

# scrypt cost: 16 MiB and about 50 ms on a Raspberry Pi 4 per check; log-ins are rare.
SCRYPT_N, SCRYPT_R, SCRYPT_P, HASH_BYTES = 2 ** 14, 8, 1, 32
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
MIN_PASSWORD = 8
MAX_PASSWORD = 256


class UsersError(GatewayError, ValueError):
    """A users file that cannot be read, or a name or password that cannot be used."""


@dataclass(frozen=True)
class _Account:
    salt: bytes
    n: int
    r: int
    p: int
    hash: bytes
    created_ms: int

    def to_json(self) -> dict[str, Any]:
        return {"salt": self.salt.hex(), "n": self.n, "r": self.r, "p": self.p, "hash": self.hash.hex(),
                "created_ms": self.created_ms}


def _hash(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=HASH_BYTES,
                          maxmem=2 * 128 * n * r * p)


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise UsersError("a user name is 1-32 letters, digits, '.', '_' or '-', from a letter or digit")
    return name


def check_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise UsersError(f"a password is {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    if any(not c.isprintable() for c in password):
        raise UsersError("a password has no control characters")
    return password


class Users:
    """The accounts in ``path`` (missing file: no accounts yet)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._accounts: dict[str, _Account] = {}
        # Checked when the name is unknown, so an unknown name costs as long as a wrong password.
        self._dummy = _Account(b"\0" * 16, SCRYPT_N, SCRYPT_R, SCRYPT_P, b"\0" * HASH_BYTES, 0)

    def _load(self) -> dict[str, _Account]:
        """The accounts as now on disk (re-read when the file's inode, size or mtime changed)."""
        with self._lock:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                self._stamp, self._accounts = None, {}
                return {}
            except OSError as exc:
                raise UsersError(f"cannot read users file {self.path}: {exc}") from exc
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if stamp != self._stamp:
                self._accounts = _parse(self.path)
                self._stamp = stamp
            return self._accounts

    def names(self) -> list[str]:
        return sorted(self._load())

    def info(self) -> list[dict[str, Any]]:
        return [{"name": n, "created_ms": a.created_ms} for n, a in sorted(self._load().items())]

    def verify(self, name: str, password: str) -> bool:
        acc = self._load().get(name)
        a = acc or self._dummy
        ok = hmac.compare_digest(_hash(password[:MAX_PASSWORD], a.salt, a.n, a.r, a.p), a.hash)
        return ok and acc is not None

    def add(self, name: str, password: str, *, replace: bool = False) -> None:
        check_name(name)
        check_password(password)
        accounts = dict(self._load())
        if name in accounts and not replace:
            raise UsersError(f"user {name} exists (use --replace to set a new password)")
        salt = secrets.token_bytes(16)
        digest = _hash(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
        accounts[name] = _Account(salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, digest, int(time.time() * 1000))
        self._save(accounts)

    def remove(self, name: str) -> None:
        accounts = dict(self._load())
        if accounts.pop(name, None) is None:
            raise UsersError(f"no user {name}")
        self._save(accounts)

    def _save(self, accounts: dict[str, _Account]) -> None:
        doc = {"version": 1, "users": {n: a.to_json() for n, a in sorted(accounts.items())}}
        write_atomic(self.path, json.dumps(doc, indent=1) + "\n", 0o600)


def _parse(path: Path) -> dict[str, _Account]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("users"), dict):
            raise ValueError("not a version 1 users file")
        out = {}
        for name, a in doc["users"].items():
            out[check_name(name)] = _Account(bytes.fromhex(a["salt"]), int(a["n"]), int(a["r"]), int(a["p"]),
                                             bytes.fromhex(a["hash"]), int(a.get("created_ms", 0)))
        return out
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsersError(f"users file {path} is not readable: {exc}") from exc


def session_secret(path: Path) -> bytes:
    """The hall page's cookie-signing key, created (0600) on first use: sessions outlive a restart."""
    try:
        return webauth.session_secret(path, "page's session secret")
    except webauth.SessionSecretError as exc:
        raise UsersError(str(exc)) from exc
