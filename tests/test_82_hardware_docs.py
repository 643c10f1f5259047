"""The hardware reference and the technician's guide against the code they describe.

- the wiring diagrams (hardware/<board>/wiring.svg) are what tools/wiring.py makes from today's pin maps
  and BOM, and a changed pin map makes them stale;
- the BOM lists a part for every signal a pin map wires, and the parts the brief names;
- the key labels cover both scales in the firmware's key order (checked on the real firmware: cs.flow on
  the MicroPython unix port) with the protocol's score names, best score on the customer's left;
- the technician's guide uses the `countersign device` commands as the tool parses them, the console
  markers the firmware prints, and the feedback timings of the board module.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import json
import re
import shlex
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from mpy import FIRMWARE, micropython

from countersign.protocol.messages import SCORE_NAMES_ZH

ROOT = Path(__file__).resolve().parent.parent
HW = ROOT / "hardware"
GUIDE = ROOT / "docs" / "technician-guide.md"
BOARDS = sorted(p.parent for p in HW.glob("*/pins.json"))

sys.path.insert(0, str(ROOT / "tools"))
import wiring  # noqa: E402  (tools/ is a folder of scripts, not a package)

sys.path.remove(str(ROOT / "tools"))


def pin_map(board: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((board / "pins.json").read_text(encoding="utf-8"))
    return data


def bom() -> list[dict[str, str]]:
    with (HW / "BOM.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def labels() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((HW / "key-labels.json").read_text(encoding="utf-8"))
    return data


def module_constants(path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            with contextlib.suppress(ValueError):
                out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


# -- wiring diagrams ---------------------------------------------------------------------------------


def test_both_boards_have_a_pin_map_and_a_diagram() -> None:
    assert {b.name for b in BOARDS} == {"esp32c3-devkitm-1", "esp32s3-devkitc-1"}
    for b in BOARDS:
        assert (b / wiring.SVG_NAME).exists(), f"{b.name}: no wiring.svg (run python tools/wiring.py)"


@pytest.mark.parametrize("board", BOARDS, ids=lambda b: b.name)
def test_the_checked_in_diagram_is_current(board: Path) -> None:
    want = wiring.expected()[board / wiring.SVG_NAME]
    have = (board / wiring.SVG_NAME).read_text(encoding="utf-8")
    assert have == want, f"{board.name}/wiring.svg is out of date: run .venv/bin/python tools/wiring.py"
    ET.fromstring(have)                                     # well-formed SVG
    texts = " ".join(ET.fromstring(have).itertext())
    for role, gpio in pin_map(board)["pins"].items():
        assert f"GPIO{gpio}" in texts and role in texts, f"{role} on GPIO{gpio} missing from the diagram"
    for role, what in pin_map(board).get("on_board", {}).items():
        assert f"GPIO{pin_map(board)['pins'][role]} {role}: {what}" in texts, f"{role}: the board's own part"


def test_a_changed_pin_map_makes_the_diagram_stale(tmp_path: Path) -> None:
    hw = tmp_path / "hardware"
    shutil.copytree(HW, hw)
    c3 = hw / "esp32c3-devkitm-1" / "pins.json"
    m = json.loads(c3.read_text(encoding="utf-8"))
    m["pins"]["buzzer"], m["pins"]["key3"] = m["pins"]["key3"], m["pins"]["buzzer"]
    c3.write_text(json.dumps(m), encoding="utf-8")
    fresh = wiring.expected(hw)
    assert fresh[c3.parent / wiring.SVG_NAME] != (c3.parent / wiring.SVG_NAME).read_text(encoding="utf-8")
    assert fresh[hw / "esp32s3-devkitc-1" / wiring.SVG_NAME] == \
        (HW / "esp32s3-devkitc-1" / wiring.SVG_NAME).read_text(encoding="utf-8")


def test_the_check_mode_of_the_script_agrees() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "wiring.py"), "--check"], capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


# -- bill of materials -------------------------------------------------------------------------------


@pytest.mark.parametrize("board", BOARDS, ids=lambda b: b.name)
def test_the_bom_lists_every_part_the_pin_map_wires(board: Path) -> None:
    rows = bom()
    wired = {role for r in rows for role in r["wired_to"].split(";") if role}
    pins = pin_map(board)["pins"]
    assert set(pins) <= wired, f"no BOM part wired to {sorted(set(pins) - wired)}"
    assert wired <= set(pins), f"BOM wires signals no pin map has: {sorted(wired - set(pins))}"
    norm = board.name.replace("-", "").lower()
    assert any(norm in r["part_number"].replace("-", "").replace(" ", "").lower() for r in rows), \
        f"the board {board.name} itself is not in the BOM"


def test_the_bom_has_the_parts_the_keypad_needs_with_numbers_and_costs() -> None:
    rows = bom()
    items = {r["item"]: r for r in rows}
    for item in ("board-c3", "board-s3", "key-switch", "key-cap", "invite-switch", "led-rgb", "r-led-data",
                 "c-led", "buzzer", "q-buzzer", "oled", "enclosure", "usb-cable", "wall-mount"):
        assert item in items, f"BOM has no {item}"
    assert "SSD1306" in items["oled"]["part_number"] + items["oled"]["description"]
    for r in rows:
        assert r["part_number"].strip(), f"{r['item']}: no part number"
        assert float(r["unit_cost_cny"]) > 0, f"{r['item']}: no cost"
        assert int(r["qty_4key"]) >= 0 and int(r["qty_5key"]) >= 0
    # score keys and caps: one per key of each scale; the key5 position only on 5-key keypads
    for item in ("key-switch", "key-cap"):
        assert (int(items[item]["qty_4key"]), int(items[item]["qty_5key"])) == (4, 5), item
    # one addressable RGB LED on the one LED line, with its series resistor and decoupling capacitor, and a
    # part whose colour order matches the board's own LED sharing that line on the C3 (WS2812B: GRB)
    for item in ("led-rgb", "r-led-data", "c-led"):
        qty = (int(items[item]["qty_4key"]), int(items[item]["qty_5key"]))
        assert items[item]["wired_to"] == "led" and qty == (1, 1), item
    assert "WS2812B" in items["led-rgb"]["part_number"] and "GRB" in items["led-rgb"]["description"]
    assert "330" in items["r-led-data"]["part_number"] and "100 nF" in items["c-led"]["description"]
    assert int(items["board-c3"]["qty_4key"]) == 1


# -- key labels ----------------------------------------------------------------------------------------


def firmware_scores(scale: int) -> list[int]:
    """The score cs.flow gives each key index, run on the MicroPython unix port."""
    script = (
        "import sys\n"
        f"sys.path.insert(0, {str(FIRMWARE)!r})\n"
        "from cs.flow import Flow\n"
        "t = [0]\n"
        f"scale = {scale}\n"
        "out = []\n"
        "for k in range(scale):\n"
        "    f = Flow(scale, True, lambda: t[0])\n"
        "    f.on_prompt(1, '10023', 2, 'T-1', 20)\n"
        "    out.append(f.press(k)[1])\n"
        "print('SCORES', ' '.join(str(s) for s in out))\n"
    )
    r = subprocess.run([micropython(), "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("SCORES"))
    return [int(x) for x in line.split()[1:]]


@pytest.mark.parametrize("scale", [4, 5])
def test_key_labels_follow_the_firmware_key_order(scale: int) -> None:
    entries = labels()["scales"][str(scale)]
    score_keys = module_constants(FIRMWARE / "boards" / "esp32c3.py")["SCORE_KEYS"]
    # the board hands cs.keys the pins of SCORE_KEYS[:scale] in order: key index i is pin role keyN
    roles = list(score_keys[:scale])
    scores = firmware_scores(scale)
    assert scores == list(range(1, scale + 1))
    by_role = {e["role"]: e for e in entries}
    assert set(by_role) == set(roles), f"{scale}-key labels cover {sorted(by_role)}"
    for index, role in enumerate(roles):
        e = by_role[role]
        assert e["score"] == scores[index], f"{role}: label says score {e['score']}, firmware {scores[index]}"
        assert e["zh"] == SCORE_NAMES_ZH[scale][e["score"]], f"{role}: {e['zh']}"
    # best on the customer's left: position 1 is the top score, then down one per position
    assert [e["score"] for e in sorted(entries, key=lambda e: e["position"])] == list(range(scale, 0, -1))
    assert labels()["invite"]["role"] == "invite" and labels()["invite"]["side"] == "clerk"


def test_the_hardware_readme_shows_the_same_key_order() -> None:
    text = (HW / "README.md").read_text(encoding="utf-8")
    for scale in (4, 5):
        row = next(ln for ln in text.splitlines() if ln.startswith(f"| {scale}-key keypad |"))
        cells = [c.strip() for c in row.strip("|").split("|")][1:]
        for e in labels()["scales"][str(scale)]:
            assert cells[e["position"] - 1] == f"{e['role']}: {e['zh']} ({e['score']})", (scale, e)
    assert "../docs/technician-guide.md" in text, "the README links the technician's guide"


# -- the technician's guide ---------------------------------------------------------------------------


def guide_commands() -> list[list[str]]:
    """Every `countersign device ...` command in the guide's code blocks, continuation lines joined."""
    text = GUIDE.read_text(encoding="utf-8")
    cmds = []
    for block in re.findall(r"```\n(.*?)```", text, flags=re.S):
        for cmd in block.replace("\\\n", " ").splitlines():
            if cmd.startswith("countersign device "):
                cmds.append(shlex.split(cmd)[2:])
    return cmds


def test_the_guide_uses_the_device_commands_as_the_tool_parses_them() -> None:
    import argparse

    from countersign.device import cli

    parser = argparse.ArgumentParser(prog="countersign device")
    cli.register(parser)
    cmds = guide_commands()
    assert {c[0] for c in cmds} == {"flash", "provision", "replace"}, [c[0] for c in cmds]
    for argv in cmds:
        ns = parser.parse_args(argv)                # SystemExit (a failure here) on an unknown option
        assert ns.port.startswith("/dev/tty")
    text = GUIDE.read_text(encoding="utf-8")
    for usage in ("countersign device flash --port", "countersign device provision --port",
                  "countersign device inspect --port", "countersign device replace --port", "--window"):
        assert usage in text, usage


def test_the_guide_names_the_console_markers_the_firmware_prints() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    app = "".join((FIRMWARE / f).read_text() for f in ("cs/app.py", "cs/start.py", "main.py"))
    for marker in ("CS:BOOT", "CS:PROVISIONED", "CS:UNPROVISIONED", "CS:LINK", "CS:RATED", "CS:STORED",
                   "CS:STATUS", "CS:FULL", "CS:PROMPT", "CS:NORATING", "CS:SERVICE", "CS:WIFI",
                   "CS:BADCONFIG", "CS:NOAPP", "CS:CRASH"):
        # "CS:%s" % ("RATED" if rating else "NORATING") prints two of them
        printed = marker in app or (f'"{marker[3:]}"' in app and '"CS:%s' in app)
        assert printed, f"{marker} is no longer printed by the firmware: update the guide and this test"
        assert marker in text, f"the guide does not explain {marker}"
    assert "CS:LINK up" in text and "`status`" in text and "/v1/status" in text
    assert 'if line == "status"' in app


def test_the_guide_explains_every_feedback_pattern_with_its_timing() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    c = module_constants(FIRMWARE / "boards" / "esp32c3.py")
    assert f"{c['PAT_PRESSED'][0]} ms" in text                                   # pressed: green
    assert f"({c['PAT_BEEP'][0]} ms)" in text                                     # pressed: beep
    assert f"{c['PAT_STORED'][0]}/{c['PAT_STORED'][1]} ms" in text                # stored: two blinks
    assert f"{c['PAT_ERROR_BLINK'][0]}/{c['PAT_ERROR_BLINK'][1]} ms" in text      # error N: N blinks
    assert f"{c['PAT_LOW'][0]} ms" in text                                        # error: low tone
    app = (FIRMWARE / "cs" / "app.py").read_text()
    errors = {int(m) for m in re.findall(r"_ERR_\w+ = const\((\d+)\)", app)}
    assert errors, "no error codes found in cs/app.py"
    for code in errors:
        assert f"N = {code}" in text, f"error code {code} is not explained in the guide"
    for screen in ("Please rate", "Thank you", "Window closed"):
        assert screen in (FIRMWARE / "cs" / "flow.py").read_text() and screen in text


def test_the_guide_is_bilingual_section_by_section() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    heads = [ln for ln in text.splitlines() if ln.startswith("## ")]
    assert len(heads) >= 7
    for h in heads:
        assert re.search(r"[\u4e00-\u9fff]", h) and re.search(r"[A-Za-z]{3}", h), h
    sections = re.split(r"\n## ", text)[1:]
    for s in sections:
        zh = len(re.findall(r"[\u4e00-\u9fff]", s))
        en = len(re.findall(r"\b[A-Za-z]{3,}\b", s))
        assert zh > 40 and en > 40, f"section {s.splitlines()[0]!r}: {zh} CJK characters, {en} English words"
