"""An apprise URL as the notifiers of the gateway and the province treat it: it holds secrets (tokens,
passwords), so only its scheme and host are ever logged or shown, and a database keys it by a digest."""

from __future__ import annotations

import hashlib
import urllib.parse

__all__ = ["safe_url", "target_id"]


def safe_url(url: str) -> str:
    """scheme://host of an apprise URL: what may be logged or shown."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}"


def target_id(url: str) -> str:
    """The key of a notification target in a database (never the URL itself)."""
    return hashlib.sha256(url.encode()).hexdigest()[:32]
