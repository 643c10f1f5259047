"""What the hall page shows, read with SQL from the gateway's store (so a restart changes nothing).

Today is the hall's local day (config ``timezone``). 满意率 (satisfaction) is the share of today's
ratings that are 基本满意 or better, the one definition the province reports with too
(``messages.is_satisfied``); 参评率 (participation) is the share of
today's prompts that ended (rated, no-rating, or past their timeout) with a rating. Ratings from the
invite key (no prompt) count in the ratings and satisfaction, not in participation.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from countersign.protocol.keystore import Keystore
from countersign.protocol.messages import is_satisfied

from .hours import local_day_start_ms
from .notify import KIND_ZH
from .store import Store

# A prompt's no-rating may arrive a little after its timeout: only then is an unanswered prompt "ended".
ENDED_GRACE_MS = 10_000


@dataclass
class Tally:
    ratings: int = 0
    satisfied: int = 0
    ended: int = 0              # prompts that ended today
    rated: int = 0              # ... of which with a rating
    scores: dict[int, int] = field(default_factory=dict)

    @property
    def satisfaction(self) -> float | None:
        return self.satisfied / self.ratings if self.ratings else None

    @property
    def participation(self) -> float | None:
        return self.rated / self.ended if self.ended else None


class HallView:
    def __init__(self, store: Store, keystore: Callable[[], Keystore], backlog: Callable[[], int],
                 now_ms: Callable[[], int], tz: ZoneInfo) -> None:
        self.store, self.keystore, self.backlog, self.now_ms, self.tz = store, keystore, backlog, now_ms, tz

    def local(self, ms: int | None) -> dt.datetime | None:
        return None if ms is None else dt.datetime.fromtimestamp(ms / 1000, self.tz)

    def windows(self) -> list[dict[str, Any]]:
        """Each window's keypad (not revoked) with its state and the clerk signed in, by window."""
        health = self.store.devices()
        with self.store.read() as c:
            sessions = {w: (clerk, name) for w, clerk, name in
                        c.execute("SELECT window, clerk, name FROM sessions").fetchall()}
        out = []
        for dev, dk in self.keystore().devices.items():
            if dk.revoked:
                continue
            h = health.get(dev) or {}
            last = h.get("last") or {}
            stuck = int(last.get("stuck") or 0)
            clerk, name = sessions.get(dk.window, (None, None))
            out.append({"window": dk.window, "device": dev, "clerk": clerk, "clerk_name": name,
                        "online": bool(h.get("online")), "last_seen_ms": h.get("last_seen_ms"),
                        "outbox": last.get("outbox"), "outbox_free": last.get("outbox_free"),
                        "stuck_keys": [i + 1 for i in range(16) if stuck >> i & 1],
                        "firmware": last.get("fw"), "rssi": last.get("rssi")})
        return sorted(out, key=lambda w: (len(w["window"]), w["window"]))

    def today(self) -> dict[str, Any]:
        """Today's tallies: ``total``, ``windows`` {window: Tally}, ``clerks`` [(clerk, name, Tally)]."""
        now = self.now_ms()
        start = local_day_start_ms(now, self.tz)
        total, windows, clerks = Tally(), dict[str, Tally](), dict[str, Tally]()
        names: dict[str, str | None] = {}

        def each(window: str, clerk: str | None) -> list[Tally]:
            ts = [total, windows.setdefault(window, Tally())]
            if clerk is not None:
                ts.append(clerks.setdefault(clerk, Tally()))
            return ts

        with self.store.read() as c:
            ratings = c.execute("SELECT window, clerk, clerk_name, score, scale FROM ratings"
                                " WHERE kind = 'rating' AND received_ms >= ?", (start,)).fetchall()
            prompts = c.execute(
                "SELECT p.window, p.clerk, p.clerk_name,"
                " EXISTS (SELECT 1 FROM ratings r WHERE r.prompt = p.id AND r.kind = 'rating')"
                " FROM prompts p WHERE p.opened_ms >= ? AND (p.opened_ms + p.timeout * 1000 + ? < ?"
                " OR EXISTS (SELECT 1 FROM ratings r WHERE r.prompt = p.id))",
                (start, ENDED_GRACE_MS, now)).fetchall()
        for window, clerk, name, score, scale in ratings:
            if clerk is not None:
                names.setdefault(clerk, name)
            for t in each(window, clerk):
                t.ratings += 1
                t.satisfied += is_satisfied(score, scale)
                t.scores[score] = t.scores.get(score, 0) + 1
        for window, clerk, name, rated in prompts:
            names.setdefault(clerk, name)
            for t in each(window, clerk):
                t.ended += 1
                t.rated += bool(rated)
        return {"day": dt.datetime.fromtimestamp(now / 1000, self.tz).date(), "total": total,
                "windows": windows,
                "clerks": [(k, names.get(k), clerks[k]) for k in sorted(clerks)]}

    def alarms(self) -> list[dict[str, Any]]:
        out = []
        for a in self.store.open_alarms():
            out.append({**a, "kind_zh": KIND_ZH.get(a["kind"], a["kind"])})
        return out

    def acknowledge(self, alarm_id: int, who: str) -> bool:
        with self.store.transaction() as c:
            return Store.ack_alarm(c, alarm_id, self.now_ms(), who)
