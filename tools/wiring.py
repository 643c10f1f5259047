"""Wiring diagrams of the keypad boards, generated from their pin maps.

For every ``hardware/<board>/pins.json`` it writes ``hardware/<board>/wiring.svg``: each signal from its
GPIO to the parts wired to it (the BOM items whose ``wired_to`` names the signal, ``hardware/BOM.csv``),
the power rails, and the key layout the customer sees for the 4- and 5-key scales
(``hardware/key-labels.json``). The pin map is the single source: change it (and the board module that
embeds it), run this script, commit both. ``--check`` exits 1 when a checked-in diagram is out of date
(tests/test_82_hardware_docs.py runs the same comparison).

    python tools/wiring.py [--check]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parent.parent
HARDWARE = ROOT / "hardware"
BOM = HARDWARE / "BOM.csv"
KEY_LABELS = HARDWARE / "key-labels.json"
SVG_NAME = "wiring.svg"

# Signal order on the diagram: the score keys in firmware order (key1 = score 1), then the clerk's key,
# feedback, display.
ROLE_ORDER = ("key1", "key2", "key3", "key4", "key5", "invite",
              "led", "buzzer", "sda", "scl")
FONT = "'Noto Sans CJK SC','Source Han Sans SC','Microsoft YaHei','PingFang SC',sans-serif"
CAP_COLOURS = {"green": "#3aa35b", "yellow": "#e0b400", "red": "#d23c3c", "blue": "#3b6fd1"}

# How each kind of signal is wired (the parts come from the BOM): text after the part list.
HOW = {
    "key": "switch to GND, internal pull-up, active low",
    "invite": "switch to GND, internal pull-up, active low; on the clerk's side",
    "led": "GPIO - 330 Ohm - LED DIN; VCC 3V3, 100 nF at the LED; green: pressed 600 ms, stored 2 blinks; "
           "red: error N = N blinks",
    "buzzer": "GPIO (PWM) - 1 kOhm - NPN base; buzzer 3V3 to collector, 1N4148 across it, emitter to GND",
    "sda": "OLED SDA (SSD1306 at 0x3C, 400 kHz)",
    "scl": "OLED SCL",
}
POWER = (
    ("5V", "USB 5 V in (the board's USB-UART port): counter PC or 5 V 1 A wall adapter"),
    ("3V3", "board regulator out: LED VCC, OLED VCC, buzzer +, (optional) external key pull-ups"),
    ("GND", "keys, invite key, LED GND, transistor emitter, OLED GND"),
)


class WiringError(Exception):
    pass


@dataclass(frozen=True)
class Part:
    item: str
    part_number: str
    wired_to: tuple[str, ...]


def bom_parts(path: Path = BOM) -> list[Part]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [Part(r["item"], r["part_number"], tuple(x for x in r["wired_to"].split(";") if x)) for r in rows]


def key_labels(path: Path = KEY_LABELS) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _label_for(labels: dict[str, Any], role: str) -> str:
    """What a score key means on each scale: 'score 1: 不满意 (4-key) / 非常不满意 (5-key)'."""
    parts = []
    score = None
    for scale in ("4", "5"):
        entry = next((e for e in labels["scales"][scale] if e["role"] == role), None)
        if entry is None:
            parts.append(f"not fitted ({scale}-key)")
        else:
            score = entry["score"]
            parts.append(f"{entry['zh']} {entry['en']} ({scale}-key, position {entry['position']})")
    return f"score {score}: " + " / ".join(parts)


class _Svg:
    def __init__(self) -> None:
        self.items: list[str] = []

    def text(self, x: float, y: float, s: str, size: int = 13, anchor: str = "start", weight: str = "normal",
             fill: str = "#222") -> None:
        self.items.append(f'<text x="{x:g}" y="{y:g}" font-size="{size}" text-anchor="{anchor}" '
                          f'font-weight="{weight}" fill="{fill}">{escape(s)}</text>')

    def rect(self, x: float, y: float, w: float, h: float, fill: str = "none", stroke: str = "#222",
             rx: float = 4) -> None:
        self.items.append(f'<rect x="{x:g}" y="{y:g}" width="{w:g}" height="{h:g}" rx="{rx:g}" fill="{fill}" '
                          f'stroke="{stroke}" stroke-width="1.5"/>')

    def line(self, x1: float, y1: float, x2: float, y2: float, stroke: str = "#222") -> None:
        self.items.append(f'<line x1="{x1:g}" y1="{y1:g}" x2="{x2:g}" y2="{y2:g}" stroke="{stroke}" '
                          'stroke-width="1.5"/>')

    def dot(self, x: float, y: float) -> None:
        self.items.append(f'<circle cx="{x:g}" cy="{y:g}" r="3.5" fill="#222"/>')

    def render(self, width: int, height: int, title: str) -> str:
        head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
                f'viewBox="0 0 {width} {height}" font-family="{FONT}">\n'
                f'<title>{escape(title)}</title>\n'
                f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>\n')
        return head + "\n".join(self.items) + "\n</svg>\n"


def render(pin_map: dict[str, Any], parts: list[Part], labels: dict[str, Any], source: str) -> str:
    """The wiring diagram of one board as SVG text (deterministic: same inputs, same bytes)."""
    pins: dict[str, int] = pin_map["pins"]
    if set(pins) != set(ROLE_ORDER):
        raise WiringError(f"{source}: roles {sorted(pins)} are not {sorted(ROLE_ORDER)}")
    restricted: dict[str, Any] = pin_map.get("restricted", {})
    width, row_h, top = 1300, 40, 96
    rows = len(ROLE_ORDER) + len(POWER)
    layout_top = top + rows * row_h + 40
    height = layout_top + 2 * 110 + 70
    svg = _Svg()
    title = f"Countersign keypad wiring: {pin_map['board']}"
    svg.text(20, 30, title, size=20, weight="bold")
    svg.text(20, 52, f"{pin_map['module']}. Keys switch to GND (internal pull-ups, active low); "
                     "3.3 V logic everywhere.", size=12)
    svg.text(20, 70, f"Generated by tools/wiring.py from {source} and hardware/BOM.csv: do not edit by hand.",
             size=11, fill="#666")
    bx, bw = 20, 330
    svg.rect(bx, top - 24, bw, rows * row_h + 16, fill="#f4f6f8")
    svg.text(bx + bw / 2, top - 6, pin_map["board"], size=14, anchor="middle", weight="bold")
    px, cx = bx + bw, 470
    for i, role in enumerate(ROLE_ORDER):
        y = top + 18 + i * row_h
        gpio = pins[role]
        note = " *" if str(gpio) in restricted else ""
        svg.text(px - 12, y + 4, f"GPIO{gpio}{note}  {role}", size=13, anchor="end")
        svg.dot(px, y)
        svg.line(px, y, cx, y)
        wired = [p for p in parts if role in p.wired_to]
        if not wired:
            raise WiringError(f"no BOM part is wired to {role} (hardware/BOM.csv wired_to)")
        kind = "key" if role.startswith("key") else role
        svg.rect(cx, y - 16, width - cx - 20, 32, fill="#ffffff", stroke="#888")
        what = " + ".join(f"{p.item} ({p.part_number.split(' (')[0]})" for p in wired)
        svg.text(cx + 8, y - 2, what, size=12, weight="bold")
        detail = HOW[kind]
        if kind == "key":
            detail = _label_for(labels, role) + "; " + detail
        elif role == "invite":
            inv = labels["invite"]
            detail = f"{inv['zh']} {inv['en']}; " + detail
        svg.text(cx + 8, y + 12, detail, size=11, fill="#333")
    for j, (rail, what) in enumerate(POWER):
        y = top + 18 + (len(ROLE_ORDER) + j) * row_h
        svg.text(px - 12, y + 4, rail, size=13, anchor="end", weight="bold")
        svg.dot(px, y)
        svg.line(px, y, cx, y, stroke="#b33" if rail != "GND" else "#222")
        svg.text(cx + 8, y + 4, what, size=12)
    if restricted:
        notes = "; ".join(f"GPIO{k}: allowed for {', '.join(v['allowed'])}" for k, v in sorted(
            restricted.items(), key=lambda kv: int(kv[0])))
        svg.text(20, top + rows * row_h + 10, f"* restricted pins (see {source}): {notes}", size=11,
                 fill="#666")
    # a part already on the board that shares a signal (the C3 DevKitM-1's own RGB LED on the LED line)
    for k, (role, what) in enumerate(sorted(pin_map.get("on_board", {}).items())):
        svg.text(20, top + rows * row_h + 26 + k * 14, f"On the board: GPIO{pins[role]} {role}: {what}",
                 size=11, fill="#666")
    svg.text(20, layout_top, "Key layout facing the customer (best score on the left; key N = score N):",
             size=14, weight="bold")
    for k, scale in enumerate(("4", "5")):
        y0 = layout_top + 16 + k * 110
        svg.text(20, y0 + 48, f"{scale}-key", size=13, weight="bold")
        for e in labels["scales"][scale]:
            x = 90 + (e["position"] - 1) * 170
            svg.rect(x, y0, 150, 80, fill=CAP_COLOURS.get(e["cap"], "#ccc"), stroke="#333", rx=10)
            svg.text(x + 75, y0 + 30, e["zh"], size=18, anchor="middle", weight="bold", fill="#fff")
            svg.text(x + 75, y0 + 50, e["en"], size=11, anchor="middle", fill="#fff")
            svg.text(x + 75, y0 + 68, f"{e['role']} = GPIO{pins[e['role']]}, score {e['score']}", size=11,
                     anchor="middle", fill="#fff")
    inv = labels["invite"]
    y = layout_top + 16 + 2 * 110 + 10
    svg.text(20, y, f"Clerk side (facing the clerk): {inv['zh']} {inv['en']} = invite = "
                    f"GPIO{pins['invite']}; the LED and the OLED face the customer.", size=12)
    return svg.render(width, height, title)


def boards(hardware: Path = HARDWARE) -> list[Path]:
    return sorted(p.parent for p in hardware.glob("*/pins.json"))


def expected(hardware: Path = HARDWARE) -> dict[Path, str]:
    """Every diagram this script writes, by path, with its content."""
    parts = bom_parts(hardware / BOM.name)
    labels = key_labels(hardware / KEY_LABELS.name)
    out = {}
    for d in boards(hardware):
        pin_map = json.loads((d / "pins.json").read_text(encoding="utf-8"))
        source = f"hardware/{d.name}/pins.json"
        out[d / SVG_NAME] = render(pin_map, parts, labels, source)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="wiring diagrams from hardware/<board>/pins.json")
    ap.add_argument("--check", action="store_true", help="exit 1 if a checked-in diagram is out of date")
    args = ap.parse_args(argv)
    try:
        want = expected()
    except (OSError, ValueError, KeyError, WiringError) as exc:
        print(f"wiring: {exc}", file=sys.stderr)
        return 2
    stale = []
    for path, text in want.items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    if args.check and stale:
        names = ", ".join(str(p.relative_to(ROOT)) for p in stale)
        print(f"out of date (run python tools/wiring.py): {names}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
