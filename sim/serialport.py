"""A virtual USB serial cable: a pair of pseudo-terminals joined by socat.

The keypad process gets one end as its console (stdin/stdout), exactly where a real keypad's REPL sits
on its USB-serial chip; the other end (``host``) is what a technician's tools open as if it were
/dev/ttyUSB0: pyserial, mpremote, pytest-embedded.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

from .proc import end


class SerialError(RuntimeError):
    pass


class VirtualSerial:
    def __init__(self, folder: Path, name: str = "tty") -> None:
        self.device = folder / f"{name}-device"     # the keypad's end
        self.host = folder / f"{name}-usb"          # the technician's end
        self.proc: subprocess.Popen[str] | None = None
        self._ready = threading.Event()

    def start(self, timeout: float = 10.0) -> VirtualSerial:
        exe = shutil.which("socat")
        if exe is None:
            raise SerialError("socat is not installed (make test / make demo install it)")
        self.device.parent.mkdir(parents=True, exist_ok=True)
        for p in (self.device, self.host):
            p.unlink(missing_ok=True)
        self._ready.clear()
        self.proc = subprocess.Popen(
            [exe, "-d", "-d", f"pty,raw,echo=0,link={self.device}", f"pty,raw,echo=0,link={self.host}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True).start()
        if not self._ready.wait(timeout) or self.proc.poll() is not None:
            self.stop()
            raise SerialError("socat did not create the virtual serial pair")
        return self

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "starting data transfer loop" in line:
                self._ready.set()
        self._ready.set()

    def stop(self) -> None:
        end(self.proc, grace=5)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
