"""Counter-system credentials: bearer tokens, stored hashed, each bound to the windows it may drive.

The credentials file (JSON, 0600, replaced atomically) holds one entry per counter PC or adapter:
``{"name", "sha256", "windows": [...] | "*", "created", "revoked"}``. A token is 32 random bytes
(``secrets.token_urlsafe``). Being high-entropy rather than a password a person chose, a plain SHA-256
is the right hash: nobody can guess their way to a preimage, so a slow KDF would only slow every API
call. The comparison is constant-time all the same.

``Credentials.lookup`` re-reads the file when it changes on disk (inode, mtime or size: every
rewrite is a rename), so ``token revoke`` takes
effect on the next call without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from countersign.protocol.keystore import FileOwner, write_atomic

from .errors import GatewayError
from .identity import Caller

log = logging.getLogger("countersign.gateway.tokens")

FORMAT = 1
_NAME_MAX = 64


class CredentialsError(GatewayError, ValueError):
    """The credentials file or a request to change it cannot be used."""


@dataclass(frozen=True)
class Entry:
    name: str
    sha256: str
    windows: frozenset[str] | None      # None = every window ("*")
    created: int                        # unix seconds
    revoked: int | None = None          # unix seconds, or None while valid

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256,
                "windows": "*" if self.windows is None else sorted(self.windows),
                "created": self.created, "revoked": self.revoked}

    @classmethod
    def from_json(cls, d: Any) -> Entry:
        if not isinstance(d, dict):
            raise CredentialsError("a credentials entry must be an object")
        name, digest, windows = d.get("name"), d.get("sha256"), d.get("windows")
        created, revoked = d.get("created", 0), d.get("revoked")
        if not isinstance(name, str) or not name:
            raise CredentialsError("a credentials entry needs a name")
        if not isinstance(digest, str) or len(digest) != 64:
            raise CredentialsError(f"credential {name!r}: sha256 must be 64 hex digits")
        if windows == "*":
            wins: frozenset[str] | None = None
        elif isinstance(windows, list) and windows and all(isinstance(w, str) and w for w in windows):
            wins = frozenset(windows)
        else:
            raise CredentialsError(f"credential {name!r}: windows must be '*' or a non-empty list")
        if not isinstance(created, int) or not (revoked is None or isinstance(revoked, int)):
            raise CredentialsError(f"credential {name!r}: created/revoked must be unix seconds")
        return cls(name, digest, wins, created, revoked)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def parse_windows(text: str) -> frozenset[str] | None:
    """``"*"`` or a comma-separated list such as ``"1,2"``."""
    if text.strip() == "*":
        return None
    wins = frozenset(w.strip() for w in text.split(",") if w.strip())
    if not wins:
        raise CredentialsError("--windows must be '*' or a list such as 1,2")
    return wins


def read_entries(path: Path) -> list[Entry]:
    """The file's entries; a missing file is an empty list (nothing issued yet)."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise CredentialsError(f"cannot read credentials {path}: {exc}") from exc
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CredentialsError(f"credentials {path} are not JSON: {exc}") from exc
    if (not isinstance(data, dict) or data.get("format") != FORMAT
            or not isinstance(data.get("credentials"), list)):
        raise CredentialsError(f"credentials {path}: not a format-{FORMAT} credentials file")
    entries = [Entry.from_json(d) for d in data["credentials"]]
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise CredentialsError(f"credentials {path}: a name appears twice")
    return entries


def write_entries(path: Path, entries: Sequence[Entry], owner: FileOwner | None = None) -> None:
    """0600: only the gateway reads it. ``owner`` for a new file (the gateway's user); a rewrite keeps
    the file's owner (write_atomic), so revoking as root does not lock the gateway out."""
    doc = {"format": FORMAT, "credentials": [e.to_json() for e in entries]}
    write_atomic(path, json.dumps(doc, indent=1, ensure_ascii=False) + "\n", mode=0o600, owner=owner)


def issue(path: Path, name: str, windows: frozenset[str] | None, now_s: int | None = None,
          owner: FileOwner | None = None) -> str:
    """Add a credential and return its token (the only time it exists in clear: the caller stores it)."""
    if not name or len(name) > _NAME_MAX or not name.isprintable() or name.strip() != name:
        raise CredentialsError(f"a credential name is 1..{_NAME_MAX} printable characters")
    entries = read_entries(path)
    if any(e.name == name for e in entries):
        raise CredentialsError(f"a credential named {name!r} exists (revoke it and issue a new name)")
    token = secrets.token_urlsafe(32)
    created = int(time.time()) if now_s is None else now_s
    write_entries(path, [*entries, Entry(name, token_hash(token), windows, created)], owner)
    return token


def revoke(path: Path, name: str, now_s: int | None = None) -> Entry:
    entries = read_entries(path)
    for i, e in enumerate(entries):
        if e.name == name:
            if e.revoked is None:
                when = int(time.time()) if now_s is None else now_s
                e = Entry(e.name, e.sha256, e.windows, e.created, when)
                entries[i] = e
                write_entries(path, entries)
            return e
    raise CredentialsError(f"no credential named {name!r}")


class Credentials:
    """The gateway's view of the credentials file, re-read when it changes on disk."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._entries: list[Entry] = []
        if path is None:
            log.warning("no credentials configured ([http] tokens): every counter API call is refused (401)")
            return
        self._refresh()
        if not self._entries:
            log.warning("credentials file %s holds no credential yet: every counter API call is refused "
                        "until one is issued (countersign gateway token issue)", path)

    @classmethod
    def none(cls) -> Credentials:
        return cls(None)

    def _refresh(self) -> None:
        path = self.path
        if path is None:
            return
        try:
            st = os.stat(path)
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None      # missing or unreadable: read_entries below says which, and nothing is valid
        if stamp == self._stamp and self._stamp is not None:
            return
        try:
            entries = read_entries(path)
        except CredentialsError as exc:
            # A broken rewrite must not lock every counter out nor let a revoked token back in: refuse all
            # until the file is readable again (and say so, once per change).
            log.error("%s; refusing every counter API call until it is fixed", exc)
            entries = []
        changed = stamp != self._stamp
        self._entries, self._stamp = entries, stamp
        if changed:
            log.info("credentials loaded: %d valid of %d", sum(1 for e in entries if e.revoked is None),
                     len(entries))

    def lookup(self, token: str) -> Caller | None:
        """The caller behind ``token``, or None for an unknown or revoked one."""
        if self.path is None or not token:
            return None
        digest = token_hash(token)
        with self._lock:
            self._refresh()
            entries = self._entries
        found: Entry | None = None
        for e in entries:
            # Every entry is compared, so the time taken does not depend on which one matches.
            if hmac.compare_digest(e.sha256, digest):
                found = e
        if found is None or found.revoked is not None:
            return None
        return Caller(found.name, found.windows)
