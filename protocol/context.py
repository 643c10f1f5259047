"""A rating's context: where, by whom and for what it was given. Declared once, carried by every hop.

The gateway decides it when a prompt is opened (or, for an invite-key rating, from the clerk signed in
at the window), stores it with the prompt and with the rating, forwards it in the signed batch, and the
province stores it as received. "A rating keeps its context" is then one value passed along, not six
field lists copied one field at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Context:
    window: str
    clerk: str | None           # None: nobody signed in at the window (it was closed)
    service: int                # service item; 0 = unknown (invite-key prompts)
    txn: str | None             # the counter system's transaction; None for invite-key prompts
    prompt_ms: int | None       # when the prompt was opened, gateway clock; None for invite-key prompts
    # The clerk's display name: the gateway's own (shown on the keypad). Batches carry the clerk id only.
    clerk_name: str | None = None

    def forwarded(self) -> Context:
        """The context as a batch carries it (and as the province decodes it): without the name."""
        return self if self.clerk_name is None else replace(self, clerk_name=None)
