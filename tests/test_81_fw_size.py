"""`make firmware`: the keypad bundle's flash sizes against firmware/size-budget.json (tools/fwsize.py).

The check passes on the firmware as it is, prints every figure with its budget and headroom, and fails
(exit 1, naming what is over) as soon as the budget is lowered below what the bundle needs; the module
sizes it reports are read from the ROMFS image that would be flashed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
FWSIZE = ROOT / "tools" / "fwsize.py"
BUDGET = ROOT / "firmware" / "size-budget.json"
FIRMWARE = ROOT / "firmware"


def fwsize(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(FWSIZE), *args], capture_output=True, text=True, timeout=120,
                          check=False, cwd=ROOT)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh bundle of this tree (its own folder: other runs may be building out/firmware-bundle)."""
    from countersign.sim import bundle as fwbundle

    return fwbundle.build(tmp_path_factory.mktemp("bundle"))


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


def module_sizes(bundle: Path) -> dict[str, int]:
    sys.path.insert(0, str(FWSIZE.parent))
    try:
        import fwsize as tool
    finally:
        sys.path.remove(str(FWSIZE.parent))
    sizes: dict[str, int] = tool.romfs_files((bundle / "firmware.romfs").read_bytes())
    return sizes


def test_the_firmware_is_within_its_budget_and_the_figures_are_printed(bundle: Path) -> None:
    r = fwsize("--bundle", str(bundle), "--budget", str(BUDGET), "--no-build")
    assert r.returncode == 0, r.stdout + r.stderr
    image = (bundle / "firmware.romfs").stat().st_size
    entry = (bundle / "main.py").stat().st_size
    b = budget()
    lines = {ln.strip().split("  ")[0]: ln for ln in r.stdout.splitlines()}
    assert figures(lines["ROM image (firmware.romfs)"]) == (image, b["image"], b["image"] - image)
    assert figures(lines["main.py"]) == (entry, b["main.py"], b["main.py"] - entry)
    for mod in b["modules"]:
        assert mod in lines and "ok" in lines[mod], f"{mod} not reported:\n{r.stdout}"
    assert "within budget" in r.stdout
    print(r.stdout)


def test_module_sizes_come_from_the_image_and_cover_every_source(bundle: Path) -> None:
    sizes = module_sizes(bundle)
    expected = {str(p.relative_to(FIRMWARE).with_suffix(".mpy")) for d in ("cs", "boards")
                for p in (FIRMWARE / d).rglob("*.py") if "__pycache__" not in p.parts}
    assert set(sizes) == expected
    image = (bundle / "firmware.romfs").stat().st_size
    # every module is bytecode (an .mpy starts with b"M", is far smaller than its source) and the image is
    # the modules plus their names and record headers
    assert all(n > 0 for n in sizes.values())
    assert sum(sizes.values()) < image < sum(sizes.values()) + 40 * len(sizes) + 64
    src = sum(p.stat().st_size for p in (FIRMWARE / "cs").rglob("*.py"))
    assert sum(v for k, v in sizes.items() if k.startswith("cs/")) < src / 2


def test_a_lowered_image_budget_fails(bundle: Path, tmp_path: Path) -> None:
    b = budget()
    b["image"] = (bundle / "firmware.romfs").stat().st_size - 1
    r = fwsize("--bundle", str(bundle), "--budget", str(write_budget(tmp_path / "b.json", b)), "--no-build")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "OVER BUDGET" in r.stdout and "FAILED: over budget: ROM image (firmware.romfs)" in r.stdout
    rom = next(ln for ln in r.stdout.splitlines() if ln.startswith("ROM image"))
    assert figures(rom)[2] == -1 and "OVER BUDGET" in rom


def test_a_lowered_module_or_main_budget_fails_and_names_it(bundle: Path, tmp_path: Path) -> None:
    b = budget()
    b["modules"]["cs/app.mpy"] = module_sizes(bundle)["cs/app.mpy"] - 10
    b["main.py"] = 100
    r = fwsize("--bundle", str(bundle), "--budget", str(write_budget(tmp_path / "b.json", b)), "--no-build")
    assert r.returncode == 1, r.stdout + r.stderr
    failed = r.stdout.splitlines()[-1]
    assert failed.startswith("FAILED") and "cs/app.mpy" in failed and "main.py" in failed
    assert "ROM image" not in failed


def test_a_broken_budget_or_missing_bundle_is_an_error_not_a_pass(bundle: Path, tmp_path: Path) -> None:
    b = budget()
    del b["image"]
    r = fwsize("--bundle", str(bundle), "--budget", str(write_budget(tmp_path / "b.json", b)), "--no-build")
    assert r.returncode == 2 and "'image' must be a positive integer" in r.stderr
    b = budget()
    b["modules"]["cs/gone.mpy"] = 100
    r = fwsize("--bundle", str(bundle), "--budget", str(write_budget(tmp_path / "c.json", b)), "--no-build")
    assert r.returncode == 2 and "cs/gone.mpy" in r.stderr
    r = fwsize("--bundle", str(tmp_path / "nothing"), "--budget", str(BUDGET), "--no-build")
    assert r.returncode == 2 and "no bundle" in r.stderr


def test_the_tool_builds_the_bundle_itself(tmp_path: Path) -> None:
    """Without --no-build it builds first (what `make firmware` runs)."""
    out = tmp_path / "fresh"
    r = fwsize("--bundle", str(out), "--budget", str(BUDGET))
    assert r.returncode == 0, r.stdout + r.stderr
    assert (out / "firmware.romfs").exists() and (out / "main.py").exists()


def test_make_firmware_runs_the_check() -> None:
    r = subprocess.run(["make", "-n", "firmware"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert "tools/fwsize.py --bundle out/firmware-bundle --budget firmware/size-budget.json" in r.stdout
