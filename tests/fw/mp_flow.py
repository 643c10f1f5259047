# cs.flow on MicroPython with an injected clock: every transition of PROTOCOL.md 8.5, expiry, ignored
# counts, the invite key, replacement of an open prompt, stale prompt ids, the same outcomes as
# sim/refdevice.py.
import mpyboot
from mpyboot import check, raises, done
from cs import flow as F
from cs.flow import Flow, READY, PROMPT_OPEN, RATED, EXPIRED


class Clock:
    def __init__(self, t=1000):
        self.t = t

    def __call__(self):
        return self.t


def new(scale=4, invite=True, t=1000):
    c = Clock(t)
    return c, Flow(scale, invite, c)


INV4 = 4        # key index of the invite key on a 4-key keypad (scores are keys 0..3)

# -- READY: presses are not ratings ------------------------------------------------------------------
clk, f = new()
check(f.state == READY and F.NAMES[f.state] == "ready", "starts READY")
check(f.screen() == "Window closed", "no clerk: the display says the window is closed", f.screen())
check(f.press(2) == ("no-prompt",) and f.ignored == 1, "press in READY: no-prompt, counted", f.ignored)
check(f.state == READY, "READY -> READY on a press")
check(f.tick() is None, "tick in READY: nothing")

# -- the invite key needs a clerk ---------------------------------------------------------------------
check(f.press(INV4) == F.NO_INVITE and f.state == READY, "invite with no clerk signed in: refused")
check(f.ignored == 1, "a refused invite is not an ignored rating press")
f.on_session("E1024", "Zhang San")
check(f.clerk == "E1024" and f.screen() == "E1024", "session: the clerk is shown", f.screen())

# -- READY -> PROMPT_OPEN (invite, prompt 0) -> RATED -> READY -----------------------------------------
check(f.press(INV4) == ("opened", 0), "invite key with a clerk: prompt 0 opens")
check(f.state == PROMPT_OPEN and f.prompt == 0 and f.txn is None and f.service == 0, "prompt 0 open")
check(f.screen() == "Please rate", "display asks for a rating")
check(f.remaining_ms() == 20000, "invite window is invite_timeout (20 s)", f.remaining_ms())
check(f.press(INV4) == F.NO_INVITE, "invite again while unrated: refused (a customer is still to rate)")
clk.t += 1500
check(f.press(2) == ("rated", 3), "first press rates: key 2 is score 3")
check(f.state == RATED and f.delay == 1500 and f.prompt == 0, "RATED, delay from opening", f.delay)
check(f.screen() == "Thank you", "display thanks")
check(f.press(0) == ("ignored",) and f.press(3) == ("ignored",), "later presses ignored")
check(f.ignored == 3 and f.state == RATED, "... counted, still RATED", f.ignored)
check(f.delay == 1500, "ignored presses do not change the rating's delay")
clk.t += 18499
check(f.tick() is None and f.state == RATED, "window not over 1 ms before its end")
clk.t += 1
check(f.tick() is None and f.state == READY, "RATED -> READY when the window ends (no expiry)")
check(f.press(1) == ("no-prompt",) and f.ignored == 4, "press after the window: no-prompt")

# -- gateway prompt: READY -> PROMPT_OPEN -> EXPIRED ----------------------------------------------------
check(f.on_prompt(7, "E2048", 2, "T-77", 15) == ("opened", 7), "prompt 7 opens")
check(f.state == PROMPT_OPEN and f.prompt == 7 and f.clerk == "E2048" and f.txn == "T-77"
      and f.service == 2, "prompt fields kept; its clerk is shown")
clk.t += 14999
check(f.tick() is None and f.state == PROMPT_OPEN, "open until its timeout")
clk.t += 1
check(f.tick() == ("expired", 7), "timeout: expired, the app sends a no-rating for 7")
check(f.state == EXPIRED and f.delay == 15000 and f.expired == 1, "EXPIRED with delay 15 s", f.delay)
check(f.tick() is None, "expiry is reported once")
check(f.press(0) == ("no-prompt",) and f.ignored == 5, "press in EXPIRED: no-prompt, counted")
check(f.ratings == 1, "no rating was made by those presses")

# -- EXPIRED -> PROMPT_OPEN via invite; EXPIRED -> PROMPT_OPEN via prompt --------------------------------
check(f.invite() is True and f.state == PROMPT_OPEN and f.prompt == 0, "EXPIRED -> PROMPT_OPEN (invite)")
clk.t += 20000
check(f.tick() == ("expired", 0), "an invite prompt expires too")
check(f.on_prompt(8, "E2048", 3, "T-78", 20)[0] == "opened", "EXPIRED -> PROMPT_OPEN (prompt)")

# -- a newer prompt replaces an open unrated one (which expires first) ---------------------------------
clk.t += 4000
check(f.on_prompt(9, "E2048", 1, "T-79", 20) == ("replaced", 8), "prompt 9 replaces unrated 8")
check(f.delay == 4000 and f.expired == 3, "8 expired with its own delay (the app sends its no-rating)")
check(f.state == PROMPT_OPEN and f.prompt == 9 and f.txn == "T-79", "9 is open")
check(f.remaining_ms() == 20000, "9 has a full window", f.remaining_ms())
clk.t += 19000
check(f.tick() is None, "8's old deadline does not close 9")
clk.t += 500
check(f.press(3) == ("rated", 4) and f.prompt == 9 and f.delay == 19500, "rating goes to 9")

# -- RATED -> PROMPT_OPEN: the next customer need not wait ---------------------------------------------
check(f.on_prompt(10, "", 1, "T-80", 20) == ("opened", 10), "a prompt right after a rating just opens")
check(f.clerk == "E2048", "a prompt without a clerk keeps the clerk shown")
check(f.expired == 3, "the rated prompt did not expire")
check(f.press(0) == ("rated", 1), "the next customer rates")
check(f.invite() is True and f.prompt == 0, "RATED -> PROMPT_OPEN via invite")
check(f.on_prompt(11, "E2048", 1, "T-81", 20) == ("replaced", 0), "a gateway prompt replaces an invite prompt")

# -- stale prompt ids ------------------------------------------------------------------------------------
st = f.stale
check(f.on_prompt(11, "E2048", 1, "T-81", 20) == F.STALE, "a redelivered prompt is stale")
check(f.on_prompt(5, "E2048", 1, "T-5", 20) == F.STALE, "an older prompt id is stale")
check(f.stale == st + 2 and f.prompt == 11 and f.state == PROMPT_OPEN, "stale ones counted, 11 untouched")
check(f.on_prompt(20, "E2048", 1, "T-20", 20, time=1000, now_s=1021) == F.STALE,
      "a prompt whose window closed before it arrived is stale")
check(f.prompt == 11 and f.state == PROMPT_OPEN, "... and does not replace the open one")
check(f.on_prompt(20, "E2048", 1, "T-20", 20) == F.STALE, "its id still counts as seen")
check(f.on_prompt(21, "E2048", 1, "T-21", 20, time=1000, now_s=1020) == ("replaced", 11),
      "a prompt still inside its window opens")
check(f.on_prompt(22, "E2048", 1, "T-22", 30, time=None, now_s=5000)[0] == "replaced",
      "no gateway time: not judged by time")

# -- timeout 0 means the invite timeout -------------------------------------------------------------------
clk, f = new()
f.on_prompt(1, "E1", 0, "T", 0)
check(f.remaining_ms() == 20000, "prompt timeout 0: the default window", f.remaining_ms())

# -- Session does not close an open prompt; closing the window disables the invite key ------------------
f.on_session(None)
check(f.state == PROMPT_OPEN and f.clerk is None, "session 'window closed' keeps the prompt open")
check(f.press(1) == ("rated", 2), "and it can still be rated")
check(f.invite() is False, "invite with the window closed: refused")
check(f.screen() == "Thank you", "display")
clk.t += 20000
f.tick()
check(f.screen() == "Window closed", "after the window: closed shown")

# -- a 5-key keypad without an invite key -------------------------------------------------------------
clk, f = new(scale=5, invite=False)
f.on_session("E5")
f.on_prompt(3, "E5", 0, "T", 20)
check(f.press(4) == ("rated", 5), "5-key scale: key 4 is score 5")
check(f.invite() is False, "no invite key: invite() refused")
check(raises(lambda: f.press(5), "bad-key"), "key 5 on a 5-key keypad without invite key: ValueError")
check(raises(lambda: f.press(-1), "bad-key"), "negative key: ValueError")
clk, f = new(scale=5, invite=True)
f.on_session("E5")
check(f.press(5) == F.INVITED, "5-key keypad: key 5 is the invite key")
check(raises(lambda: Flow(3, True, clk), "bad-scale"), "scale 3 refused")
check(raises(lambda: Flow(4, True, clk, invite_timeout=0), "bad-timeout"), "invite timeout 0 refused")

# -- the clock wraps --------------------------------------------------------------------------------------
import time
PERIOD = time.ticks_add(0, -1) + 1


class WrapClock(Clock):
    def __call__(self):
        return self.t & (PERIOD - 1)


clk = WrapClock(PERIOD - 5000)
f = Flow(4, True, clk)
f.on_prompt(1, "E1", 0, "T", 10)
clk.t += 9999
check(f.tick() is None and f.state == PROMPT_OPEN, "open across the wrap")
clk.t += 1
check(f.tick() == ("expired", 1) and f.delay == 10000, "expires on time across the wrap", f.delay)

# -- results on the key path are shared, not allocated ---------------------------------------------------
import micropython
clk, f = new()
f.on_prompt(1, "E1", 0, "T", 20)
r1 = r2 = None
ok = False      # globals made before the lock: creating one would allocate
micropython.heap_lock()
try:
    r1 = f.press(1)
    r2 = f.press(2)
    f.tick()
    ok = True
except MemoryError:
    ok = False
micropython.heap_unlock()
check(ok and r1 == ("rated", 2) and r2 == ("ignored",), "press() and tick() allocate nothing")
done()
