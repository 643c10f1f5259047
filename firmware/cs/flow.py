# The rating state machine (PROTOCOL.md 8.5); the behavioural twin of sim/refdevice.py's prompt flow.
#
#   READY --Prompt (id > last seen) / invite key with a clerk signed in (id 0)--> PROMPT_OPEN
#   PROMPT_OPEN --first press--> RATED --window ends--> READY   (further presses: "ignored", counted)
#   RATED --Prompt / invite key--> PROMPT_OPEN                   (the next customer need not wait)
#   PROMPT_OPEN --window ends without a press--> EXPIRED         (the app sends a no-rating)
#   EXPIRED --Prompt / invite--> PROMPT_OPEN        (presses in READY/EXPIRED: "no-prompt", counted)
#
# A newer Prompt while one is open and unrated replaces it: the open one expires first (the previous
# customer did not rate), then the new one opens. A Session only changes the clerk shown.
#
# The flow does no I/O and keeps no wall clock: it returns what happened and the app acts on it (store
# the rating or no-rating, then feedback). now_ms is an injected ticks clock (the board's ticks_ms) and
# diff its ticks_diff: a prompt's window (at most 0xFFFF s) is well under half a ticks period, so a
# window is measured correctly across the wrap.
# After a "rated" or an expiry, `prompt` is the id of that prompt and `delay` the ms from its opening,
# which is what the Rating / NoRating messages carry.
#
# Key numbering follows cs.keys / boards: keys 0..scale-1 are scores 1..scale, key `scale` is the
# invite key (when the keypad has one).
from micropython import const
from time import ticks_diff

READY = const(0)
PROMPT_OPEN = const(1)
RATED = const(2)
EXPIRED = const(3)
NAMES = ("ready", "prompt_open", "rated", "expired")

_INVITE_PROMPT = const(0)       # prompt id of a prompt opened by the invite key

# Results are preallocated: press() is on the key path and returns a shared tuple.
IGNORED = ("ignored",)          # a later press in a prompt already rated
NO_PROMPT = ("no-prompt",)      # no prompt open: not a rating
STALE = ("stale",)              # a prompt id already seen, or whose window had closed before it arrived
NO_INVITE = ("no-invite",)      # invite key refused (no clerk, a prompt still open, or no invite key)
INVITED = ("opened", 0)         # invite key opened prompt 0
_RATED = tuple(("rated", s) for s in range(6))


class Flow:
    def __init__(self, scale, invite_key, now_ms, invite_timeout=20, diff=ticks_diff):
        if scale != 4 and scale != 5:
            raise ValueError("bad-scale")
        if not 1 <= invite_timeout <= 0xFFFF:
            raise ValueError("bad-timeout")
        self.scale = scale
        self.invite_key = bool(invite_key)
        self._now = now_ms
        self._diff = diff
        self._invite_timeout = invite_timeout
        self.state = READY
        self.clerk = None           # 工号 signed in at this window; None = window closed
        self.clerk_name = None
        self.prompt = 0             # id of the open (or last rated / expired) prompt
        self.service = 0
        self.txn = None
        self.delay = 0              # ms from opening to the last rating / expiry
        self._opened = 0            # now_ms() when the prompt opened (a ticks value)
        self._window = 0            # its window in ms
        self._last_seen = 0         # highest gateway prompt id accepted (0: none yet)
        self.ignored = 0            # presses that were not ratings (heartbeat `ignored`)
        self.stale = 0              # prompts dropped as replays / out of date
        self.ratings = 0
        self.expired = 0

    # -- downlink --------------------------------------------------------------------------------------

    def on_session(self, clerk, clerk_name=None):
        """Session message: the clerk now shown (None: window closed). An open prompt stays open."""
        self.clerk = clerk
        self.clerk_name = clerk_name

    def on_prompt(self, pid, clerk, service, txn, timeout, time=None, now_s=None):
        """A verified Prompt. Returns ("opened", pid), ("replaced", old_pid) or STALE.

        ("replaced", old_pid): the open unrated prompt old_pid expired (send its no-rating, with
        `self.delay`) and pid is now open. `time` is the gateway's opening time (unix s) and `now_s`
        the device clock (None while unknown): a prompt whose window had already closed when it
        arrived (queued at the broker while the keypad was offline) is stale, since opening it now
        would credit a later customer's press to an earlier transaction.
        """
        if pid <= self._last_seen:
            self.stale += 1             # a replay or a redelivery of an old prompt
            return STALE
        self._last_seen = pid
        if timeout <= 0:
            timeout = self._invite_timeout
        if now_s is not None and time is not None and time + timeout < now_s:
            self.stale += 1
            return STALE
        if clerk:
            self.clerk = clerk
        old = self._open(pid, timeout)
        self.service = service
        self.txn = txn
        if old is not None:
            return ("replaced", old)
        return ("opened", pid)

    # -- keys ------------------------------------------------------------------------------------------

    def press(self, key):
        """A debounced key press (cs.keys index). Returns ("rated", score), IGNORED or NO_PROMPT,
        or for the invite key INVITED / NO_INVITE."""
        if key == self.scale and self.invite_key:
            return INVITED if self.invite() else NO_INVITE
        if not 0 <= key < self.scale:
            raise ValueError("bad-key")
        if self.state == RATED:
            self.ignored += 1
            return IGNORED
        if self.state != PROMPT_OPEN:
            self.ignored += 1
            return NO_PROMPT
        self.delay = self._age()
        self.state = RATED
        self.ratings += 1
        return _RATED[key + 1]

    def invite(self):
        """Invite key: opens prompt 0 if a clerk is signed in and no unrated prompt is open."""
        if not self.invite_key or self.clerk is None or self.state == PROMPT_OPEN:
            return False
        self._open(_INVITE_PROMPT, self._invite_timeout)
        self.service = 0
        self.txn = None
        return True

    # -- time ------------------------------------------------------------------------------------------

    def tick(self):
        """Call often, and before press() in each loop turn (so a press after the window ended is not
        taken as a rating). Returns ("expired", pid) when an open prompt's window ended
        without a press (send a no-rating for it, with `self.delay`), else None."""
        if self.state == PROMPT_OPEN:
            if self._window_over():
                return self._expire()
        elif self.state == RATED and self._window_over():
            self.state = READY
        return None

    def remaining_ms(self):
        """ms left in the window of the open or rated prompt, 0 when none."""
        if self.state != PROMPT_OPEN and self.state != RATED:
            return 0
        left = self._window - self._diff(self._now(), self._opened)
        return left if left > 0 else 0

    def screen(self):
        """What the display should say now (ASCII: the SSD1306 font has no CJK glyphs)."""
        if self.state == PROMPT_OPEN:
            return "Please rate"
        if self.state == RATED:
            return "Thank you"
        if self.clerk is None:
            return "Window closed"
        return self.clerk

    # -- internals -------------------------------------------------------------------------------------

    def _age(self):
        d = self._diff(self._now(), self._opened)
        return d if d > 0 else 0

    def _window_over(self):
        return self._diff(self._now(), self._opened) >= self._window

    def _open(self, pid, timeout_s):
        old = None
        if self.state == PROMPT_OPEN:
            old = self._expire()[1]     # the previous customer did not rate
        self.prompt = pid
        self._opened = self._now()
        self._window = timeout_s * 1000
        self.delay = 0 if old is None else self.delay
        self.state = PROMPT_OPEN
        return old

    def _expire(self):
        self.delay = self._age()
        self.state = EXPIRED
        self.expired += 1
        return ("expired", self.prompt)
