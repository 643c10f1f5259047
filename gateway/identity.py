"""Who made an API call: the counter-system credential behind every change of a rating's attribution.

The HTTP layer (api.py) resolves a bearer token to a ``Caller`` before any operation runs; operations
(counter.py) take the caller, check the window against it and log it with every change.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    """One counter PC or business-system adapter, as issued by `countersign gateway token issue`."""

    name: str                          # the credential's name, e.g. "counter-pc-3" (shown in every log line)
    windows: frozenset[str] | None     # the windows it may drive; None = every window of the hall

    def may_drive(self, window: str) -> bool:
        return self.windows is None or window in self.windows
