"""The read API's clients: one bearer token each, kept only as its SHA-256.

The token is shown once, when the client is added (the one secret a person must copy into the other
system); the database keeps its hash, so a copy of the database, a backup or a log of its rows never
gives anyone API access. A revoked client's token is refused from the next request on. Adding and
revoking are changes: each writes an audit_log row in its own transaction (audit.py).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from .audit import record
from .db import Conn, IntegrityError
from .errors import ProvinceError

__all__ = ["ApiClient", "ApiClientError", "add_client", "authenticate", "list_clients", "revoke_client"]

NAME = re.compile(r"^[\w.-]{1,64}$")
TOKEN_PREFIX = "cs1_"            # tells a leaked token apart in a scan of a repository or a log


class ApiClientError(ProvinceError, ValueError):
    """A client name that is not valid, already taken, or unknown."""


@dataclass(frozen=True)
class ApiClient:
    id: int
    name: str
    created_ms: int
    created_by: str
    revoked_ms: int | None


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _check_name(name: str) -> None:
    if not NAME.match(name):
        raise ApiClientError(f"bad client name {name!r}: 1-64 letters, digits, '.', '_' or '-'")


def add_client(conn: Conn, name: str, actor: str, now_ms: int) -> str:
    """A new client; returns its token (not stored anywhere: the caller shows it once)."""
    _check_name(name)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    try:
        with conn.transaction():
            if conn.scalar("SELECT 1 FROM api_clients WHERE name = ?", (name,)) is not None:
                raise ApiClientError(f"an API client named {name!r} exists already (revoked ones too:"
                                     " the name stays in the audit log); choose another name")
            conn.execute("INSERT INTO api_clients (name, token_hash, created_ms, created_by)"
                         " VALUES (?, ?, ?, ?)", (name, token_hash(token), now_ms, actor))
            record(conn, actor, "api-client.add", name, {}, now_ms)
    except IntegrityError as exc:       # another admin added the same name at the same moment
        raise ApiClientError(f"an API client named {name!r} exists already") from exc
    return token


def revoke_client(conn: Conn, name: str, actor: str, now_ms: int) -> None:
    _check_name(name)
    with conn.transaction():
        row = conn.one("SELECT id, revoked_ms FROM api_clients WHERE name = ?", (name,))
        if row is None:
            raise ApiClientError(f"no API client named {name!r}")
        if row[1] is not None:
            raise ApiClientError(f"API client {name!r} is already revoked")
        conn.execute("UPDATE api_clients SET revoked_ms = ? WHERE id = ?", (now_ms, row[0]))
        record(conn, actor, "api-client.revoke", name, {}, now_ms)


def list_clients(conn: Conn) -> list[ApiClient]:
    return [ApiClient(int(i), str(n), int(c), str(b), None if r is None else int(r))
            for i, n, c, b, r in conn.all("SELECT id, name, created_ms, created_by, revoked_ms"
                                          " FROM api_clients ORDER BY name")]


def authenticate(conn: Conn, token: str) -> ApiClient | None:
    """The active client whose token this is, or None (unknown or revoked).

    Every stored hash is compared, in constant time, so the time taken says nothing about which bytes of
    a guess were right, nor whether a revoked client matched."""
    want = token_hash(token)
    found: ApiClient | None = None
    for i, n, h, c, b, r in conn.all("SELECT id, name, token_hash, created_ms, created_by, revoked_ms"
                                     " FROM api_clients"):
        if hmac.compare_digest(bytes(h), want) and r is None:
            found = ApiClient(int(i), str(n), int(c), str(b), None)
    return found
