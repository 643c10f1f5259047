"""``python -m countersign.sim.faketime_run ARGS``: ``countersign ARGS`` in a process under libfaketime.

The clock-jump fault runs the gateway with libfaketime's offset file and the monotonic clock left real
(FAKETIME_DONT_FAKE_MONOTONIC=1): an NTP step moves the wall clock, never the monotonic one, and faking
both makes glibc's sem_clockwait take a faked deadline to the kernel, so every timed lock wait hangs
(wolfcw/libfaketime#390). But libfaketime 0.9.10 (Debian 12's) then mis-converts
clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME), passing the kernel a negative time, and that is the
call behind every ``time.sleep`` since Python 3.11 (wolfcw/libfaketime#426): each one raised EINVAL,
paho's reconnect wait among them, so the first broker outage after a jump killed the gateway's MQTT
threads and left it deaf. Here ``time.sleep`` waits on an Event instead (a sem_clockwait on the real
monotonic clock, which libfaketime leaves alone), then the ordinary CLI runs. Only the simulator uses
this, and only under libfaketime: production code keeps the interpreter's own ``time.sleep``.
"""

from __future__ import annotations

import operator
import runpy
import sys
import threading
import time
from typing import SupportsIndex


def _sleep(seconds: float | SupportsIndex) -> None:
    s = seconds if isinstance(seconds, float | int) else operator.index(seconds)
    if s < 0:
        raise ValueError("sleep length must be non-negative")
    threading.Event().wait(s)


def main() -> None:
    time.sleep = _sleep
    # The CLI sits above the simulator in the import layers, so it is run as a program, as by
    # `python -m countersign.cli`, not imported.
    sys.argv[0] = "countersign"
    runpy.run_module("countersign.cli", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
