"""Lay out the installed package as a tree of symlinks for mypy, from pyproject's package-dir mapping.

mypy cannot follow setuptools' folder mapping (protocol/ -> countersign.protocol, ...), so it checks
this tree instead; reading the mapping means a new sub-package is checked the day it is added to
pyproject, never forgotten in a hand-kept list. Data packages (no Python checked: the firmware, the pin
maps) are left out: they are MicroPython or JSON.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tomllib
from pathlib import Path

DATA_PACKAGES = {"countersign.firmware", "countersign.hardware"}


def layout(root: Path, out: Path) -> list[str]:
    conf = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping: dict[str, str] = conf["package-dir"]
    shutil.rmtree(out, ignore_errors=True)
    top = out / "countersign"
    top.mkdir(parents=True)
    made = []
    for package, folder in sorted(mapping.items()):
        if package in DATA_PACKAGES:
            continue
        src = (root / folder).resolve()
        if package == "countersign":
            for f in src.glob("*.py"):
                (top / f.name).symlink_to(f)
        else:
            parts = package.split(".")
            if len(parts) != 2 or parts[0] != "countersign":
                raise SystemExit(f"typetree: unexpected package {package!r} in pyproject's package-dir")
            (top / parts[1]).symlink_to(src, target_is_directory=True)
        made.append(package)
    return made


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", type=Path, help="folder to (re)create; mypy runs there with -p countersign")
    a = ap.parse_args(argv)
    made = layout(Path(__file__).resolve().parent.parent, a.out)
    print(f"typetree: {len(made)} packages under {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
