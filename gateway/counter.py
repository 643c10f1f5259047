"""The counter system's operations: sign a clerk in or out, open a rating prompt, read it back, webhooks.

Each operation validates everything before it changes anything, so a refusal (an ApiError: 4xx) leaves
the store and the keypads as they were. Each change is logged with the credential that made it: a
rating's attribution is only as good as the identity behind the sign-in and the prompt.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from countersign.protocol import messages
from countersign.protocol.context import Context

from . import readback
from .errors import BadRequest, Conflict, Forbidden, NotFound, TooMany
from .identity import Caller
from .roster import Clerk, Roster, RosterError
from .store import Store
from .textcheck import TextError, check_clerk, check_name, check_txn, clerk_pattern

log = logging.getLogger("countersign.gateway.counter")

URL_MAX = 2048


@dataclass(frozen=True)
class Limits:
    prompt_burst: int             # prompts a window may open at once...
    prompt_interval_s: float      # ...then one per this many seconds
    prompt_grace_s: float         # after a prompt's timeout, how long its outcome may take to arrive
    timeout_default: int
    timeout_min: int
    timeout_max: int


class PromptBucket:
    """A token bucket per window on the gateway's clock: a flood of prompts on one window cannot record a
    flood of no-ratings against the clerk signed in there. In memory: a restart refills it, once."""

    def __init__(self, burst: int, interval_s: float, now_ms: Callable[[], int]) -> None:
        self.burst, self.interval_ms, self.now_ms = burst, interval_s * 1000.0, now_ms
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[float, int]] = {}     # window -> (tokens, at ms)

    def take(self, window: str) -> None:
        """Use one prompt of ``window``'s allowance, or raise TooMany with the seconds until the next."""
        now = self.now_ms()
        with self._lock:
            tokens, at = self._tokens.get(window, (float(self.burst), now))
            # A clock stepped back refills nothing (and takes nothing away).
            tokens = min(float(self.burst), tokens + max(0, now - at) / self.interval_ms)
            if tokens < 1.0:
                self._tokens[window] = (tokens, now)
                wait_s = (1.0 - tokens) * self.interval_ms / 1000.0
                raise TooMany(f"window {window}: at most {self.burst} prompts, then one per "
                              f"{self.interval_ms / 1000:g} s; retry in {math.ceil(wait_s)} s", wait_s)
            self._tokens[window] = (tokens - 1.0, now)

    def give_back(self, window: str) -> None:
        """The prompt taken for was not opened after all (its transaction failed)."""
        with self._lock:
            tokens, at = self._tokens.get(window, (0.0, self.now_ms()))
            self._tokens[window] = (min(float(self.burst), tokens + 1.0), at)


class Counter:
    """The operations behind /v1/windows/<w>/..., /v1/prompts/<id> and /v1/webhook."""

    def __init__(self, hall: str, store: Store, roster: Roster | None, limits: Limits,
                 now_ms: Callable[[], int], device_for_window: Callable[[str], str],
                 send: Callable[[str, messages.Message], object], opened: Callable[[], None],
                 webhook_changed: Callable[[], None]) -> None:
        self.hall, self.store, self.roster, self.limits = hall, store, roster, limits
        self.now_ms = now_ms
        self._device_for_window, self._send = device_for_window, send
        self._opened, self._webhook_changed = opened, webhook_changed
        self.bucket = PromptBucket(limits.prompt_burst, limits.prompt_interval_s, now_ms)
        # Without a roster the pattern still applies, so a clerk id is refused for its form before the
        # missing roster (a 400 says what is wrong with the request itself).
        self._pattern = roster.pattern if roster is not None else clerk_pattern()

    # --- sessions ---------------------------------------------------------------------------------------

    def _device(self, caller: Caller, window: str) -> str:
        if not caller.may_drive(window):
            raise Forbidden(f"credential {caller.name!r} may not drive window {window}")
        return self._device_for_window(window)

    def _rostered(self, clerk: str) -> Clerk | None:
        if self.roster is None:
            raise Conflict("no clerk roster: set [roster] file in the gateway's config")
        try:
            return self.roster.lookup(clerk)
        except RosterError as exc:
            raise Conflict(str(exc)) from exc

    def sign_in(self, caller: Caller, window: str, body: dict[str, Any]) -> dict[str, Any]:
        device = self._device(caller, window)
        _no_extra(body, {"clerk", "name"})
        try:
            clerk = check_clerk(body.get("clerk"), self._pattern)
            given = None if body.get("name") is None else check_name(body["name"])
        except TextError as exc:
            raise BadRequest(str(exc)) from exc
        entry = self._rostered(clerk)
        # 403, not 409: the request is well formed and the gateway's state is fine; this clerk is not
        # allowed here, and asking again will not help until the roster says otherwise.
        if entry is None:
            raise Forbidden(f"工号 {clerk} is not on the clerk roster")
        if not entry.may_use(window):
            raise Forbidden(f"clerk {clerk} may not sign in at window {window} (roster)")
        # A name that disagrees is refused rather than ignored: the counter system and the roster
        # disagree about who this is, and a rating must not be credited while they do.
        if given is not None and given != entry.name:
            raise Conflict(f"name {given!r} is not the roster's name for 工号 {clerk} ({entry.name!r})")
        with self.store.transaction() as c:
            Store.set_session(c, window, clerk, entry.name, self.now_ms())
        self._send(device, messages.Session(clerk, entry.name))
        log.info("window %s: clerk %s signed in by %s", window, clerk, caller.name)
        return {"window": window, "clerk": clerk, "name": entry.name, "device": device}

    def sign_out(self, caller: Caller, window: str, body: dict[str, Any]) -> dict[str, Any]:
        device = self._device(caller, window)
        _no_extra(body, set())
        with self.store.transaction() as c:
            before = Store.get_session(c, window)
            Store.set_session(c, window, None, None, self.now_ms())
        self._send(device, messages.Session())
        log.info("window %s: clerk %s signed out by %s", window, before[0] if before else "-", caller.name)
        return {"window": window, "clerk": None, "device": device}

    # --- prompts ----------------------------------------------------------------------------------------

    def open_prompt(self, caller: Caller, window: str, body: dict[str, Any]) -> dict[str, Any]:
        device = self._device(caller, window)
        _no_extra(body, {"txn", "service", "timeout"})
        try:
            txn = check_txn(body.get("txn"))
        except TextError as exc:
            raise BadRequest(str(exc)) from exc
        service = body.get("service")
        valid = {int(s) for s in messages.Service if s != messages.Service.UNKNOWN}
        if isinstance(service, bool) or not isinstance(service, int) or service not in valid:
            raise BadRequest(f"service must be one of {sorted(valid)}")
        lim = self.limits
        timeout = body.get("timeout", lim.timeout_default)
        lo, hi = lim.timeout_min, lim.timeout_max
        if isinstance(timeout, bool) or not isinstance(timeout, int) or not lo <= timeout <= hi:
            raise BadRequest(f"timeout must be an integer number of seconds in {lo}..{hi}")
        now = self.now_ms()
        with self.store.transaction() as c:
            s = Store.get_session(c, window)
            if s is None:
                raise Conflict(f"no clerk is signed in at window {window}")
            entry = self._rostered(s[0])
            if entry is None or not entry.may_use(window):
                raise Conflict(f"clerk {s[0]} signed in at window {window} is no longer on the roster "
                               "for it; sign in again")
            used = readback.txn_prompt(c, txn)
            if used is not None:
                raise Conflict(f"txn {txn!r} was already used (prompt {used})")
            self.bucket.take(window)      # last: only a prompt that will be opened uses the allowance
            try:
                ctx = Context(window, s[0], service, txn, now, s[1])
                pid = self.store.insert_prompt(c, device, ctx, timeout)
            except BaseException:
                self.bucket.give_back(window)
                raise
        self._send(device, messages.Prompt(pid, s[0], service, txn, timeout, now // 1000))
        self._opened()
        log.info("window %s: prompt %d (txn %s) for clerk %s opened by %s", window, pid, txn, s[0],
                 caller.name)
        return {"prompt": pid, "device": device, "clerk": s[0]}

    def prompt_result(self, caller: Caller, prompt_id: int) -> dict[str, Any]:
        if not 0 < prompt_id < 2**63:          # beyond SQLite's integers: no such prompt, not an overflow
            raise NotFound(f"no prompt {prompt_id}")
        with self.store.read() as c:
            res = readback.result(c, prompt_id, self.now_ms(), int(self.limits.prompt_grace_s * 1000))
        # The same answer for a prompt of a window the caller does not drive: its existence is not theirs.
        if res is None or not caller.may_drive(res["window"]):
            raise NotFound(f"no prompt {prompt_id}")
        return res

    # --- webhooks ---------------------------------------------------------------------------------------

    def set_webhook(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        _no_extra(body, {"url"})
        url = check_url(body.get("url"))
        secret = secrets.token_hex(32)
        windows = None if caller.windows is None else json.dumps(sorted(caller.windows))
        with self.store.transaction() as c:
            c.execute("INSERT INTO webhooks (caller, url, secret, windows, created_ms) VALUES (?,?,?,?,?)"
                      " ON CONFLICT (caller) DO UPDATE SET url=excluded.url, secret=excluded.secret,"
                      " windows=excluded.windows, created_ms=excluded.created_ms",
                      (caller.name, url, secret, windows, self.now_ms()))
        self._webhook_changed()
        log.info("webhook for %s set to %s", caller.name, url)
        # The one place a secret is shown: to its owner, once. A lost secret is replaced by registering again.
        windows_list = None if caller.windows is None else sorted(caller.windows)
        return {"url": url, "secret": secret, "windows": windows_list,
                "signature": "X-Countersign-Signature: sha256=<hex HMAC-SHA256 of the body>"}

    def delete_webhook(self, caller: Caller) -> dict[str, Any]:
        with self.store.transaction() as c:
            gone = c.execute("DELETE FROM webhooks WHERE caller=?", (caller.name,)).rowcount
            dropped = c.execute("DELETE FROM webhook_deliveries WHERE caller=? AND delivered_ms IS NULL",
                                (caller.name,)).rowcount
        if not gone:
            raise NotFound(f"credential {caller.name!r} has no webhook")
        log.info("webhook for %s deleted (%d undelivered dropped)", caller.name, dropped)
        return {"url": None, "dropped": dropped}


def check_url(value: object) -> str:
    """An http(s) URL with a host, no credentials in it (they would land in logs), no spaces or controls."""
    if not isinstance(value, str) or not 1 <= len(value) <= URL_MAX:
        raise BadRequest(f"url must be text of at most {URL_MAX} characters")
    if not value.isprintable() or " " in value or not value.isascii():
        raise BadRequest("url must be printable ASCII without spaces (percent-encode the rest)")
    try:
        u = urlsplit(value)
        port = u.port
    except ValueError as exc:
        raise BadRequest(f"url is not valid: {exc}") from exc
    if u.scheme not in ("http", "https") or not u.hostname:
        raise BadRequest("url must be http:// or https:// with a host")
    if u.username is not None or u.password is not None:
        raise BadRequest("url must not carry credentials: the signature header authenticates the gateway")
    if u.fragment:
        raise BadRequest("url must not have a #fragment")
    del port
    return value


def _no_extra(body: dict[str, Any], allowed: set[str]) -> None:
    extra = set(body) - allowed
    if extra:
        raise BadRequest(f"unknown field(s): {', '.join(sorted(extra))}")


__all__ = ["Counter", "Limits", "PromptBucket", "check_url"]
