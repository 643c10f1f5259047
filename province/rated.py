"""A stored rating as the supervision loop sees it: its context and whether it is dissatisfied. One type
for the alert rules, the cases and the integrity flags, loaded once per supervisor pass."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from countersign.protocol.messages import is_satisfied

from .db import Conn

__all__ = ["Rated", "load"]


@dataclass(frozen=True)
class Rated:
    id: int
    hall: str
    device: str
    window: str
    clerk: str | None
    service: int
    txn: str | None
    kind: str                  # 'rating' | 'no-rating'
    score: int | None
    scale: int | None
    prompt: int                # 0: opened by the clerk's invite key
    press_s: int | None        # keypad clock; None when unknown
    delay_ms: int | None       # prompt shown -> key pressed, by the keypad's own timer
    prompt_ms: int | None      # gateway clock: when the prompt opened
    received_ms: int           # gateway clock: when the rating reached the gateway
    day: str

    @property
    def dissatisfied(self) -> bool:
        return (self.kind == "rating" and self.score is not None and self.scale is not None
                and not is_satisfied(self.score, self.scale))

    @property
    def at_ms(self) -> int:
        """When it happened: the press time if the keypad's clock was known, else the gateway's receipt."""
        return self.press_s * 1000 if self.press_s is not None else self.received_ms


_COLS = ('id, hall, device, "window", clerk, service, txn, kind, score, scale, prompt, press_s, delay_ms,'
         " prompt_ms, received_ms, day")


def _row(r: Sequence[object]) -> Rated:
    def oi(v: object) -> int | None:
        return None if v is None else int(v)  # type: ignore[call-overload]

    return Rated(int(r[0]), str(r[1]), str(r[2]), str(r[3]), None if r[4] is None else str(r[4]),  # type: ignore[call-overload]
                 int(r[5]), None if r[6] is None else str(r[6]), str(r[7]), oi(r[8]), oi(r[9]),  # type: ignore[call-overload]
                 int(r[10]), oi(r[11]), oi(r[12]), oi(r[13]), int(r[14]), str(r[15]))  # type: ignore[call-overload]


def load(conn: Conn, ids: Sequence[int]) -> list[Rated]:
    """The ratings of ``ids`` in id order (missing ids are skipped)."""
    if not ids:
        return []
    marks = ",".join("?" for _ in ids)
    return [_row(r) for r in conn.all(f"SELECT {_COLS} FROM ratings WHERE id IN ({marks}) ORDER BY id", ids)]


def where(conn: Conn, cond: str, args: Sequence[object], limit: int = 10_000) -> list[Rated]:
    """Ratings matching ``cond`` (SQL on the ratings table), oldest first: the rules' look-backs."""
    return [_row(r) for r in conn.all(f"SELECT {_COLS} FROM ratings WHERE {cond} ORDER BY id LIMIT ?",
                                      [*args, limit])]
