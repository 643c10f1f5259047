"""The platform's accounts, in the ``users`` table: argon2id password hashes, a role and its scope.

A change to an account (added, removed, password, disabled) is written with its audit_log row in one
transaction. A password change, a disable and a removal bump ``session_gen`` (or drop the row), and the
web app compares the generation in the session cookie with the row on every request, so each of them
ends the account's sessions at once, on every server.

Log-in failures are limited per account (``LoginLimiter``), so guessing one person's password costs
minutes per handful of tries whichever address the guesses come from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from countersign.common.webauth import LoginLimiter

from . import audit
from .db import Conn
from .errors import ProvinceError
from .scope import ROLES, Role, Scope, User

__all__ = ["Account", "LoginLimiter", "UsersError", "add", "check_login", "disable", "list_accounts",
           "passwd", "remove", "session_user"]

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
MIN_PASSWORD = 10
MAX_PASSWORD = 256
MAX_DISPLAY_NAME = 64

# argon2-cffi's defaults are RFC 9106's second recommendation (argon2id, 64 MiB, 3 passes).
_hasher = PasswordHasher()
# Checked when the name is unknown or disabled, so such a name costs as long as a wrong password and a
# guesser cannot tell which accounts exist.
_DUMMY = _hasher.hash("not a password of anyone")


class UsersError(ProvinceError, ValueError):
    """A name, password, role or scope that cannot be used, or an account that does not exist."""


@dataclass(frozen=True)
class Account:
    id: int
    username: str
    name: str
    role: Role
    scope: str | None
    disabled: bool
    created_ms: int


def check_name(username: str) -> str:
    if not NAME.fullmatch(username):
        raise UsersError("a user name is 1-32 letters, digits, '.', '_' or '-', from a letter or digit")
    return username


def check_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise UsersError(f"a password is {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    if any(not c.isprintable() for c in password):
        raise UsersError("a password has no control characters")
    return password


def _check_scope(conn: Conn, role: str, scope: str | None) -> Scope:
    if role not in ROLES:
        raise UsersError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    try:
        s = Scope(role, scope)       # role: narrowed to Role by the check just above
    except ValueError as exc:
        raise UsersError(f"{exc} (--scope: a city's name for a city user, a hall id for a hall user)"
                         ) from exc
    # A typo in a scope would be an account that silently sees nothing.
    if role == "city" and conn.scalar("SELECT 1 FROM halls WHERE city = ?", (scope,)) is None:
        raise UsersError(f"no hall is in city {scope!r} (halls table): check the name")
    if role == "hall" and conn.scalar("SELECT 1 FROM halls WHERE hall = ?", (scope,)) is None:
        raise UsersError(f"no hall {scope!r} in the halls table")
    return s


def add(conn: Conn, username: str, name: str, password: str, role: str, scope: str | None, *,
        actor: str, now_ms: int) -> int:
    """A new account; returns its id. Raises UsersError (nothing changed) on bad input or a taken name."""
    check_name(username)
    check_password(password)
    name = name.strip() or username
    if len(name) > MAX_DISPLAY_NAME or any(not c.isprintable() for c in name):
        raise UsersError(f"a display name is at most {MAX_DISPLAY_NAME} printable characters")
    pw_hash = _hasher.hash(password)
    with conn.transaction():
        _check_scope(conn, role, scope)
        if conn.scalar("SELECT 1 FROM users WHERE username = ?", (username,)) is not None:
            raise UsersError(f"user {username} exists")
        uid = int(conn.scalar("INSERT INTO users (username, name, pw_hash, role, scope, created_ms)"
                              " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                              (username, name, pw_hash, role, scope, now_ms)))
        audit.record(conn, actor, "user.add", username, {"name": name, "role": role, "scope": scope}, now_ms)
    return uid


def remove(conn: Conn, username: str, *, actor: str, now_ms: int) -> None:
    with conn.transaction():
        row = conn.one("SELECT role, scope FROM users WHERE username = ?", (username,))
        if row is None:
            raise UsersError(f"no user {username}")
        conn.execute("DELETE FROM users WHERE username = ?", (username,))
        audit.record(conn, actor, "user.remove", username, {"role": row[0], "scope": row[1]}, now_ms)


def passwd(conn: Conn, username: str, password: str, *, actor: str, now_ms: int) -> None:
    """A new password; every session of the account ends."""
    check_password(password)
    pw_hash = _hasher.hash(password)
    with conn.transaction():
        n = conn.execute("UPDATE users SET pw_hash = ?, session_gen = session_gen + 1 WHERE username = ?",
                         (pw_hash, username)).rowcount
        if n != 1:
            raise UsersError(f"no user {username}")
        audit.record(conn, actor, "user.passwd", username, {}, now_ms)


def disable(conn: Conn, username: str, disabled: bool, *, actor: str, now_ms: int) -> None:
    """Disable (every session ends) or enable an account."""
    with conn.transaction():
        n = conn.execute("UPDATE users SET disabled = ?, session_gen = session_gen + 1 WHERE username = ?",
                         (1 if disabled else 0, username)).rowcount
        if n != 1:
            raise UsersError(f"no user {username}")
        audit.record(conn, actor, "user.disable" if disabled else "user.enable", username, {}, now_ms)


def list_accounts(conn: Conn) -> list[Account]:
    return [Account(int(r[0]), r[1], r[2], r[3], r[4], bool(r[5]), int(r[6])) for r in conn.all(
        "SELECT id, username, name, role, scope, disabled, created_ms FROM users ORDER BY username")]


def check_login(conn: Conn, username: str, password: str) -> tuple[User, int] | None:
    """The account and its session generation when the password is right and the account enabled."""
    row = conn.one("SELECT id, username, name, role, scope, pw_hash, disabled, session_gen FROM users"
                   " WHERE username = ?", (username,))
    pw_hash = row[5] if row is not None and not row[6] else _DUMMY
    try:
        _hasher.verify(pw_hash, password[:MAX_PASSWORD])
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if row is None or row[6]:
        return None
    if _hasher.check_needs_rehash(pw_hash):
        # Stronger parameters since the hash was made: re-hash now that the password is at hand.
        conn.execute("UPDATE users SET pw_hash = ? WHERE id = ?", (_hasher.hash(password), row[0]))
    return User(int(row[0]), row[1], row[2], row[3], row[4]), int(row[7])


def session_user(conn: Conn, uid: int, gen: int) -> User | None:
    """The account a session names, if it still exists, is enabled and the session is of its current
    generation (not ended by a password change, a disable or a removal)."""
    row = conn.one("SELECT id, username, name, role, scope, disabled, session_gen FROM users WHERE id = ?",
                   (uid,))
    if row is None or row[5] or int(row[6]) != gen:
        return None
    return User(int(row[0]), row[1], row[2], row[3], row[4])


