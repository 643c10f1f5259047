"""The serial link to a keypad: one raw-REPL session over mpremote's SerialTransport (pyserial underneath).

Why mpremote's transport: it is what the field already trusts to reach a MicroPython board over USB
serial, and its raw REPL protocol (Ctrl-C, Ctrl-A, raw paste) is the same on an ESP32 and on the
simulator's keypads (the unix port on a socat cable, booted by sim/port/esp32boot.py).

Who answers (firmware/cs/start.py): an unprovisioned keypad and a keypad in service mode (keys 1 and 4
held at power-up; Ctrl-C then stops its app) give the REPL; a provisioned keypad in normal mode takes no
Ctrl-C and prints only its ``CS:`` lines. ``open()`` tells these apart: no REPL but ``CS:`` lines (or a
``CS:STATUS`` answer to ``status``) is ``NormalMode``, whose message says how to restart it in service
mode; nothing at all is ``NoAnswer``. mpremote prints what it read when the raw REPL is refused: that is
captured here (it is what tells the cases apart) instead of reaching the technician's terminal.

The watchdog: on an ESP32 ``machine.WDT`` keeps running when the app stops (Ctrl-C, raw REPL), and the
app's is 8 s. So the first thing a session does, when the app armed it this boot (the firmware's
``boards.wdt_ms`` is set; older firmware: ``cs.app`` is in ``sys.modules``), is
``machine.WDT(timeout=SESSION_WDT_MS)``: the esp32 port reconfigures the one watchdog on every
construction (ports/esp32/machine_wdt.c, esp_task_wdt_reconfigure). A keypad whose app never ran
(unprovisioned, no app installed) has no watchdog, and constructing one would start it, so it is left
alone. ``close()`` puts the keypad's own timeout back (config ``wdt_ms``, default 8000) unless the
session ended with ``reset()``: a keypad left in the REPL (``inspect --no-resume``) is reset by its
watchdog 8 s later, as it would be without the tool.

Data moves in large pieces: a file is read in one exec that streams base64 lines (the old link made one
round trip per 256 bytes), written in chunks sized to the keypad's free heap, and hashed (sha256, in
every stock image) on the keypad itself. mpremote's own reader takes one byte per call and joins bytes
objects (quadratic on a large outbox): ``_Transport.read_until`` reads what is waiting at once.

Every wait is bounded by ``timeout``: a keypad that does not answer becomes ``NoAnswer`` with the port's
name, never a hang.
"""

from __future__ import annotations

import ast
import binascii
import contextlib
import io
import json
import os
import re
import select
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from mpremote.transport import TransportError
from mpremote.transport_serial import SerialTransport

from .errors import SERVICE_MODE, DeviceToolError, NoAnswer, NormalMode

SESSION_WDT_MS = 600_000       # the watchdog while a tool holds the keypad: 10 minutes for one session
DEFAULT_WDT_MS = 8000          # the boards' default (firmware/boards/esp32c3.py, sim.py)
_READ_CHUNK = 1536             # bytes per base64 line the keypad prints (2 KB of text)
_STATUS_WAIT_S = 2.0
_STATUS = re.compile(rb"CS:STATUS (\{[^\r\n]*\})")
_CS_LINE = re.compile(rb"(?m)^CS:[A-Z]+")
FS_CORRUPTED = b"filesystem appears to be corrupted"     # MicroPython's _boot.py/inisetup.py


class _Transport(SerialTransport):  # type: ignore[misc]  # mpremote ships no type hints
    """mpremote's serial transport with a reader that takes what is waiting in one call.

    mpremote reads one byte per call and joins bytes objects, which is quadratic in the output: fine for
    a prompt, minutes for an outbox. Bytes read past ``ending`` are kept for the next call (they are the
    raw REPL's next prompt or the start of the next output), so the protocol sees every byte once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending = bytearray()
        # The longest silence any read waits for (the current command's timeout): mpremote waits 10 s
        # for a prompt, which after a cut cable only delays the error.
        self.gap: float | None = None

    def read_until(self, min_num_bytes: int, ending: bytes, timeout: float | None = 10,
                   data_consumer: Any = None, timeout_overall: float | None = None) -> bytes:
        buf = self._pending
        self._pending = bytearray()
        if self.gap is not None and timeout is not None:
            timeout = min(timeout, self.gap)
        start = last = time.monotonic()
        while True:
            i = buf.find(ending)
            if i >= 0:
                end = i + len(ending)
                self._pending = buf[end:]
                data = bytes(buf[:end])
                break
            now = time.monotonic()
            waits = [w for w in (None if timeout is None else last + timeout - now,
                                 None if timeout_overall is None else start + timeout_overall - now)
                     if w is not None]
            wait = min(waits) if waits else 1.0
            if wait <= 0:
                data = bytes(buf)
                break
            chunk = self._read_some(min(wait, 1.0))
            if chunk:
                buf += chunk
                last = time.monotonic()
        if data_consumer is not None and data:
            data_consumer(data)
        return data

    def _read_some(self, wait: float) -> bytes:
        try:
            fd = self.serial.fileno()
        except (AttributeError, OSError, ValueError):
            fd = None
        if fd is not None:
            ready, _, _ = select.select([fd], [], [], wait)
            if not ready:
                return b""
        elif not self.serial.in_waiting:
            time.sleep(min(wait, 0.005))
            return b""
        data: bytes = self.serial.read(self.serial.in_waiting or 1)
        return data


@dataclass(frozen=True)
class BoardInfo:
    """What the keypad's MicroPython says about itself (the session's first probe)."""

    platform: str                   # sys.platform: "esp32", or "linux" on a simulated keypad
    machine: str                    # sys.implementation._machine, e.g. "ESP32C3 module with ESP32C3"
    version: tuple[int, int, int]   # MicroPython's version
    mpy: int                        # sys.implementation._mpy: .mpy version | sub-version << 8 | arch
    app_ran: bool                   # the app ran this boot (its watchdog is armed)
    wdt_ms: int                     # the keypad's own watchdog timeout (config wdt_ms)
    fs: bool                        # a filesystem is mounted at / (not after other firmware's flash)
    heap_free: int

    @property
    def kind(self) -> str | None:
        """The bundle's board name: "sim", "esp32c3", "esp32s3", or None for anything else."""
        if self.platform == "linux":
            return "sim"
        m = self.machine.upper().replace("-", "")
        for chip in ("ESP32C3", "ESP32S3"):
            if chip in m:
                return chip.lower()
        return None

    @property
    def mpy_version(self) -> tuple[int, int]:
        return self.mpy & 0xFF, (self.mpy >> 8) & 3

    @property
    def version_text(self) -> str:
        return ".".join(str(v) for v in self.version)


_ENTER = """import sys
if 'cs.app' in sys.modules or getattr(sys.modules.get('boards'),'wdt_ms',0):
 import machine
 machine.WDT(timeout=%d)
 print(1)
else:
 print(0)"""

# The interrupted app's tasks stay in asyncio's queue (a module global) and its modules in sys.modules,
# holding its heap: released before anything here allocates (every session ends with a reset, or the
# watchdog's, so the app is never resumed in this interpreter).
# Small on its own: the app's heap is not free yet when it is compiled.
_RELEASE = """import sys,gc
if 'asyncio.core' in sys.modules:
 sys.modules['asyncio'].new_event_loop()
 sys.modules['asyncio.core'].cur_task=None
for _k in list(sys.modules):
 if _k in ('main','cs','boards','ssd1306') or _k.startswith('cs.') or _k.startswith('boards.'):
  del sys.modules[_k]
gc.collect()"""

_PROBE = """import sys,gc,os,json
_r={'platform':sys.platform,'machine':getattr(sys.implementation,'_machine',''),
'version':list(sys.implementation.version[:3]),'mpy':getattr(sys.implementation,'_mpy',0)}
try:
 _c=json.load(open('config.json'))
 _r['wdt_ms']=_c.get('wdt_ms',%d)
except Exception:
 _r['wdt_ms']=%d
try:
 _r['fs']=os.statvfs('/')[0]>0
except OSError:
 _r['fs']=False
gc.collect()
_r['heap_free']=gc.mem_free()
print(json.dumps(_r))
del _r"""

_SHA = """import hashlib,binascii,json
_r={}
for _p in %r:
 try:
  _h=hashlib.sha256()
  with open(_p,'rb') as _f:
   while 1:
    _b=_f.read(512)
    if not _b:
     break
    _h.update(_b)
  _r[_p]=binascii.hexlify(_h.digest()).decode()
 except OSError:
  _r[_p]=None
print(json.dumps(_r))
del _r"""

_READ = """import binascii
try:
 _f=open(%r,'rb')
except OSError:
 print('-')
else:
 print('+')
 while 1:
  _b=_f.read(%d)
  if not _b:
   break
  print(binascii.b2a_base64(_b).decode(),end='')
 _f.close()
 del _f,_b"""

_RMTREE = """import os
def _rm(p):
 for e in os.ilistdir(p):
  q=p+'/'+e[0]
  if e[1]==0x4000:
   _rm(q)
  else:
   os.remove(q)
 os.rmdir(p)
try:
 _rm(%r)
except OSError:
 pass
del _rm"""


def _open_serial(port: str, timeout: float) -> Any:
    if not os.path.exists(port):
        raise DeviceToolError(f"no such serial port {port}")
    # A simulator's cable end is a symlink to /dev/pts/N: mpremote reads a pty by its real name.
    real = os.path.realpath(port)
    try:
        return _Transport(real, 115200, timeout=timeout)
    except TransportError as exc:
        raise DeviceToolError(f"cannot open serial port {port} (in use by another program?)") from exc
    except OSError as exc:
        raise DeviceToolError(f"cannot open serial port {port}: {exc}") from exc


def _ask_status(t: Any, wait: float) -> tuple[dict[str, Any] | None, bytes]:
    """Type ``status`` on the console; the running app's ``CS:STATUS`` document and what was read."""
    t.serial.write(b"\rstatus\r")
    seen = b""
    end = time.monotonic() + wait
    while (left := end - time.monotonic()) > 0:
        seen += t.read_until(1, b"\n", timeout=left, timeout_overall=left)
        m = _STATUS.search(seen)
        if m is not None:
            try:
                value = json.loads(m.group(1))
            except ValueError:
                return None, seen
            return (value if isinstance(value, dict) else None), seen
    return None, seen


def status_line(port: str, timeout: float) -> dict[str, Any] | None:
    """The running app's ``CS:STATUS`` line (works in normal mode: ``status`` is one of its console
    commands), or None when no app answers (unprovisioned, in the REPL, no app installed)."""
    t = _open_serial(port, timeout)
    try:
        t.serial.reset_input_buffer()
        value, _ = _ask_status(t, min(timeout, _STATUS_WAIT_S))
        return value
    finally:
        _close(t)


def _close(t: Any) -> None:
    """Close the port whatever the lines do: mpremote drops RTS/DTR first, which a pty (or a cable
    gone) refuses with an error other than the ENOTTY it expects, and would then leave the port open
    and locked (exclusive) for the next session."""
    with contextlib.suppress(OSError, TransportError):
        t.close()
    with contextlib.suppress(OSError):
        t.serial.close()


def _printed_bytes(text: str) -> bytes:
    """What mpremote printed (``print(data)`` of the bytes it read) back as bytes."""
    out = b""
    for line in text.splitlines():
        with contextlib.suppress(ValueError, SyntaxError):
            value = ast.literal_eval(line.strip())
            if isinstance(value, bytes):
                out += value
    return out


class KeypadLink:
    """A raw-REPL session with one keypad. Use as a context manager; ``open()`` stops the app (a
    keypad in service mode) and extends its watchdog for the session."""

    def __init__(self, port: str, timeout: float = 5.0) -> None:
        self.port = port
        self.timeout = timeout
        self._t: Any = None
        self.info: BoardInfo | None = None
        self.extended = False           # the watchdog was extended by this session
        self.ended = False              # the session ended the keypad's run (reset): nothing to restore
        self.lost = False               # the keypad stopped answering (a cut cable): nobody to restore
        self.write_chunk = 1024

    # -- session ---------------------------------------------------------------------------------
    def open(self) -> KeypadLink:
        self._t = _open_serial(self.port, self.timeout)
        said = io.StringIO()
        try:
            with contextlib.redirect_stdout(said):
                self._t.enter_raw_repl(soft_reset=False, timeout_overall=self.timeout)
        except (TransportError, OSError) as exc:
            seen = _printed_bytes(said.getvalue())
            try:
                raise self._why_no_repl(seen) from exc
            finally:
                self.close()
        self.extended = bool(self.eval_json(self._enter_code()))
        self.exec(_RELEASE)
        p = self.eval_json(_PROBE % (DEFAULT_WDT_MS, DEFAULT_WDT_MS))
        try:
            wdt = int(p.get("wdt_ms", DEFAULT_WDT_MS))
            self.info = BoardInfo(str(p["platform"]), str(p.get("machine", "")),
                                  (int(p["version"][0]), int(p["version"][1]), int(p["version"][2])),
                                  int(p.get("mpy", 0)), self.extended, wdt if wdt > 0 else DEFAULT_WDT_MS,
                                  bool(p.get("fs")), int(p.get("heap_free", 0)))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise DeviceToolError(f"keypad on {self.port} gave an unexpected answer: {p!r}") from exc
        # A chunk, its base64 text and the decoded copy must fit the heap beside the app it stopped, in one
        # piece each (the heap is fragmented): a 24th of what is free, at most 4 KB.
        self.write_chunk = max(512, min(4096, self.info.heap_free // 24 // 3 * 3))
        return self

    @staticmethod
    def _enter_code() -> str:
        """The session's first command: extend the watchdog if the app ran (see the module doc)."""
        return _ENTER % SESSION_WDT_MS

    def _why_no_repl(self, seen: bytes) -> NoAnswer:
        if not _CS_LINE.search(seen):
            # A keypad that printed nothing while the REPL was refused may still be running in normal
            # mode (it prints only on events): its console answers `status`.
            with contextlib.suppress(TransportError, OSError):
                status, more = _ask_status(self._t, _STATUS_WAIT_S)
                seen += more
                if status is not None:
                    dev = status.get("id") or status.get("device_id")
                    return NormalMode(self._normal_mode(f" ({dev})" if dev else ""))
        if _CS_LINE.search(seen):
            m = re.search(rb"CS:PROVISIONED id=(\S+)", seen)
            return NormalMode(self._normal_mode(f" ({m.group(1).decode(errors='replace')})" if m else ""))
        if FS_CORRUPTED in seen:
            return NoAnswer(f"the board on {self.port} says its filesystem is corrupted (it ran other "
                            "firmware): flash it with --erase")
        return NoAnswer(f"no keypad answers on {self.port} (no MicroPython REPL within {self.timeout:g} s): "
                        "is it powered and is this its port?")

    def _normal_mode(self, who: str) -> str:
        return (f"the keypad on {self.port}{who} runs in normal mode, which offers no REPL: {SERVICE_MODE}, "
                "then run the command again")

    def close(self) -> None:
        if self._t is None:
            return
        if self.extended and not self.ended and not self.lost and self.info is not None:
            # Give the keypad its own watchdog back: left in the REPL, it resets as it would unattended.
            with contextlib.suppress(DeviceToolError):
                self.exec(f"import machine\nmachine.WDT(timeout={self.info.wdt_ms})")
            self.extended = False
        _close(self._t)
        self._t = None

    def __enter__(self) -> KeypadLink:
        return self.open()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def board(self) -> BoardInfo:
        if self.info is None:
            raise DeviceToolError(f"the link to {self.port} is not open")
        return self.info

    @property
    def transport(self) -> Any:
        """mpremote's transport of this session (for mpremote's own commands, flash.py)."""
        if self._t is None:
            raise DeviceToolError(f"the link to {self.port} is closed")
        return self._t

    @property
    def virtual(self) -> bool:
        """A simulator keypad (MicroPython unix port): the same session, but no esptool."""
        return self.board.platform == "linux"

    # -- commands --------------------------------------------------------------------------------
    def exec(self, code: str, timeout: float | None = None) -> str:
        if self._t is None:
            raise DeviceToolError(f"the link to {self.port} is closed")
        self._t.gap = timeout or self.timeout
        try:
            # mpremote prints what it read when the raw REPL stops answering: not for the terminal.
            with contextlib.redirect_stdout(io.StringIO()):
                out, err = self._t.exec_raw(code, timeout=self._t.gap)
        except (TransportError, OSError, ValueError) as exc:
            self.lost = True
            raise NoAnswer(f"the keypad on {self.port} stopped answering ({exc})") from exc
        if err:
            last = err.decode(errors="replace").strip().splitlines()[-1:]
            raise DeviceToolError(f"keypad on {self.port}: {' '.join(last) or 'error'}")
        return bytes(out).decode(errors="replace")

    def eval_json(self, code: str, timeout: float | None = None) -> Any:
        """Run ``code`` (which prints one JSON document last) and return the document."""
        out = self.exec(code, timeout).strip().splitlines()
        try:
            return json.loads(out[-1])
        except (IndexError, json.JSONDecodeError) as exc:
            raise DeviceToolError(f"keypad on {self.port} gave an unexpected answer: {out[-3:]}") from exc

    def exists(self, path: str) -> bool:
        return bool(self.eval_json(f"import os\ntry:\n os.stat({path!r});r=1\nexcept OSError:\n r=0\n"
                                   "print(r)"))

    def read_file(self, path: str) -> bytes | None:
        """The file's bytes (one exec, streamed as base64 lines), or None when there is no such file."""
        out = self.exec(_READ % (path, _READ_CHUNK))
        head, _, body = out.partition("\n")
        if head.strip() == "-":
            return None
        if head.strip() != "+":
            raise DeviceToolError(f"unexpected file data from the keypad: {out[:40]!r}")
        try:
            return b"".join(binascii.a2b_base64(line) for line in body.split())
        except (binascii.Error, ValueError) as exc:
            raise DeviceToolError(f"unexpected file data from the keypad reading {path}") from exc

    def write_file(self, path: str, data: bytes) -> None:
        """Write ``path`` whole: ``path.new`` first, flushed and closed, then renamed over ``path`` (one
        rename: atomic on littlefs). Chunks as large as the keypad's heap allows, several per exec."""
        tmp = path + ".new"
        n = self.write_chunk
        parts = [data[i:i + n] for i in range(0, len(data), n)] or [b""]
        for k, part in enumerate(parts):
            code = []
            if k == 0:
                code.append(f"import gc,binascii,os\ngc.collect()\n_f=open({tmp!r},'wb')")
            if part:
                code.append(f"_f.write(binascii.a2b_base64({binascii.b2a_base64(part, newline=False)!r}))")
            if k == len(parts) - 1:
                code.append(f"_f.flush()\n_f.close()\ndel _f\nos.rename({tmp!r},{path!r})")
            self.exec("\n".join(code))

    def rename(self, old: str, new: str) -> None:
        """One rename, replacing ``new`` (littlefs and the unix port replace atomically)."""
        self.exec(f"import os\nos.rename({old!r},{new!r})")

    def remove(self, path: str) -> None:
        self.exec(f"import os\ntry:\n os.remove({path!r})\nexcept OSError:\n pass")

    def sha256(self, paths: list[str]) -> dict[str, str | None]:
        """sha256 (hex) of each file, computed on the keypad; None for a missing file."""
        out: dict[str, str | None] = {}
        for i in range(0, len(paths), 16):          # a bounded list literal per exec
            got = self.eval_json(_SHA % (paths[i:i + 16],))
            out.update({str(k): (None if v is None else str(v)) for k, v in got.items()})
        return out

    def mkdirs(self, dirs: list[str]) -> None:
        """Each folder in order (parents first); existing ones are fine."""
        self.exec(f"import os\nfor _d in {dirs!r}:\n try:\n  os.mkdir(_d)\n except OSError:\n  pass")

    def listdir(self, path: str) -> list[tuple[str, bool]] | None:
        """(name, is a folder) of each entry, or None when there is no such folder."""
        got = self.eval_json(f"import os,json\ntry:\n print(json.dumps([[e[0],e[1]==0x4000] for e in "
                             f"os.ilistdir({path!r})]))\nexcept OSError:\n print('null')")
        if got is None:
            return None
        return [(str(name), bool(d)) for name, d in got]

    def rmtree(self, path: str) -> None:
        self.exec(_RMTREE % (path,))

    def reset(self) -> None:
        """machine.reset(): the keypad boots with what is on flash (on a simulated keypad too: the
        simulator restarts its process). The session ends here."""
        self.ended = True
        with contextlib.suppress(TransportError, OSError), contextlib.redirect_stdout(io.StringIO()):
            self._t.exec_raw_no_follow("import machine\nmachine.reset()")    # it resets under us
