"""`countersign device inspect`: what a keypad holds and how it is, read over its serial port.

First the live figures, in any mode: ``status`` typed on the console makes a running app print
``CS:STATUS {...}`` (id, firmware, link, outbox depth, free heap of the running app, boot count...).
Then, only where the REPL answers (an unprovisioned keypad, or one in service mode: keys 1 and 4 held at
power-up), the files over the raw REPL (link.py; the app's watchdog is extended for the session):
firmware version, config without secrets (``wifi_password`` and the key never leave the keypad),
counters (state.json), reset cause, free heap at rest, the installed app (app.txt), and the outbox read
back whole and parsed on the host (depth, pending (epoch, seq), last ack). A keypad in normal mode
offers no REPL: the report is what its live status gives, and says how to get the rest.

Afterwards a provisioned keypad is reset (``machine.reset()``, on a simulated keypad too) and boots in
normal mode; ``--no-resume`` leaves it in the REPL, where its own watchdog (restored by the tool)
resets it within its timeout, 8 s by default.
"""

from __future__ import annotations

from typing import Any

from .errors import SERVICE_MODE, NormalMode
from .link import KeypadLink, status_line
from .provision import read_state

_PROBE = """import sys,gc,json,os
_r={}
try:
 import cs
 _r['fw']=cs.VERSION
 del sys.modules['cs']
except ImportError:
 _r['fw']=None
try:
 _r['state']=json.loads(open('state.json').read())
except (OSError,ValueError):
 _r['state']=None
try:
 _r['app']=open('app.txt').read().strip()
except OSError:
 _r['app']=None
try:
 import machine
 _r['reset_cause']=machine.reset_cause()
except (ImportError,AttributeError):
 _r['reset_cause']=None
gc.collect()
_r['heap_free_at_rest']=gc.mem_free()
print(json.dumps(_r))
del _r"""

RESET_CAUSES = {1: "power-on", 2: "hard reset", 3: "watchdog", 4: "deep-sleep wake", 5: "soft reset"}


def inspect(port: str, timeout: float = 5.0, resume: bool = True) -> dict[str, Any]:
    live = status_line(port, timeout)
    report: dict[str, Any] = {"port": port, "running": live is not None, "live": live,
                              "heap_free": live.get("heap_free") if live else None,
                              "link": live.get("link") if live else None}
    link = KeypadLink(port, timeout)
    try:
        link.open()
    except NormalMode as exc:
        if live is None:
            raise
        report.update(mode="normal", repl=False, virtual=None, fw=live.get("fw"), provisioned=True,
                      config=None, state={"boot": live.get("boot"), "epoch": live.get("epoch")},
                      outbox_depth=live.get("outbox"), outbox_pending=None, last_ack=None, reset_cause=None,
                      heap_free_at_rest=None, app=None, resumed=False, micropython=None,
                      note=f"normal mode: no REPL, so only the live status is shown ({exc}); for the "
                           f"files, {SERVICE_MODE}")
        return report
    try:
        probe = link.eval_json(_PROBE)
        st = read_state(link)
        cfg = dict(st.config) if st.config is not None else None
        if cfg is not None:
            cfg.pop("wifi_password", None)
        report.update({
            "mode": "unprovisioned" if cfg is None else "service",
            "repl": True,
            "virtual": link.virtual,
            "micropython": link.board.version_text,
            "machine": link.board.machine,
            "fw": probe.get("fw"),
            "app": probe.get("app"),
            "provisioned": cfg is not None,
            "config": cfg,
            "state": probe.get("state"),
            "outbox_depth": st.outbox.depth,
            "outbox_pending": [[e, s] for e, s in st.outbox.seqs()],
            "last_ack": (None if st.outbox.last_ack is None
                         else {"epoch": st.outbox.last_ack[0], "seqs": st.outbox.last_ack[1]}),
            "reset_cause": probe.get("reset_cause"),
            "heap_free_at_rest": probe.get("heap_free_at_rest"),
            "wdt_ms": link.board.wdt_ms,
        })
        report["resumed"] = bool(resume and cfg is not None)
        if report["resumed"]:
            link.reset()
    finally:
        link.close()
    return report


def text(r: dict[str, Any]) -> str:
    lines = [f"keypad on {r['port']}{' (simulator)' if r.get('virtual') else ''}"]
    if not r["repl"]:
        live = r["live"] or {}
        lines += ["mode          normal (the app runs; no REPL)",
                  f"id            {live.get('id')}  hall {live.get('hall')}  window {live.get('window')}",
                  f"firmware      {live.get('fw')}",
                  f"counters      boot {live.get('boot')}, epoch {live.get('epoch')}",
                  f"outbox        {live.get('outbox')} unsent, room for {live.get('outbox_free')}",
                  f"free heap     {live.get('heap_free')} bytes (app running), link "
                  f"{'up' if live.get('link') else 'down'}",
                  f"keys          ignored {live.get('ignored')}, stuck mask {live.get('stuck')}",
                  f"note          {r['note']}"]
        return "\n".join(lines)
    cfg = r["config"] or {}
    cause = r["reset_cause"]
    lines += [
        f"mode          {r['mode']}",
        f"micropython   {r['micropython']} ({r['machine']})",
        f"firmware      {r['fw'] or 'none installed'}" + (f" (app {r['app']})" if r.get("app") else ""),
        f"provisioned   {'yes' if r['provisioned'] else 'no'}",
    ]
    if cfg:
        lines.append("config        " + ", ".join(f"{k}={v}" for k, v in sorted(cfg.items())))
    if r["state"]:
        s = r["state"]
        lines.append(f"counters      boot {s.get('boot')}, epoch {s.get('epoch')}, seqs reserved to "
                     f"{s.get('reserved')}")
    pend = " ".join(f"{e}/{s}" for e, s in r["outbox_pending"][:20])
    more = " ..." if len(r["outbox_pending"]) > 20 else ""
    lines.append(f"outbox        {r['outbox_depth']} unsent" + (f" (epoch/seq {pend}{more})" if pend else ""))
    la = r["last_ack"]
    lines.append("last ack      " + (f"epoch {la['epoch']} seqs {la['seqs']}" if la else "none in the log"))
    lines.append(f"reset cause   {RESET_CAUSES.get(cause, cause) if cause is not None else 'unknown'}")
    if r["running"]:
        link = "up" if r["link"] else "down"
        lines.append(f"free heap     {r['heap_free']} bytes (app running), link {link}")
    lines.append(f"free heap     {r['heap_free_at_rest']} bytes at rest (app stopped)")
    if r["resumed"]:
        lines.append("app           the keypad was reset: it boots in normal mode")
    elif r["provisioned"]:
        lines.append(f"app           stopped (REPL): its watchdog resets it within {r['wdt_ms']} ms")
    return "\n".join(lines)
