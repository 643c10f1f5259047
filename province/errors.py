"""The provincial receiver's own errors (the wire contract's are protocol.errors.ProtocolError)."""

from __future__ import annotations


class ProvinceError(Exception):
    """Base of the province's errors."""


class ConfigError(ProvinceError, ValueError):
    """The receiver's configuration (or a broker config asked of it) cannot be used."""

    reason = "bad-config"


class StartError(ProvinceError, RuntimeError):
    """The receiver did not come up (a worker refused by the broker, or never subscribed)."""
