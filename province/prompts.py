"""A device outcome checked against its prompt record: the hall gateway is trusted no further than it must.

A hall gateway's signature vouches for the context it attaches to a rating (window, clerk, service,
transaction), and the keypad's MAC covers only the prompt number. So a gateway with its own key could
bind a rating to another clerk, two ratings to one prompt, or another window's rating to a prompt. The
prompt record (sent by the same gateway when the prompt was opened, in this batch or an earlier one) is
the check: an outcome with prompt != 0 must match its record's device, window, clerk, transaction and
service, and a prompt has one outcome. What fails is held (kept, not counted) with the reason:

- ``prompt-mismatch``: a field differs (the detail says which: "clerk Z-999 but prompt 700 was opened
  for A-001");
- ``prompt-reused``: the prompt already has another (device, epoch, seq) as its outcome;
- ``no-prompt-record``: no record yet. The gateway queues a prompt's record in the transaction that
  opens it, before any outcome (FIFO uplink), but its batches can reach the province out of order (several
  in flight, several workers, a resend): so this is a wait, not a verdict. ``release_waiting`` re-checks
  those rows whenever records have come, and a matching one becomes a counted rating. It counts them
  without checking a MAC again: only an outcome whose MAC was verified may be held under this reason
  (the receiver's, or enroll.py's after an approval), never an unknown device's unverified one.

An invite-key outcome (prompt 0) opened its own prompt on the keypad: nothing to check it against.
"""

from __future__ import annotations

from collections import Counter

from countersign.protocol.outcome import Outcome

from .store import PromptRow, RatingRow, Store

__all__ = ["WAITING", "prompt_problem", "release_waiting"]

WAITING = "no-prompt-record"
RECEIVER = "receiver"


def _show(v: object) -> str:
    return "(none)" if v is None else str(v)


def _mismatch(r: RatingRow, p: PromptRow) -> str | None:
    fields = (("device", r.device, p.device), ("window", r.ctx.window, p.ctx.window),
              ("clerk", r.ctx.clerk, p.ctx.clerk), ("transaction", r.ctx.txn, p.ctx.txn),
              ("service", r.ctx.service, p.ctx.service))
    for name, got, want in fields:
        if got != want:
            return f"{name} {_show(got)} but prompt {p.prompt} was opened for {_show(want)}"
    return None


def prompt_problem(s: Store, r: RatingRow) -> tuple[str, str] | None:
    """(reason, detail) if the outcome may not be counted as it stands, None if it matches its prompt."""
    if r.prompt == 0:
        return None
    p = s.prompt(r.hall, r.prompt)
    if p is None:
        return WAITING, f"prompt {r.prompt} has no record at the province (yet): held until it comes"
    bad = _mismatch(r, p)
    if bad is not None:
        return "prompt-mismatch", bad
    other = s.outcome_for_prompt(r.hall, r.prompt)
    if other is not None and other != (r.device, r.epoch, r.seq):
        return "prompt-reused", (f"prompt {r.prompt} already has its outcome ({other[0]} epoch {other[1]}"
                                 f" seq {other[2]}); one outcome per prompt")
    return None


def release_waiting(s: Store, hall: str | None = None) -> Counter[str]:
    """Re-check every rating waiting for a prompt record that has come since; return the reasons the ones
    that still fail are held under now. Runs inside the caller's transaction."""
    sql = ("SELECT DISTINCT h.hall, h.prompt FROM held h JOIN prompts p ON p.hall = h.hall AND"
           " p.prompt = h.prompt WHERE h.reason = ? AND h.state = 'held'")
    args: list[object] = [WAITING]
    if hall is not None:
        sql += " AND h.hall = ?"
        args.append(hall)
    reheld: Counter[str] = Counter()
    for h, prompt in s.conn.all(sql, args):
        for held_id, r in s.held_waiting(str(h), int(prompt)):
            problem = prompt_problem(s, r)
            if problem is not None:
                reason, detail = problem
                s.rehold(held_id, reason, detail)
                s.alarm("held-entries", r.hall, r.device, f"batch {r.batch_id}: a rating waiting for prompt"
                        f" {r.prompt} stays held, {reason}: {detail}", batch_id=r.batch_id)
                reheld[reason] += 1
                continue
            outcome = s.insert_rating(r)
            if outcome is Outcome.CONFLICT:
                s.rehold(held_id, outcome.value, "the same (device, epoch, seq) is stored with other bytes")
                reheld[outcome.value] += 1
                continue
            s.mark_released(held_id, s.rating_id(r.device, r.epoch, r.seq), RECEIVER,
                            f"prompt {r.prompt}'s record arrived and matches")
    return reheld
