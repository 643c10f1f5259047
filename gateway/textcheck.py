"""Text a counter system or a roster file hands us, checked before it is shown on a keypad or stored.

A clerk id, name or transaction id ends up on a keypad's screen and console, in the database and in the
province's reports: a newline there forges console lines, a bidi override reverses what a reader sees,
a zero-width space makes two ids look the same. So each has a narrow allowed form.
"""

from __future__ import annotations

import re
import unicodedata

from .errors import GatewayError

DEFAULT_CLERK_PATTERN = r"^[0-9A-Za-z][0-9A-Za-z-]{0,15}$"
NAME_MAX_BYTES = 64
TXN_MAX = 64

# Control, format (ZWSP, ZWJ, every bidi embedding/override/isolate), surrogate, private-use, line and
# paragraph separators: none of them is visible as what it does.
_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})
_TXN = re.compile(rf"[\x21-\x7e]{{1,{TXN_MAX}}}")


class TextError(GatewayError, ValueError):
    """A clerk id, name or transaction id that may not be shown or stored."""


def clerk_pattern(pattern: str = DEFAULT_CLERK_PATTERN) -> re.Pattern[str]:
    """Compile the roster's 工号 pattern (matched whole, so ``^...$`` anchors are optional)."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise TextError(f"clerk_pattern {pattern!r} is not a regular expression: {exc}") from exc


def _visible(value: str, what: str) -> None:
    for ch in value:
        cat = unicodedata.category(ch)
        if cat in _BAD_CATEGORIES:
            raise TextError(f"{what} contains U+{ord(ch):04X} ({cat}), which cannot be shown")


def check_clerk(value: object, pattern: re.Pattern[str]) -> str:
    if not isinstance(value, str):
        raise TextError("clerk must be text")
    # Checked even when the configured pattern would allow it: a loose pattern (".+") must not let a
    # newline through to a keypad's console.
    _visible(value, "clerk")
    # fullmatch, not match with "$": "$" also matches before a trailing newline.
    if pattern.fullmatch(value) is None:
        raise TextError(f"clerk {value!r} does not match the 工号 pattern {pattern.pattern!r}")
    return value


def check_name(value: object, what: str = "name") -> str:
    """A person's name: stripped, non-empty, at most 64 UTF-8 bytes, nothing invisible."""
    if not isinstance(value, str):
        raise TextError(f"{what} must be text")
    _visible(value, what)
    v = value.strip()
    if not v:
        raise TextError(f"{what} must not be empty")
    if len(v.encode("utf-8")) > NAME_MAX_BYTES:
        raise TextError(f"{what} must be at most {NAME_MAX_BYTES} bytes of UTF-8")
    return v


def check_txn(value: object) -> str:
    """A transaction id: 1..64 printable ASCII characters, no spaces."""
    if not isinstance(value, str) or _TXN.fullmatch(value) is None:
        raise TextError(f"txn must be 1..{TXN_MAX} printable ASCII characters without spaces")
    return value


__all__ = ["DEFAULT_CLERK_PATTERN", "TextError", "check_clerk", "check_name", "check_txn", "clerk_pattern"]
