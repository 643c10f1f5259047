"""`make firmware`: the keypad bundles' flash sizes against firmware/size-budget.json (tools/fwsize.py).

The check passes on the firmware as it is, prints every figure (per board the .mpy tree that
`countersign device flash` writes on a stock image and the ROMFS image, main.py, every module) with its
budget and headroom, and fails (exit 1, naming what is over) as soon as a budget is lowered below what
the bundle needs; the module sizes it reports are read from the ROMFS image that would be flashed and
must match the tree's files.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from countersign.common import bundle as fwbundle

ROOT = Path(__file__).resolve().parent.parent
FWSIZE = ROOT / "tools" / "fwsize.py"
BUDGET = ROOT / "firmware" / "size-budget.json"
FIRMWARE = ROOT / "firmware"
BOARDS = ("esp32c3", "esp32s3", "sim")


def fwsize(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(FWSIZE), *args], capture_output=True, text=True, timeout=180,
                          check=False, cwd=ROOT)


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fresh bundles of this tree (their own folder: other runs may be building out/firmware-bundle)."""
    folder = tmp_path_factory.mktemp("bundles")
    for board in BOARDS:
        fwbundle.build(board, folder)
    return folder


def figures(line: str) -> tuple[int, int, int]:
    """(used, budget, headroom) from one line of the report."""
    m = re.search(r"(\d+) B of +(\d+) B, headroom +(-?\d+) B", line)
    assert m, line
    return int(m[1]), int(m[2]), int(m[3])


def budget() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(BUDGET.read_text(encoding="utf-8"))
    return data


def write_budget(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def lines_of(stdout: str) -> dict[str, str]:
    return {ln.strip().split("  ")[0]: ln for ln in stdout.splitlines()}


def image_modules(b: fwbundle.Bundle) -> dict[str, int]:
    sys.path.insert(0, str(FWSIZE.parent))
    try:
        import fwsize as tool
    finally:
        sys.path.remove(str(FWSIZE.parent))
    sizes: dict[str, int] = tool.romfs_files(b.image.read_bytes())
    return sizes


def test_every_board_is_within_its_budget_and_the_figures_are_printed(out: Path) -> None:
    r = fwsize("--bundle", str(out), "--budget", str(BUDGET), "--no-build")
    assert r.returncode == 0, r.stdout + r.stderr
    b = budget()
    lines = lines_of(r.stdout)
    for board in BOARDS:
        bun = fwbundle.build(board, out)
        tree = lines[f"{board} tree ({bun.app_dir})"]
        assert figures(tree) == (bun.tree_bytes, b["boards"][board]["tree"],
                                 b["boards"][board]["tree"] - bun.tree_bytes)
        image = bun.image.stat().st_size
        assert figures(lines[f"{board} ROMFS image"]) == (image, b["boards"][board]["image"],
                                                          b["boards"][board]["image"] - image)
    entry = (FIRMWARE / "main.py").stat().st_size
    assert figures(lines["main.py"]) == (entry, b["main.py"], b["main.py"] - entry)
    for mod in b["modules"]:
        assert mod in lines and "ok" in lines[mod], f"{mod} not reported:\n{r.stdout}"
    assert "within budget" in r.stdout
    print(r.stdout)


def test_module_sizes_come_from_the_image_match_the_tree_and_cover_every_source(out: Path) -> None:
    for board in BOARDS:
        b = fwbundle.build(board, out)
        sizes = image_modules(b)
        assert sizes == {rel: n for rel, (n, _d) in b.files.items()}      # what flash writes, either way
        expected = {str(p.relative_to(FIRMWARE).with_suffix(".mpy"))
                    for p in (FIRMWARE / "cs").rglob("*.py") if "__pycache__" not in p.parts}
        assert expected <= set(sizes)
        assert f"boards/{board}.mpy" in sizes and "boards/console.mpy" in sizes
        # every module is bytecode, far smaller than its source, and the image is the modules plus
        # their names and record headers
        assert all(n > 0 for n in sizes.values())
        image = b.image.stat().st_size
        assert sum(sizes.values()) < image < sum(sizes.values()) + 40 * len(sizes) + 64
        src = sum(p.stat().st_size for p in (FIRMWARE / "cs").rglob("*.py"))
        assert sum(v for k, v in sizes.items() if k.startswith("cs/")) < src / 2


def test_a_lowered_tree_or_image_budget_fails_and_names_the_board(out: Path, tmp_path: Path) -> None:
    b = budget()
    c3 = fwbundle.build("esp32c3", out)
    b["boards"]["esp32c3"]["tree"] = c3.tree_bytes - 1
    b["boards"]["sim"]["image"] = fwbundle.build("sim", out).image.stat().st_size - 1
    r = fwsize("--bundle", str(out), "--budget", str(write_budget(tmp_path / "b.json", b)), "--no-build")
    assert r.returncode == 1, r.stdout + r.stderr
    failed = r.stdout.splitlines()[-1]
    assert failed.startswith("FAILED: over budget:")
    assert f"esp32c3 tree ({c3.app_dir})" in failed and "sim ROMFS image" in failed
    assert "esp32s3" not in failed
    tree = lines_of(r.stdout)[f"esp32c3 tree ({c3.app_dir})"]
    assert figures(tree)[2] == -1 and "OVER BUDGET" in tree


def test_a_lowered_module_or_main_budget_fails_and_names_it(out: Path, tmp_path: Path) -> None:
    b = budget()
    b["modules"]["cs/app.mpy"] = image_modules(fwbundle.build("sim", out))["cs/app.mpy"] - 10
    b["main.py"] = 100
    r = fwsize("--bundle", str(out), "--budget", str(write_budget(tmp_path / "b.json", b)), "--no-build")
    assert r.returncode == 1, r.stdout + r.stderr
    failed = r.stdout.splitlines()[-1]
    assert failed.startswith("FAILED") and "cs/app.mpy" in failed and "main.py" in failed
    assert "tree" not in failed and "ROMFS image" not in failed


def test_a_broken_budget_or_missing_bundle_is_an_error_not_a_pass(out: Path, tmp_path: Path) -> None:
    b = budget()
    del b["boards"]["esp32c3"]["tree"]
    r = fwsize("--bundle", str(out), "--budget", str(write_budget(tmp_path / "b.json", b)), "--no-build")
    assert r.returncode == 2 and "boards.esp32c3.tree must be a positive integer" in r.stderr
    b = budget()
    b["modules"]["cs/gone.mpy"] = 100
    r = fwsize("--bundle", str(out), "--budget", str(write_budget(tmp_path / "c.json", b)), "--no-build")
    assert r.returncode == 2 and "cs/gone.mpy" in r.stderr
    r = fwsize("--bundle", str(out), "--budget", str(BUDGET), "--no-build", "--board", "esp32c6")
    assert r.returncode == 2 and "no budget for board esp32c6" in r.stderr
    r = fwsize("--bundle", str(tmp_path / "nothing"), "--budget", str(BUDGET), "--no-build")
    assert r.returncode == 2 and "no bundle of" in r.stderr


def test_the_tool_builds_the_bundles_itself(tmp_path: Path) -> None:
    """Without --no-build it builds first (what `make firmware` runs)."""
    fresh = tmp_path / "fresh"
    r = fwsize("--bundle", str(fresh), "--budget", str(BUDGET), "--board", "esp32c3")
    assert r.returncode == 0, r.stdout + r.stderr
    b = fwbundle.load(fwbundle.path_for("esp32c3", fresh))
    assert b.image.exists() and b.entry.exists() and all((b.tree / rel).exists() for rel in b.files)
    assert "sim tree" not in r.stdout


def test_make_firmware_runs_the_check() -> None:
    r = subprocess.run(["make", "-n", "firmware"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert "tools/fwsize.py --bundle out/firmware-bundle --budget firmware/size-budget.json" in r.stdout
