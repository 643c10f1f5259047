"""What a scenario may do with a keypad, whichever one it is.

Two keypads implement it: the CPython reference keypad (``refdevice.RefDevice``, hundreds in one
process) and the real firmware on the MicroPython unix port (``fwdevice.FirmwareDevice``, one process
each, observed through its console). The customer routine (``customer.serve``), the scenarios and the
chain tests are written against this interface only, so every one of them runs over both keypads.

Waits look at what happened *after* a point in the keypad's history (``mark()``): the firmware's
console keeps every line since power-on, so "CS:RATED" may be an earlier customer's. Each wait returns
as soon as the keypad is off, with a false or empty answer.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol


class Rated(NamedTuple):
    """A rating as the keypad reports it. Its score is the keypad's word, not the key the customer meant:
    a previous customer's late second key can land on the next prompt, and the ledger records what the
    keypad stored, which is what the gateway and the province must hold."""

    seq: int
    score: int


class Keypad(Protocol):
    @property
    def device_id(self) -> str: ...

    @property
    def epoch(self) -> int: ...

    @property
    def running(self) -> bool: ...

    def start(self) -> Keypad: ...

    def stop(self) -> None:
        """Switched off in an orderly way (the firmware has no such thing: there it is a power cut)."""

    def power_cut(self) -> None:
        """Off at once: nothing more written to its flash, no MQTT DISCONNECT."""

    def mark(self) -> int:
        """A point in this keypad's history, for the ``since`` of the waits below."""

    def wait_connected(self, timeout: float, since: int = 0) -> bool:
        """Linked to its hall broker (after ``since``)."""

    def wait_clerk(self, clerk: str, timeout: float, since: int = 0) -> bool:
        """Shows ``clerk`` as signed in (the invite key needs a clerk)."""

    def wait_prompt(self, prompt_id: int, timeout: float, since: int = 0) -> bool:
        """Prompt ``prompt_id`` is open for a press."""

    def wait_rated(self, timeout: float, since: int = 0) -> Rated | None:
        """The first rating made after ``since``; None if none within ``timeout``."""

    def wait_no_rating(self, timeout: float, since: int = 0) -> bool:
        """A prompt ended without a press after ``since`` (the keypad made a no-rating)."""

    def tap(self, key: int | str) -> bool:
        """Press and release a key (1..scale, ``"i"`` the invite key) and do not wait for what the keypad
        makes of it; False when the press did not reach a running keypad."""

    def invite(self, timeout: float = 5.0) -> bool:
        """The clerk's invite key opened a prompt (id 0)."""

    def outbox_depth(self) -> int:
        """Records (ratings and no-ratings) the keypad holds that the gateway has not acked."""

    def settled(self) -> bool:
        """Everything this keypad recorded has been acked by the gateway."""

    def wait_settled(self, timeout: float) -> bool: ...

