"""The enclosure label: device id, hall, window, epoch and a QR code of the same (never the key).

The QR code is printed as text to the terminal (segno's compact half-block rendering) and, on request,
saved as an SVG for a label printer. The QR payload is ``countersign:device=<id>;hall=<h>;window=<w>;
epoch=<e>``: a technician's phone or the hall manager's scanner reads which keypad sits at a window.
"""

from __future__ import annotations

import io
from pathlib import Path

from .errors import DeviceToolError


def payload(device: str, hall: str, window: str, epoch: int) -> str:
    return f"countersign:device={device};hall={hall};window={window};epoch={epoch}"


def render(device: str, hall: str, window: str, epoch: int, svg: Path | None = None) -> str:
    try:
        import segno
    except ImportError as exc:
        raise DeviceToolError("segno is not installed (pip install segno): no label") from exc
    qr = segno.make(payload(device, hall, window, epoch), error="m")
    buf = io.StringIO()
    qr.terminal(out=buf, compact=True)
    if svg is not None:
        qr.save(str(svg), scale=4, border=2)
    head = [f"Countersign keypad  {device}", f"hall {hall}  window {window}  key epoch {epoch}"]
    return "\n".join(head) + "\n" + buf.getvalue()
