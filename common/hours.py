"""Opening days written as text (``mon-sat``, ``mon-fri,sun``): the hall gateway's ``[hours]`` and the
platform's per-hall business hours read the same notation."""

from __future__ import annotations

__all__ = ["DAY_NAMES", "parse_days"]

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def parse_days(spec: str) -> frozenset[int]:
    """Weekday numbers (Monday 0) of ranges and single days, comma separated; ValueError if unreadable."""
    out: set[int] = set()
    for part in spec.lower().replace(" ", "").split(","):
        ends = part.split("-")
        try:
            idx = [DAY_NAMES.index(e) for e in ends]
        except ValueError:
            raise ValueError(f"{part!r} is not a day or range like mon-sat") from None
        if len(idx) == 1:
            out.add(idx[0])
        elif len(idx) == 2 and idx[0] <= idx[1]:
            out.update(range(idx[0], idx[1] + 1))
        else:
            raise ValueError(f"{part!r} is not a range like mon-sat")
    return frozenset(out)
