"""The serial link to a keypad: mpremote's transport (pyserial underneath), raw REPL only.

Why mpremote's Python API: it is what the field already trusts to reach a MicroPython board over USB
serial, and its raw REPL protocol (Ctrl-C, Ctrl-A, raw paste) works the same on an ESP32 and on the
simulator's keypads (the unix port on a socat cable, started as ``micropython -i main.py``).

Entering the raw REPL interrupts the keypad's app (Ctrl-C; the sim board raises KeyboardInterrupt on a
0x03 byte). No soft reset is sent (the unix port has none; on a board it would restart the app). After
the work: ``reset()`` on a board, ``restart_app()`` runs main.py again in the same interpreter (the
simulator), or the caller asks for a power cycle.

Every wait is bounded by ``timeout``: a keypad that does not answer becomes ``NoAnswer`` with the port's
name, never a hang.
"""

from __future__ import annotations

import contextlib
import json
import os
from types import TracebackType
from typing import Any

from .errors import DeviceToolError, NoAnswer

_READ_CHUNK = 256          # bytes per read call: its repr must fit the keypad's small heap
_WRITE_CHUNK = 1024


def _quote(path: str) -> str:
    return repr(path)


class KeypadLink:
    """A raw-REPL session with one keypad. Use as a context manager; ``open()`` interrupts the app."""

    def __init__(self, port: str, timeout: float = 5.0) -> None:
        self.port = port
        self.timeout = timeout
        self._t: Any = None
        self.platform = ""

    # -- session ---------------------------------------------------------------------------------
    def open(self) -> KeypadLink:
        try:
            from mpremote.transport import TransportError
            from mpremote.transport_serial import SerialTransport
        except ImportError as exc:
            raise DeviceToolError("mpremote is not installed (pip install mpremote)") from exc
        if not os.path.exists(self.port):
            raise DeviceToolError(f"no such serial port {self.port}")
        # A simulator's cable end is a symlink to /dev/pts/N: mpremote reads a pty by its real name.
        real = os.path.realpath(self.port)
        try:
            self._t = SerialTransport(real, 115200, timeout=self.timeout)
        except TransportError as exc:
            raise DeviceToolError(f"cannot open serial port {self.port} (in use by another program?)"
                                  ) from exc
        except OSError as exc:
            raise DeviceToolError(f"cannot open serial port {self.port}: {exc}") from exc
        try:
            self._t.enter_raw_repl(soft_reset=False, timeout_overall=self.timeout)
        except (TransportError, OSError) as exc:
            self.close()
            raise NoAnswer(f"no keypad answers on {self.port} (no MicroPython REPL within "
                           f"{self.timeout:g} s): is it powered and is this its port?") from exc
        # An interrupted app's tasks stay in asyncio's queue (a module global) and hold its heap: a new
        # loop releases them before anything here allocates.
        self.platform = self.exec("import sys,gc\nif 'asyncio.core' in sys.modules:\n"
                                  " sys.modules['asyncio'].new_event_loop()\n"
                                  " sys.modules['asyncio.core'].cur_task=None\n"
                                  "gc.collect()\nprint(sys.platform)").strip()
        return self

    def close(self) -> None:
        if self._t is not None:
            with contextlib.suppress(OSError):      # the cable is gone already
                self._t.close()
            self._t = None

    def __enter__(self) -> KeypadLink:
        return self.open()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def virtual(self) -> bool:
        """A simulator keypad (MicroPython unix port): no ROM partition, no esptool, no machine.reset."""
        return self.platform == "linux"

    # -- commands --------------------------------------------------------------------------------
    def exec(self, code: str) -> str:
        from mpremote.transport import TransportError, TransportExecError

        if self._t is None:
            raise DeviceToolError(f"the link to {self.port} is closed")
        try:
            out, err = self._t.exec_raw(code, timeout=self.timeout)
        except TransportExecError as exc:       # pragma: no cover - exec_raw returns err instead
            raise DeviceToolError(f"keypad on {self.port}: {exc.error_output.strip()}") from exc
        except (TransportError, OSError, ValueError) as exc:
            raise NoAnswer(f"the keypad on {self.port} stopped answering ({exc})") from exc
        if err:
            last = err.decode(errors="replace").strip().splitlines()[-1:]
            raise DeviceToolError(f"keypad on {self.port}: {' '.join(last) or 'error'}")
        return bytes(out).decode(errors="replace")

    def eval_json(self, code: str) -> Any:
        """Run ``code`` (which prints one JSON document last) and return the document."""
        out = self.exec(code).strip().splitlines()
        try:
            return json.loads(out[-1])
        except (IndexError, json.JSONDecodeError) as exc:
            raise DeviceToolError(f"keypad on {self.port} gave an unexpected answer: {out[-3:]}") from exc

    def exists(self, path: str) -> bool:
        return bool(self.eval_json(f"import os\ntry:\n os.stat({_quote(path)});r=1\nexcept OSError:\n r=0\n"
                                   "print(r)"))

    def read_file(self, path: str) -> bytes | None:
        """The file's bytes, or None when there is no such file."""
        if not self.exists(path):
            return None
        self.exec(f"import gc;gc.collect();_f=open({_quote(path)},'rb')")
        data = bytearray()
        try:
            while True:
                chunk = self.exec(f"print(repr(_f.read({_READ_CHUNK})))").strip()
                value = _literal_bytes(chunk)
                if not value:
                    break
                data += value
        finally:
            self.exec("_f.close();del _f")
        return bytes(data)

    def write_file(self, path: str, data: bytes) -> None:
        """Write ``path`` whole: ``path.new`` first, flushed and closed, then renamed over ``path``."""
        tmp = path + ".new"
        self.exec(f"import gc;gc.collect();_f=open({_quote(tmp)},'wb')")
        for i in range(0, len(data), _WRITE_CHUNK):
            self.exec(f"_f.write({data[i:i + _WRITE_CHUNK]!r})")
        self.exec("_f.flush();_f.close();del _f")
        self.rename(tmp, path)

    def rename(self, old: str, new: str) -> None:
        self.exec(f"import os\ntry:\n os.rename({_quote(old)},{_quote(new)})\nexcept OSError:\n"
                  f" os.remove({_quote(new)});os.rename({_quote(old)},{_quote(new)})")

    def remove(self, path: str) -> None:
        self.exec(f"import os\ntry:\n os.remove({_quote(path)})\nexcept OSError:\n pass")

    def reset(self) -> None:
        """A board: machine.reset() (the app boots with what is on flash). Not for the simulator."""
        from mpremote.transport import TransportError

        with contextlib.suppress(TransportError, OSError):   # it resets under us: no answer is right
            self._t.exec_raw_no_follow("import machine\nmachine.reset()")

    def restart_app(self) -> None:
        """Run main.py again in this interpreter (the simulator's keypads; on a board use reset())."""
        self._t.exit_raw_repl()
        # `import main` compiles the file as it reads it (no copy of its text in the heap).
        self._t.serial.write(b"import sys,gc;sys.modules.pop('main',None);gc.collect();import main\r")


def _literal_bytes(text: str) -> bytes:
    import ast

    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as exc:
        raise DeviceToolError(f"unexpected file data from the keypad: {text[:40]!r}") from exc
    if not isinstance(value, bytes):
        raise DeviceToolError(f"unexpected file data from the keypad: {text[:40]!r}")
    return value
