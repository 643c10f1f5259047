"""Board pin maps (hardware/<board>/pins.json) against the board modules that use them (read with ast)
and the stock MicroPython images they run (hardware/micropython-pins.json).

Every pin a board module drives comes from its map, no two functions share a pin, every pin is a valid
GPIO of that board and not reserved there (restricted pins only in the roles their entry allows), every
pin is in the pin table of each stock image the board runs and not on that image's console, and the
ESP32-S3 board is the ESP32-C3 board with other numbers and nothing else.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BOARDS = ROOT / "firmware" / "boards"
HW = ROOT / "hardware"
MAPS = {"esp32c3": HW / "esp32c3-devkitm-1" / "pins.json", "esp32s3": HW / "esp32s3-devkitc-1" / "pins.json"}
STOCK = HW / "micropython-pins.json"
ROLES = {"key1", "key2", "key3", "key4", "key5", "invite", "led", "buzzer", "sda", "scl"}
MACHINE_CLASSES = {"Pin", "PWM", "I2C", "SoftI2C", "ADC", "Signal", "NeoPixel"}


def pin_map(board: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(MAPS[board].read_text())
    return data


def module(board: str) -> ast.Module:
    return ast.parse((BOARDS / f"{board}.py").read_text())


def embedded_pins(tree: ast.Module) -> dict[str, int]:
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "PINS"):
            value: dict[str, int] = ast.literal_eval(node.value)
            return value
    raise AssertionError("no module-level PINS dict")


def in_ranges(n: int, ranges: list[list[int]]) -> bool:
    return any(lo <= n <= hi for lo, hi in ranges)


def stock_images() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(STOCK.read_text(encoding="utf-8"))["images"]
    return data


def stock_image_problems(board_map: dict[str, Any], images: dict[str, Any]) -> list[str]:
    """What keeps a pin map from running on the stock images it names: a pin the image's machine.Pin refuses
    (not in its pin table: ValueError 'invalid pin' when the board starts), or one its console uses."""
    problems = []
    names = board_map.get("micropython_images") or []
    if not names:
        problems.append(f"{board_map['board']}: names no stock MicroPython image (micropython_images)")
    for name in names:
        image = images.get(name)
        if image is None:
            problems.append(f"{board_map['board']}: unknown image {name!r} (not in {STOCK.name})")
            continue
        for role, n in sorted(board_map["pins"].items()):
            if n not in image["pin_table"]:
                why = image["left_out"].get(str(n), {}).get("why", "not a GPIO of this chip")
                problems.append(f"{role} on GPIO{n}: not in {name}'s pin table ({why})")
            elif str(n) in image["console"]:
                problems.append(f"{role} on GPIO{n}: {name}'s console ({image['console'][str(n)]['why']})")
    return problems


@pytest.mark.parametrize("board", sorted(MAPS))
def test_pin_map_is_valid_and_safe(board: str) -> None:
    m = pin_map(board)
    pins: dict[str, int] = m["pins"]
    assert set(pins) == ROLES, f"{board}: roles {sorted(pins)}"
    numbers = list(pins.values())
    assert len(set(numbers)) == len(numbers), f"{board}: two functions share a pin: {pins}"
    reserved = {int(k) for k in m["reserved"]}
    restricted = {int(k): v for k, v in m["restricted"].items()}
    assert not reserved & set(restricted), "a pin is both reserved and restricted"
    for role, n in pins.items():
        assert isinstance(n, int) and in_ranges(n, m["gpio_valid"]), f"{board} {role}: GPIO{n} does not exist"
        assert n not in reserved, f"{board} {role}: GPIO{n} is reserved: {m['reserved'][str(n)]}"
        if n in restricted:
            allowed = restricted[n]["allowed"]
            assert role in allowed, f"{board} {role}: GPIO{n} only for {allowed}"
        assert m["why"].get(role), f"{board} {role}: no reason given for its pin"
    for k, why in [*m["reserved"].items(), *((k, v["why"]) for k, v in restricted.items())]:
        assert in_ranges(int(k), m["gpio_valid"]) and why, f"{board}: reserved GPIO{k} needs a reason"
    for k, v in restricted.items():
        assert set(v["allowed"]) <= ROLES, f"{board}: GPIO{k} allows roles no map has: {v['allowed']}"


# -- the stock MicroPython images ------------------------------------------------------------------------


def test_the_stock_image_data_is_complete_and_cited() -> None:
    data = json.loads(STOCK.read_text(encoding="utf-8"))
    versions = data["versions_checked"]
    assert versions[0] == "v1.25.0" and versions[-1] == "v1.28.0", versions
    images = data["images"]
    assert set(images) == {"ESP32_GENERIC_C3", "ESP32_GENERIC_S3", "ESP32_GENERIC_S3-SPIRAM_OCT"}
    for name, image in images.items():
        table, chip = set(image["pin_table"]), set(image["chip_gpios"])
        left_out, console = {int(k) for k in image["left_out"]}, {int(k) for k in image["console"]}
        assert table | left_out == chip and not table & left_out, f"{name}: table + left_out != the chip"
        assert console <= table, f"{name}: a console pin outside the table"
        for kind in ("left_out", "console", "config"):
            for k, entry in image[kind].items():
                where = f"{name} {kind} {k}"
                assert ("value" in entry) if kind == "config" else entry["why"], f"{where}: no reason"
                # a source names the MicroPython file and the versions it was read in
                assert re.search(r"ports/esp32/\S+ v1\.\d+\.\d+", entry["source"]), f"{where}: {entry}"
    c3, s3, oct_ = (images[n] for n in ("ESP32_GENERIC_C3", "ESP32_GENERIC_S3",
                                        "ESP32_GENERIC_S3-SPIRAM_OCT"))
    # the facts the pin plan rests on (issue 8), as read in ports/esp32/machine_pin.h
    assert {18, 19}.isdisjoint(c3["pin_table"])
    assert "#if !MICROPY_HW_ESP_USB_SERIAL_JTAG" in c3["left_out"]["19"]["source"]
    assert set(range(14, 18)).isdisjoint(c3["pin_table"]) and {int(k) for k in c3["console"]} == {20, 21}
    assert {43, 44, 19, 20} <= {int(k) for k in s3["console"]}
    assert 26 not in s3["pin_table"] and set(range(33, 38)) <= set(s3["pin_table"])
    assert set(range(33, 38)).isdisjoint(oct_["pin_table"])


@pytest.mark.parametrize("board", sorted(MAPS))
def test_the_pin_map_runs_on_the_stock_images_it_names(board: str) -> None:
    m = pin_map(board)
    images = stock_images()
    assert stock_image_problems(m, images) == []
    # and the map marks as reserved every GPIO those images take, so no one picks one of them later
    reserved = {int(k) for k in m["reserved"]}
    for name in m["micropython_images"]:
        taken = {int(k) for k in images[name]["left_out"]} | {int(k) for k in images[name]["console"]}
        missing = {n for n in taken if in_ranges(n, m["gpio_valid"])} - reserved
        assert not missing, f"{board}: GPIO{sorted(missing)} taken by {name} but not reserved in the map"


@pytest.mark.parametrize(("board", "role", "gpio", "says"), [
    ("esp32c3", "led", 19, "not in ESP32_GENERIC_C3's pin table"),            # the old plan's red LED
    ("esp32c3", "buzzer", 18, "not in ESP32_GENERIC_C3's pin table"),
    ("esp32c3", "led", 20, "ESP32_GENERIC_C3's console"),                     # UART0 RX: the REPL
    ("esp32c3", "key3", 15, "not in ESP32_GENERIC_C3's pin table"),           # flash
    ("esp32s3", "led", 19, "ESP32_GENERIC_S3's console"),                     # in the table, but USB CDC
    ("esp32s3", "led", 20, "ESP32_GENERIC_S3's console"),
    ("esp32s3", "key1", 26, "not in ESP32_GENERIC_S3's pin table"),           # PSRAM chip select
    ("esp32s3", "key1", 34, "not in ESP32_GENERIC_S3-SPIRAM_OCT's pin table"),  # octal PSRAM only
])
def test_a_pin_the_stock_image_takes_is_reported(board: str, role: str, gpio: int, says: str) -> None:
    m = copy.deepcopy(pin_map(board))
    m["pins"][role] = gpio
    problems = stock_image_problems(m, stock_images())
    assert any(p.startswith(f"{role} on GPIO{gpio}: {says}") for p in problems), problems


def test_a_board_that_names_no_known_image_is_reported() -> None:
    m = copy.deepcopy(pin_map("esp32c3"))
    m["micropython_images"] = ["ESP32_GENERIC_C6"]
    assert stock_image_problems(m, stock_images()) == ["esp32c3-devkitm-1: unknown image 'ESP32_GENERIC_C6' "
                                                        "(not in micropython-pins.json)"]
    del m["micropython_images"]
    assert stock_image_problems(m, stock_images())


def test_the_c3_keeps_clear_of_flash_console_usb_and_boot_pins() -> None:
    """The hazards of the ESP32-C3 DevKitM-1 on the stock image, independent of what its json claims."""
    pins = pin_map("esp32c3")["pins"]
    used = set(pins.values())
    assert 9 not in used, "GPIO9 is the BOOT strap (download mode when low)"
    assert not used & set(range(11, 18)), "GPIO11-17 are the SPI flash"
    assert not used & {18, 19}, "GPIO18/19 are not in the stock image's pin table (USB serial/JTAG console)"
    assert not used & {20, 21}, "GPIO20/21 are UART0: the REPL and flashing"
    assert pins["invite"] == 2 and pins["led"] == 8, "the straps used: GPIO2 the invite key, GPIO8 the LED"
    assert used & {2, 8, 9} == {2, 8}


def test_the_s3_uses_no_special_pin_at_all() -> None:
    used = set(pin_map("esp32s3")["pins"].values())
    assert not used & {0, 3, 45, 46}, "strapping pins"
    assert not used & {19, 20}, "USB"
    assert not used & set(range(26, 38)), "flash and octal PSRAM"
    assert not used & {43, 44}, "UART0 console"
    assert not pin_map("esp32s3")["restricted"]


@pytest.mark.parametrize("board", sorted(MAPS))
def test_board_module_embeds_its_pin_map(board: str) -> None:
    assert embedded_pins(module(board)) == pin_map(board)["pins"]


def test_every_pin_the_c3_module_drives_comes_from_the_map() -> None:
    tree = module("esp32c3")
    pins = pin_map("esp32c3")["pins"]
    used: set[str] = set()
    calls = key_loops = 0
    source = (BOARDS / "esp32c3.py").read_text()
    assert "p = self.PINS" in source and "for n in SCORE_KEYS + (INVITE_KEY,)]" in source
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            key = node.slice.value
            if isinstance(key, str) and key in ROLES | set(pins):
                used.add(key)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in MACHINE_CLASSES:
            calls += 1
            if node.func.id == "Pin":
                assert node.args, f"line {node.lineno}: Pin() without a pin"
                arg = node.args[0]
                # p = self.PINS; p["role"], or p[n] for n in the shared key role names
                assert isinstance(arg, ast.Subscript) and ast.unparse(arg.value) == "p", \
                    f"line {node.lineno}: pin number not from PINS: {ast.unparse(arg)}"
                if isinstance(arg.slice, ast.Constant):
                    assert arg.slice.value in pins, f"line {node.lineno}: {arg.slice.value!r} not in the map"
                else:
                    assert ast.unparse(arg.slice) == "n", ast.unparse(arg)
                    key_loops += 1
            if node.func.id == "NeoPixel":
                # the LED's pin is a Pin made from PINS above, handed in
                assert node.args and not isinstance(node.args[0], ast.Constant), f"line {node.lineno}"
            for kw in node.keywords:
                if kw.arg in {"sda", "scl", "pin"}:
                    assert not isinstance(kw.value, ast.Constant), f"line {node.lineno}: literal {kw.arg}"
    assert calls >= 5 and key_loops == 1
    # The key pins come from the key role names (SCORE_KEYS + INVITE_KEY, module level in esp32c3.py).
    shared = ast.parse((BOARDS / "esp32c3.py").read_text())
    names: dict[str, Any] = {}
    for node in shared.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            with contextlib.suppress(ValueError):
                names[node.targets[0].id] = ast.literal_eval(node.value)
    key_roles = {*names["SCORE_KEYS"], names["INVITE_KEY"]}
    assert used | key_roles == ROLES, f"roles never driven: {sorted(ROLES - used - key_roles)}"
    assert names["SCORE_KEYS"] == ("key1", "key2", "key3", "key4", "key5"), "keys in score order"


def test_only_board_modules_import_machine_or_network() -> None:
    fw = ROOT / "firmware"
    for path in fw.rglob("*.py"):
        tree = ast.parse(path.read_text())
        mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        mods |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        if mods & {"machine", "network"}:
            # The board modules only: the hardware boards, the sim board (whose machine is the
            # simulated esp32 port's watchdog and reset) and boards.reset(); never cs/ or main.py.
            assert path.parent == BOARDS, f"{path.relative_to(ROOT)} imports machine/network"
            if path.name in {"__init__.py", "sim.py"}:
                assert "network" not in mods and not re.search(r"\bPin\(", path.read_text()), path


def test_the_s3_board_differs_from_the_c3_only_in_pin_numbers() -> None:
    c3, s3 = pin_map("esp32c3"), pin_map("esp32s3")
    assert set(c3["pins"]) == set(s3["pins"]), "same functions on both boards"
    assert c3["pins"] != s3["pins"]
    tree = module("esp32s3")
    body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    kinds = [type(n).__name__ for n in body]
    assert kinds == ["ImportFrom", "Assign", "ClassDef"], kinds
    imp, _, cls = body
    assert isinstance(imp, ast.ImportFrom) and imp.module == "boards.esp32c3"
    assert [a.name for a in imp.names] == ["Board"]
    assert isinstance(cls, ast.ClassDef) and cls.name == "Board"
    assert [ast.unparse(b) for b in cls.bases] == [imp.names[0].asname or "Board"]
    members = {t.id: ast.unparse(n.value) for n in cls.body if isinstance(n, ast.Assign)
               for t in n.targets if isinstance(t, ast.Name)}
    assert members == {"name": "'esp32s3'", "PINS": "PINS"}, members
    assert all(isinstance(n, ast.Assign) for n in cls.body), "no methods of its own"
