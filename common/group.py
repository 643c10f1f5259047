"""The group-commit drain: what both the gateway's ingest and the province's workers take into one
SQLite transaction (one fsync for many messages, so synchronous=FULL stays affordable)."""

from __future__ import annotations

import queue
from typing import TypeVar

T = TypeVar("T")


def take_group(q: queue.Queue[T | None], max_items: int) -> tuple[list[T], bool]:
    """Block for one item, then take whatever else is queued already, up to ``max_items`` in all.

    ``None`` in the queue asks the consumer to stop: the items taken before it are still returned (the
    consumer commits and acks them, then stops), with ``True`` as the second value.
    """
    first = q.get()
    if first is None:
        return [], True
    group = [first]
    while len(group) < max_items:
        try:
            nxt = q.get_nowait()
        except queue.Empty:
            break
        if nxt is None:
            return group, True
        group.append(nxt)
    return group, False
