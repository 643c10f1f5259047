"""Wall-clock time as the project records it: integer milliseconds since the Unix epoch."""

from __future__ import annotations

import time


def wall_ms() -> int:
    return time.time_ns() // 1_000_000
