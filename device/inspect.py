"""`countersign device inspect`: what a keypad holds and how it is, read over its serial port.

First the live figures, without stopping anything: ``status`` typed on the console makes a running app
print ``CS:STATUS {...}`` (link, outbox depth, free heap of the running app). Then the raw REPL (the app
is interrupted): firmware version, config without secrets (``wifi_password`` and the key never leave
the keypad), counters (state.json: boot count, epoch, reserved seqs), reset cause, free heap at rest,
and the outbox file read back and parsed on the host (depth, pending (epoch, seq), last ack). Afterwards
the app runs again: a board is reset, a simulator keypad runs main.py again in the same interpreter.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

from .errors import DeviceToolError
from .link import KeypadLink
from .provision import read_state

_PROBE = """
import sys, gc, json, os
r = {'platform': sys.platform}
try:
    if sys.platform == 'linux' and '/rom' not in sys.path:
        import vfs
        vfs.mount(vfs.VfsRom(open('firmware.romfs','rb').read()), '/rom'); sys.path.insert(0, '/rom')
    from cs import VERSION
    r['fw'] = VERSION
except (ImportError, OSError):
    r['fw'] = None
try:
    r['state'] = json.loads(open('state.json').read())
except (OSError, ValueError):
    r['state'] = None
if sys.platform == 'linux':
    r['reset_cause'] = 1
else:
    try:
        import machine
        r['reset_cause'] = machine.reset_cause()
    except (ImportError, AttributeError):
        r['reset_cause'] = None
gc.collect()
r['heap_free_at_rest'] = gc.mem_free()
print(json.dumps(r))
"""

RESET_CAUSES = {1: "power-on", 2: "hard reset", 3: "watchdog", 4: "deep-sleep wake", 5: "soft reset"}


def live_status(port: str, timeout: float) -> dict[str, Any] | None:
    """The running app's ``CS:STATUS`` line, or None when no app answers (unprovisioned, in the REPL)."""
    import serial

    if not os.path.exists(port):
        raise DeviceToolError(f"no such serial port {port}")
    try:
        s = serial.Serial(os.path.realpath(port), 115200, timeout=0.2)
    except (serial.SerialException, OSError) as exc:
        raise DeviceToolError(f"cannot open serial port {port}: {exc}") from exc
    try:
        s.reset_input_buffer()
        s.write(b"\rstatus\r")
        buf = b""
        end = time.monotonic() + min(timeout, 3.0)
        rx = re.compile(rb"CS:STATUS (\{[^\r\n]*\})")
        while time.monotonic() < end:
            buf += s.read(512)
            m = rx.search(buf)
            if m:
                try:
                    value: dict[str, Any] = json.loads(m.group(1))
                except ValueError:
                    return None
                return value
        return None
    finally:
        s.close()


def inspect(port: str, timeout: float = 5.0, resume: bool = True) -> dict[str, Any]:
    live = live_status(port, timeout)
    with KeypadLink(port, timeout) as link:
        probe = link.eval_json(_PROBE)
        st = read_state(link)
        cfg = dict(st.config) if st.config is not None else None
        if cfg is not None:
            cfg.pop("wifi_password", None)
        report: dict[str, Any] = {
            "port": port,
            "virtual": link.virtual,
            "fw": probe.get("fw"),
            "provisioned": cfg is not None,
            "config": cfg,
            "state": probe.get("state"),
            "outbox_depth": st.outbox.depth,
            "outbox_pending": [[e, s] for e, s in st.outbox.seqs()],
            "last_ack": (None if st.outbox.last_ack is None
                         else {"epoch": st.outbox.last_ack[0], "seqs": st.outbox.last_ack[1]}),
            "reset_cause": probe.get("reset_cause"),
            "heap_free": live.get("heap_free") if live else None,
            "heap_free_at_rest": probe.get("heap_free_at_rest"),
            "link": live.get("link") if live else None,
            "running": live is not None,
        }
        if resume and cfg is not None:
            if link.virtual:
                link.restart_app()
            else:
                link.reset()
        report["resumed"] = bool(resume and cfg is not None)
    return report


def text(r: dict[str, Any]) -> str:
    cfg = r["config"] or {}
    cause = r["reset_cause"]
    lines = [
        f"keypad on {r['port']}{' (simulator)' if r['virtual'] else ''}",
        f"firmware      {r['fw'] or 'none installed'}",
        f"provisioned   {'yes' if r['provisioned'] else 'no'}",
    ]
    if cfg:
        lines.append("config        " + ", ".join(f"{k}={v}" for k, v in sorted(cfg.items())))
    if r["state"]:
        s = r["state"]
        lines.append(f"counters      boot {s.get('boot')}, epoch {s.get('epoch')}, seqs reserved to "
                     f"{s.get('reserved')}")
    pend = " ".join(f"{e}/{s}" for e, s in r["outbox_pending"][:20])
    lines.append(f"outbox        {r['outbox_depth']} unsent" + (f" (epoch/seq {pend})" if pend else ""))
    la = r["last_ack"]
    lines.append("last ack      " + (f"epoch {la['epoch']} seqs {la['seqs']}" if la else "none in the log"))
    lines.append(f"reset cause   {RESET_CAUSES.get(cause, cause) if cause is not None else 'unknown'}")
    if r["running"]:
        link = "up" if r["link"] else "down"
        lines.append(f"free heap     {r['heap_free']} bytes (app running), link {link}")
    lines.append(f"free heap     {r['heap_free_at_rest']} bytes at rest (app stopped)")
    if r["resumed"]:
        lines.append("app           restarted")
    return "\n".join(lines)
